"""Masks and the plain-JAX reference attention (grouped-query, fp32 softmax).

Masks are built from three per-token quantities so that packed rows, chunked (iRoPE) layers and later the KV cache
share one definition:
  * index   - slot in the row (or cache); causality is index-based,
  * segment - document id in a packed row; tokens only see their own document (0 marks padding),
  * position- position inside the document; chunks of `chunk_size` are aligned to position 0 of each document.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

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
  b, l, h, kd = q_BLHK.shape
  g = k_BSGK.shape[2]
  q_BLGRK = q_BLHK.reshape(b, l, g, h // g, kd)
  logits = jnp.einsum("blgrk,bsgk->bgrls", q_BLGRK, k_BSGK, preferred_element_type=jnp.float32) * scale
  logits = jnp.where(mask_BLS[:, None, None, :, :], logits, _MASK_VALUE)
  probs = jax.nn.softmax(logits, axis=-1).astype(v_BSGK.dtype)
  out_BLGRK = jnp.einsum("bgrls,bsgk->blgrk", probs, v_BSGK)
  return out_BLGRK.reshape(b, l, h, kd)
