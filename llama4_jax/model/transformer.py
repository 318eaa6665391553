"""The Llama 4 text decoder. Depth is a `scan` over the repeating super-block of layer kinds.

The super-block has lcm(no_rope_layer_interval, interleave_moe_layer_step) layers, each with its static kind (RoPE
or NoPE attention, dense or MoE feed-forward); scanning over `num_blocks` copies keeps compile time flat in depth.
Parameters of block-layer j live under params['blocks']['layer_j'] with a leading [num_blocks] axis, so global layer
i = block * block_size + j.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from llama4_jax.config import ModelConfig
from llama4_jax.model.attention import Attention
from llama4_jax.model.layers import MLP, RMSNorm, declare, dtype_of
from llama4_jax.model.moe import MoE
from llama4_jax.model.rope import rope_tables, rotation_tables
from llama4_jax.model.vision import VisionEncoder, merge_image_features
from llama4_jax.ops import kv_cache as kv_cache_ops
from llama4_jax.ops.attention import self_attention_masks
from llama4_jax.ops.linear import linear
from llama4_jax.sharding import ACTIVATION_SPEC, BATCH_AXES, EMBED_TABLE_SPEC

REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_with_no_batch_dims": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def positions_from_segments(segment_ids_BL):
  """Position of each token inside its document: slot index minus the slot where its segment started."""
  b, l = segment_ids_BL.shape
  index_BL = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
  starts_BL = jnp.concatenate([jnp.ones((b, 1), bool), segment_ids_BL[:, 1:] != segment_ids_BL[:, :-1]], axis=1)
  return index_BL - jax.lax.cummax(jnp.where(starts_BL, index_BL, 0), axis=1)


class DecoderLayer(nn.Module):
  cfg: ModelConfig
  index: int  # position inside the super-block; its kind is the same in every block
  parallel: Any = None  # llama4_jax.sharding.Parallel for a sharded run, None on one device
  unpacked: bool = False  # every row one document from slot 0 (see Transformer.__call__)

  @nn.compact
  def __call__(self, x_BLD, ctx, kv_cache=None):
    cfg = self.cfg
    use_rope = cfg.is_rope_layer(self.index)
    mask = ctx.get("chunked_mask" if use_rope else "global_mask")
    h = RMSNorm(cfg, name="attn_norm")(x_BLD)
    attn = Attention(cfg, use_rope, self.parallel, self.unpacked, name="attn")(
        h, ctx["positions"], ctx["segment_ids"], ctx["rotation"], mask, kv_cache, ctx.get("meta"))
    if kv_cache is not None:
      attn, kv_cache = attn
    x_BLD = x_BLD + attn
    h = RMSNorm(cfg, name="ffn_norm")(x_BLD)
    if cfg.is_moe_layer(self.index):
      out, stats = MoE(cfg, self.parallel, name="moe")(h, ctx["segment_ids"] != 0)
    else:
      out, stats = MLP(cfg, cfg.intermediate_size_mlp, name="mlp")(h), None
    if self.is_mutable_collection("intermediates"):  # coordinate checks (llama4_jax/coord_check.py) only
      for name, value in (("attn_out", attn), ("ffn_out", out), ("residual", x_BLD + out)):
        self.sow("intermediates", name, jnp.mean(jnp.abs(value.astype(jnp.float32))))
    return x_BLD + out, stats, kv_cache


class SuperBlock(nn.Module):
  cfg: ModelConfig
  parallel: Any = None
  unpacked: bool = False

  @nn.compact
  def __call__(self, x_BLD, ctx, kv_cache=None):
    """(x, stats); with `kv_cache` ({layer_j: {k, v}} of this block), (x, (stats, new kv_cache))."""
    stats, new_cache = {}, {}
    if self.parallel is not None:  # activations between blocks: batch split over the batch axes
      x_BLD = self.parallel.constrain(x_BLD, ACTIVATION_SPEC)
    for j in range(self.cfg.block_size):
      layer_cache = None if kv_cache is None else kv_cache[f"layer_{j}"]
      x_BLD, layer_stats, layer_cache = DecoderLayer(self.cfg, j, self.parallel, self.unpacked, name=f"layer_{j}")(
          x_BLD, ctx, layer_cache)
      if layer_stats is not None:
        stats[f"layer_{j}"] = layer_stats
      new_cache[f"layer_{j}"] = layer_cache
    return (x_BLD, stats) if kv_cache is None else (x_BLD, (stats, new_cache))


def _run_unstacked(blocks, x_BLD, ctx, kv_cache=None):
  """The scan's contract over a Python list of super-blocks; `kv_cache` is then a list of per-block caches."""
  all_stats, caches = [], []
  for i, block in enumerate(blocks):
    out = block(x_BLD, ctx) if kv_cache is None else block(x_BLD, ctx, kv_cache[i])
    x_BLD, stats = out if kv_cache is None else (out[0], out[1][0])
    if kv_cache is not None:
      caches.append(out[1][1])
    all_stats.append(stats)
  stats = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *all_stats) if all_stats[0] else {}
  return (x_BLD, stats) if kv_cache is None else (x_BLD, (stats, caches))


def unstack_blocks(tree, num_blocks: int, key: str = "blocks"):
  """{key: stacked [num_blocks, ...] subtree, ...} -> {block_0: ..., block_{n-1}: ..., ...} (params)."""
  out = {k: v for k, v in tree.items() if k != key}
  out.update({f"block_{i}": jax.tree_util.tree_map(lambda x: x[i], tree[key]) for i in range(num_blocks)})
  return out


class Transformer(nn.Module):
  """tokens [B, L] -> (logits [B, L, V] float32, aux). aux['moe'] holds per-MoE-layer router statistics.

  With a vision tower (`cfg.vision`), `pixels_BNCHW` holds each row's image tiles in reading order (N tiles per row,
  zero tiles as padding): their projected features replace the row's `<|patch|>` embeddings in order.
  """

  cfg: ModelConfig
  parallel: Any = None  # llama4_jax.sharding.Parallel: mesh + expert-parallel transport; None on one device
  # Generation loops: the super-blocks as separate modules `block_{i}` over per-block params and caches
  # (`unstack_blocks`), so a compiled decode loop reads the weights in place instead of slicing the stacked ones on
  # every step (XLA does not hoist those loop-invariant slices out of a while loop).
  unstacked: bool = False

  @nn.compact
  def __call__(self, tokens_BL, positions_BL=None, segment_ids_BL=None, embeddings_BLD=None, pixels_BNCHW=None,
               kv_cache=None, valid_BL=None, embeddings_only=False, logits_at_B=None):
    """Training / scoring call, or with `kv_cache` (see `llama4_jax.model.init_cache`) a generation block: the
    tokens continue each row from its cached length (`valid_BL` marks real tokens; padding is not cached) and the
    call returns (logits, aux, new kv_cache). `embeddings_only`: return the input embeddings (images fused).
    `logits_at_B`: compute logits only at this slot of each row ([B, 1, V]; what a prefill piece needs)."""
    cfg = self.cfg
    # Rows given without positions and segment ids are one document each, starting at slot 0: the attention layers
    # then know statically what they would otherwise find out per batch (chunked layers: no key before the query's
    # own chunk is visible, so no `lax.cond` on the batch's masks).
    unpacked = positions_BL is None and segment_ids_BL is None and kv_cache is None
    block = SuperBlock
    if cfg.remat_policy != "none" and kv_cache is None:
      block = nn.remat(block, policy=REMAT_POLICIES[cfg.remat_policy], prevent_cse=False)
    if self.unstacked:
      blocks = functools.partial(_run_unstacked, [block(cfg, self.parallel, unpacked, name=f"block_{i}")
                                                  for i in range(cfg.num_blocks)])
    else:
      blocks = nn.scan(
          block, variable_axes={"params": 0, "intermediates": 0}, split_rngs={"params": True},
          in_axes=nn.broadcast if kv_cache is None else (nn.broadcast, 0),
          length=cfg.num_blocks, unroll=cfg.unroll, metadata_params={nn.PARTITION_NAME: "layers"})(
              cfg, self.parallel, unpacked, name="blocks")
    b, l = tokens_BL.shape
    meta = None
    if kv_cache is not None:
      valid_BL = jnp.ones((b, l), bool) if valid_BL is None else valid_BL
      meta = kv_cache_ops.block_meta(kv_cache["length"], valid_BL, kv_cache.get("ring_pos"),
                                     cfg.attention_chunk_size)
      positions_BL, segment_ids_BL = meta["positions"], valid_BL.astype(jnp.int32)
    if segment_ids_BL is None:
      segment_ids_BL = jnp.ones((b, l), jnp.int32)
    if positions_BL is None:
      positions_BL = (jax.lax.broadcasted_iota(jnp.int32, (b, l), 1) if unpacked
                      else positions_from_segments(segment_ids_BL))
    embed = declare(self, "embed", (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), cfg)
    dt = dtype_of(cfg.dtype)
    if self.parallel is not None:  # gather from the table with its FSDP dim gathered and tokens batch-split
      embed = self.parallel.constrain(embed, EMBED_TABLE_SPEC)
      tokens_BL = self.parallel.constrain(tokens_BL, P(BATCH_AXES, None))
    x_BLD = jnp.take(embed, tokens_BL, axis=0).astype(dt) if embeddings_BLD is None else embeddings_BLD.astype(dt)
    if cfg.vision is not None:
      x_BLD = self._fuse_images(x_BLD, tokens_BL, pixels_BNCHW)
    if embeddings_only:
      return x_BLD
    ctx = {"positions": positions_BL, "segment_ids": segment_ids_BL,
           "rotation": rotation_tables(*rope_tables(positions_BL, cfg.head_dim, cfg.rope_theta, cfg.rope_scaling))}
    if kv_cache is None:
      ctx["global_mask"], ctx["chunked_mask"] = self_attention_masks(positions_BL, segment_ids_BL,
                                                                     cfg.attention_chunk_size)
      x_BLD, stats = blocks(x_BLD, ctx)
    else:
      ctx["meta"] = meta
      x_BLD, (stats, layers) = blocks(x_BLD, ctx, kv_cache["layers"])
      kv_cache = {"layers": layers, "length": meta["new_length"], "ring_pos": meta["ring_pos"]}
    if logits_at_B is not None:
      x_BLD = jnp.take_along_axis(x_BLD, logits_at_B[:, None, None].astype(jnp.int32), axis=1)
    x_BLD = RMSNorm(cfg, name="final_norm")(x_BLD)
    head = declare(self, "lm_head", (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), cfg)
    logits_BLV = linear(x_BLD, head.astype(dt), 1, jnp.float32)
    if kv_cache is not None:
      return logits_BLV, {"moe": stats}, kv_cache
    return logits_BLV, {"moe": stats}

  def _fuse_images(self, x_BLD, tokens_BL, pixels_BNCHW):
    """Early fusion of image features into the token embeddings (a no-op for text-only calls)."""
    v = self.cfg.vision
    if pixels_BNCHW is None:
      if not self.is_initializing():
        return x_BLD
      pixels_BNCHW = jnp.zeros((1, 1, v.num_channels, v.image_size, v.image_size), jnp.float32)
    b, n = pixels_BNCHW.shape[:2]
    feats = VisionEncoder(self.cfg, name="vision")(pixels_BNCHW.reshape(b * n, *pixels_BNCHW.shape[2:]))
    feats_BMD = feats.reshape(b, n * feats.shape[1], feats.shape[2])
    if self.is_initializing():
      return x_BLD
    return merge_image_features(x_BLD, tokens_BL, feats_BMD, v.image_token_id)
