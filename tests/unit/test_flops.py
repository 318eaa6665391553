"""Training FLOPs per step: hand computation on a tiny config, exact mask-pair counts, active-parameter agreement."""

import jax.numpy as jnp
import numpy as np
import pytest

from configs import models
from llama4_jax import param_count
from llama4_jax.config import from_config_dict
from llama4_jax.flops import attended_pairs, training_flops_per_step
from llama4_jax.ops.attention import self_attention_masks
from tests.conftest import tiny_config


def test_hand_computed_tiny_config():
  # D 32, 4 layers (dense 0,2; MoE 1,3; NoPE 3), H 4, G 2, K 8, F 16, F_mlp 24, E 4 top-1, V 97, chunk 8.
  cfg = tiny_config()
  f = training_flops_per_step(cfg, batch=2, seq_len=20)
  attn_proj = 4 * (32 * 4 * 8 + 2 * 32 * 2 * 8 + 4 * 8 * 32)  # 12288
  dense = 2 * 3 * 32 * 24  # 4608
  moe = 2 * (32 * 4) + 2 * 3 * 32 * 16 + 2 * 3 * 32 * 16  # router + shared + one routed expert: 6400
  lm_head = 32 * 97
  assert f["active_matmul_params"] == attn_proj + dense + moe + lm_head == 26400
  # L=20, chunk 8: chunks of 8, 8, 4 -> 36 + 36 + 10 = 82 pairs on RoPE layers 0-2; causal 210 on NoPE layer 3.
  pairs = 3 * 82 + 210
  assert f["attended_pairs"] == 2 * pairs
  forward = 2 * 26400 * 40 + 4 * 4 * 8 * 2 * pairs
  assert f["forward"] == forward and f["total"] == 3 * forward == 6_686_208
  parts = [k for k in f if k not in ("active_matmul_params", "tokens", "attended_pairs", "matmul", "attention",
                                     "forward", "total")]
  assert sum(f[k] for k in parts) == f["total"]


def test_top_k_counts_only_routed_experts():
  one, two = (training_flops_per_step(tiny_config(num_experts_per_tok=k), 1, 16) for k in (1, 2))
  assert two["routed_experts"] == 2 * one["routed_experts"] == 2 * 3 * 2 * (2 * 3 * 32 * 16) * 16
  assert two["shared_expert"] == one["shared_expert"]


@pytest.mark.parametrize("length,chunk", [(20, 8), (16, 8), (7, 8), (33, 5), (12, None)])
def test_attended_pairs_match_the_model_masks(length, chunk):
  pos = jnp.arange(length, dtype=jnp.int32)[None]
  global_mask, chunked_mask = self_attention_masks(pos, jnp.ones_like(pos), chunk)
  assert attended_pairs(length, None) == int(np.sum(global_mask))
  assert attended_pairs(length, chunk) == int(np.sum(chunked_mask))


def test_tiny_preset_active_params_agree_with_param_count():
  cfg = from_config_dict(models.tiny())
  counts = param_count.count(cfg)
  norms = (2 * cfg.num_hidden_layers + 1) * cfg.hidden_size
  f = training_flops_per_step(cfg, 8, 256)
  assert f["active_matmul_params"] == counts["active_text"] - cfg.vocab_size * cfg.hidden_size - norms
