"""KV cache for generation: a bounded ring for chunked (RoPE) layers, a full cache for global (NoPE) layers.

A chunked layer's query at position p only sees keys of its own chunk [C * (p // C), p], so its cache needs C
slots: position p lives in slot p % C, and the slot's position is kept in `ring_pos` so stale keys of an earlier
chunk are masked. A global layer keeps every position (slot = position). Each row has its own length: prompts of
different lengths sit right-padded in one batch, each row's positions start at 0 at its first token (what Hugging
Face reaches with left padding and per-row position ids), so no row's result depends on the others.

New tokens come in blocks [B, T] starting at every row's current length: T = 1 while decoding, pieces of a prompt
while prefilling. A block never crosses a chunk boundary (pieces are chunk-aligned), so its ring slots are
contiguous. Keys are written first and the block then attends over the cache alone.

Per layer, keys and values are stored [B, G, S, K] (KV head before slot): the attention dots then read the cache
as it lies, where a [B, S, G, K] cache had XLA transpose (copy) the whole cache on every decode step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def write_rows(cache_B, new_B, start_B, write_B=None, slot_axis: int = 0):
  """Per row, writes the T new entries (axis `slot_axis` of a row of `new_B`) at slots start_b .. start_b + T - 1
  of the same axis of the cache row (rows with write_b False untouched).

  A row that must not change rewrites its own old entries, so the update stays an in-place slice write (selecting
  between two whole caches would copy the cache on every decode step)."""
  if write_B is None:
    write_B = jnp.ones(cache_B.shape[:1], bool)

  def one(c, u, s, w):
    index = tuple(s if a == slot_axis else 0 for a in range(c.ndim))
    old = jax.lax.dynamic_slice(c, index, u.shape)
    return jax.lax.dynamic_update_slice(c, jnp.where(w, u.astype(c.dtype), old), index)
  return jax.vmap(one)(cache_B, new_B, start_B, write_B)


def block_meta(length_B, valid_BT, ring_pos_BC, chunk: int | None):
  """Positions of the block's tokens and the cache bookkeeping after writing them.

  Returns dict(positions [B, T], valid [B, T], start [B], new_length [B], write [B], ring_pos [B, C] or None).
  """
  t = valid_BT.shape[1]
  positions_BT = length_B[:, None] + jnp.arange(t, dtype=jnp.int32)[None]
  write_B = jnp.any(valid_BT, axis=1)
  meta = {"positions": positions_BT, "valid": valid_BT, "start": length_B, "write": write_B,
          "new_length": length_B + jnp.sum(valid_BT, axis=1).astype(jnp.int32), "ring_pos": None}
  if chunk is not None and ring_pos_BC is not None:
    meta["ring_pos"] = write_rows(ring_pos_BC[..., None], positions_BT[..., None], length_B % chunk,
                                  write_B)[..., 0]
  return meta


def global_mask(meta, cache_len: int):
  """[B, T, S] for a full cache (slot = position): causal and inside the row's written length."""
  slots = jnp.arange(cache_len, dtype=jnp.int32)[None, None, :]
  q = meta["positions"][:, :, None]
  return (slots <= q) & (slots < meta["new_length"][:, None, None])


def chunked_mask(meta, chunk: int):
  """[B, T, C] for a ring cache: the slot's key is from the query's chunk, not after it, and not padding."""
  kv = meta["ring_pos"][:, None, :]
  q = meta["positions"][:, :, None]
  return (kv >= 0) & (kv <= q) & (kv // chunk == q // chunk) & (kv < meta["new_length"][:, None, None])


def update_layer(layer_cache, k_BTGK, v_BTGK, meta, ring: bool, chunk: int | None):
  """Writes the block's keys and values into one layer's cache ([B, G, S, K]); returns (new cache, attention mask
  [B, T, S])."""
  size = layer_cache["k"].shape[2]
  start = meta["start"] % size if ring else meta["start"]
  new = {name: write_rows(layer_cache[name], jnp.swapaxes(x, 1, 2), start, meta["write"], slot_axis=1)
         for name, x in (("k", k_BTGK), ("v", v_BTGK))}
  mask = chunked_mask(meta, chunk) if ring else global_mask(meta, size)
  return new, mask
