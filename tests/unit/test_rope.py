"""Rotary embeddings (spec 4.3, 4.4): frequencies against a float64 formula, rotation against complex arithmetic."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llama4_jax.config import RopeScaling
from llama4_jax.model.rope import (apply_rope, attention_factor, dynamic_inverse_frequencies, inverse_frequencies,
                                   rope_cos_sin, rope_tables, rotate, rotation_tables)


def _reference_inv_freq(head_dim, theta, scaling=None):
  """float64, one pair at a time, straight from spec 4.4 (llama3 band scaling)."""
  out = []
  for j in range(head_dim // 2):
    f = theta ** (-2.0 * j / head_dim)
    if scaling is not None:
      factor, low, high, orig = scaling
      wavelen = 2 * math.pi / f
      if wavelen < orig / high:
        pass  # high frequency: unchanged
      elif wavelen > orig / low:
        f = f / factor  # low frequency: divided by the factor
      else:  # medium band: interpolate between f / factor and f
        smooth = (orig / wavelen - low) / (high - low)
        f = (1 - smooth) * f / factor + smooth * f
    out.append(f)
  return np.array(out, np.float64)


def _band_sizes(head_dim, theta, scaling):
  factor, low, high, orig = scaling
  wavelen = np.array([2 * math.pi / theta ** (-2.0 * j / head_dim) for j in range(head_dim // 2)])
  return int((wavelen < orig / high).sum()), int((wavelen > orig / low).sum())


@pytest.mark.parametrize("head_dim, theta", [(128, 500000.0), (8, 10000.0), (64, 10000.0)])
def test_inverse_frequencies_unscaled(head_dim, theta):
  inv_freq = inverse_frequencies(head_dim, theta)
  assert inv_freq.shape == (head_dim // 2,) and inv_freq.dtype == np.float32
  np.testing.assert_allclose(inv_freq, _reference_inv_freq(head_dim, theta), rtol=1e-5, atol=0)
  assert inverse_frequencies(head_dim, theta, RopeScaling(rope_type="default")).tolist() == inv_freq.tolist()


@pytest.mark.parametrize("head_dim, theta, scaling", [
    (128, 500000.0, (16.0, 1.0, 1.0, 8192)),  # Scout (spec 4.4): empty medium band
    (128, 500000.0, (8.0, 1.0, 4.0, 8192)),  # stale transformers 4.51 Scout values
    (8, 10000.0, (8.0, 1.0, 4.0, 64)),
    (16, 10000.0, (8.0, 1.0, 4.0, 64)),
])
def test_inverse_frequencies_llama3_scaling(head_dim, theta, scaling):
  factor, low, high, orig = scaling
  inv_freq = inverse_frequencies(head_dim, theta, RopeScaling("llama3", factor, low, high, orig))
  expected = _reference_inv_freq(head_dim, theta, scaling)
  assert np.all(np.isfinite(inv_freq))
  np.testing.assert_allclose(inv_freq, expected, rtol=1e-5, atol=0)
  n_high, n_low = _band_sizes(head_dim, theta, scaling)
  if low != high:
    assert n_high + n_low < head_dim // 2, "case meant to exercise a non-empty medium band"


def test_scout_scaling_keeps_35_pairs_and_divides_29():
  inv_freq = inverse_frequencies(128, 500000.0, RopeScaling("llama3", 16.0, 1.0, 1.0, 8192))
  plain = inverse_frequencies(128, 500000.0)
  np.testing.assert_allclose(inv_freq[:35], plain[:35], rtol=1e-6)
  np.testing.assert_allclose(inv_freq[35:], plain[35:] / 16, rtol=1e-6)


@pytest.mark.parametrize("low_high", [1.0, 2.0, 4.0])
def test_equal_low_and_high_factor_gives_no_nan(low_high):
  # The medium band is empty and HF's smoothing would be 0/0; nothing may leak through.
  for head_dim, theta, orig in ((128, 500000.0, 8192), (16, 10000.0, 64), (32, 10.0, 2)):
    inv_freq = inverse_frequencies(head_dim, theta, RopeScaling("llama3", 8.0, low_high, low_high, orig))
    assert np.all(np.isfinite(inv_freq))
    np.testing.assert_allclose(inv_freq, _reference_inv_freq(head_dim, theta, (8.0, low_high, low_high, orig)),
                               rtol=1e-5)


def _rope(x_BLHK, positions_BL, inv_freq):
  cos, sin = rope_cos_sin(jnp.asarray(positions_BL), inv_freq)
  return np.asarray(apply_rope(jnp.asarray(x_BLHK), cos, sin))


def test_apply_rope_is_complex_multiplication_of_interleaved_pairs():
  rs = np.random.RandomState(0)
  b, l, h, k = 2, 5, 3, 16
  x_BLHK = rs.randn(b, l, h, k).astype(np.float32)
  positions_BL = rs.randint(0, 5000, size=(b, l))
  inv_freq = inverse_frequencies(k, 10000.0, RopeScaling("llama3", 8.0, 1.0, 4.0, 64))
  out = _rope(x_BLHK, positions_BL, inv_freq)
  # Angles are formed in float32 as in the references (spec 4.3); everything after that in float64.
  angles_BLk = (positions_BL.astype(np.float32)[..., None] * inv_freq.astype(np.float32)).astype(np.float64)
  z_BLHk = x_BLHK[..., 0::2].astype(np.float64) + 1j * x_BLHK[..., 1::2].astype(np.float64)
  rotated = z_BLHk * np.exp(1j * angles_BLk)[:, :, None, :]
  expected = np.stack([rotated.real, rotated.imag], axis=-1).reshape(b, l, h, k)
  assert out.dtype == np.float32
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  # Position 0 is the identity.
  np.testing.assert_array_equal(_rope(x_BLHK, np.zeros((b, l), np.int32), inv_freq), x_BLHK)


def test_apply_rope_keeps_bfloat16_and_preserves_norm():
  rs = np.random.RandomState(1)
  x_BLHK = rs.randn(1, 7, 2, 8).astype(np.float32)
  positions_BL = np.arange(7)[None] * 13
  out = _rope(x_BLHK, positions_BL, inverse_frequencies(8, 10000.0))
  np.testing.assert_allclose(np.linalg.norm(out, axis=-1), np.linalg.norm(x_BLHK, axis=-1), rtol=1e-5)
  # Pairs rotate independently, so each pair's norm is preserved too (catches a rotate-half layout).
  pair_norm = lambda v: np.hypot(v[..., 0::2], v[..., 1::2])  # noqa: E731
  np.testing.assert_allclose(pair_norm(out), pair_norm(x_BLHK), rtol=1e-5, atol=1e-6)
  cos, sin = rope_cos_sin(jnp.asarray(positions_BL), inverse_frequencies(8, 10000.0))
  assert apply_rope(jnp.asarray(x_BLHK, jnp.bfloat16), cos, sin).dtype == jnp.bfloat16


def test_rotation_tables_are_computed_once_for_every_rotation_that_shares_them():
  """The model builds the tables once per forward for all its RoPE layers; XLA must not fold the cosine into each
  rotation (it did with a repeat-built table: a transcendental per element, head and layer)."""
  inv_freq = inverse_frequencies(16, 10000.0)

  def two_layers(q_BLHK, k_BLGK, positions_BL):
    tables = rotation_tables(*rope_cos_sin(positions_BL, inv_freq))
    return rotate(q_BLHK, *tables) * 2.0, rotate(k_BLGK, *tables) + 1.0

  args = (jnp.ones((2, 8, 4, 16)), jnp.ones((2, 8, 2, 16)), jnp.tile(jnp.arange(8)[None], (2, 1)))
  hlo = jax.jit(two_layers).lower(*args).compile().as_text()
  assert hlo.count(" cosine(") == 1 and hlo.count(" sine(") == 1
  q, _ = two_layers(*args)
  np.testing.assert_array_equal(np.asarray(q) / 2, _rope(np.ones((2, 8, 4, 16), np.float32), np.asarray(args[2]),
                                                         inv_freq))


def test_rope_dot_product_depends_only_on_relative_position():
  rs = np.random.RandomState(2)
  k = 16
  inv_freq = inverse_frequencies(k, 10000.0)
  q = rs.randn(1, 1, 1, k).astype(np.float32)
  key = rs.randn(1, 1, 1, k).astype(np.float32)

  def score(m, n):
    return float(np.sum(_rope(q, np.array([[m]]), inv_freq) * _rope(key, np.array([[n]]), inv_freq)))

  same_offset = [score(m, m - 4) for m in (4, 7, 12, 40, 100)]
  np.testing.assert_allclose(same_offset, same_offset[0], rtol=1e-4, atol=1e-4)
  assert abs(score(7, 3) - score(7, 4)) > 1e-3  # a different offset does change it
  np.testing.assert_allclose(score(9, 9), float(np.sum(q * key)), rtol=1e-5, atol=1e-5)


# ---- context-extension methods (issue 11), each against its formula in float64 ----------------------------------

def _plain64(head_dim, base):
  return np.array([base ** (-2.0 * j / head_dim) for j in range(head_dim // 2)], np.float64)


@pytest.mark.parametrize("head_dim, theta, factor", [(8, 10000.0, 4.0), (64, 500000.0, 8.0), (16, 10000.0, 1.5)])
def test_linear_interpolation_divides_every_frequency(head_dim, theta, factor):
  inv_freq = inverse_frequencies(head_dim, theta, RopeScaling("linear", factor))
  np.testing.assert_allclose(inv_freq, _plain64(head_dim, theta) / factor, rtol=1e-5, atol=0)
  # positions m at frequency theta/s are the unscaled angles of positions m/s
  cos, _ = rope_cos_sin(jnp.asarray([[int(8 * factor)]]), inv_freq)
  np.testing.assert_allclose(np.asarray(cos)[0, 0], np.cos(8 * _plain64(head_dim, theta)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("head_dim, theta, factor", [(8, 10000.0, 4.0), (128, 500000.0, 16.0)])
def test_static_ntk_raises_the_base(head_dim, theta, factor):
  inv_freq = inverse_frequencies(head_dim, theta, RopeScaling("ntk", factor))
  new_base = theta * factor ** (head_dim / (head_dim - 2))
  np.testing.assert_allclose(inv_freq, _plain64(head_dim, new_base), rtol=1e-5, atol=0)
  assert inv_freq[0] == pytest.approx(1.0) and inv_freq[-1] < inverse_frequencies(head_dim, theta)[-1] / factor * 1.01


@pytest.mark.parametrize("length", [1, 16, 17, 40, 1000])
def test_dynamic_ntk_base_follows_the_current_length(length):
  head_dim, theta, factor, original = 16, 10000.0, 4.0, 16
  rs = RopeScaling("dynamic", factor, original_max_position_embeddings=original)
  got = np.asarray(dynamic_inverse_frequencies(head_dim, theta, rs, length))
  n = max(length, original)
  base = theta * (factor * n / original - (factor - 1)) ** (head_dim / (head_dim - 2))
  np.testing.assert_allclose(got, _plain64(head_dim, base), rtol=2e-5, atol=0)
  if length <= original:  # rows up to the original length are untouched
    np.testing.assert_allclose(got, inverse_frequencies(head_dim, theta), rtol=1e-6)
  # in the model the length is the largest position in the call + 1
  positions = jnp.arange(length)[None]
  cos, sin = rope_tables(positions, head_dim, theta, rs)
  ref_cos, ref_sin = rope_cos_sin(positions, got)
  np.testing.assert_allclose(np.asarray(cos), np.asarray(ref_cos), atol=1e-6)
  np.testing.assert_allclose(np.asarray(sin), np.asarray(ref_sin), atol=1e-6)


def _yarn64(head_dim, theta, factor, original, beta_fast=32.0, beta_slow=1.0):
  """YaRN in float64 from the definition: the dimension d(r) whose wavelength fits r times into the original length
  solves original / (2 pi theta^(2d/D)) = r; between d(beta_fast) (rounded down) and d(beta_slow) (rounded up) the
  share of the interpolated frequency rises linearly with the dimension index."""
  d_of = lambda r: head_dim * math.log(original / (2 * math.pi * r)) / (2 * math.log(theta))  # noqa: E731
  lo, hi = max(math.floor(d_of(beta_fast)), 0), min(math.ceil(d_of(beta_slow)), head_dim - 1)
  out = []
  for j, f in enumerate(_plain64(head_dim, theta)):
    interp = min(max((j - lo) / ((hi - lo) or 0.001), 0.0), 1.0)
    out.append(f / factor * interp + f * (1 - interp))
  return np.array(out)


@pytest.mark.parametrize("head_dim, theta, factor, original", [(16, 10000.0, 4.0, 1024), (128, 500000.0, 8.0, 8192),
                                                               (64, 10000.0, 16.0, 2048)])
def test_yarn_frequencies_and_attention_factor(head_dim, theta, factor, original):
  rs = RopeScaling("yarn", factor, original_max_position_embeddings=original)
  inv_freq = inverse_frequencies(head_dim, theta, rs)
  np.testing.assert_allclose(inv_freq, _yarn64(head_dim, theta, factor, original), rtol=1e-5, atol=0)
  plain = _plain64(head_dim, theta)
  turns = original * plain / (2 * math.pi)  # rotations of each pair over the original length
  fast, slow = turns > 32 * 1.5, turns < 1 / 1.5  # well past the ramp's ends
  assert fast.any() and slow.any()
  np.testing.assert_allclose(inv_freq[fast], plain[fast], rtol=1e-5)  # many turns: kept (extrapolated)
  np.testing.assert_allclose(inv_freq[slow], plain[slow] / factor, rtol=1e-5)  # under one turn: interpolated
  assert attention_factor(rs) == pytest.approx(0.1 * math.log(factor) + 1)
  assert attention_factor(RopeScaling("yarn", factor, attention_factor=1.25)) == 1.25
  assert attention_factor(RopeScaling("linear", factor)) == 1.0 and attention_factor(None) == 1.0
  cos, sin = rope_tables(jnp.arange(5)[None], head_dim, theta, rs)
  np.testing.assert_allclose(np.asarray(cos) ** 2 + np.asarray(sin) ** 2, attention_factor(rs) ** 2, rtol=1e-5)


def test_every_kind_is_the_plain_rope_at_factor_one():
  plain = inverse_frequencies(16, 10000.0)
  for kind in ("linear", "ntk", "yarn", "llama3"):
    got = inverse_frequencies(16, 10000.0, RopeScaling(kind, 1.0, original_max_position_embeddings=64))
    np.testing.assert_allclose(got, plain, rtol=1e-6, err_msg=kind)
  assert attention_factor(RopeScaling("yarn", 1.0)) == 1.0
