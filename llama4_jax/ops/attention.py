"""Masks and the plain-JAX reference attention (grouped-query, fp32 softmax).

Masks are built from three per-token quantities so that packed rows, chunked (iRoPE) layers and later the KV cache
share one definition:
  * index   - slot in the row (or cache); causality is index-based,
  * segment - document id in a packed row; tokens only see their own document (0 marks padding),
  * position- position inside the document; chunks of `chunk_size` are aligned to position 0 of each document.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from llama4_jax.ops.linear import matmul, matmul_nt, matmul_tn, row_major_transpose

# Large finite negative instead of -inf so a fully masked row (padding) gives a uniform softmax, not NaN.
_MASK_VALUE = float(jnp.finfo(jnp.float32).min)


def attention_mask(q_index_BL, kv_index_BS, q_segment_BL, kv_segment_BS, q_pos_BL, kv_pos_BS,
                   chunk_size: int | None = None) -> jnp.ndarray:
  """Boolean [B, L, S] mask: causal, same document and, when `chunk_size` is set, same absolute chunk."""
  mask = kv_index_BS[:, None, :] <= q_index_BL[:, :, None]
  mask &= kv_segment_BS[:, None, :] == q_segment_BL[:, :, None]
  if chunk_size is not None:
    mask &= (kv_pos_BS[:, None, :] // chunk_size) == (q_pos_BL[:, :, None] // chunk_size)
  return mask


def self_attention_masks(positions_BL, segment_ids_BL, chunk_size: int | None):
  """(global_mask, chunked_mask) [B, L, L] for a training / prefill row attending to itself."""
  b, l = positions_BL.shape
  index_BL = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
  args = (index_BL, index_BL, segment_ids_BL, segment_ids_BL, positions_BL, positions_BL)
  global_mask = attention_mask(*args)
  chunked_mask = attention_mask(*args, chunk_size=chunk_size) if chunk_size is not None else global_mask
  return global_mask, chunked_mask


def temperature_scale(positions_BL, floor_scale: float, attn_scale: float) -> jnp.ndarray:
  """Llama 4 NoPE-layer query scale 1 + attn_scale * log(floor((p + 1) / floor_scale) + 1), float32 [B, L]."""
  p = positions_BL.astype(jnp.float32)
  return jnp.log1p(jnp.floor((p + 1.0) / floor_scale)) * attn_scale + 1.0


def dot_product_attention(q_BLHK, k_BSGK, v_BSGK, mask_BLS, scale: float) -> jnp.ndarray:
  """Reference grouped-query attention. Query head h reads KV head h // (H / G). Returns [B, L, H, K]."""
  return cache_attention(q_BLHK, jnp.swapaxes(k_BSGK, 1, 2), jnp.swapaxes(v_BSGK, 1, 2), mask_BLS, scale)


def _flat_batch(*arrays):
  """Leading batch dims as one (for the batched matmuls of ops/linear.py). The reshape also hands them operands in a
  plain row-major layout: XLA:CPU widens a bf16 matmul whose operand is still a transposed view (as the chunked
  band's are) to float32."""
  return tuple(a.reshape(-1, *a.shape[-2:]) for a in arrays)


def _masked_logits(q_NMK, k_NSK, mask_NMS, scale: float):
  """where(mask, q k^T * scale, -big) in float32, [*N, M, S]."""
  lead = q_NMK.shape[:-2]
  q, k = _flat_batch(q_NMK, k_NSK)
  logits = matmul_nt(q, k).reshape(*lead, q.shape[1], k.shape[1]) * scale
  return jnp.where(mask_NMS, logits, _MASK_VALUE)


# [queries, keys] elements per matrix above which the backward recomputes the probabilities from the logits and
# the saved row maxima and sums instead of keeping them: a 1k-token row's probabilities are 4 MB per head, written
# by the forward and read back by the backward (through the layer scan's stacked residuals, a copy each way); the
# logits cost one more [M, K] x [K, S] product. Small matrices (the banded chunks, short rows) keep the probabilities.
SAVED_PROBS_MAX = 1 << 17


def _recomputes_probs(q_NMK, k_NSK, keep_probs: bool) -> bool:
  return not keep_probs and q_NMK.shape[-2] * k_NSK.shape[-2] > SAVED_PROBS_MAX


def _masked_softmax_forward(q_NMK, k_NSK, v_NSK, mask_NMS, scale: float, keep_probs: bool = False):
  """(output, probabilities, (row maxima, row sums of exp(logits - maxima)), each [*N, M, 1], or None)."""
  z = _masked_logits(q_NMK, k_NSK, mask_NMS, scale)
  stats = None
  if _recomputes_probs(q_NMK, k_NSK, keep_probs):
    top = jnp.max(z, axis=-1, keepdims=True)
    total = jnp.sum(jnp.exp(z - top), axis=-1, keepdims=True)
    probs, stats = _probs(z, (top, total)), (top, total)
  else:
    probs = jax.nn.softmax(z, axis=-1)
  lead = q_NMK.shape[:-2]
  (v,) = _flat_batch(v_NSK)
  out = matmul(probs.reshape(v.shape[0], *probs.shape[-2:]).astype(v.dtype), v)
  return out.astype(v_NSK.dtype).reshape(*lead, *out.shape[-2:]), probs, stats


def _probs(z, stats):
  """Softmax from the row statistics; the same expression in the forward and the backward (bit-identical). Not the
  log-sum-exp alone: a fully masked row's logits are all -big, and -big + log(S) rounds to -big, so exp(z - lse)
  would give it weights 1 instead of 1 / S."""
  top, total = stats
  return jnp.exp(z - top) / total


SMALL_TRANSPOSE = 1 << 17  # elements per [queries, keys] matrix up to which dk / dv use a materialised transpose


def _matmul_tn_small(a_NMS, b_NMK):
  """a.T @ b per batch element. For small matrices (the banded chunk layers' [R * C, 2C] blocks) from a materialised
  transpose in every dtype: XLA:CPU runs many small batched products far slower in the transposed form (measured
  5% of the tiny train step). Large ones (full rows of 1k tokens) keep ops/linear.matmul_tn, whose float32 form
  skips the copy: there the copy cost more than it saved (364 vs 243 ms per layer at the `small` preset)."""
  if a_NMS.shape[-2] * a_NMS.shape[-1] <= SMALL_TRANSPOSE:
    return matmul(row_major_transpose(a_NMS), b_NMK)
  return matmul_tn(a_NMS, b_NMK)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def masked_attention(q_NMK, k_NSK, v_NSK, mask_NMS, scale: float, keep_probs: bool = False):
  """softmax(where(mask, q k^T * scale, -big)) v over leading batch dims N, queries M, keys S (fp32 softmax).

  Hand-written backward (four batched matmuls and one fused elementwise pass) instead of autodiff's chain through
  the select, the max-subtraction and the normalisation; from the saved probabilities, or for large matrices
  (SAVED_PROBS_MAX) from probabilities recomputed from the logits and each row's maximum and sum (as flash
  attention keeps its log-sum-exp). `keep_probs`: always keep them (for callers under `jax.checkpoint`, whose
  backward runs the forward again anyway).
  """
  return _masked_softmax_forward(q_NMK, k_NSK, v_NSK, mask_NMS, scale, keep_probs)[0]


def _masked_attention_fwd(q_NMK, k_NSK, v_NSK, mask_NMS, scale, keep_probs):
  out, probs, stats = _masked_softmax_forward(q_NMK, k_NSK, v_NSK, mask_NMS, scale, keep_probs)
  return out, (q_NMK, k_NSK, v_NSK, mask_NMS, probs if stats is None else stats)


def _masked_attention_bwd(scale, keep_probs, res, g_NMK):
  q_NMK, k_NSK, v_NSK, mask_NMS, probs = res
  if _recomputes_probs(q_NMK, k_NSK, keep_probs):  # the residual is the row statistics
    probs = _probs(_masked_logits(q_NMK, k_NSK, mask_NMS, scale), probs)
  q, k, v, g = _flat_batch(q_NMK, k_NSK, v_NSK, g_NMK.astype(v_NSK.dtype))
  dprobs = matmul_nt(g, v).reshape(probs.shape)
  # d logits = p * (dp - sum_s p dp); masked logits were constants (a fully masked row's uniform p included).
  dlogits = jnp.where(mask_NMS, probs * (dprobs - jnp.sum(probs * dprobs, axis=-1, keepdims=True)), 0.0) * scale
  dlogits, probs = _flat_batch(dlogits.astype(q.dtype), probs.astype(v.dtype))
  dq = matmul(dlogits, k).astype(q.dtype).reshape(q_NMK.shape)
  dk = _matmul_tn_small(dlogits, q).astype(k.dtype).reshape(k_NSK.shape)
  dv = _matmul_tn_small(probs, g).astype(v.dtype).reshape(v_NSK.shape)
  return dq, dk, dv, None


masked_attention.defvjp(_masked_attention_fwd, _masked_attention_bwd)


def cache_attention(q_BLHK, k_BGSK, v_BGSK, mask_BLS, scale: float, keep_probs: bool = False) -> jnp.ndarray:
  """Grouped-query attention over keys and values laid out [B, G, S, K] (the KV cache's layout, ops/kv_cache.py):
  query head h reads KV head h // (H / G). Returns [B, L, H, K]."""
  b, l, h, kd = q_BLHK.shape
  g, s = k_BGSK.shape[1], k_BGSK.shape[2]
  r = h // g
  # Batch dims (b, g) and the queries' (r, l) as one row dim: both products are then plain batched matmuls over
  # operands as they lie (no transposed copy of the keys or values).
  q_BGMK = jnp.transpose(q_BLHK.reshape(b, l, g, r, kd), (0, 2, 3, 1, 4)).reshape(b, g, r * l, kd)
  mask_B1MS = jnp.broadcast_to(mask_BLS[:, None, None], (b, 1, r, l, s)).reshape(b, 1, r * l, s)
  out_BGMK = masked_attention(q_BGMK, k_BGSK, v_BGSK, mask_B1MS, scale, keep_probs)
  return jnp.transpose(out_BGMK.reshape(b, g, r, l, kd), (0, 3, 1, 2, 4)).reshape(b, l, h, kd)


CAUSAL_BLOCK = 256  # queries per block of `causal_self_attention`


def causal_self_attention(q_BLHK, k_BLGK, v_BLGK, mask_BLL, scale: float, block: int = CAUSAL_BLOCK):
  """`dot_product_attention` of a row over its own keys under a mask that is causal by slot and lets every query
  see its own slot (the masks of `self_attention_masks`), one block of `block` queries at a time against only the
  keys up to the block's end: the keys after it are masked for every query of the block, and with no row fully
  masked their weights were exactly zero, so the result is the same at (L + block) / 2L of the dense cost
  (62.5% for 1k tokens in blocks of 256). Rows of at most `block` tokens take the dense path as it is."""
  l = q_BLHK.shape[1]
  if l <= block:
    return dot_product_attention(q_BLHK, k_BLGK, v_BLGK, mask_BLL, scale)
  outs = []
  for start in range(0, l, block):
    end = min(start + block, l)
    outs.append(dot_product_attention(q_BLHK[:, start:end], k_BLGK[:, :end], v_BLGK[:, :end],
                                      mask_BLL[:, start:end, :end], scale))
  return jnp.concatenate(outs, axis=1)


def _previous_block(x_BN):
  """[B, N, ...] -> each block's predecessor along N (zeros before the first)."""
  return jnp.concatenate([jnp.zeros_like(x_BN[:, :1]), x_BN[:, :-1]], axis=1)


def _blocks(x, n: int, c: int):
  """[B, L, ...] (L == n * c) -> (previous block, block) concatenated: [B, n, 2c, ...]; block -1 is zeros."""
  xb = x.reshape(x.shape[0], n, c, *x.shape[2:])
  return jnp.concatenate([_previous_block(xb), xb], axis=2)


def sees_previous_block(mask_BNQS, chunk_size: int) -> jnp.ndarray:
  """Whether any query of `chunked_self_attention`'s blocks may attend to a key of the block before its own (the
  band mask's first `chunk_size` key columns): False when every document and chunk starts on a block boundary."""
  return jnp.any(mask_BNQS[..., :chunk_size])


def chunked_self_attention(q_BLHK, k_BLGK, v_BLGK, positions_BL, segment_ids_BL, chunk_size: int, scale: float,
                           aligned: bool = False):
  """Exact chunked-causal self-attention computed only over a band of 2 * chunk_size keys per query block.

  Requires what packed rows satisfy: inside a document, positions grow by one per slot. Then a query at slot i can
  only see slots i - chunk_size < j <= i, i.e. its own block of `chunk_size` slots and the previous one, so the
  cost is O(L * 2C) instead of O(L^2). The mask is the same `attention_mask` as the dense reference. When no query
  sees the previous block (`sees_previous_block`: unpacked rows, documents starting on chunk boundaries), a
  `lax.cond` takes the block's own keys alone, [C, C] instead of [C, 2C] (5% of the tiny train step). `aligned`
  (the caller knows every row is one document from slot 0, positions equal to slots) takes them with no cond.
  """
  b, l, h, kd = q_BLHK.shape
  g, c = k_BLGK.shape[2], chunk_size
  n = -(-l // c)
  pad = n * c - l
  index_BL = jnp.broadcast_to(jnp.arange(n * c, dtype=jnp.int32), (b, n * c))
  if pad:
    padding = lambda x: jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))  # noqa: E731
    q_BLHK, k_BLGK, v_BLGK = padding(q_BLHK), padding(k_BLGK), padding(v_BLGK)
    positions_BL, segment_ids_BL = padding(positions_BL), padding(segment_ids_BL)  # padded slots: segment 0
  q_BNCGRK = q_BLHK.reshape(b, n, c, g, h // g, kd)
  # The zero block before the first one gets index -1 > nothing, so causality masks it out.
  kv_index = _blocks(index_BL + 1, n, c) - 1
  kv_seg, kv_pos = _blocks(segment_ids_BL, n, c), _blocks(positions_BL, n, c)
  q_index, q_seg, q_pos = (x.reshape(b * n, c) for x in (index_BL, segment_ids_BL, positions_BL))
  mask = attention_mask(q_index, kv_index.reshape(b * n, 2 * c), q_seg, kv_seg.reshape(b * n, 2 * c), q_pos,
                        kv_pos.reshape(b * n, 2 * c), chunk_size=c)
  mask &= (kv_index.reshape(b * n, 2 * c) >= 0)[:, None, :]
  mask_BNQS = mask.reshape(b, n, c, 2 * c)

  def band(q, k, v, m, keep_probs=False):  # [B, ..., C, G, R, K] queries against their [B, ..., S, G, K] keys
    *lead, cq, gq, rq, kq = q.shape
    q_GMK = jnp.moveaxis(q, -4, -2).reshape(*lead, gq, rq * cq, kq)  # [..., G, (R, C), K]
    k_GSK, v_GSK = jnp.swapaxes(k, -3, -2), jnp.swapaxes(v, -3, -2)  # [..., G, S, K]
    m_1MS = jnp.broadcast_to(m[..., None, :, :], (*lead, rq, cq, m.shape[-1])).reshape(*lead, 1, rq * cq, -1)
    out = masked_attention(q_GMK, k_GSK, v_GSK, m_1MS, scale, keep_probs).reshape(*lead, gq, rq, cq, kq)
    return jnp.moveaxis(out, -2, -4)  # [..., C, G, R, K]

  def band_or_own(q, k_prev, k, v_prev, v, m, keep_probs=False):
    """The band (previous block's keys, then the block's own) or, when no query of these blocks sees a key of
    the previous ones (every document or chunk starts on a block boundary, as in unpacked rows), the own block
    alone: the same result (each query sees itself, so no row is fully masked in either), half the work."""
    def full():
      return band(q, jnp.concatenate([k_prev, k], axis=-3), jnp.concatenate([v_prev, v], axis=-3), m, keep_probs)
    own = lambda: band(q, k, v, m[..., c:], keep_probs)  # noqa: E731
    return own() if aligned else jax.lax.cond(sees_previous_block(m, c), full, own)

  k_BNCGK, v_BNCGK = k_BLGK.reshape(b, n, c, g, kd), v_BLGK.reshape(b, n, c, g, kd)
  # Aligned rows never read the previous blocks' keys: none are built (nor carried through the map below).
  k_prev, v_prev = (None, None) if aligned else (_previous_block(k_BNCGK), _previous_block(v_BNCGK))
  blocks = (q_BNCGRK, k_prev, k_BNCGK, v_prev, v_BNCGK, mask_BNQS)
  if n > 2 and l > 2 * QUERY_BLOCK:
    # Long rows: one chunk at a time, recomputed in the backward pass, so only one chunk's [C, 2C] logits are live
    # (all chunks at once cost O(L * 2C) floats per head, e.g. gigabytes at 32k tokens with 1k chunks).
    one = jax.checkpoint(lambda xs: band_or_own(*xs, keep_probs=True))
    by_block = tuple(None if x is None else jnp.moveaxis(x, 1, 0) for x in blocks)
    out = jnp.moveaxis(jax.lax.map(one, by_block), 0, 1)
  else:
    out = band_or_own(*blocks)
  return out.reshape(b, n * c, h, kd)[:, :l]


QUERY_BLOCK = 512  # queries per block of `query_blocked_attention`


def query_blocked_attention(q_BLHK, k_BLGK, v_BLGK, segment_ids_BL, scale: float, block: int = QUERY_BLOCK):
  """Exact global self-attention (causal by slot, same document) one block of `block` queries at a time against
  all keys, each block recomputed in the backward pass (`jax.checkpoint`): peak memory O(block * L) instead of the
  O(L^2) logits and mask of the dense reference, for the same result. Used for global (NoPE) layers of long rows."""
  b, l, h, kd = q_BLHK.shape
  n = -(-l // block)
  pad = n * block - l
  index_L = jnp.arange(n * block, dtype=jnp.int32)
  seg_BL = segment_ids_BL
  if pad:  # padded query slots (segment 0 and past every key) are computed and dropped
    q_BLHK = jnp.pad(q_BLHK, [(0, 0), (0, pad), (0, 0), (0, 0)])
    seg_BL = jnp.pad(segment_ids_BL, [(0, 0), (0, pad)])
  k_BGSK, v_BGSK = jnp.swapaxes(k_BLGK, 1, 2), jnp.swapaxes(v_BLGK, 1, 2)
  kv_index_S = jnp.arange(l, dtype=jnp.int32)

  @jax.checkpoint
  def one(xs):
    q_blk, index_blk, seg_blk = xs  # [B, block, H, K], [block], [B, block]
    # Global layers have no chunk, so positions do not enter the mask.
    mask = attention_mask(jnp.broadcast_to(index_blk, seg_blk.shape), jnp.broadcast_to(kv_index_S, (b, l)),
                          seg_blk, segment_ids_BL, None, None)
    return cache_attention(q_blk, k_BGSK, v_BGSK, mask, scale, keep_probs=True)  # recomputed: keep them

  blocks = (jnp.moveaxis(q_BLHK.reshape(b, n, block, h, kd), 1, 0), index_L.reshape(n, block),
            jnp.moveaxis(seg_BL.reshape(b, n, block), 1, 0))
  out = jnp.moveaxis(jax.lax.map(one, blocks), 0, 1).reshape(b, n * block, h, kd)
  return out[:, :l]


def pallas_self_attention(q_BLHK, k_BLGK, v_BLGK, positions_BL, segment_ids_BL, chunk_size: int | None,
                          scale: float, interpret: bool = False):
  """The Pallas flash-attention kernel (pallas_kernels.flash_attention) with this module's mask semantics:
  causal by slot, same segment, and (RoPE layers) chunks aligned to each document's position 0."""
  from pallas_kernels.flash_attention import flash_attention

  return flash_attention(q_BLHK, k_BLGK, v_BLGK, causal=True, chunk_size=chunk_size, segment_ids=segment_ids_BL,
                         positions=positions_BL if chunk_size is not None else None, scale=scale,
                         interpret=interpret)
