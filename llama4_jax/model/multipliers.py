"""Per-parameter constant factors picked by regular expressions on parameter paths.

A parameter's path is its '/'-joined pytree keys ('blocks/layer_1/moe/down', 'embed'); a factor list is a tuple of
(regex, factor) pairs, and a leaf's factor is the product of every pair whose regex matches its path (1 when none
does). The model uses two such lists from its config (llama4_jax/parameterization.py fills them):
  * `ModelConfig.init_multipliers` scale the initialized parameters (init std x factor; 0 = zero init),
  * `ModelConfig.forward_multipliers` scale a parameter wherever the forward pass uses it (W -> c W, so the output of
    a matmul is multiplied by c and its gradient with respect to W by c too: the abc-parameterization's forward
    multiplier). `fold_forward_multipliers` bakes them into the weights for inference and export.
The optimizer's per-group learning rates use the same matching (train/optimizer.py).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp


def param_paths(tree) -> Any:
  """Pytree of '/'-joined key paths with the structure of `tree`."""
  def name(path, _):
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
  return jax.tree_util.tree_map_with_path(name, tree)


def leaf_factors(tree, pairs: Sequence[tuple[str, float]]):
  """Pytree of Python floats: per leaf, the product of the factors of every (regex, factor) pair matching its path."""
  compiled = [(re.compile(pattern), float(factor)) for pattern, factor in pairs]

  def factor(path: str) -> float:
    out = 1.0
    for pattern, value in compiled:
      if pattern.search(path):
        out *= value
    return out
  return jax.tree_util.tree_map(factor, param_paths(tree))


def scale_leaves(tree, pairs: Sequence[tuple[str, float]]):
  """`tree` with each leaf multiplied by its factor; leaves whose factor is exactly 1 are returned untouched."""
  if not pairs:
    return tree
  return jax.tree_util.tree_map(lambda x, f: x if f == 1.0 else x * jnp.asarray(f, x.dtype), tree,
                                leaf_factors(tree, pairs))


def fold_forward_multipliers(cfg, params):
  """(cfg without forward multipliers, params with them multiplied in): the same function, for inference/export."""
  if not cfg.forward_multipliers:
    return cfg, params
  return dataclasses.replace(cfg, forward_multipliers=()), scale_leaves(params, cfg.forward_multipliers)
