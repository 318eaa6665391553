"""Llama 4 self-attention: GQA, interleaved RoPE + weightless qk-norm on RoPE layers, temperature-tuned NoPE layers."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from llama4_jax.config import ModelConfig
from llama4_jax.model.layers import declare, rms_normalize
from llama4_jax.model.rope import rotate
from llama4_jax.ops import kv_cache as kv_cache_ops
from llama4_jax.ops.attention import (QUERY_BLOCK, cache_attention, causal_self_attention, chunked_self_attention,
                                      dot_product_attention, pallas_self_attention, query_blocked_attention,
                                      temperature_scale)
from llama4_jax.ops.linear import linear, linear_shared
from llama4_jax.sharding import BATCH_AXES


# q, k and v as one product (ops.linear.linear_shared) in training and plain forwards where the heads are not split
# over devices. Not with a KV cache: joining copies the weights, which a decode step's few rows would not repay (it
# would triple the weight traffic of a memory-bound step). A switch for side-by-side timing.
FUSE_QKV = True


class Attention(nn.Module):
  cfg: ModelConfig
  use_rope: bool
  parallel: Any = None  # sharding.Parallel; the Pallas kernel then runs per shard (batch x heads) in a shard_map
  unpacked: bool = False  # rows are one document each from slot 0 (positions == slots): chunks start on blocks

  @nn.compact
  def __call__(self, x_BLD, positions_BL, segment_ids_BL, rotation, mask_BLL, kv_cache=None, meta=None):
    """Self-attention over the row; with `kv_cache` (generation), over the cache after writing this block into it
    (`meta`: ops.kv_cache.block_meta), returning (output, new cache)."""
    cfg = self.cfg
    d, h, g, k = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    dt = x_BLD.dtype
    wq = declare(self, "q", (d, h, k), ("embed", "heads", "head_dim"), cfg).astype(dt)
    wk = declare(self, "k", (d, g, k), ("embed", "kv_heads", "head_dim"), cfg).astype(dt)
    wv = declare(self, "v", (d, g, k), ("embed", "kv_heads", "head_dim"), cfg).astype(dt)
    wo = declare(self, "o", (h, k, d), ("heads", "head_dim", "embed"), cfg).astype(dt)
    if FUSE_QKV and kv_cache is None and (self.parallel is None or self.parallel.mesh.shape["tensor"] == 1):
      q_BLHK, k_BLGK, v_BLGK = linear_shared(x_BLD, (wq, wk, wv))
    else:
      q_BLHK, k_BLGK, v_BLGK = linear(x_BLD, wq), linear(x_BLD, wk), linear(x_BLD, wv)
    if self.use_rope:
      q_BLHK, k_BLGK = rotate(q_BLHK, *rotation), rotate(k_BLGK, *rotation)
      if cfg.use_qk_norm:  # after RoPE, as in the references (keys are cached in this form)
        q_BLHK, k_BLGK = rms_normalize(q_BLHK, cfg.rms_norm_eps), rms_normalize(k_BLGK, cfg.rms_norm_eps)
    elif cfg.attn_temperature_tuning:
      # Inference-time temperature tuning (arXiv 2501.19399) on global NoPE layers, by position in the document.
      scale_BL = temperature_scale(positions_BL, cfg.floor_scale, cfg.attn_scale)
      q_BLHK = (q_BLHK.astype(jnp.float32) * scale_BL[:, :, None, None]).astype(dt)
    chunk = cfg.attention_chunk_size
    if kv_cache is not None:
      ring = self.use_rope and chunk is not None
      new_cache, mask = kv_cache_ops.update_layer(kv_cache, k_BLGK, v_BLGK, meta, ring, chunk)
      out_BLHK = cache_attention(q_BLHK, new_cache["k"].astype(dt), new_cache["v"].astype(dt), mask,
                                 scale=k ** -0.5)
      return linear(out_BLHK, wo, 2), new_cache
    if cfg.attention_impl == "pallas":
      kernel = functools.partial(pallas_self_attention, chunk_size=chunk if self.use_rope else None,
                                 scale=k ** -0.5, interpret=cfg.kernel_interpret)
      if self.parallel is not None:  # a pallas_call is not partitioned automatically
        heads, rows = P(BATCH_AXES, None, "tensor", None), P(BATCH_AXES, None)
        kernel = jax.shard_map(kernel, mesh=self.parallel.mesh, in_specs=(heads, heads, heads, rows, rows),
                               out_specs=heads)
      out_BLHK = kernel(q_BLHK, k_BLGK, v_BLGK, positions_BL, segment_ids_BL)
    elif self.use_rope and chunk is not None and cfg.attention_impl == "xla" and x_BLD.shape[1] > chunk:
      out_BLHK = chunked_self_attention(q_BLHK, k_BLGK, v_BLGK, positions_BL, segment_ids_BL, chunk, k ** -0.5,
                                        aligned=self.unpacked)
    elif cfg.attention_impl == "xla" and x_BLD.shape[1] > 2 * QUERY_BLOCK:  # global attention over a long row
      out_BLHK = query_blocked_attention(q_BLHK, k_BLGK, v_BLGK, segment_ids_BL, k ** -0.5)
    elif cfg.attention_impl == "xla":  # skips the keys past each block of queries ('dense' keeps the reference)
      out_BLHK = causal_self_attention(q_BLHK, k_BLGK, v_BLGK, mask_BLL, k ** -0.5)
    else:
      out_BLHK = dot_product_attention(q_BLHK, k_BLGK, v_BLGK, mask_BLL, scale=k ** -0.5)
    return linear(out_BLHK, wo, 2)
