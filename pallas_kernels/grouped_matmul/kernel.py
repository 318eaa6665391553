"""Pallas kernels for grouped matmul (gmm) and its weight gradient (tgmm).

Shape key: T rows sorted by group, K contraction, N output, E groups, R row tiles.

Design (dynamic group sizes, race-free output tiles):
  * Group metadata is computed with jnp inside the trace (so group sizes may be
    traced values) as arrays of static length: per group its [start, end) rows,
    and per row tile the first overlapping group and how many groups overlap.
  * gmm: one program per output tile (row tile i, n tile j). It loops over the
    groups that overlap row tile i (a dynamic trip count read from the
    metadata) and, per group, over K tiles, masking rows outside the group and
    accumulating in float32. The total number of (tile, group) visits is at
    most R + E, as in megablox, but each output tile is owned by exactly one
    program, so no grid ordering or output revisiting is needed. That keeps the
    kernel free of TPU-only scalar prefetch and expressible with Pallas Triton,
    whose grid programs run in parallel.
  * tgmm: one program per (group e, K tile, N tile) owning d_rhs[e] tile; it
    loops over the row tiles overlapping group e (empty groups: zero trips).
  * Shapes that are not tile multiples are zero-padded here and sliced after;
    masks (not multiplications) drop rows outside a group, so padding or junk in
    rows past sum(group_sizes) cannot leak into the result.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton


def _round_up(x, multiple):
  return -(-x // multiple) * multiple


def _next_pow2(x):
  return 1 << max(0, (x - 1).bit_length())


def fit_tile(tile, dim, interpret):
  """Shrinks a tile to the dimension (rounded up to a power of two).

  Tiny shapes then pad to e.g. 8 rather than a full 128 tile; a power-of-two
  tile stays a power of two, which Pallas Triton requires of loaded blocks.
  Compiled tiles stay >= 16 because Triton's tl.dot needs every dim >= 16;
  interpret mode keeps smaller tiles so CPU tests cover many tiles cheaply.
  """
  return max(1 if interpret else 16, min(int(tile), _next_pow2(dim)))


def _pad_axis(x, axis, size):
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, pad)


def _pad_pow2(x_L):
  # Metadata is read whole by every program; a power-of-two length keeps the
  # block legal for Triton. Padding entries are never read.
  return _pad_axis(x_L, 0, _next_pow2(x_L.shape[0]))


def _whole(x_L):
  """BlockSpec giving every program the whole 1-D metadata array."""
  return pl.BlockSpec(x_L.shape, lambda *_: (0,))


def group_bounds(group_sizes_E):
  """[start, end) row of each group: int32 arrays [E]."""
  sizes_E = group_sizes_E.astype(jnp.int32)
  ends_E = jnp.cumsum(sizes_E)
  return ends_E - sizes_E, ends_E


def row_tile_groups(ends_E, num_row_tiles, tm):
  """Groups overlapping each row tile: (first_R, count_R), int32.

  ``first`` is the group holding the tile's first row; ``count`` spans up to
  the group holding its last row that lies inside any group (0 for tiles
  entirely past sum(group_sizes)). Empty groups in between are counted; the
  kernel skips their K loop.
  """
  total = ends_E[-1]
  first_row_R = jnp.arange(num_row_tiles, dtype=jnp.int32) * tm
  last_row_R = jnp.minimum(first_row_R + tm, total) - 1
  # side='right' counts the groups that end at or before the row, i.e. gives the
  # index of the group containing it while stepping over empty groups.
  first_R = jnp.searchsorted(ends_E, first_row_R, side='right')
  last_R = jnp.searchsorted(ends_E, last_row_R, side='right')
  count_R = jnp.where(first_row_R < total, last_R - first_R + 1, 0)
  return first_R.astype(jnp.int32), count_R.astype(jnp.int32)


def _gmm_body(first_ref, count_ref, starts_ref, ends_ref, lhs_ref, rhs_ref,
              out_ref, *, tm, tk, num_k):
  i = pl.program_id(0)
  rows_M1 = i * tm + jax.lax.broadcasted_iota(jnp.int32, (tm, 1), 0)

  def group_step(step, acc_MN):
    g = first_ref[i] + step
    start, end = starts_ref[g], ends_ref[g]
    in_group_M1 = (rows_M1 >= start) & (rows_M1 < end)

    def k_step(kk, acc_MN):
      k0 = pl.multiple_of(kk * tk, tk)
      x_MK = jnp.where(in_group_M1, lhs_ref[:, pl.ds(k0, tk)], 0)
      w_KN = rhs_ref[g, pl.ds(k0, tk), :]
      return acc_MN + jnp.dot(x_MK, w_KN, preferred_element_type=jnp.float32)

    # Empty groups inside the tile contribute nothing: zero K trips. The bound is an explicit int32 like the
    # loop's start: a select between two Python ints lowers to an i1 in Pallas Triton, and scf.for then refuses
    # the mixed bound types (seen on an H200; tests/ lower the kernels for CUDA and verify the module on CPU).
    trips = jnp.where(end > start, jnp.int32(num_k), jnp.int32(0))
    return jax.lax.fori_loop(jnp.int32(0), trips, k_step, acc_MN)

  acc_MN = jnp.zeros(out_ref.shape, jnp.float32)
  acc_MN = jax.lax.fori_loop(0, count_ref[i], group_step, acc_MN)
  out_ref[...] = acc_MN.astype(out_ref.dtype)


def gmm_kernel(lhs_TK, rhs_EKN, group_sizes_E, *, tiling=(128, 128, 128),
               interpret=False):
  """Pallas grouped matmul; see ``reference.gmm_reference`` for semantics."""
  (T, K), (E, K2, N) = lhs_TK.shape, rhs_EKN.shape
  if K != K2 or group_sizes_E.shape != (E,):
    raise ValueError(f'shape mismatch: lhs {lhs_TK.shape}, rhs '
                     f'{rhs_EKN.shape}, group_sizes {group_sizes_E.shape}')
  tm, tk, tn = (fit_tile(t, d, interpret) for t, d in zip(tiling, (T, K, N)))
  Tp, Kp, Np = _round_up(T, tm), _round_up(K, tk), _round_up(N, tn)
  lhs_p = _pad_axis(_pad_axis(lhs_TK, 0, Tp), 1, Kp)
  rhs_p = _pad_axis(_pad_axis(rhs_EKN, 1, Kp), 2, Np)
  starts_E, ends_E = group_bounds(group_sizes_E)
  first_R, count_R = row_tile_groups(ends_E, Tp // tm, tm)
  meta = [_pad_pow2(a) for a in (first_R, count_R, starts_E, ends_E)]
  out_dtype = jnp.result_type(lhs_TK.dtype, rhs_EKN.dtype)
  out_p = pl.pallas_call(
      functools.partial(_gmm_body, tm=tm, tk=tk, num_k=Kp // tk),
      grid=(Tp // tm, Np // tn),
      in_specs=[_whole(m) for m in meta] + [
          pl.BlockSpec((tm, Kp), lambda i, j: (i, 0)),
          pl.BlockSpec((E, Kp, tn), lambda i, j: (0, 0, j)),
      ],
      out_specs=pl.BlockSpec((tm, tn), lambda i, j: (i, j)),
      out_shape=jax.ShapeDtypeStruct((Tp, Np), out_dtype),
      interpret=interpret,
      compiler_params=pl_triton.CompilerParams(num_warps=4, num_stages=2),
  )(*meta, lhs_p, rhs_p)
  return out_p[:T, :N]


def _tgmm_body(starts_ref, ends_ref, lhs_ref, d_out_ref, out_ref, *, tm):
  e = pl.program_id(0)
  start, end = starts_ref[e], ends_ref[e]
  first_tile = start // tm
  num_tiles = jnp.where(end > start, -(-end // tm) - first_tile, 0)

  def row_step(step, acc_KN):
    r0 = pl.multiple_of((first_tile + step) * tm, tm)
    rows_M1 = r0 + jax.lax.broadcasted_iota(jnp.int32, (tm, 1), 0)
    in_group_M1 = (rows_M1 >= start) & (rows_M1 < end)
    # Mask both operands: 0 * inf in a row of another group would give NaN.
    x_MK = jnp.where(in_group_M1, lhs_ref[pl.ds(r0, tm), :], 0)
    d_MN = jnp.where(in_group_M1, d_out_ref[pl.ds(r0, tm), :], 0)
    return acc_KN + jax.lax.dot_general(
        x_MK, d_MN, (((0,), (0,)), ((), ())),
        preferred_element_type=jnp.float32)

  acc_KN = jnp.zeros(out_ref.shape, jnp.float32)
  acc_KN = jax.lax.fori_loop(0, num_tiles, row_step, acc_KN)
  out_ref[...] = acc_KN.astype(out_ref.dtype)


def tgmm_kernel(lhs_TK, d_out_TN, group_sizes_E, *, tiling=(128, 128, 128),
                interpret=False):
  """Pallas transposed grouped matmul: d_rhs_EKN[e] = lhs_g^T @ d_out_g."""
  (T, K), (T2, N), (E,) = lhs_TK.shape, d_out_TN.shape, group_sizes_E.shape
  if T != T2:
    raise ValueError(f'row mismatch: lhs {lhs_TK.shape}, d_out {d_out_TN.shape}')
  tm, tk, tn = (fit_tile(t, d, interpret) for t, d in zip(tiling, (T, K, N)))
  Tp, Kp, Np = _round_up(T, tm), _round_up(K, tk), _round_up(N, tn)
  lhs_p = _pad_axis(_pad_axis(lhs_TK, 0, Tp), 1, Kp)
  d_out_p = _pad_axis(_pad_axis(d_out_TN, 0, Tp), 1, Np)
  meta = [_pad_pow2(a) for a in group_bounds(group_sizes_E)]
  out_dtype = jnp.result_type(lhs_TK.dtype, d_out_TN.dtype)
  out_p = pl.pallas_call(
      functools.partial(_tgmm_body, tm=tm),
      grid=(E, Kp // tk, Np // tn),
      in_specs=[_whole(m) for m in meta] + [
          pl.BlockSpec((Tp, tk), lambda e, k, n: (0, k)),
          pl.BlockSpec((Tp, tn), lambda e, k, n: (0, n)),
      ],
      out_specs=pl.BlockSpec((pl.squeezed, tk, tn), lambda e, k, n: (e, k, n)),
      out_shape=jax.ShapeDtypeStruct((E, Kp, Np), out_dtype),
      interpret=interpret,
      compiler_params=pl_triton.CompilerParams(num_warps=4, num_stages=2),
  )(*meta, lhs_p, d_out_p)
  return out_p[:, :K, :N]
