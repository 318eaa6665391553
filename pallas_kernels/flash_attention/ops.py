"""`flash_attention`: padding, argument checks and the custom_vjp that ties the Pallas kernels together.

The forward saves (padded q, k, v, segment ids, out, lse); the backward recomputes attention probabilities
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
@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _flash(q, k, v, segment_ids, cfg):
  return _flash_fwd(q, k, v, segment_ids, cfg)[0]


def _flash_fwd(q, k, v, segment_ids, cfg):
  out, lse = kernel.flash_forward(q, k, v, segment_ids, **dict(cfg))
  return out, (q, k, v, segment_ids, out, lse)


def _flash_bwd(cfg, res, do):
  q, k, v, segment_ids, out, lse = res
  # delta = rowsum(o * do) is the softmax-backward correction; one cheap XLA reduction, laid out like lse.
  delta = jnp.einsum("blhk,blhk->bhl", out.astype(jnp.float32), do.astype(jnp.float32))
  dq, dk, dv = kernel.flash_backward(q, k, v, segment_ids, do, lse, delta, **dict(cfg))
  return dq, dk, dv, None  # integer segment ids get no cotangent


_flash.defvjp(_flash_fwd, _flash_bwd)


def flash_attention(q_BLHK, k_BLGK, v_BLGK, *, causal: bool = True, chunk_size: int | None = None,
                    segment_ids=None, scale: float | None = None, block_q: int = 64, block_k: int = 64,
                    interpret: bool = False):
  """Grouped-query flash attention (forward and backward in Pallas). Returns [B, L, H, K] in q's dtype.

  Args:
    q_BLHK, k_BLGK, v_BLGK: queries and keys/values; query head h reads kv head h // (H // G).
    causal: key index <= query index.
    chunk_size: if set, a query at index p only sees keys in [p // C * C, (p // C + 1) * C) (Llama 4 RoPE layers).
    segment_ids: optional int [B, L]; tokens only see keys with the same id (0 marks padding).
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
  seg = None if segment_ids is None else _pad_seq(segment_ids.astype(jnp.int32), lp)
  out = _flash(_pad_seq(q_BLHK, lp), _pad_seq(k_BLGK, lp), _pad_seq(v_BLGK, lp), seg, tuple(sorted(cfg.items())))
  return out[:, :l]

