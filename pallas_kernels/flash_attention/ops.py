"""`flash_attention`: padding, argument checks and the custom_vjp that ties the Pallas kernels together.

The forward saves (padded q, k, v, segment ids, positions, out, lse); the backward recomputes attention probabilities
tile by tile from the log-sum-exp (flash-attention-2), so no [L, S] matrix is ever stored.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from pallas_kernels.flash_attention import kernel


def _pad_seq(x, lp):
  """Zero-pad axis 1 to length lp; the kernels mask keys at or beyond the true length."""
  pad = lp - x.shape[1]
  return jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2)) if pad else x


# cfg is the static kernel configuration as a sorted tuple of (name, value): hashable, as nondiff_argnums need.
@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _flash(q, k, v, segment_ids, positions, cfg):
  return _flash_fwd(q, k, v, segment_ids, positions, cfg)[0]


def _flash_fwd(q, k, v, segment_ids, positions, cfg):
  out, lse = kernel.flash_forward(q, k, v, segment_ids, positions, **dict(cfg))
  return out, (q, k, v, segment_ids, positions, out, lse)


def _flash_bwd(cfg, res, do):
  q, k, v, segment_ids, positions, out, lse = res
  # delta = rowsum(o * do) is the softmax-backward correction; one cheap XLA reduction, laid out like lse.
  delta = jnp.einsum("blhk,blhk->bhl", out.astype(jnp.float32), do.astype(jnp.float32))
  dq, dk, dv = kernel.flash_backward(q, k, v, segment_ids, positions, do, lse, delta, **dict(cfg))
  return dq, dk, dv, None, None  # integer segment ids and positions get no cotangent


_flash.defvjp(_flash_fwd, _flash_bwd)


def flash_attention(q_BLHK, k_BLGK, v_BLGK, *, causal: bool = True, chunk_size: int | None = None,
                    segment_ids=None, positions=None, scale: float | None = None, block_q: int = 64,
                    block_k: int = 64, interpret: bool = False):
  """Grouped-query flash attention (forward and backward in Pallas). Returns [B, L, H, K] in q's dtype.

  Args:
    q_BLHK, k_BLGK, v_BLGK: queries and keys/values; query head h reads kv head h // (H // G).
    causal: key index <= query index.
    chunk_size: if set, a query at index p only sees keys in [p // C * C, (p // C + 1) * C) (Llama 4 RoPE layers).
    segment_ids: optional int [B, L]; tokens only see keys with the same id (0 marks padding).
    positions: optional int [B, L], each token's position inside its document (restarting at 0 per document).
      Only used with chunk_size: the chunk rule becomes positions[k] // C == positions[q] // C (Llama 4's
      document-aligned chunks; causality stays by slot index). Ignored without chunk_size.
      Requirement for the block skipping: inside a segment, positions grow by exactly one per slot. Then a query
      at slot i sees only slots i - C < j <= i, and each query block visits just the kv blocks overlapping
      [q_start - C + 1, q_end] (dk/dv: the query blocks overlapping [k_start, k_end + C - 1]), O(L * C) tiles.
      The rule is per segment: a segment that breaks it (e.g. padding given position 0 everywhere) may lose its
      out-of-band keys, but only its own rows change; every segment that keeps it is exact.
    scale: logit scale, default K ** -0.5.
    block_q, block_k: tile sizes (powers of two >= 16 for Triton on GPU; anything in interpret mode).
    interpret: run the kernels in Pallas interpret mode (CPU tests).
  """
  b, l, h, kd = q_BLHK.shape
  if k_BLGK.shape != v_BLGK.shape or k_BLGK.shape[:2] != (b, l) or k_BLGK.shape[3] != kd:
    raise ValueError(f"self-attention shapes expected, got q {q_BLHK.shape} k {k_BLGK.shape} v {v_BLGK.shape}")
  if h % k_BLGK.shape[2]:
    raise ValueError(f"query heads {h} not a multiple of kv heads {k_BLGK.shape[2]}")
  if chunk_size is not None and chunk_size <= 0:
    raise ValueError(f"chunk_size must be positive, got {chunk_size}")
  lp = -(-l // math.lcm(block_q, block_k)) * math.lcm(block_q, block_k)
  cfg = dict(scale=float(kd ** -0.5 if scale is None else scale), causal=causal, chunk_size=chunk_size,
             seq_len=l, block_q=block_q, block_k=block_k, interpret=interpret)
  if positions is not None and positions.shape != (b, l):
    raise ValueError(f"positions must be [B, L] = {(b, l)}, got {positions.shape}")
  seg = None if segment_ids is None else _pad_seq(segment_ids.astype(jnp.int32), lp)
  # Positions only matter for the chunk rule; without chunk_size the kernels take the index-only path.
  pos = None if positions is None or chunk_size is None else _pad_seq(positions.astype(jnp.int32), lp)
  out = _flash(_pad_seq(q_BLHK, lp), _pad_seq(k_BLGK, lp), _pad_seq(v_BLGK, lp), seg, pos,
               tuple(sorted(cfg.items())))
  return out[:, :l]

