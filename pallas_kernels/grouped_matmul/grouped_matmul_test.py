"""Grouped matmul: Pallas kernel (interpret mode) against the XLA reference.

Tolerances: float32 rtol 1e-5 with atol 1e-5 * max|reference| (summation order
differs between tiles and ragged_dot). bfloat16 inputs: the kernel's bf16
output is compared with the float32 reference on the same bf16 inputs at
rtol 2e-2, atol 2e-2 * max|reference| (a bf16 ulp is 2**-8 relative, and
gradients are rounded to bf16 twice). Rows and groups that must be zero are
checked for exact zeros.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.grouped_matmul import gmm
from pallas_kernels.grouped_matmul import gmm_reference
from pallas_kernels.grouped_matmul import tgmm
from pallas_kernels.grouped_matmul import tgmm_reference
from pallas_kernels.grouped_matmul import kernel
from pallas_kernels.grouped_matmul import ops

# (T, K, N, tiling, group sizes): T, K, N mostly not multiples of the tile; each
# shape is compiled once and reused for every group-size pattern (traced).
E1 = (33, 17, 9, (8, 8, 8))
E3 = (40, 24, 20, (16, 16, 16))
E8 = (61, 48, 40, (16, 16, 16))
CASES = [
    (E1, [33]), (E1, [20]), (E1, [0]), (E1, [1]),
    (E3, [10, 20, 10]),
    (E3, [0, 20, 15]),    # first group empty, rows past the end
    (E3, [15, 0, 20]),    # middle group empty
    (E3, [12, 13, 0]),    # last group empty
    (E3, [0, 0, 0]),      # nothing routed
    (E3, [1, 1, 38]),     # groups of one row
    (E3, [40, 0, 0]),
    (E8, [0, 1, 10, 0, 20, 1, 0, 5]),
    (E8, [7] * 8),
    (E8, [0] * 7 + [61]),
    (E8, [1] * 8),
    ((40, 24, 20, (128, 128, 128)), [0, 20, 15]),  # default tiles, shrunk
]


def _inputs(T, K, N, E, dtype=jnp.float32, seed=0):
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  lhs_TK = jax.random.normal(k1, (T, K), jnp.float32).astype(dtype)
  rhs_EKN = jax.random.normal(k2, (E, K, N), jnp.float32).astype(dtype)
  d_out_TN = jax.random.normal(k3, (T, N), jnp.float32).astype(dtype)
  return lhs_TK, rhs_EKN, d_out_TN


@functools.partial(jax.jit, static_argnames=('tiling',))
def _kernel_out_and_grads(lhs_TK, rhs_EKN, group_sizes_E, d_out_TN, tiling):
  fn = lambda l, r: gmm(l, r, group_sizes_E, interpret=True, tiling=tiling)
  out_TN, vjp = jax.vjp(fn, lhs_TK, rhs_EKN)
  return (out_TN, *vjp(d_out_TN))


@jax.jit
def _reference_out_and_grads(lhs_TK, rhs_EKN, group_sizes_E, d_out_TN):
  fn = lambda l, r: gmm_reference(l, r, group_sizes_E)
  out_TN, vjp = jax.vjp(fn, lhs_TK, rhs_EKN)
  return (out_TN, *vjp(d_out_TN))


def _assert_close(got, want, tol):
  got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
  scale = max(1.0, float(np.abs(want).max(initial=0.0)))
  np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale)


def _assert_zero_outside_groups(sizes, out_TN, d_lhs_TK, d_rhs_EKN):
  total = sum(sizes)
  assert not np.any(np.asarray(out_TN)[total:]), 'rows past the end not zero'
  assert not np.any(np.asarray(d_lhs_TK)[total:]), 'd_lhs past the end not zero'
  for e, size in enumerate(sizes):
    if size == 0:
      assert not np.any(np.asarray(d_rhs_EKN)[e]), f'empty group {e} d_rhs'


@pytest.mark.parametrize('shape,sizes', CASES,
                         ids=[f'T{c[0][0]}-E{len(c[1])}-{c[1]}' for c in CASES])
def test_forward_and_grads_match_reference(shape, sizes):
  T, K, N, tiling = shape
  lhs_TK, rhs_EKN, d_out_TN = _inputs(T, K, N, len(sizes))
  group_sizes_E = jnp.array(sizes, jnp.int32)
  got = _kernel_out_and_grads(lhs_TK, rhs_EKN, group_sizes_E, d_out_TN, tiling)
  want = _reference_out_and_grads(lhs_TK, rhs_EKN, group_sizes_E, d_out_TN)
  for name, g, w in zip(('out', 'd_lhs', 'd_rhs'), got, want):
    assert g.shape == w.shape and g.dtype == w.dtype, name
    _assert_close(g, w, 1e-5)
  _assert_zero_outside_groups(sizes, *got)


def test_bfloat16_forward_and_grads():
  T, K, N, tiling = E8
  sizes = [0, 1, 10, 0, 20, 1, 0, 5]
  lhs_TK, rhs_EKN, d_out_TN = _inputs(T, K, N, len(sizes), jnp.bfloat16)
  group_sizes_E = jnp.array(sizes, jnp.int32)
  got = _kernel_out_and_grads(lhs_TK, rhs_EKN, group_sizes_E, d_out_TN, tiling)
  f32 = lambda x: x.astype(jnp.float32)
  want = _reference_out_and_grads(f32(lhs_TK), f32(rhs_EKN), group_sizes_E,
                                  f32(d_out_TN))
  for g, w in zip(got, want):
    assert g.dtype == jnp.bfloat16
    _assert_close(g, w, 2e-2)
  _assert_zero_outside_groups(sizes, *got)


def test_tgmm_matches_both_references():
  T, K, N, tiling = E8
  sizes = [0, 1, 10, 0, 20, 1, 0, 5]
  lhs_TK, rhs_EKN, d_out_TN = _inputs(T, K, N, len(sizes), seed=1)
  group_sizes_E = jnp.array(sizes, jnp.int32)
  got_EKN = tgmm(lhs_TK, d_out_TN, group_sizes_E, interpret=True, tiling=tiling)
  want_EKN = tgmm_reference(lhs_TK, d_out_TN, group_sizes_E)
  # The masked-einsum reference must agree with ragged_dot's own autodiff.
  _, vjp = jax.vjp(lambda r: gmm_reference(lhs_TK, r, group_sizes_E), rhs_EKN)
  _assert_close(want_EKN, vjp(d_out_TN)[0], 1e-5)
  _assert_close(got_EKN, want_EKN, 1e-5)
  assert not np.any(np.asarray(got_EKN)[[0, 3, 6]])


def test_jit_with_traced_group_sizes_compiles_once():
  T, K, N, tiling = E3
  lhs_TK, rhs_EKN, _ = _inputs(T, K, N, 3)
  traces = []

  @jax.jit
  def run(lhs_TK, rhs_EKN, group_sizes_E):
    traces.append(1)
    return gmm(lhs_TK, rhs_EKN, group_sizes_E, interpret=True, tiling=tiling)

  for sizes in ([10, 20, 10], [0, 3, 30], [25, 0, 0]):
    group_sizes_E = jnp.array(sizes, jnp.int32)
    _assert_close(run(lhs_TK, rhs_EKN, group_sizes_E),
                  gmm_reference(lhs_TK, rhs_EKN, group_sizes_E), 1e-5)
  assert len(traces) == 1


def test_junk_rows_past_the_end_do_not_leak():
  T, K, N, tiling = E3
  sizes = [12, 0, 15]
  lhs_TK, rhs_EKN, d_out_TN = _inputs(T, K, N, 3)
  total = sum(sizes)
  junk_lhs_TK = lhs_TK.at[total:].set(jnp.nan).at[total + 1].set(jnp.inf)
  junk_d_out_TN = d_out_TN.at[total:].set(jnp.inf)
  group_sizes_E = jnp.array(sizes, jnp.int32)
  out_TN, d_lhs_TK, d_rhs_EKN = _kernel_out_and_grads(
      junk_lhs_TK, rhs_EKN, group_sizes_E, junk_d_out_TN, tiling)
  want = _reference_out_and_grads(lhs_TK, rhs_EKN, group_sizes_E, d_out_TN)
  _assert_close(out_TN, want[0], 1e-5)
  _assert_close(d_lhs_TK, want[1], 1e-5)
  _assert_close(d_rhs_EKN, want[2], 1e-5)


def test_row_tile_groups_metadata():
  # sizes [0, 3, 0, 2, 5] -> group rows [0,0) [0,3) [3,3) [3,5) [5,10); tm=4.
  starts_E, ends_E = kernel.group_bounds(jnp.array([0, 3, 0, 2, 5]))
  np.testing.assert_array_equal(starts_E, [0, 0, 3, 3, 5])
  first_R, count_R = kernel.row_tile_groups(ends_E, num_row_tiles=4, tm=4)
  # Tile 0 rows 0-3: groups 1..3 (2 empty, skipped in-kernel); tile 1 rows 4-7:
  # groups 3..4; tile 2 rows 8-9 valid: group 4; tile 3 is past the end.
  np.testing.assert_array_equal(first_R[:3], [1, 3, 4])
  np.testing.assert_array_equal(count_R, [3, 2, 1, 0])


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='checks the CPU default (XLA reference); on GPU gmm runs the kernel')
def test_cpu_default_is_the_xla_reference():
  lhs_TK, rhs_EKN, d_out_TN = _inputs(20, 8, 8, 2)
  group_sizes_E = jnp.array([5, 9], jnp.int32)
  loss = lambda fn: lambda l, r: jnp.sum(fn(l, r, group_sizes_E) * d_out_TN)
  got = jax.grad(loss(gmm), argnums=(0, 1))(lhs_TK, rhs_EKN)
  want = jax.grad(loss(gmm_reference), argnums=(0, 1))(lhs_TK, rhs_EKN)
  for g, w in zip(got, want):
    np.testing.assert_array_equal(g, w)


def test_lowers_to_pallas_triton_for_cuda():
  # No GPU here: cross-lowering checks that the kernels are expressible in
  # Pallas Triton (the Triton IR is built at lowering); PTX compilation and
  # execution are not exercised. ops._gmm_pallas is used directly because
  # gmm's dispatch reads the (CPU) default backend.
  T, K, N, tiling = E8

  def out_and_grads(lhs_TK, rhs_EKN, group_sizes_E, d_out_TN):
    fn = lambda l, r: ops._gmm_pallas(l, r, group_sizes_E, tiling, False)
    out_TN, vjp = jax.vjp(fn, lhs_TK, rhs_EKN)
    return (out_TN, *vjp(d_out_TN))

  args = [jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in (
      ((T, K), jnp.bfloat16), ((8, K, N), jnp.bfloat16), ((8,), jnp.int32),
      ((T, N), jnp.bfloat16))]
  lowered = jax.jit(out_and_grads).trace(*args).lower(
      lowering_platforms=('cuda',))
  # forward gmm, d_lhs gmm and d_rhs tgmm: three Triton kernels.
  assert lowered.as_text().count('custom_call @__gpu$xla.gpu.triton') == 3
