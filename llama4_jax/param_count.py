"""Parameter counts without allocating anything (`jax.eval_shape`).

    python -m llama4_jax.param_count --config=configs/base.py:scout

Active parameters are those one token touches: everything except the routed experts it is not sent to (embedding
and output matrices are counted whole, as in Meta's published figures).
"""

from __future__ import annotations

import math

import jax

from llama4_jax.config import ModelConfig, VisionConfig


def vision_param_count(v: VisionConfig | None, text_hidden: int) -> int:
  """Vision tower + adapter + projector (Hugging Face Llama4VisionModel + Llama4MultiModalProjector shapes)."""
  if v is None:
    return 0
  d, f = v.hidden_size, v.intermediate_size
  patches = (v.image_size // v.patch_size) ** 2
  count = d * v.num_channels * v.patch_size ** 2  # patch embedding (no bias)
  count += d + (patches + 1) * d  # class embedding, positional embedding (CLS row last)
  count += 4 * d  # layernorm_pre / layernorm_post weight + bias
  per_layer = 4 * (d * d + d) + (d * f + f) + (f * d + d) + 4 * d
  count += v.num_hidden_layers * per_layer
  shuffled = int(d / (v.pixel_shuffle_ratio ** 2))
  count += shuffled * v.projector_input_dim + v.projector_output_dim * v.projector_output_dim  # adapter, no bias
  count += v.vision_output_dim * text_hidden  # multi-modal projector
  return count


def text_param_count(cfg: ModelConfig) -> int:
  """The text model's parameters from its config alone: no JAX call, so an entry point can size things before the
  backend starts. Equals `count(cfg)["text_total"]` (tests/unit/test_param_count.py)."""
  d, h, g, k = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
  total = 2 * cfg.vocab_size * d + d  # embedding, output head, final norm
  for i in range(cfg.num_hidden_layers):
    total += d * (h + 2 * g) * k + h * k * d + 2 * d  # q, k, v, o; two norms
    if cfg.is_moe_layer(i):
      total += d * cfg.num_local_experts + (cfg.num_local_experts + 1) * 3 * d * cfg.intermediate_size
    else:
      total += 3 * d * cfg.intermediate_size_mlp
  return total


def count(cfg: ModelConfig) -> dict[str, int]:
  from llama4_jax.model import param_shapes

  shapes = dict(param_shapes(cfg))
  vision_shapes = shapes.pop("vision", {})
  text = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(shapes))
  moe_layers = sum(cfg.is_moe_layer(i) for i in range(cfg.num_hidden_layers))
  per_expert = 3 * cfg.hidden_size * cfg.intermediate_size
  idle = moe_layers * (cfg.num_local_experts - cfg.num_experts_per_tok) * per_expert
  vision = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(vision_shapes))
  return {"text_total": text, "vision_total": vision, "total": text + vision, "active_text": text - idle,
          "embedding": 2 * cfg.vocab_size * cfg.hidden_size, "routed_experts": moe_layers * cfg.num_local_experts *
          per_expert}


def format_table(rows: dict[str, dict[str, int]]) -> str:
  cols = ["total", "text_total", "vision_total", "active_text", "routed_experts", "embedding"]
  lines = ["| preset | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
  for name, c in rows.items():
    lines.append(f"| {name} | " + " | ".join(_human(c[k]) for k in cols) + " |")
  return "\n".join(lines)


def _human(n: int) -> str:
  for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
    if n >= scale:
      return f"{n / scale:.4g}{unit} ({n:,})"
  return str(n)


def main(argv):
  del argv
  from ml_collections import config_flags  # noqa: F401 (flag defined below)
  from llama4_jax.config import model_config

  config = _CONFIG.value
  cfg = model_config(config)
  print(format_table({config.get("preset", "model"): count(cfg)}))


if __name__ == "__main__":
  from absl import app
  from ml_collections import config_flags

  _CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file[:preset]", lock_config=True)
  app.run(main)
