"""Llama 4 MoE feed-forward: sigmoid top-k router scaling the expert input, plus an always-on shared expert."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from llama4_jax.config import ModelConfig
from llama4_jax.model.layers import MLP, declare
from llama4_jax.ops import expert_parallel
from llama4_jax.ops import moe as moe_ops


class MoE(nn.Module):
  cfg: ModelConfig
  parallel: Any = None  # sharding.Parallel: routed experts run expert-parallel inside a shard_map

  @nn.compact
  def __call__(self, x_BLD, valid_BL):
    cfg = self.cfg
    b, l, d = x_BLD.shape
    e, f, dt = cfg.num_local_experts, cfg.intermediate_size, x_BLD.dtype
    router = declare(self, "router", (d, e), ("embed", None), cfg)
    # [E, D, 2, F]: gate and up of each expert side by side, HF's fused `gate_up_proj` layout.
    gate_up = declare(self, "gate_up", (e, d, 2, f), ("experts", "embed", None, "expert_mlp"), cfg).astype(dt)
    down = declare(self, "down", (e, f, d), ("experts", "expert_mlp", "embed"), cfg).astype(dt)
    x_TD = x_BLD.reshape(b * l, d)
    scores_TK, experts_TK, logits_TE = moe_ops.route(x_TD, router, cfg.num_experts_per_tok)
    if self.parallel is not None:
      routed_TD, dropped = expert_parallel.moe_expert_parallel(
          self.parallel, x_TD, scores_TK, experts_TK, gate_up, down, impl=cfg.moe_impl,
          interpret=cfg.kernel_interpret, local_capacity_factor=cfg.moe_capacity_factor)
    else:
      routed_TD, dropped = moe_ops.dispatch(cfg.moe_impl, x_TD, scores_TK, experts_TK, gate_up, down,
                                            interpret=cfg.kernel_interpret, capacity_factor=cfg.moe_capacity_factor)
    # The shared expert and the router run under the normal (automatic) sharding, outside the shard_map.
    shared_BLD = MLP(cfg, cfg.intermediate_size, axis="expert_mlp", name="shared")(x_BLD)
    stats = dict(moe_ops.load_statistics(logits_TE, experts_TK, valid_BL.reshape(-1)), dropped=dropped)
    return shared_BLD + routed_TD.reshape(b, l, d).astype(dt), stats
