"""Pallas flash-attention kernels (forward, dq, dk/dv) written to lower to Pallas Triton on GPU.

Layout: q/o/do are [B, Lp, H, K], k/v [B, Lp, G, K], lse/delta [B, H, Lp] with Lp the padded length; the
caller (ops.py) pads. Each program owns one query block (forward, dq) or one kv block (dk/dv) of one head and
walks the other axis with a `fori_loop` whose bounds come from `kv_block_range` / `q_block_range`: blocks the
causal or chunk mask removes entirely are never visited, so causal costs ~L^2/2 and chunked ~L * chunk.
Segment ids and the ragged tail are handled by the element mask inside a visited block.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

# On a GPU the kernels compile with Pallas Triton (jax's default GPU lowering is Mosaic GPU, which needs explicit
# layouts this kernel does not give). Ignored in interpret mode.
_GPU_PARAMS = pl_triton.CompilerParams(num_warps=4, num_stages=2)

# Finite "minus infinity": exp(NEG - NEG) stays defined, so rows with no visible key never produce NaN.
NEG = -1e30


def _cdiv(a, b):
  return (a + b - 1) // b


def kv_block_range(q_block, *, block_q, block_k, seq_len, causal, chunk_size, by_position=False):
  """[lo, hi) of kv blocks that query block `q_block` must visit; every block outside is fully masked.

  `by_position`: the chunk rule compares per-document positions (the `positions` argument), not slot indices.
  The bounds then rely on positions growing by one per slot inside a segment: a visible key is in the same
  segment and chunk as its query, so |key slot - query slot| < C and the block visits the band
  [q_first - C + 1, q_last] (causal) or [q_first - C + 1, q_last + C - 1] (not causal).

  Works on Python ints (tests) and on traced int32 scalars (inside kernels).
  """
  q_first = q_block * block_q
  q_last = jnp.minimum(q_first + block_q, seq_len) - 1  # last real query: padding rows add no keys
  lo_key, hi_key = 0, seq_len  # keys at or beyond seq_len are padding
  if causal:
    hi_key = jnp.minimum(hi_key, q_last + 1)
  if chunk_size is not None and by_position:
    lo_key = jnp.maximum(0, q_first - chunk_size + 1)
    hi_key = jnp.minimum(hi_key, q_last + chunk_size)
  elif chunk_size is not None:
    # Keys of the chunks spanned by the block: from the first query's chunk start to the last query's chunk end.
    lo_key = (q_first // chunk_size) * chunk_size
    hi_key = jnp.minimum(hi_key, (q_last // chunk_size + 1) * chunk_size)
  return lo_key // block_k, _cdiv(hi_key, block_k)


def q_block_range(kv_block, *, block_q, block_k, seq_len, causal, chunk_size, by_position=False):
  """[lo, hi) of query blocks that see any key of `kv_block` (the transpose of `kv_block_range`).

  With `by_position` (same requirement as `kv_block_range`) the band is [k_first, k_last + C - 1] when causal,
  [k_first - C + 1, k_last + C - 1] otherwise.
  """
  k_first = kv_block * block_k
  k_last = jnp.minimum(k_first + block_k, seq_len) - 1
  # An all-padding kv block is seen by nobody. (int32 operands: Pallas Triton lowers a select of two weak Python
  # ints to an i1 value.)
  lo_q, hi_q = 0, jnp.where(k_first < seq_len, jnp.int32(seq_len), jnp.int32(0))
  if causal:
    lo_q = k_first
  if chunk_size is not None and by_position:
    lo_q = jnp.maximum(lo_q, k_first - chunk_size + 1)
    hi_q = jnp.minimum(hi_q, k_last + chunk_size)
  elif chunk_size is not None:
    lo_q = jnp.maximum(lo_q, (k_first // chunk_size) * chunk_size)
    hi_q = jnp.minimum(hi_q, (k_last // chunk_size + 1) * chunk_size)
  return jnp.maximum(lo_q, 0) // block_q, _cdiv(hi_q, block_q)


def _block_mask(q_idx, k_idx, q_seg, k_seg, q_pos, k_pos, *, seq_len, causal, chunk_size):
  """[bq, bk] boolean mask for one tile; same rules as reference.attention_mask plus the padded tail.

  The chunk rule compares positions when given (document-relative chunks), slot indices otherwise.
  """
  mask = (k_idx < seq_len)[None, :]
  if causal:
    mask &= k_idx[None, :] <= q_idx[:, None]
  if chunk_size is not None:
    q_c, k_c = (q_idx, k_idx) if q_pos is None else (q_pos, k_pos)
    mask &= (k_c[None, :] // chunk_size) == (q_c[:, None] // chunk_size)
  if q_seg is not None:
    mask &= q_seg[:, None] == k_seg[None, :]
  return mask


def _split_refs(refs, n_main, n_out, has_segments, has_positions):
  """(main input refs, (qseg, kseg), (qpos, kpos), output refs); absent optional pairs are (None, None)."""
  refs = list(refs)
  main, rest = refs[:n_main], refs[n_main:]
  seg = (rest.pop(0), rest.pop(0)) if has_segments else (None, None)
  pos = (rest.pop(0), rest.pop(0)) if has_positions else (None, None)
  assert len(rest) == n_out, (len(rest), n_out)
  return main, seg, pos, rest


def _dot(a, b, contract_a, contract_b):
  """2-D matmul contracting the given axes, accumulated in fp32 (tensor-core friendly for bf16 inputs)."""
  return jax.lax.dot_general(a, b, (((contract_a,), (contract_b,)), ((), ())),
                             preferred_element_type=jnp.float32)


def _q_block(qi, qseg_ref, qpos_ref, *, block_q, block_k, seq_len, causal, chunk_size):
  """Slot indices, segments and positions of query block qi, and the range of kv blocks it must visit."""
  q_idx = qi * block_q + jnp.arange(block_q, dtype=jnp.int32)
  q_seg = qseg_ref[...] if qseg_ref is not None else None
  q_pos = qpos_ref[...] if qpos_ref is not None else None
  bounds = kv_block_range(qi, block_q=block_q, block_k=block_k, seq_len=seq_len, causal=causal,
                          chunk_size=chunk_size, by_position=qpos_ref is not None)
  return q_idx, q_seg, q_pos, bounds


def _kv_block(j, k_ref, v_ref, kseg_ref, kpos_ref, q_idx, q_seg, q_pos, *, block_k, seq_len, causal, chunk_size):
  """Loads kv block j and its [block_q, block_k] visibility mask for the query block (forward and dq kernels)."""
  rows = pl.ds(j * block_k, block_k)
  k_idx = j * block_k + jnp.arange(block_k, dtype=jnp.int32)
  k_seg = kseg_ref[rows] if kseg_ref is not None else None
  k_pos = kpos_ref[rows] if kpos_ref is not None else None
  mask = _block_mask(q_idx, k_idx, q_seg, k_seg, q_pos, k_pos, seq_len=seq_len, causal=causal, chunk_size=chunk_size)
  return k_ref[rows, :], v_ref[rows, :], mask


def _fwd_kernel(*refs, scale, causal, chunk_size, seq_len, block_q, block_k, has_segments, has_positions):
  (q_ref, k_ref, v_ref), (qseg_ref, kseg_ref), (qpos_ref, kpos_ref), (o_ref, lse_ref) = _split_refs(
      refs, 3, 2, has_segments, has_positions)
  qi = pl.program_id(0)
  q = q_ref[...]
  q_idx, q_seg, q_pos, (lo, hi) = _q_block(qi, qseg_ref, qpos_ref, block_q=block_q, block_k=block_k,
                                            seq_len=seq_len, causal=causal, chunk_size=chunk_size)

  def body(j, carry):
    m, l, acc = carry
    k, v, mask = _kv_block(j, k_ref, v_ref, kseg_ref, kpos_ref, q_idx, q_seg, q_pos, block_k=block_k,
                           seq_len=seq_len, causal=causal, chunk_size=chunk_size)
    s = jnp.where(mask, _dot(q, k, 1, 1) * scale, NEG)
    m_new = jnp.maximum(m, jnp.max(s, axis=1))
    alpha = jnp.exp(m - m_new)  # rescales the running sums to the new max (online softmax)
    # The explicit where keeps masked entries at 0 even while a row's max is still NEG.
    p = jnp.where(mask, jnp.exp(s - m_new[:, None]), 0.0)
    l = l * alpha + jnp.sum(p, axis=1)
    acc = acc * alpha[:, None] + _dot(p.astype(v.dtype), v, 1, 0)
    return m_new, l, acc

  init = (jnp.full((block_q,), NEG, jnp.float32), jnp.zeros((block_q,), jnp.float32),
          jnp.zeros(q.shape, jnp.float32))
  m, l, acc = jax.lax.fori_loop(lo, hi, body, init)
  seen = l > 0.0
  # A row with no visible key returns zeros and an lse of NEG (log of an empty sum), never 0/0.
  o_ref[...] = (acc / jnp.where(seen, l, 1.0)[:, None]).astype(o_ref.dtype)
  lse_ref[...] = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), NEG)


def _segment_specs(seq_len_padded, block, by_block):
  """BlockSpecs for [B, Lp] segment ids or positions: the program's own block, and the whole row for the loop side."""
  own = pl.BlockSpec((None, block), lambda i, b, h: (b, i))
  whole = pl.BlockSpec((None, seq_len_padded), lambda i, b, h: (b, 0))
  return (own, whole) if by_block else (whole, own)


def flash_forward(q, k, v, segment_ids, positions, *, scale, causal, chunk_size, seq_len, block_q, block_k,
                  interpret):
  """Padded inputs (segment_ids / positions: int32 [B, Lp] or None) -> (out [B, Lp, H, K], lse [B, H, Lp] fp32).

  positions are only used with chunk_size (document-relative chunks; see `kv_block_range` for the requirement).
  """
  if chunk_size is None:
    positions = None
  b, lp, h, kd = q.shape
  rep = h // k.shape[2]
  kernel = functools.partial(_fwd_kernel, scale=scale, causal=causal, chunk_size=chunk_size, seq_len=seq_len,
                             block_q=block_q, block_k=block_k, has_segments=segment_ids is not None,
                             has_positions=positions is not None)
  q_spec = pl.BlockSpec((None, block_q, None, kd), lambda i, b_, h_: (b_, i, h_, 0))
  kv_spec = pl.BlockSpec((None, lp, None, kd), lambda i, b_, h_: (b_, 0, h_ // rep, 0))  # GQA: head h -> h // rep
  in_specs, args = [q_spec, kv_spec, kv_spec], [q, k, v]
  if segment_ids is not None:
    in_specs += list(_segment_specs(lp, block_q, by_block=True))
    args += [segment_ids, segment_ids]
  if positions is not None:
    in_specs += list(_segment_specs(lp, block_q, by_block=True))
    args += [positions, positions]
  return pl.pallas_call(
      kernel, grid=(lp // block_q, b, h), in_specs=in_specs,
      out_specs=[q_spec, pl.BlockSpec((None, None, block_q), lambda i, b_, h_: (b_, h_, i))],
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, h, lp), jnp.float32)],
      interpret=interpret, compiler_params=_GPU_PARAMS, name="flash_attention_fwd")(*args)


def _dq_kernel(*refs, scale, causal, chunk_size, seq_len, block_q, block_k, has_segments, has_positions):
  """dq for one query block: walks the same kv blocks as the forward, recomputing p from the saved lse."""
  (q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref), (qseg_ref, kseg_ref), (qpos_ref, kpos_ref), (dq_ref,) = (
      _split_refs(refs, 6, 1, has_segments, has_positions))
  qi = pl.program_id(0)
  q, do, lse, delta = q_ref[...], do_ref[...], lse_ref[...], delta_ref[...]
  q_idx, q_seg, q_pos, (lo, hi) = _q_block(qi, qseg_ref, qpos_ref, block_q=block_q, block_k=block_k,
                                            seq_len=seq_len, causal=causal, chunk_size=chunk_size)

  def body(j, dq):
    k, v, mask = _kv_block(j, k_ref, v_ref, kseg_ref, kpos_ref, q_idx, q_seg, q_pos, block_k=block_k,
                           seq_len=seq_len, causal=causal, chunk_size=chunk_size)
    p = jnp.where(mask, jnp.exp(_dot(q, k, 1, 1) * scale - lse[:, None]), 0.0)
    ds = p * (_dot(do, v, 1, 1) - delta[:, None])  # softmax backward: p * (dp - rowsum(p * dp))
    return dq + _dot(ds.astype(k.dtype), k, 1, 0)

  dq = jax.lax.fori_loop(lo, hi, body, jnp.zeros(q.shape, jnp.float32))
  dq_ref[...] = (dq * scale).astype(dq_ref.dtype)


def _dkdv_kernel(*refs, scale, causal, chunk_size, seq_len, block_q, block_k, rep, has_segments, has_positions):
  """dk, dv for one kv block of kv head g: sums over its `rep` query heads and the query blocks that see it.

  Looping over the query heads inside the program (rather than one program per query head and a reduction
  afterwards) keeps the GQA sum in registers and writes dk/dv once, at kv-head size.
  """
  (q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref), (qseg_ref, kseg_ref), (qpos_ref, kpos_ref), (dk_ref, dv_ref) = (
      _split_refs(refs, 6, 2, has_segments, has_positions))
  kj, g = pl.program_id(0), pl.program_id(2)
  k, v = k_ref[...], v_ref[...]
  k_idx = kj * block_k + jnp.arange(block_k, dtype=jnp.int32)
  k_seg = kseg_ref[...] if has_segments else None
  k_pos = kpos_ref[...] if has_positions else None
  lo, hi = q_block_range(kj, block_q=block_q, block_k=block_k, seq_len=seq_len, causal=causal,
                         chunk_size=chunk_size, by_position=has_positions)

  def q_body(i, carry, h):
    dk, dv = carry
    q = q_ref[pl.ds(i * block_q, block_q), h, :]
    do = do_ref[pl.ds(i * block_q, block_q), h, :]
    lse = lse_ref[h, pl.ds(i * block_q, block_q)]
    delta = delta_ref[h, pl.ds(i * block_q, block_q)]
    q_idx = i * block_q + jnp.arange(block_q, dtype=jnp.int32)
    q_seg = qseg_ref[pl.ds(i * block_q, block_q)] if has_segments else None
    q_pos = qpos_ref[pl.ds(i * block_q, block_q)] if has_positions else None
    mask = _block_mask(q_idx, k_idx, q_seg, k_seg, q_pos, k_pos, seq_len=seq_len, causal=causal,
                       chunk_size=chunk_size)
    p = jnp.where(mask, jnp.exp(_dot(q, k, 1, 1) * scale - lse[:, None]), 0.0)
    dv = dv + _dot(p.astype(do.dtype), do, 0, 0)
    ds = p * (_dot(do, v, 1, 1) - delta[:, None])
    return dk + _dot(ds.astype(q.dtype), q, 0, 0), dv

  def head_body(r, carry):
    return jax.lax.fori_loop(lo, hi, functools.partial(q_body, h=g * rep + r), carry)

  zeros = jnp.zeros(k.shape, jnp.float32)
  dk, dv = jax.lax.fori_loop(0, rep, head_body, (zeros, zeros))
  dk_ref[...] = (dk * scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def flash_backward(q, k, v, segment_ids, positions, do, lse, delta, *, scale, causal, chunk_size, seq_len, block_q,
                   block_k, interpret):
  """Padded inputs, cotangent, saved lse and delta = rowsum(o * do) [B, H, Lp] -> (dq, dk, dv)."""
  if chunk_size is None:
    positions = None
  b, lp, h, kd = q.shape
  g = k.shape[2]
  rep = h // g
  static = dict(scale=scale, causal=causal, chunk_size=chunk_size, seq_len=seq_len, block_q=block_q,
                block_k=block_k, has_segments=segment_ids is not None, has_positions=positions is not None)
  seg_args = [segment_ids, segment_ids] if segment_ids is not None else []
  pos_args = [positions, positions] if positions is not None else []

  # dq: one program per (query block, batch, query head), like the forward.
  q_spec = pl.BlockSpec((None, block_q, None, kd), lambda i, b_, h_: (b_, i, h_, 0))
  kv_whole = pl.BlockSpec((None, lp, None, kd), lambda i, b_, h_: (b_, 0, h_ // rep, 0))
  row_spec = pl.BlockSpec((None, None, block_q), lambda i, b_, h_: (b_, h_, i))
  seg_specs = list(_segment_specs(lp, block_q, by_block=True)) * ((len(seg_args) + len(pos_args)) // 2)
  dq = pl.pallas_call(
      functools.partial(_dq_kernel, **static), grid=(lp // block_q, b, h),
      in_specs=[q_spec, kv_whole, kv_whole, q_spec, row_spec, row_spec] + seg_specs, out_specs=q_spec,
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype), interpret=interpret, compiler_params=_GPU_PARAMS,
      name="flash_attention_dq")(q, k, v, do, lse, delta, *seg_args, *pos_args)

  # dk, dv: one program per (kv block, batch, kv head); every query head of the group is read whole.
  kv_spec = pl.BlockSpec((None, block_k, None, kd), lambda j, b_, g_: (b_, j, g_, 0))
  q_whole = pl.BlockSpec((None, lp, h, kd), lambda j, b_, g_: (b_, 0, 0, 0))
  rows_whole = pl.BlockSpec((None, h, lp), lambda j, b_, g_: (b_, 0, 0))
  seg_specs = list(_segment_specs(lp, block_k, by_block=False)) * ((len(seg_args) + len(pos_args)) // 2)
  dk, dv = pl.pallas_call(
      functools.partial(_dkdv_kernel, rep=rep, **static), grid=(lp // block_k, b, g),
      in_specs=[q_whole, kv_spec, kv_spec, q_whole, rows_whole, rows_whole] + seg_specs,
      out_specs=[kv_spec, kv_spec],
      out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
      interpret=interpret, compiler_params=_GPU_PARAMS, name="flash_attention_dkdv")(q, k, v, do, lse, delta, *seg_args, *pos_args)
  return dq, dk, dv
