"""optax AdamW with warm-up + cosine / warmup-stable-decay schedules, clipping, a weight-decay mask and
per-parameter-group learning-rate and weight-decay multipliers chosen by regular expressions on parameter paths.

Parameter paths are '/'-joined pytree keys, e.g. 'blocks/layer_1/moe/gate' or 'embed'. The multipliers are the hook
MetaP-style per-layer learning rates plug into.
"""

from __future__ import annotations

import re
from typing import Sequence

import jax
import jax.numpy as jnp
import optax

from llama4_jax.model.multipliers import leaf_factors, param_paths


def learning_rate_schedule(peak: float, total_steps: int, warmup_steps: int, kind: str = "cosine",
                           min_ratio: float = 0.1, decay_fraction: float = 0.2):
  """Linear warm-up to `peak`, then cosine decay or warmup-stable-decay (linear to min over the last fraction)."""
  if kind not in ("cosine", "wsd", "constant"):
    raise ValueError(f"optim.schedule={kind!r} is not one of cosine, wsd, constant")
  warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
  warmup = optax.linear_schedule(0.0, peak, max(warmup_steps, 1))
  rest = max(total_steps - warmup_steps, 1)
  if kind == "cosine":
    after = optax.cosine_decay_schedule(peak, rest, alpha=min_ratio)
  elif kind == "constant":
    after = optax.constant_schedule(peak)
  else:
    decay = max(int(rest * decay_fraction), 1)
    after = optax.join_schedules(
        [optax.constant_schedule(peak), optax.linear_schedule(peak, peak * min_ratio, decay)], [rest - decay])
  if warmup_steps == 0:
    return after
  return optax.join_schedules([warmup, after], [warmup_steps])


def _match(patterns: Sequence[str], path: str) -> bool:
  return any(re.search(p, path) for p in patterns)


def weight_decay_mask(params, exclude: Sequence[str]):
  """True where weight decay applies: every parameter whose path matches none of `exclude`."""
  return jax.tree_util.tree_map(lambda p: not _match(exclude, p), param_paths(params))


def lr_multiplier_tree(params, multipliers: Sequence[tuple[str, float]]):
  """Per-parameter learning-rate multiplier: product of every (regex, factor) pair whose regex matches the path."""
  return leaf_factors(params, multipliers)


def scale_by_tree(factors) -> optax.GradientTransformation:
  """Multiplies each update leaf by a static per-leaf factor (so it scales the decoupled weight decay too)."""
  def init(params):
    del params
    return optax.EmptyState()

  def update(updates, state, params=None):
    del params
    return jax.tree_util.tree_map(lambda u, f: u if f == 1.0 else u * jnp.asarray(f, u.dtype), updates,
                                  factors), state
  return optax.GradientTransformation(init, update)


def add_decayed_weights_tree(coefficients) -> optax.GradientTransformation:
  """Adds coefficient x parameter to each update leaf, with a static per-leaf coefficient (0: no decay)."""
  def init(params):
    del params
    return optax.EmptyState()

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("per-parameter weight decay needs the parameters: call tx.update(grads, state, params)")
    return jax.tree_util.tree_map(lambda u, p, c: u if c == 0.0 else u + jnp.asarray(c, u.dtype) * p, updates,
                                  params, coefficients), state
  return optax.GradientTransformation(init, update)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
  """Scales the updates by min(1, max_norm / global norm): optax's clip_by_global_norm up to rounding (optax divides
  each element by the norm, then multiplies by max_norm; this multiplies by one precomputed factor).

  Why not optax's: XLA counts a floating-point divide as expensive and will not duplicate it into its two consumers
  (the Adam moments), so every gradient was first written out clipped and read back twice; a multiply is fused into
  both (one read and one write of the gradients fewer per step).
  """
  def update(updates, state, params=None):
    del params
    factor = jnp.minimum(1.0, max_norm / optax.tree.norm(updates))  # a zero norm gives min(1, inf) = 1
    return jax.tree_util.tree_map(lambda t: t * factor.astype(t.dtype), updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def weight_decay_tree(params, weight_decay: float, exclude: Sequence[str], multipliers: Sequence[tuple[str, float]]):
  """Per-parameter weight-decay coefficient: weight_decay x the product of every matching (regex, factor) pair, and 0
  for the parameters `exclude` matches."""
  factors = leaf_factors(params, multipliers)
  mask = weight_decay_mask(params, exclude)
  return jax.tree_util.tree_map(lambda f, on: float(weight_decay) * f if on else 0.0, factors, mask)


def make_optimizer(optim_cfg, params, total_steps: int):
  """(optax transformation, schedule) from the `config.optim` section."""
  schedule = learning_rate_schedule(optim_cfg.learning_rate, total_steps, optim_cfg.warmup_steps,
                                    optim_cfg.schedule, optim_cfg.min_lr_ratio, optim_cfg.decay_fraction)
  parts = []
  if optim_cfg.clip_norm and optim_cfg.clip_norm > 0:
    parts.append(clip_by_global_norm(optim_cfg.clip_norm))
  exclude = tuple(optim_cfg.weight_decay_exclude)
  wd_multipliers = tuple(tuple(m) for m in optim_cfg.get("weight_decay_multipliers", ()))
  if wd_multipliers:  # AdamW with a per-group decay coefficient (e.g. mu-P's coupled decay: lr x wd width-invariant)
    parts += [optax.scale_by_adam(b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps),
              add_decayed_weights_tree(weight_decay_tree(params, optim_cfg.weight_decay, exclude, wd_multipliers)),
              optax.scale_by_learning_rate(schedule)]
  else:
    parts.append(optax.adamw(schedule, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps,
                             weight_decay=optim_cfg.weight_decay, mask=weight_decay_mask(params, exclude)))
  multipliers = tuple(tuple(m) for m in optim_cfg.lr_multipliers)
  if multipliers:
    parts.append(scale_by_tree(lr_multiplier_tree(params, multipliers)))
  return optax.chain(*parts), schedule
