"""Functional entry points over an explicit params pytree (Flax Linen underneath)."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from llama4_jax.config import ModelConfig
from llama4_jax.model.transformer import Transformer


def _dummy_tokens():
  return jnp.zeros((1, 1), jnp.int32)


@functools.partial(jax.jit, static_argnums=0)
def init_params(cfg: ModelConfig, rng: jax.Array):
  """Random parameters (plain arrays, no partitioning boxes). Jitted: one compile instead of one per leaf."""
  boxed = Transformer(cfg).init(rng, _dummy_tokens())["params"]
  return nn.meta.unbox(boxed)


def param_shapes(cfg: ModelConfig):
  """ShapeDtypeStruct pytree of the parameters, computed with `jax.eval_shape` (nothing allocated)."""
  boxed = jax.eval_shape(lambda r: Transformer(cfg).init(r, _dummy_tokens())["params"], jax.random.key(0))
  return nn.meta.unbox(boxed)


def param_logical_axes(cfg: ModelConfig):
  """PartitionSpec pytree of logical axis names (scanned layers carry a leading 'layers' axis)."""
  boxed = jax.eval_shape(lambda r: Transformer(cfg).init(r, _dummy_tokens())["params"], jax.random.key(0))
  return nn.get_partition_spec(boxed)


def apply(cfg: ModelConfig, params, tokens_BL, positions_BL=None, segment_ids_BL=None, embeddings_BLD=None,
          parallel=None):
  """(logits_BLV float32, aux) with aux['moe'] = per-layer router statistics stacked over blocks.

  `parallel` (llama4_jax.sharding.Parallel) runs the model sharded over its mesh: activation constraints at block
  boundaries and expert parallelism for the routed experts. Call it under `jax.jit` with sharded inputs.
  """
  return Transformer(cfg, parallel).apply({"params": params}, tokens_BL, positions_BL, segment_ids_BL, embeddings_BLD)


@functools.partial(jax.jit, static_argnums=0)
def _forward_jit(cfg, params, tokens_BL, positions_BL, segment_ids_BL):
  return apply(cfg, params, tokens_BL, positions_BL, segment_ids_BL)[0]


def forward(cfg: ModelConfig, params, tokens_BL, positions_BL=None, segment_ids_BL=None):
  """Plain inference entry: logits [B, L, V] in float32.

  `positions_BL` (position of each token inside its document) and `segment_ids_BL` (document id, 0 = padding) make
  packed rows: documents never attend to each other and positions restart per document. Without `positions_BL`
  they are derived from the segment ids (0, 1, ... from each document's first slot).
  """
  tokens_BL = jnp.asarray(tokens_BL, jnp.int32)
  if tokens_BL.ndim != 2:
    raise ValueError(f"tokens must be [batch, length], got shape {tokens_BL.shape}")
  if positions_BL is not None:
    positions_BL = jnp.asarray(positions_BL, jnp.int32)
  if segment_ids_BL is not None:
    segment_ids_BL = jnp.asarray(segment_ids_BL, jnp.int32)
  return _forward_jit(cfg, params, tokens_BL, positions_BL, segment_ids_BL)
