"""Parameter and compute dtypes: bf16 storage and/or bf16 compute, logits always float32."""

import jax
import jax.numpy as jnp
import numpy as np

from llama4_jax.model import apply, init_params
from tests.conftest import tiny_config


def test_bf16_params_and_compute_give_fp32_logits_close_to_fp32():
  cfg32 = tiny_config(num_hidden_layers=4)
  params32 = init_params(cfg32, jax.random.key(0))
  tokens = jnp.asarray(np.random.RandomState(0).randint(0, cfg32.vocab_size, (2, 19)), jnp.int32)
  ref, _ = apply(cfg32, params32, tokens)
  cfg16 = cfg32.replace(param_dtype="bfloat16", dtype="bfloat16")
  params16 = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), params32)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree_util.tree_leaves(init_params(cfg16, jax.random.key(0))))
  out, _ = apply(cfg16, params16, tokens)
  assert out.dtype == jnp.float32
  scale = float(jnp.abs(ref).max())
  assert float(jnp.abs(out - ref).max()) < 0.05 * scale  # bf16 rounding only
  assert float(jnp.abs(out - ref).max()) > 0  # and it really ran in bf16
  # fp32 master weights with bf16 compute: gradients come back in fp32.
  cfg_mixed = cfg32.replace(dtype="bfloat16")
  grads = jax.grad(lambda p: apply(cfg_mixed, p, tokens)[0].sum())(params32)
  assert all(g.dtype == jnp.float32 for g in jax.tree_util.tree_leaves(grads))
