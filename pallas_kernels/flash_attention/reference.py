"""Plain-JAX reference for `flash_attention`: a materialised [B, L, S] mask and an fp32 softmax.

This is the test oracle and the CPU path. It deliberately shares no code with the kernels, and (by house rule)
nothing with `llama4_jax`, whose `ops/attention.py` it mirrors: grouped-query attention where query head h reads
kv head h // (H // G).

Mask semantics (the kernels must match them exactly):
  * causal     - key index <= query index;
  * chunk_size - key and query in the same fixed block of `chunk_size` positions aligned at index 0
                 (Llama 4 RoPE layers, spec section 4.5); this is not a sliding window. With `positions`
                 (per-document positions, restarting at 0 for each packed document) the chunk is taken from
                 positions instead: positions[k] // C == positions[q] // C (chunks aligned to each document's
                 start, as `llama4_jax.ops.attention` does); causality stays by index;
  * segment_ids- key and query carry the same id (packed documents; 0 marks padding, which therefore only sees
                 other padding and never leaks into a document).
A query row that the mask removes entirely returns zeros (not the uniform average a finite mask value would give),
so the reference and the kernels agree on every row, padding included.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Finite instead of -inf: a fully masked row must not turn into NaN (inf - inf) in the softmax or its gradient.
_MASK_VALUE = float(jnp.finfo(jnp.float32).min)


def attention_mask(q_len: int, kv_len: int, *, causal: bool = True, chunk_size: int | None = None,
                   segment_ids_BL=None, kv_segment_ids_BS=None, positions_BL=None, kv_positions_BS=None):
  """Boolean mask [B or 1, L, S] built from the rules in the module docstring."""
  q_L = jnp.arange(q_len, dtype=jnp.int32)[:, None]
  k_S = jnp.arange(kv_len, dtype=jnp.int32)[None, :]
  mask_LS = jnp.ones((q_len, kv_len), dtype=bool)
  if causal:
    mask_LS &= k_S <= q_L
  if chunk_size is not None and positions_BL is None:
    mask_LS &= (k_S // chunk_size) == (q_L // chunk_size)
  mask_BLS = mask_LS[None]
  if chunk_size is not None and positions_BL is not None:
    kv_pos = positions_BL if kv_positions_BS is None else kv_positions_BS
    mask_BLS = mask_BLS & ((positions_BL[:, :, None] // chunk_size) == (kv_pos[:, None, :] // chunk_size))
  if segment_ids_BL is not None:
    kv_seg = segment_ids_BL if kv_segment_ids_BS is None else kv_segment_ids_BS
    mask_BLS = mask_BLS & (segment_ids_BL[:, :, None] == kv_seg[:, None, :])
  return mask_BLS


def attention_reference(q_BLHK, k_BLGK, v_BLGK, *, causal: bool = True, chunk_size: int | None = None,
                        segment_ids=None, positions=None, scale: float | None = None):
  """Grouped-query attention with a materialised mask. Returns [B, L, H, K] in q's dtype.

  positions: optional int [B, L] per-document positions; with chunk_size, chunks follow them (see module doc).
  """
  b, l, h, kd = q_BLHK.shape
  s, g = k_BLGK.shape[1], k_BLGK.shape[2]
  if h % g:
    raise ValueError(f"query heads {h} not a multiple of kv heads {g}")
  scale = kd ** -0.5 if scale is None else scale
  mask_BLS = attention_mask(l, s, causal=causal, chunk_size=chunk_size, segment_ids_BL=segment_ids,
                            positions_BL=positions)
  q_BLGRK = q_BLHK.reshape(b, l, g, h // g, kd)
  logits = jnp.einsum("blgrk,bsgk->bgrls", q_BLGRK, k_BLGK, preferred_element_type=jnp.float32) * scale
  mask = mask_BLS[:, None, None]
  logits = jnp.where(mask, logits, _MASK_VALUE)
  # Zeroing after the softmax turns a fully masked row's uniform distribution into zeros; partially masked rows
  # are unchanged because their masked entries already underflow to exactly 0.
  probs = jnp.where(mask, jax.nn.softmax(logits, axis=-1), 0.0)
  out_BLGRK = jnp.einsum("bgrls,bsgk->blgrk", probs.astype(v_BLGK.dtype), v_BLGK,
                         preferred_element_type=jnp.float32)
  return out_BLGRK.reshape(b, l, h, kd).astype(q_BLHK.dtype)
