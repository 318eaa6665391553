"""TPU (Mosaic) Pallas kernels for grouped matmul (gmm) and its weight gradient.

Shape key: T rows sorted by group, K contraction, N output, E groups, R row
tiles, V grid steps along the visit axis (V = R + E, a static bound).

Design (megablox-style: scalar prefetch, sequential visits, revisited tiles):
  * A *visit* is one (group, row tile) pair whose rows intersect. Visits are
    listed group by group, row tile by row tile, so each row tile's visits are
    consecutive. The list is computed with jnp inside the trace (group sizes
    may be traced) and handed to the kernel through scalar prefetch, so the
    BlockSpec index_maps read it from SMEM to pick lhs row tile and rhs[group].
  * gmm grid (N tiles, V, K tiles), the visit and K axes sequential. A row tile
    straddling a group boundary is visited once per group: the output block
    index stays the same across those steps, so the tile stays in VMEM while a
    float32 scratch accumulates every visit's masked product; the last K step
    of its last visit writes it out. Rows past sum(group_sizes) form a tail
    pseudo-group whose visits only zero the accumulator, so every output tile
    is written.
  * tgmm grid (K tiles, N tiles, V): the output block is d_rhs[group], revisited
    over that group's row tiles. Empty groups have no visits, so their blocks
    are never written by the kernel and are zeroed afterwards.
  * The static V exceeds the number of active visits; the metadata of inactive
    steps repeats the last active visit (no new DMA, no output block change)
    and their bodies do nothing.
  * Rows outside the visited group are replaced by zero with jnp.where (both
    operands in tgmm), so inf/NaN in other rows or padding cannot leak.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

LANE = 128


def _round_up(x, multiple):
  return -(-x // multiple) * multiple


def _pad_axis(x, axis, size):
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, pad)


def sublane_multiple(*dtypes):
  """Row multiple of a TPU tile: 8 for 32-bit, 16 for 16-bit, 32 for 8-bit."""
  return max(8 * max(1, 4 // jnp.dtype(d).itemsize) for d in dtypes)


def fit_tile(tile, dim, multiple):
  """Shrinks a tile to the dimension, rounded up to a TPU-legal multiple.

  Block dims must be multiples of (8, 128) (16 rows for bf16); a requested tile
  that is not is rounded up, and a dimension smaller than the tile gets one
  padded tile, e.g. K = 20 runs as one 128-wide tile.
  """
  return _round_up(max(1, min(int(tile), dim)), multiple)


def visit_metadata(group_sizes_E, num_rows, tm, *, cover_tail):
  """The visit list read by the kernels' index maps (int32 arrays).

  Args:
    group_sizes_E: [E] rows per group (may be traced).
    num_rows: padded row count, a multiple of ``tm``.
    tm: row tile.
    cover_tail: add a pseudo-group E holding rows [sum(sizes), num_rows), so
      that gmm visits (and zeroes) every row tile.

  Returns:
    (group_V, m_tile_V, offsets_G, num_active_1): per grid step the group and
    row tile it visits (V = R + E steps; entries past the active visits repeat
    the last active one), group row offsets [E + 2] (group g is rows
    [offsets[g], offsets[g + 1]), ends clipped to ``num_rows``), and the number
    of active visits.
  """
  num_groups = group_sizes_E.shape[0]
  num_tiles = num_rows // tm
  sizes_E = jnp.maximum(group_sizes_E.astype(jnp.int32), 0)
  ends_E = jnp.minimum(jnp.cumsum(sizes_E), num_rows)
  tail_end = num_rows if cover_tail else ends_E[-1]
  ends_G = jnp.concatenate([ends_E, jnp.array([tail_end], jnp.int32)])
  offsets_G = jnp.concatenate([jnp.zeros((1,), jnp.int32), ends_G])
  starts_G = offsets_G[:-1]
  first_tile_G = starts_G // tm
  # A non-empty group touches row tiles [start // tm, ceil(end / tm)).
  tiles_G = jnp.where(ends_G > starts_G, -(-ends_G // tm) - first_tile_G, 0)
  visit_end_G = jnp.cumsum(tiles_G)
  num_active = visit_end_G[-1]
  # Consecutive groups share at most one row tile, so the visits number at
  # most R + (non-empty groups - 1) <= R + E.
  num_steps = num_tiles + num_groups
  step_V = jnp.minimum(jnp.arange(num_steps, dtype=jnp.int32),
                       jnp.maximum(num_active - 1, 0))
  # side='right': the group whose visit range [end - tiles, end) holds the
  # step; empty groups (tiles == 0) are stepped over.
  group_V = jnp.minimum(
      jnp.searchsorted(visit_end_G, step_V, side='right').astype(jnp.int32),
      num_groups)
  first_visit_V = visit_end_G[group_V] - tiles_G[group_V]
  m_tile_V = jnp.clip(first_tile_G[group_V] + step_V - first_visit_V,
                      0, num_tiles - 1)
  return group_V, m_tile_V, offsets_G, num_active[None].astype(jnp.int32)


def _row_mask(m_tile, offsets_ref, g, shape):
  rows = m_tile * shape[0] + jax.lax.broadcasted_iota(jnp.int32, shape, 0)
  return (rows >= offsets_ref[g]) & (rows < offsets_ref[g + 1])


def _interpret_arg(interpret):
  # TPU interpret mode: runs the Mosaic kernel's semantics (scalar prefetch,
  # block revisiting, uninitialized scratch = NaN) on CPU.
  return pltpu.InterpretParams() if interpret else False


def _gmm_body(group_ref, m_tile_ref, offsets_ref, num_active_ref, lhs_ref,
              rhs_ref, out_ref, acc_ref, *, num_groups):
  t, k = pl.program_id(1), pl.program_id(2)
  num_active = num_active_ref[0]
  active = t < num_active
  m_tile, g = m_tile_ref[t], group_ref[t]
  prev_tile = m_tile_ref[jnp.maximum(t - 1, 0)]
  next_tile = m_tile_ref[jnp.minimum(t + 1, pl.num_programs(1) - 1)]
  first_visit = (t == 0) | (prev_tile != m_tile)
  last_visit = (t == num_active - 1) | (next_tile != m_tile)

  @pl.when(active & first_visit & (k == 0))
  def _zero():
    acc_ref[...] = jnp.zeros_like(acc_ref)

  # The tail pseudo-group (g == num_groups) multiplies nothing.
  @pl.when(active & (g < num_groups))
  def _accumulate():
    in_group_MK = _row_mask(m_tile, offsets_ref, g, lhs_ref.shape)
    x_MK = jnp.where(in_group_MK, lhs_ref[...], 0)
    acc_ref[...] += jnp.dot(x_MK, rhs_ref[...],
                            preferred_element_type=jnp.float32)

  @pl.when(active & last_visit & (k == pl.num_programs(2) - 1))
  def _store():
    out_ref[...] = acc_ref[...].astype(out_ref.dtype)


def _tiles_and_padded_lhs(lhs_TK, N, tiling, sublane):
  """TPU-legal (tm, tk, tn) for [T, K] x [*, K, N], the padded (Tp, Kp, Np), and lhs zero-padded to [Tp, Kp]."""
  T, K = lhs_TK.shape
  tm = fit_tile(tiling[0], T, sublane)
  tk, tn = fit_tile(tiling[1], K, LANE), fit_tile(tiling[2], N, LANE)
  Tp, Kp, Np = _round_up(T, tm), _round_up(K, tk), _round_up(N, tn)
  return (tm, tk, tn), (Tp, Kp, Np), _pad_axis(_pad_axis(lhs_TK, 0, Tp), 1, Kp)


def gmm_kernel(lhs_TK, rhs_EKN, group_sizes_E, *, tiling=(128, 128, 128),
               interpret=False):
  """TPU Pallas grouped matmul; see ``reference.gmm_reference`` for semantics.

  ``interpret=True`` runs it in TPU interpret mode (``pltpu.InterpretParams``)
  on any backend.
  """
  (T, K), (E, K2, N) = lhs_TK.shape, rhs_EKN.shape
  if K != K2 or group_sizes_E.shape != (E,):
    raise ValueError(f'shape mismatch: lhs {lhs_TK.shape}, rhs '
                     f'{rhs_EKN.shape}, group_sizes {group_sizes_E.shape}')
  out_dtype = jnp.result_type(lhs_TK.dtype, rhs_EKN.dtype)
  (tm, tk, tn), (Tp, Kp, Np), lhs_p = _tiles_and_padded_lhs(
      lhs_TK, N, tiling, sublane_multiple(lhs_TK.dtype, out_dtype))
  rhs_p = _pad_axis(_pad_axis(rhs_EKN, 1, Kp), 2, Np)
  meta = visit_metadata(group_sizes_E, Tp, tm, cover_tail=True)
  num_steps = meta[0].shape[0]

  def lhs_map(n, t, k, group_ref, m_tile_ref, *_):
    return m_tile_ref[t], k

  def rhs_map(n, t, k, group_ref, m_tile_ref, *_):
    return jnp.minimum(group_ref[t], E - 1), k, n

  def out_map(n, t, k, group_ref, m_tile_ref, *_):
    return m_tile_ref[t], n

  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=len(meta),
      grid=(Np // tn, num_steps, Kp // tk),
      in_specs=[pl.BlockSpec((tm, tk), lhs_map),
                pl.BlockSpec((pl.squeezed, tk, tn), rhs_map)],
      out_specs=pl.BlockSpec((tm, tn), out_map),
      scratch_shapes=[pltpu.VMEM((tm, tn), jnp.float32)],
  )
  out_p = pl.pallas_call(
      functools.partial(_gmm_body, num_groups=E),
      grid_spec=grid_spec,
      out_shape=jax.ShapeDtypeStruct((Tp, Np), out_dtype),
      compiler_params=pltpu.CompilerParams(dimension_semantics=(
          pltpu.PARALLEL, pltpu.ARBITRARY, pltpu.ARBITRARY)),
      interpret=_interpret_arg(interpret),
  )(*meta, lhs_p, rhs_p)
  return out_p[:T, :N]


def _tgmm_body(group_ref, m_tile_ref, offsets_ref, num_active_ref, lhs_ref,
               d_out_ref, out_ref, acc_ref):
  t = pl.program_id(2)
  num_active = num_active_ref[0]
  active = t < num_active
  m_tile, g = m_tile_ref[t], group_ref[t]
  prev_group = group_ref[jnp.maximum(t - 1, 0)]
  next_group = group_ref[jnp.minimum(t + 1, pl.num_programs(2) - 1)]
  first_visit = (t == 0) | (prev_group != g)
  last_visit = (t == num_active - 1) | (next_group != g)

  @pl.when(active & first_visit)
  def _zero():
    acc_ref[...] = jnp.zeros_like(acc_ref)

  @pl.when(active)
  def _accumulate():
    # Mask both operands: 0 * inf from a row of another group would be NaN.
    x_MK = jnp.where(_row_mask(m_tile, offsets_ref, g, lhs_ref.shape),
                     lhs_ref[...], 0)
    d_MN = jnp.where(_row_mask(m_tile, offsets_ref, g, d_out_ref.shape),
                     d_out_ref[...], 0)
    acc_ref[...] += jnp.dot(x_MK.T, d_MN, preferred_element_type=jnp.float32)

  @pl.when(active & last_visit)
  def _store():
    out_ref[...] = acc_ref[...].astype(out_ref.dtype)


def tgmm_kernel(lhs_TK, d_out_TN, group_sizes_E, *, tiling=(128, 128, 128),
                interpret=False):
  """TPU Pallas transposed grouped matmul: d_rhs_EKN[e] = lhs_g^T @ d_out_g."""
  (T, K), (T2, N), (E,) = lhs_TK.shape, d_out_TN.shape, group_sizes_E.shape
  if T != T2:
    raise ValueError(f'row mismatch: lhs {lhs_TK.shape}, d_out {d_out_TN.shape}')
  out_dtype = jnp.result_type(lhs_TK.dtype, d_out_TN.dtype)
  (tm, tk, tn), (Tp, Kp, Np), lhs_p = _tiles_and_padded_lhs(
      lhs_TK, N, tiling, sublane_multiple(lhs_TK.dtype, d_out_TN.dtype))
  d_out_p = _pad_axis(_pad_axis(d_out_TN, 0, Tp), 1, Np)
  meta = visit_metadata(group_sizes_E, Tp, tm, cover_tail=False)
  num_steps = meta[0].shape[0]

  def lhs_map(k, n, t, group_ref, m_tile_ref, *_):
    return m_tile_ref[t], k

  def d_out_map(k, n, t, group_ref, m_tile_ref, *_):
    return m_tile_ref[t], n

  def out_map(k, n, t, group_ref, m_tile_ref, *_):
    # Active steps never visit the tail; the clamp only matters for the
    # inactive steps when every group is empty.
    return jnp.minimum(group_ref[t], E - 1), k, n

  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=len(meta),
      grid=(Kp // tk, Np // tn, num_steps),
      in_specs=[pl.BlockSpec((tm, tk), lhs_map),
                pl.BlockSpec((tm, tn), d_out_map)],
      out_specs=pl.BlockSpec((pl.squeezed, tk, tn), out_map),
      scratch_shapes=[pltpu.VMEM((tk, tn), jnp.float32)],
  )
  out_p = pl.pallas_call(
      _tgmm_body,
      grid_spec=grid_spec,
      out_shape=jax.ShapeDtypeStruct((E, Kp, Np), out_dtype),
      compiler_params=pltpu.CompilerParams(dimension_semantics=(
          pltpu.PARALLEL, pltpu.PARALLEL, pltpu.ARBITRARY)),
      interpret=_interpret_arg(interpret),
  )(*meta, lhs_p, d_out_p)
  # Blocks of empty groups are never visited, so the kernel leaves them
  # unwritten: zero them here.
  offsets_G = meta[2]
  nonempty_E11 = (offsets_G[1:E + 1] > offsets_G[:E])[:, None, None]
  return jnp.where(nonempty_E11, out_p[:, :K, :N], 0).astype(out_dtype)
