"""Functional entry points over an explicit params pytree (Flax Linen underneath)."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from llama4_jax.config import ModelConfig
from llama4_jax.model.multipliers import fold_forward_multipliers, scale_leaves  # noqa: F401  (re-exported)
from llama4_jax.model.transformer import Transformer, unstack_blocks


def _dummy_tokens():
  return jnp.zeros((1, 1), jnp.int32)


@functools.partial(jax.jit, static_argnums=0)
def init_params(cfg: ModelConfig, rng: jax.Array):
  """Random parameters (plain arrays, no partitioning boxes), scaled by `cfg.init_multipliers`. Jitted: one compile
  instead of one per leaf."""
  boxed = Transformer(cfg).init(rng, _dummy_tokens())["params"]
  return scale_leaves(nn.meta.unbox(boxed), cfg.init_multipliers)


def param_shapes(cfg: ModelConfig):
  """ShapeDtypeStruct pytree of the parameters, computed with `jax.eval_shape` (nothing allocated)."""
  boxed = jax.eval_shape(lambda r: Transformer(cfg).init(r, _dummy_tokens())["params"], jax.random.key(0))
  return nn.meta.unbox(boxed)


def param_logical_axes(cfg: ModelConfig):
  """PartitionSpec pytree of logical axis names (scanned layers carry a leading 'layers' axis)."""
  boxed = jax.eval_shape(lambda r: Transformer(cfg).init(r, _dummy_tokens())["params"], jax.random.key(0))
  return nn.get_partition_spec(boxed)


def apply(cfg: ModelConfig, params, tokens_BL, positions_BL=None, segment_ids_BL=None, embeddings_BLD=None,
          parallel=None, pixels_BNCHW=None):
  """(logits_BLV float32, aux) with aux['moe'] = per-layer router statistics stacked over blocks.

  `parallel` (llama4_jax.sharding.Parallel) runs the model sharded over its mesh: activation constraints at block
  boundaries and expert parallelism for the routed experts. Call it under `jax.jit` with sharded inputs.
  `pixels_BNCHW`: each row's image tiles in order (see `images_for_rows`), for a model with a vision tower.
  """
  params = scale_leaves(params, cfg.forward_multipliers)
  return Transformer(cfg, parallel).apply({"params": params}, tokens_BL, positions_BL, segment_ids_BL, embeddings_BLD,
                                          pixels_BNCHW)


def images_for_rows(cfg: ModelConfig, tokens_BL, pixel_values_NCHW, tiles_per_row: int | None = None) -> np.ndarray:
  """Hugging Face's flat `pixel_values` [tiles, C, S, S] (tiles of every image of the batch, in order) -> per-row
  tiles [B, N, C, S, S] (zero tiles pad rows with fewer images), checking that every row's `<|patch|>` count is
  exactly what its tiles produce. Runs on the host, before anything is compiled."""
  v = cfg.vision
  if v is None:
    raise ValueError("pixel_values given but the model has no vision tower (model.vision is disabled)")
  pixels = np.asarray(pixel_values_NCHW, np.float32)
  shape = (v.num_channels, v.image_size, v.image_size)
  if pixels.ndim != 4 or pixels.shape[1:] != shape:
    raise ValueError(f"pixel_values must be [tiles, {', '.join(map(str, shape))}], got shape {pixels.shape}")
  counts = (np.asarray(tokens_BL) == v.image_token_id).sum(axis=1)
  per_tile = v.tokens_per_tile
  if counts.sum() != pixels.shape[0] * per_tile:
    raise ValueError(f"the prompts hold {int(counts.sum())} image tokens (id {v.image_token_id}) but pixel_values "
                     f"give {pixels.shape[0]} tiles x {per_tile} = {pixels.shape[0] * per_tile} image features")
  if np.any(counts % per_tile):
    row = int(np.argmax(counts % per_tile))
    raise ValueError(f"row {row} holds {int(counts[row])} image tokens, not a whole number of {per_tile}-token tiles")
  tiles = counts // per_tile
  n = max(int(tiles.max()), 1) if tiles_per_row is None else tiles_per_row
  if tiles.max() > n:
    raise ValueError(f"a row needs {int(tiles.max())} tiles but tiles_per_row={n}")
  out = np.zeros((len(tiles), n) + shape, np.float32)
  starts = np.concatenate([[0], np.cumsum(tiles)])
  for b, t in enumerate(tiles):
    out[b, :t] = pixels[starts[b]:starts[b] + t]
  return out


@functools.partial(jax.jit, static_argnums=0)
def _forward_jit(cfg, params, tokens_BL, positions_BL, segment_ids_BL, pixels_BNCHW):
  return apply(cfg, params, tokens_BL, positions_BL, segment_ids_BL, pixels_BNCHW=pixels_BNCHW)[0]


def forward(cfg: ModelConfig, params, tokens_BL, positions_BL=None, segment_ids_BL=None, pixel_values=None):
  """Plain inference entry: logits [B, L, V] in float32.

  `positions_BL` (position of each token inside its document) and `segment_ids_BL` (document id, 0 = padding) make
  packed rows: documents never attend to each other and positions restart per document. Without `positions_BL`
  they are derived from the segment ids (0, 1, ... from each document's first slot). `pixel_values` are Hugging
  Face's flat tiles [tiles, C, S, S] (from `llama4_jax.data.image.preprocess_image`), matched in order to the
  `<|patch|>` tokens of the batch; a count mismatch is an error naming both counts.
  """
  tokens_BL = jnp.asarray(tokens_BL, jnp.int32)
  if tokens_BL.ndim != 2:
    raise ValueError(f"tokens must be [batch, length], got shape {tokens_BL.shape}")
  if positions_BL is not None:
    positions_BL = jnp.asarray(positions_BL, jnp.int32)
  if segment_ids_BL is not None:
    segment_ids_BL = jnp.asarray(segment_ids_BL, jnp.int32)
  pixels = None
  if pixel_values is not None:
    pixels = jnp.asarray(images_for_rows(cfg, np.asarray(tokens_BL), pixel_values))
  elif cfg.vision is not None and np.any(np.asarray(tokens_BL) == cfg.vision.image_token_id):
    count = int(np.sum(np.asarray(tokens_BL) == cfg.vision.image_token_id))
    raise ValueError(f"the prompts hold {count} image tokens (id {cfg.vision.image_token_id}) but no pixel_values "
                     "were given (0 image features)")
  return _forward_jit(cfg, params, tokens_BL, positions_BL, segment_ids_BL, pixels)


def cache_layout(cfg: ModelConfig, max_len: int) -> dict[str, int]:
  """Slots per super-block layer: the chunk for chunked (RoPE) layers, `max_len` for global layers."""
  chunk = cfg.attention_chunk_size
  return {f"layer_{j}": (chunk if cfg.is_rope_layer(j) and chunk is not None else max_len)
          for j in range(cfg.block_size)}


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype=None) -> dict:
  """Empty KV cache for `batch` rows of up to `max_len` tokens (ops/kv_cache.py describes the layout).

  Per super-block layer j: k and v [num_blocks, B, G, slots_j, K] in the compute dtype; `length` [B] tokens cached
  per row; `ring_pos` [B, chunk] the position held by each ring slot (-1: empty), None without chunked attention.
  """
  dtype = jnp.dtype(dtype or cfg.dtype)
  shape = lambda slots: (cfg.num_blocks, batch, cfg.num_key_value_heads, slots, cfg.head_dim)  # noqa: E731
  layers = {name: {"k": jnp.zeros(shape(slots), dtype), "v": jnp.zeros(shape(slots), dtype)}
            for name, slots in cache_layout(cfg, max_len).items()}
  chunk = cfg.attention_chunk_size
  ring = None if chunk is None else jnp.full((batch, chunk), -1, jnp.int32)
  return {"layers": layers, "length": jnp.zeros((batch,), jnp.int32), "ring_pos": ring}


def unstack_params(cfg: ModelConfig, params):
  """Params with the stacked super-blocks split into `block_{i}` entries (for `decode_block(..., unstacked=True)`)."""
  return unstack_blocks(params, cfg.num_blocks)


def unstack_cache(cfg: ModelConfig, kv_cache):
  """A cache whose `layers` is a list of per-super-block caches (the unstacked decode path), and back."""
  layers = kv_cache["layers"]
  if isinstance(layers, list):
    layers = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *layers)
  else:
    layers = [jax.tree_util.tree_map(lambda x: x[i], layers) for i in range(cfg.num_blocks)]
  return {**kv_cache, "layers": layers}


def decode_block(cfg: ModelConfig, params, tokens_BT, kv_cache, valid_BT=None, embeddings_BTD=None,
                 unstacked: bool = False, logits_at_B=None):
  """One generation block (a prompt piece or one new token per row) through the cache: (logits [B, T, V], cache).

  `unstacked`: params from `unstack_params` and a cache from `unstack_cache` (what compiled generation uses).
  `logits_at_B`: logits only at that slot of each row ([B, 1, V]).
  A block must not cross a chunk boundary of the chunked layers (their ring holds one chunk): prefill in pieces
  that divide `attention_chunk_size`, starting at chunk-aligned lengths.
  """
  chunk = cfg.attention_chunk_size
  if chunk is not None and tokens_BT.shape[1] > chunk:
    raise ValueError(f"{tokens_BT.shape[1]} tokens cross a chunk boundary (chunk {chunk}): feed pieces of at most "
                     "model.attention_chunk_size tokens")
  params = scale_leaves(params, cfg.forward_multipliers)  # generate() folds them into the weights once instead
  logits, _, kv_cache = Transformer(cfg, unstacked=unstacked).apply(
      {"params": params}, tokens_BT, embeddings_BLD=embeddings_BTD, kv_cache=kv_cache, valid_BL=valid_BT,
      logits_at_B=logits_at_B)
  return logits, kv_cache


def embed_prompt(cfg: ModelConfig, params, tokens_BL, pixels_BNCHW=None):
  """Token embeddings of prompts with image features fused in at their `<|patch|>` tokens: [B, L, D]."""
  params = scale_leaves(params, cfg.forward_multipliers)
  return Transformer(cfg).apply({"params": params}, tokens_BL, pixels_BNCHW=pixels_BNCHW, embeddings_only=True)
