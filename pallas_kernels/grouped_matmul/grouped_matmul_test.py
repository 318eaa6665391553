"""Grouped matmul: Pallas kernels (interpret mode) against the XLA reference.

Both kernels run on CPU: the Triton-style kernel (``backend='gpu'``, the
default with ``interpret=True``) in the generic Pallas interpreter, the TPU
kernel (``backend='tpu'``) in TPU interpret mode (``pltpu.InterpretParams``),
which also runs its scalar prefetch and output-block revisiting.

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
from pallas_kernels.grouped_matmul import tpu_kernel
from pallas_kernels.testing import verified_triton_modules

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


def _check_fp32_against_reference(run, shape, sizes, seed):
  """Forward and both gradients of `run` vs the reference at 1e-5; exact zeros outside the groups."""
  T, K, N, tiling = shape
  lhs_TK, rhs_EKN, d_out_TN = _inputs(T, K, N, len(sizes), seed=seed)
  group_sizes_E = jnp.array(sizes, jnp.int32)
  got = run(lhs_TK, rhs_EKN, group_sizes_E, d_out_TN, tiling)
  want = _reference_out_and_grads(lhs_TK, rhs_EKN, group_sizes_E, d_out_TN)
  for name, g, w in zip(('out', 'd_lhs', 'd_rhs'), got, want):
    assert g.shape == w.shape and g.dtype == w.dtype, name
    _assert_close(g, w, 1e-5)
  _assert_zero_outside_groups(sizes, *got)


@pytest.mark.parametrize('shape,sizes', CASES,
                         ids=[f'T{c[0][0]}-E{len(c[1])}-{c[1]}' for c in CASES])
def test_forward_and_grads_match_reference(shape, sizes):
  _check_fp32_against_reference(_kernel_out_and_grads, shape, sizes, seed=0)


@pytest.mark.parametrize('kernel', ['triton_style', 'tpu'])
def test_bfloat16_forward_and_grads(kernel):
  # E = 8 with empty groups and one-row groups. TPU tiles are (8, 128) multiples and bf16 rounds tm up to 16.
  if kernel == 'tpu':
    (T, K, N, tiling), run = (61, 200, 150, (8, 128, 128)), _tpu_out_and_grads
  else:
    (T, K, N, tiling), run = E8, _kernel_out_and_grads
  sizes = [0, 1, 10, 0, 20, 1, 0, 5]
  lhs_TK, rhs_EKN, d_out_TN = _inputs(T, K, N, len(sizes), jnp.bfloat16)
  group_sizes_E = jnp.array(sizes, jnp.int32)
  got = run(lhs_TK, rhs_EKN, group_sizes_E, d_out_TN, tiling)
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
    fn = lambda l, r: ops._gmm_pallas(l, r, group_sizes_E, tiling, False, 'gpu')
    out_TN, vjp = jax.vjp(fn, lhs_TK, rhs_EKN)
    return (out_TN, *vjp(d_out_TN))

  args = [jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in (
      ((T, K), jnp.bfloat16), ((8, K, N), jnp.bfloat16), ((8,), jnp.int32),
      ((T, N), jnp.bfloat16))]
  with verified_triton_modules() as seen:
    lowered = jax.jit(out_and_grads).trace(*args).lower(
        lowering_platforms=('cuda',))
  # forward gmm, d_lhs gmm and d_rhs tgmm: three Triton kernels, each a
  # module MLIR's verifier accepts (an i1 loop bound from a select of two
  # Python ints passed the lowering and failed on an H200 at compile time).
  assert lowered.as_text().count('custom_call @__gpu$xla.gpu.triton') == 3
  assert seen['modules'] == 3
  assert seen['errors'] == []


# --- TPU (Mosaic) kernel in TPU interpret mode -------------------------------
# TPU tiles are multiples of (8, 128) (16 rows for bf16), so a tiny shape still
# runs 128-wide K/N tiles; K = 200, N = 150 give two (padded) tiles each and
# T = 43 six row tiles of 8 (the last one padded). Every case reuses one
# compilation: interpret mode costs ~1.5 s to compile per kernel, and a few
# ms per grid step to run.
TPU_E3 = (43, 200, 150, (8, 128, 128))
TPU_CASES = [
    [10, 20, 10],    # rows 40-42 past the end; tiles straddle boundaries
    [0, 20, 15],     # first group empty
    [15, 0, 20],     # middle group empty
    [12, 13, 0],     # last group empty
    [0, 0, 0],       # nothing routed: all-zero outputs and gradients
    [1, 1, 41],      # groups of one row, three groups in one row tile
    [43, 0, 0],      # one group takes all rows
]


@functools.partial(jax.jit, static_argnames=('tiling',))
def _tpu_out_and_grads(lhs_TK, rhs_EKN, group_sizes_E, d_out_TN, tiling):
  fn = lambda l, r: gmm(l, r, group_sizes_E, interpret=True, tiling=tiling,
                        backend='tpu')
  out_TN, vjp = jax.vjp(fn, lhs_TK, rhs_EKN)
  return (out_TN, *vjp(d_out_TN))


@pytest.mark.parametrize('sizes', TPU_CASES, ids=[str(s) for s in TPU_CASES])
def test_tpu_kernel_forward_and_grads_match_reference(sizes):
  _check_fp32_against_reference(_tpu_out_and_grads, TPU_E3, sizes, seed=2)


def test_tpu_kernel_junk_rows_past_the_end_do_not_leak():
  # Same shape as TPU_CASES: no new compilation.
  T, K, N, tiling = TPU_E3
  sizes = [12, 0, 15]
  lhs_TK, rhs_EKN, d_out_TN = _inputs(T, K, N, 3, seed=3)
  total = sum(sizes)
  junk_lhs_TK = lhs_TK.at[total:].set(jnp.nan).at[total + 1].set(jnp.inf)
  junk_d_out_TN = d_out_TN.at[total:].set(jnp.inf).at[total + 2].set(jnp.nan)
  group_sizes_E = jnp.array(sizes, jnp.int32)
  got = _tpu_out_and_grads(junk_lhs_TK, rhs_EKN, group_sizes_E, junk_d_out_TN,
                           tiling)
  want = _reference_out_and_grads(lhs_TK, rhs_EKN, group_sizes_E, d_out_TN)
  for g, w in zip(got, want):
    _assert_close(g, w, 1e-5)  # assert_allclose also fails on any NaN
  _assert_zero_outside_groups(sizes, *got)


def test_tpu_kernel_jit_with_traced_group_sizes_compiles_once():
  # The shape of TPU_CASES (compiled once there or here, whatever the test
  # order); new group sizes must reuse that one executable.
  T, K, N, tiling = TPU_E3
  lhs_TK, rhs_EKN, d_out_TN = _inputs(T, K, N, 3, seed=4)
  cache_sizes = []
  for sizes in ([5, 17, 0], [0, 9, 30]):
    group_sizes_E = jnp.array(sizes, jnp.int32)
    got = _tpu_out_and_grads(lhs_TK, rhs_EKN, group_sizes_E, d_out_TN, tiling)
    cache_sizes.append(_tpu_out_and_grads._cache_size())
    want = _reference_out_and_grads(lhs_TK, rhs_EKN, group_sizes_E, d_out_TN)
    for g, w in zip(got, want):
      _assert_close(g, w, 1e-5)
  assert cache_sizes[0] == cache_sizes[1]


def test_tpu_visit_metadata():
  # sizes [0, 3, 0, 2, 5] in 12 rows, tm = 4: groups hold rows [0,0) [0,3)
  # [3,3) [3,5) [5,10); the tail pseudo-group 5 holds [10, 12).
  sizes_E = jnp.array([0, 3, 0, 2, 5], jnp.int32)
  group_V, m_tile_V, offsets_G, num_active = tpu_kernel.visit_metadata(
      sizes_E, 12, 4, cover_tail=True)
  # Visits: group 1 tile 0; group 3 tiles 0, 1; group 4 tiles 1, 2; tail
  # tile 2. V = R + E = 8 steps; the last two repeat the last visit.
  np.testing.assert_array_equal(group_V, [1, 3, 3, 4, 4, 5, 5, 5])
  np.testing.assert_array_equal(m_tile_V, [0, 0, 1, 1, 2, 2, 2, 2])
  np.testing.assert_array_equal(offsets_G, [0, 0, 3, 3, 5, 10, 12])
  np.testing.assert_array_equal(num_active, [6])
  # Without the tail (tgmm) the visit list stops after group 4.
  group_V, m_tile_V, _, num_active = tpu_kernel.visit_metadata(
      sizes_E, 12, 4, cover_tail=False)
  np.testing.assert_array_equal(group_V, [1, 3, 3, 4, 4, 4, 4, 4])
  np.testing.assert_array_equal(m_tile_V, [0, 0, 1, 1, 2, 2, 2, 2])
  np.testing.assert_array_equal(num_active, [5])


def test_tpu_tiles_are_tpu_legal():
  assert tpu_kernel.fit_tile(128, 43, 8) == 48      # shrunk to the dim
  assert tpu_kernel.fit_tile(8, 200, 128) == 128    # rounded up to a lane
  assert tpu_kernel.fit_tile(128, 1000, 128) == 128
  assert tpu_kernel.sublane_multiple(jnp.float32) == 8
  assert tpu_kernel.sublane_multiple(jnp.float32, jnp.bfloat16) == 16


def test_backend_resolution():
  assert ops.resolve_backend(interpret=True) == 'gpu'  # the pre-TPU default
  assert ops.resolve_backend(interpret=True, backend='tpu') == 'tpu'
  assert ops.resolve_backend(interpret=False, backend='xla') == 'xla'
  if jax.default_backend() == 'cpu':
    assert ops.resolve_backend(interpret=False) == 'xla'
  with pytest.raises(ValueError):
    ops.resolve_backend(backend='triton')


def test_tgmm_dispatches_to_the_tpu_kernel(monkeypatch):
  # The public tgmm entry point (gmm's is covered by the tests above); stubs
  # make this a dispatch check without compiling a kernel.
  calls = []
  record = lambda name: lambda *args, **kw: calls.append((name, kw))
  monkeypatch.setattr(tpu_kernel, 'tgmm_kernel', record('tpu'))
  monkeypatch.setattr(kernel, 'tgmm_kernel', record('gpu'))
  x_TK, sizes_E = jnp.zeros((4, 2)), jnp.array([4])
  tgmm(x_TK, x_TK, sizes_E, interpret=True, tiling=(8, 128, 128),
       backend='tpu')
  tgmm(x_TK, x_TK, sizes_E, interpret=True)
  assert calls == [('tpu', dict(tiling=(8, 128, 128), interpret=True)),
                   ('gpu', dict(tiling=(128, 128, 128), interpret=True))]


@pytest.mark.parametrize('dtype,tiling', [(jnp.bfloat16, (128, 128, 128)),
                                          (jnp.float32, (8, 128, 128))])
def test_lowers_to_mosaic_for_tpu(dtype, tiling):
  # No TPU here: cross-lowering runs the Pallas TPU lowering to Mosaic MLIR,
  # which checks the block shapes ((8, 128) rule) and that every op in the
  # kernel bodies has a Mosaic lowering; Mosaic's own compilation in libtpu
  # (layouts, VMEM use) and execution are not exercised.
  T, K, N, E = 61, 200, 150, 8

  def out_and_grads(lhs_TK, rhs_EKN, group_sizes_E, d_out_TN):
    fn = lambda l, r: gmm(l, r, group_sizes_E, tiling=tiling, backend='tpu')
    out_TN, vjp = jax.vjp(fn, lhs_TK, rhs_EKN)
    return (out_TN, *vjp(d_out_TN))

  args = [jax.ShapeDtypeStruct(shape, dt) for shape, dt in (
      ((T, K), dtype), ((E, K, N), dtype), ((E,), jnp.int32), ((T, N), dtype))]
  lowered = jax.jit(out_and_grads).trace(*args).lower(
      lowering_platforms=('tpu',))
  # forward gmm, d_lhs gmm and d_rhs tgmm: three Mosaic kernels.
  assert lowered.as_text().count('tpu_custom_call') == 3
