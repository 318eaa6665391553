"""Rotary position embeddings as Llama 4 uses them: interleaved adjacent pairs, fp32 angles, and the context-extension
rescalings a length-generalization study compares (`config.RopeScaling`).

Llama 4 checkpoints store q/k rows in Meta's interleaved order, so the rotation acts on pairs (2j, 2j+1) ("GPT-J"
style), not on halves. Angles, cos/sin and the rotation itself are computed in float32 as in the references.

Frequencies (d = head_dim, theta_j = base^(-2j/d), j < d/2, s = factor, L = original_max_position_embeddings):
  llama3   keep wavelengths below L/high_freq_factor, divide those above L/low_freq_factor by s, blend in between
  linear   theta_j / s (position interpolation: positions m -> m / s)
  ntk      base -> base * s^(d/(d-2)) (static NTK-aware)
  dynamic  base -> base * (s * n / L - (s - 1))^(d/(d-2)) with n = max(current length, L), the current length being
           the largest position in the call + 1 (so rows up to L are untouched)
  yarn     theta_j / s blended with theta_j by a ramp over dimensions j between the dimensions that turn beta_fast
           and beta_slow times over L (few turns: interpolated; many: kept); cos and sin are multiplied by
           attention_factor (default 0.1 ln s + 1), which scales attention logits by its square. On Llama 4's
           RoPE layers the weightless qk-norm comes after the rotation and normalizes that factor away; it acts
           only with use_qk_norm=False.
These follow Hugging Face transformers' `modeling_rope_utils` (the parity oracle) formula by formula.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from llama4_jax.config import RopeScaling


def _unscaled(head_dim: int, theta: float) -> np.ndarray:
  exponent = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
  return (np.float32(1.0) / (np.float32(theta) ** exponent)).astype(np.float32)


def ntk_exponent(head_dim: int) -> float:
  return head_dim / (head_dim - 2)


def yarn_ramp(head_dim: int, theta: float, scaling: RopeScaling) -> np.ndarray:
  """Per frequency j, the share of the original (extrapolated) frequency YaRN keeps: 1 for the dimensions that turn
  more than beta_fast times over the original length, 0 below beta_slow turns, linear in j between; float32 [d/2]."""
  def dim_for(turns):  # the (fractional) dimension whose wavelength fits `turns` times into the original length
    return head_dim * math.log(scaling.original_max_position_embeddings / (turns * 2 * math.pi)) / (2 * math.log(theta))
  low, high = dim_for(scaling.beta_fast), dim_for(scaling.beta_slow)
  if scaling.truncate:
    low, high = math.floor(low), math.ceil(high)
  low, high = max(low, 0), min(high, head_dim - 1)
  if low == high:
    high += 0.001  # a one-point ramp: avoid 0/0
  ramp = np.clip((np.arange(head_dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
  return (1 - ramp).astype(np.float32)


def attention_factor(scaling: RopeScaling | None) -> float:
  """The factor on cos and sin: YaRN's (given, or 0.1 ln s + 1 for s > 1), 1 for every other kind."""
  if scaling is None or scaling.rope_type != "yarn":
    return 1.0
  if scaling.attention_factor is not None:
    return float(scaling.attention_factor)
  return 1.0 if scaling.factor <= 1 else 0.1 * math.log(scaling.factor) + 1.0


def inverse_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None = None) -> np.ndarray:
  """The rotary frequencies [d/2] in float32 for every kind but 'dynamic', whose frequencies depend on the length
  (`dynamic_inverse_frequencies`; here: its frequencies up to the original length, the unscaled ones)."""
  kind = "default" if scaling is None else scaling.rope_type
  if kind == "ntk":
    theta = theta * scaling.factor ** ntk_exponent(head_dim)
  inv_freq = _unscaled(head_dim, theta)
  if kind in ("default", "ntk", "dynamic"):
    return inv_freq
  if kind == "linear":
    return (inv_freq / np.float32(scaling.factor)).astype(np.float32)
  if kind == "yarn":
    keep = yarn_ramp(head_dim, theta, scaling)
    return (inv_freq / np.float32(scaling.factor) * (1 - keep) + inv_freq * keep).astype(np.float32)
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


def dynamic_inverse_frequencies(head_dim: int, theta: float, scaling: RopeScaling, length) -> jnp.ndarray:
  """Dynamic NTK frequencies for a (traced) current length: the base grows once the length passes the original."""
  original = scaling.original_max_position_embeddings
  n = jnp.maximum(jnp.asarray(length, jnp.float32), np.float32(original))
  base = np.float32(theta) * (np.float32(scaling.factor) * n / np.float32(original)
                              - np.float32(scaling.factor - 1)) ** np.float32(ntk_exponent(head_dim))
  exponent = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / np.float32(head_dim)
  return 1.0 / base ** exponent


def rope_cos_sin(positions_BL: jnp.ndarray, inv_freq) -> tuple[jnp.ndarray, jnp.ndarray]:
  """cos, sin tables [B, L, K/2] in float32 for integer positions."""
  angles_BLk = positions_BL.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
  return jnp.cos(angles_BLk), jnp.sin(angles_BLk)


def rope_tables(positions_BL: jnp.ndarray, head_dim: int, theta: float,
                scaling: RopeScaling | None) -> tuple[jnp.ndarray, jnp.ndarray]:
  """The model's cos, sin tables [B, L, K/2] for these positions under `scaling` (module docstring)."""
  if scaling is not None and scaling.rope_type == "dynamic":
    inv_freq = dynamic_inverse_frequencies(head_dim, theta, scaling, jnp.max(positions_BL) + 1)
  else:
    inv_freq = inverse_frequencies(head_dim, theta, scaling)
  cos, sin = rope_cos_sin(positions_BL, inv_freq)
  factor = attention_factor(scaling)
  if factor != 1.0:
    cos, sin = cos * np.float32(factor), sin * np.float32(factor)
  return cos, sin


def rotation_tables(cos_BLk: jnp.ndarray, sin_BLk: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """The per-element tables [B, L, K] `rotate` reads: cos repeated over each pair, and sin with the pair's sign
  (-sin on even entries, +sin on odd ones). Built once per forward and shared by every RoPE layer.

  Both are built by stacking (a concatenate, which XLA:CPU materialises), not by `jnp.repeat` (a broadcast, which it
  fuses into every consumer: each layer's rotation, forward and backward, then recomputed a cosine per element and
  head). An optimization barrier does not prevent that: XLA:CPU removes barriers before fusion."""
  k = 2 * cos_BLk.shape[-1]
  cos_BLK = jnp.stack([cos_BLk, cos_BLk], axis=-1).reshape(*cos_BLk.shape[:-1], k)
  sin_BLK = jnp.stack([-sin_BLk, sin_BLk], axis=-1).reshape(*sin_BLk.shape[:-1], k)
  return cos_BLK, sin_BLK


def rotate(x_BLHK: jnp.ndarray, cos_BLK: jnp.ndarray, sin_BLK: jnp.ndarray) -> jnp.ndarray:
  """Rotates interleaved pairs (x[2j], x[2j+1]) by the per-position angle given as `rotation_tables`; returns x's
  dtype.

  One elementwise expression, out[i] = x[i] cos_i + x[i ^ 1] (-sin_i if i even else sin_i): the same float32
  products and sums as rotating each pair, without the strided pair slices and re-interleaving stack that XLA:CPU
  lowers to slow copies."""
  b, l, h, k = x_BLHK.shape
  x = x_BLHK.astype(jnp.float32)
  swapped = x.reshape(b, l, h, k // 2, 2)[..., ::-1].reshape(b, l, h, k)
  return (x * cos_BLK[:, :, None, :] + swapped * sin_BLK[:, :, None, :]).astype(x_BLHK.dtype)


def apply_rope(x_BLHK: jnp.ndarray, cos_BLk: jnp.ndarray, sin_BLk: jnp.ndarray) -> jnp.ndarray:
  """`rotate` by the half-width tables of `rope_tables` / `rope_cos_sin` [B, L, K/2]."""
  return rotate(x_BLHK, *rotation_tables(cos_BLk, sin_BLk))
