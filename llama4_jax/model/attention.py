"""Llama 4 self-attention: GQA, interleaved RoPE + weightless qk-norm on RoPE layers, temperature-tuned NoPE layers."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from llama4_jax.config import ModelConfig
from llama4_jax.model.layers import declare, rms_normalize
from llama4_jax.model.rope import apply_rope
from llama4_jax.ops.attention import (chunked_self_attention, dot_product_attention, pallas_self_attention,
                                      temperature_scale)


class Attention(nn.Module):
  cfg: ModelConfig
  use_rope: bool

  @nn.compact
  def __call__(self, x_BLD, positions_BL, segment_ids_BL, cos_sin, mask_BLL):
    cfg = self.cfg
    d, h, g, k = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    dt = x_BLD.dtype
    wq = declare(self, "q", (d, h, k), ("embed", "heads", "head_dim"), cfg).astype(dt)
    wk = declare(self, "k", (d, g, k), ("embed", "kv_heads", "head_dim"), cfg).astype(dt)
    wv = declare(self, "v", (d, g, k), ("embed", "kv_heads", "head_dim"), cfg).astype(dt)
    wo = declare(self, "o", (h, k, d), ("heads", "head_dim", "embed"), cfg).astype(dt)
    q_BLHK = jnp.einsum("bld,dhk->blhk", x_BLD, wq)
    k_BLGK = jnp.einsum("bld,dgk->blgk", x_BLD, wk)
    v_BLGK = jnp.einsum("bld,dgk->blgk", x_BLD, wv)
    if self.use_rope:
      cos, sin = cos_sin
      q_BLHK, k_BLGK = apply_rope(q_BLHK, cos, sin), apply_rope(k_BLGK, cos, sin)
      if cfg.use_qk_norm:  # after RoPE, as in the references (keys are cached in this form)
        q_BLHK, k_BLGK = rms_normalize(q_BLHK, cfg.rms_norm_eps), rms_normalize(k_BLGK, cfg.rms_norm_eps)
    elif cfg.attn_temperature_tuning:
      # Inference-time temperature tuning (arXiv 2501.19399) on global NoPE layers, by position in the document.
      scale_BL = temperature_scale(positions_BL, cfg.floor_scale, cfg.attn_scale)
      q_BLHK = (q_BLHK.astype(jnp.float32) * scale_BL[:, :, None, None]).astype(dt)
    chunk = cfg.attention_chunk_size
    if cfg.attention_impl == "pallas":
      out_BLHK = pallas_self_attention(q_BLHK, k_BLGK, v_BLGK, positions_BL, segment_ids_BL,
                                       chunk if self.use_rope else None, k ** -0.5, cfg.kernel_interpret)
    elif self.use_rope and chunk is not None and cfg.attention_impl == "banded" and x_BLD.shape[1] > chunk:
      out_BLHK = chunked_self_attention(q_BLHK, k_BLGK, v_BLGK, positions_BL, segment_ids_BL, chunk, k ** -0.5)
    else:
      out_BLHK = dot_product_attention(q_BLHK, k_BLGK, v_BLGK, mask_BLL, scale=k ** -0.5)
    return jnp.einsum("blhk,hkd->bld", out_BLHK, wo)
