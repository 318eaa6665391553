"""Model FLOPs of one training step, for tokens/s -> MFU.

Convention (PaLM appendix B style, "model FLOPs", not hardware FLOPs):
  * A matmul with an [in, out] weight costs 2 * in * out FLOPs per token in the forward pass. Only ACTIVE weights
    count: attention projections (q, k, v, o), the dense SwiGLU MLP, the MoE router, the shared expert, the top-k
    routed experts a token is sent to (not all E), and lm_head. The embedding lookup is a gather: 0 FLOPs.
  * Attention scores (Q K^T) and the value mix (P V) cost 2 * K FLOPs each per query head per ATTENDED query-key
    pair: 4 * H * K * pairs. Pairs are counted exactly for one document per row at positions 0..L-1: global (NoPE)
    layers are causal, L (L + 1) / 2 pairs; chunked (RoPE) layers only see keys in their own chunk of
    `attention_chunk_size`, aligned to position 0. Masked-out pairs that an implementation still computes, softmax,
    norms, activations, the loss and the optimizer update are not counted.
  * Training = forward + backward = 3 x forward (the backward needs gradients w.r.t. inputs and weights).
Remat recomputation is not counted either, so MFU is comparable across remat policies.
"""

from __future__ import annotations

from llama4_jax.config import ModelConfig


def attended_pairs(seq_len: int, chunk_size: int | None) -> int:
  """Causal query-key pairs of one row of `seq_len` tokens; with `chunk_size`, keys must share the query's chunk."""
  if chunk_size is None or chunk_size >= seq_len:
    return seq_len * (seq_len + 1) // 2
  full, rest = divmod(seq_len, chunk_size)
  return full * chunk_size * (chunk_size + 1) // 2 + rest * (rest + 1) // 2


def active_matmul_params(cfg: ModelConfig) -> dict[str, int]:
  """Weights one token multiplies through, by component (summed over layers)."""
  d, h, g, k = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
  n_moe = sum(cfg.is_moe_layer(i) for i in range(cfg.num_hidden_layers))
  n_dense = cfg.num_hidden_layers - n_moe
  swiglu = lambda f: 3 * d * f  # noqa: E731  (gate, up, down)
  return {
      "attention_proj": cfg.num_hidden_layers * (d * h * k + 2 * d * g * k + h * k * d),
      "dense_mlp": n_dense * swiglu(cfg.intermediate_size_mlp),
      "router": n_moe * d * cfg.num_local_experts,
      "shared_expert": n_moe * swiglu(cfg.intermediate_size),
      "routed_experts": n_moe * cfg.num_experts_per_tok * swiglu(cfg.intermediate_size),
      "lm_head": d * cfg.vocab_size,
  }


def training_flops_per_step(cfg: ModelConfig, batch: int, seq_len: int) -> dict:
  """FLOPs of one training step on `batch` rows of `seq_len` tokens (see the module docstring).

  Returns per-component training FLOPs (`<component>` keys, already x3), `matmul`, `attention`, `forward` and
  `total` (= 3 * forward), plus `active_matmul_params` and `tokens`.
  """
  tokens = batch * seq_len
  params = active_matmul_params(cfg)
  out = {name: 3 * 2 * n * tokens for name, n in params.items()}
  n_rope = sum(cfg.is_rope_layer(i) for i in range(cfg.num_hidden_layers))
  # Chunked masks apply to RoPE layers only; without a chunk size every layer is global.
  pairs_per_row = (n_rope * attended_pairs(seq_len, cfg.attention_chunk_size)
                   + (cfg.num_hidden_layers - n_rope) * attended_pairs(seq_len, None))
  attn_fwd = 4 * cfg.num_attention_heads * cfg.head_dim * batch * pairs_per_row
  out["attention_scores"] = 3 * attn_fwd
  matmul_fwd = 2 * sum(params.values()) * tokens
  out.update(active_matmul_params=sum(params.values()), tokens=tokens, attended_pairs=batch * pairs_per_row,
             matmul=3 * matmul_fwd, attention=3 * attn_fwd, forward=matmul_fwd + attn_fwd,
             total=3 * (matmul_fwd + attn_fwd))
  return out
