"""llama4_jax: Llama 4 in pure-functional JAX/Flax."""

from llama4_jax.config import ConfigError, ModelConfig, RopeScaling, VisionConfig, from_config_dict
from llama4_jax.model import apply, forward, init_params, param_logical_axes, param_shapes
# Imported eagerly: importing the submodule binds `llama4_jax.generate` to the module, this line rebinds the function
# (later imports of the submodule find it in sys.modules and leave the name alone).
from llama4_jax.generate import Sampling, generate

__all__ = [
    "ConfigError", "ModelConfig", "RopeScaling", "VisionConfig", "from_config_dict", "apply", "forward",
    "init_params", "param_logical_axes", "param_shapes", "load_hf", "save_hf", "generate", "Sampling",
]


def __getattr__(name):
  # The converter pulls in safetensors; import it lazily so the core model stays light.
  if name in ("load_hf", "save_hf"):
    from llama4_jax.convert import hf
    return getattr(hf, name)
  raise AttributeError(name)
