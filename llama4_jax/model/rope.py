"""Rotary position embeddings as Llama 4 uses them: interleaved adjacent pairs, fp32 angles, llama3 scaling.

Llama 4 checkpoints store q/k rows in Meta's interleaved order, so the rotation acts on pairs (2j, 2j+1) ("GPT-J"
style), not on halves. Angles, cos/sin and the rotation itself are computed in float32 as in the references.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from llama4_jax.config import RopeScaling


def inverse_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None = None) -> np.ndarray:
  """inv_freq_j = theta^(-2j/d) for j < d/2, optionally with llama3 band scaling; float32 [d/2]."""
  exponent = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
  inv_freq = (np.float32(1.0) / (np.float32(theta) ** exponent)).astype(np.float32)
  if scaling is None or scaling.rope_type == "default":
    return inv_freq
  # llama3: keep short wavelengths, divide long ones by `factor`, interpolate in between.
  old_len = scaling.original_max_position_embeddings
  low_wavelen = old_len / scaling.low_freq_factor
  high_wavelen = old_len / scaling.high_freq_factor
  wavelen = (2 * math.pi / inv_freq).astype(np.float32)
  scaled = np.where(wavelen > low_wavelen, inv_freq / np.float32(scaling.factor), inv_freq).astype(np.float32)
  band = scaling.high_freq_factor - scaling.low_freq_factor
  # With low == high (Scout: 1, 1) the band is empty; guard the 0/0 so no NaN can leak through `where`.
  smooth = (old_len / wavelen - scaling.low_freq_factor) / (band if band > 0 else 1.0)
  smoothed = (1 - smooth) * scaled / np.float32(scaling.factor) + smooth * scaled
  medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
  return np.where(medium, smoothed, scaled).astype(np.float32)


def rope_cos_sin(positions_BL: jnp.ndarray, inv_freq: np.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """cos, sin tables [B, L, K/2] in float32 for integer positions."""
  angles_BLk = positions_BL.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
  return jnp.cos(angles_BLk), jnp.sin(angles_BLk)


def apply_rope(x_BLHK: jnp.ndarray, cos_BLk: jnp.ndarray, sin_BLk: jnp.ndarray) -> jnp.ndarray:
  """Rotates interleaved pairs (x[2j], x[2j+1]) by the per-position angle; returns x's dtype.

  Written as one elementwise expression, out[i] = x[i] cos_i + x[i ^ 1] (-sin_i if i even else sin_i), over
  tables widened to K: the same float32 products and sums as rotating each pair, without the strided pair slices
  and re-interleaving stack that XLA:CPU lowers to slow copies."""
  b, l, h, k = x_BLHK.shape
  x = x_BLHK.astype(jnp.float32)
  swapped = x.reshape(b, l, h, k // 2, 2)[..., ::-1].reshape(b, l, h, k)
  cos_BLK = jnp.repeat(cos_BLk, 2, axis=-1)[:, :, None, :]
  sin_BLK = jnp.stack([-sin_BLk, sin_BLk], axis=-1).reshape(*sin_BLk.shape[:-1], k)[:, :, None, :]
  return (x * cos_BLK + swapped * sin_BLK).astype(x_BLHK.dtype)
