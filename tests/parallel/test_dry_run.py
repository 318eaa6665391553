"""The ahead-of-time dry run: per-device memory from shardings + compiled analysis, mesh recommendation, errors."""

import math
import re

import jax
import pytest

from configs import base as base_configs
from llama4_jax import dry_run
from llama4_jax.config import ConfigError, model_config
from llama4_jax.model import param_shapes


def test_dry_run_reports_memory_and_recommends_a_mesh():
  config = base_configs.get_config("tiny")
  out = dry_run.run(config, 8, "tpu-v5e", "data=8", 64, 1, recommend=True, headroom=0.9, as_json=True)
  total_param_bytes = sum(math.prod(p.shape) * p.dtype.itemsize
                          for p in jax.tree_util.tree_leaves(param_shapes(model_config(config))))
  named = out["named"]
  # data=8 replicates everything: a device holds every parameter and AdamW's two moments of each.
  assert named["params_gib"] * dry_run.GIB == total_param_bytes
  assert named["optimizer_gib"] * dry_run.GIB == pytest.approx(2 * total_param_bytes, rel=1e-3)
  assert named["activations_gib"] > 0 and named["fits"]
  assert named["arguments_gib"] >= named["params_gib"] + named["optimizer_gib"]
  # The first candidate splits the experts over all 8 devices (FSDP has nothing left); every other weight is split
  # over the expert axis on its embed dimension, so everything but the norms is split 8 ways.
  best = out["recommended"]
  assert best["mesh"] == {"data": 1, "fsdp": 1, "expert": 8, "tensor": 1}
  params = param_shapes(model_config(config))
  norm_bytes = sum(math.prod(p.shape) * p.dtype.itemsize for path, p in jax.tree_util.tree_leaves_with_path(params)
                   if "norm" in jax.tree_util.keystr(path))
  assert best["params_gib"] * dry_run.GIB == (total_param_bytes - norm_bytes) / 8 + norm_bytes


def test_dry_run_rejects_a_mesh_that_does_not_fit_the_devices():
  with pytest.raises(ConfigError, match=re.escape("mesh.expert=16")):  # tiny has 8 experts
    dry_run.run(base_configs.get_config("tiny"), 8, "h100", "data=-1,expert=16", 64, 1, recommend=False,
                headroom=0.9, as_json=True)
  with pytest.raises(ConfigError, match="--devices=256"):
    dry_run.run(base_configs.get_config("tiny"), 256, "h100", "", 64, 1, recommend=False, headroom=0.9)
