"""ModelConfig validation, ConfigDict conversion and the derived layer pattern (spec sections 1.2 and 2.4)."""

import dataclasses
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from configs import base as base_configs
from configs import models
from llama4_jax.config import ConfigError, ModelConfig, RopeScaling, VisionConfig, from_config_dict, model_config
from llama4_jax.param_count import count
from tests.conftest import tiny_config

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("overrides, field", [
    (dict(num_attention_heads=4, num_key_value_heads=3), "num_key_value_heads"),
    (dict(num_local_experts=4, num_experts_per_tok=5), "num_experts_per_tok"),
    (dict(num_hidden_layers=6), "num_hidden_layers"),  # block of 4 (lcm(4, 2))
    (dict(head_dim=7), "head_dim"),
    (dict(dtype="float8"), "dtype"),
    (dict(param_dtype="int8"), "param_dtype"),
    (dict(remat_policy="everything"), "remat_policy"),
    (dict(moe_impl="megablox"), "kernels.moe"),
    (dict(attention_impl="flash"), "kernels.attention"),
    (dict(rope_scaling=RopeScaling("longrope", 16.0, 1.0, 1.0, 64)), "rope_scaling.rope_type"),
    (dict(rope_scaling=RopeScaling("linear", 0.5)), "rope_scaling.factor"),
    (dict(rope_scaling=RopeScaling("dynamic", 2.0, original_max_position_embeddings=0)),
     "rope_scaling.original_max_position_embeddings"),
    (dict(rope_scaling=RopeScaling("yarn", 4.0, beta_fast=1.0, beta_slow=2.0)), "rope_scaling.beta_fast"),
    (dict(rope_scaling=RopeScaling("yarn", 4.0, attention_factor=0.0)), "rope_scaling.attention_factor"),
    (dict(head_dim=2, rope_scaling=RopeScaling("ntk", 4.0)), "rope_type='ntk' needs head_dim > 2"),
    (dict(no_rope_layer_interval=-1), "no_rope_layer_interval"),
    (dict(rope_scaling=RopeScaling("llama3", 0.5, 1.0, 1.0, 64)), "rope_scaling.factor"),
    (dict(rope_scaling=RopeScaling("llama3", 16.0, 4.0, 1.0, 64)), "high_freq_factor"),
    (dict(rope_scaling=RopeScaling("llama3", 16.0, 0.0, 1.0, 64)), "low_freq_factor"),
    (dict(rope_scaling=RopeScaling("llama3", 16.0, 1.0, 1.0, 0)), "rope_scaling.original_max_position_embeddings"),
    (dict(scan_unroll=-1), "model.scan_unroll"),
])
def test_invalid_config_names_the_field(overrides, field):
  with pytest.raises(ConfigError, match=re.escape(field)):
    tiny_config(**overrides)


def test_layer_patterns_all_rope_and_all_nope():
  all_rope = tiny_config(no_rope_layer_interval=0)
  all_nope = tiny_config(no_rope_layer_interval=1)
  assert [all_rope.is_rope_layer(i) for i in range(4)] == [True] * 4 and all_rope.block_size == 2
  assert [all_nope.is_rope_layer(i) for i in range(4)] == [False] * 4 and all_nope.block_size == 2
  assert [tiny_config().is_rope_layer(i) for i in range(4)] == [True, True, True, False]


def test_layer_count_must_be_a_multiple_of_the_lcm_not_of_either_period():
  # interval 4, step 3: the pattern repeats every 12 layers; 8 is a multiple of 4 and 9 of 3, neither of 12.
  for layers in (8, 9):
    with pytest.raises(ConfigError, match="num_hidden_layers"):
      tiny_config(no_rope_layer_interval=4, interleave_moe_layer_step=3, num_hidden_layers=layers)
  cfg = tiny_config(no_rope_layer_interval=4, interleave_moe_layer_step=3, num_hidden_layers=24)
  assert cfg.block_size == 12
  assert cfg.num_blocks == 2


def test_valid_edge_cases_are_accepted():
  assert tiny_config(num_experts_per_tok=4).num_experts_per_tok == 4  # k == E is allowed
  assert tiny_config(num_key_value_heads=4).num_query_groups == 1  # plain multi-head attention
  assert tiny_config(rope_scaling=None).rope_scaling is None


def test_auto_scan_unroll_unrolls_short_stacks_only():
  # 0 = auto: a stack of at most four super-blocks is unrolled whole (no loop); deeper stacks scan one per iteration,
  # so that compile time does not grow with depth. Explicit values are kept as given.
  assert [tiny_config(num_hidden_layers=n, scan_unroll=0).unroll for n in (4, 8, 12, 16, 20, 48)] == [1, 2, 3, 4, 1, 1]
  assert [tiny_config(num_hidden_layers=n, scan_unroll=3).unroll for n in (8, 48)] == [3, 3]
  tiny_preset = model_config(base_configs.get_config("tiny"))
  assert tiny_preset.scan_unroll == 0 and tiny_preset.unroll == 2
  assert tiny_preset.replace(num_hidden_layers=48).unroll == 1
  small_preset = model_config(base_configs.get_config("small"))
  assert small_preset.scan_unroll == 0 and small_preset.unroll == small_preset.num_blocks == 4


def test_config_is_frozen():
  cfg = tiny_config()
  with pytest.raises(dataclasses.FrozenInstanceError):
    cfg.hidden_size = 64  # type: ignore[misc]
  assert cfg.replace(hidden_size=64).hidden_size == 64
  assert cfg.hidden_size == 32


@pytest.mark.parametrize("where, key", [("model", "hiden_size"), ("rope_scaling", "fator"), ("vision", "hiden")])
def test_from_config_dict_rejects_unknown_keys(where, key):
  cd = models.scout()
  target = cd if where == "model" else cd[where]
  target[key] = 3
  with pytest.raises(ConfigError, match=re.escape(key)):
    from_config_dict(cd)


@pytest.mark.parametrize("moe", ["dense", "ragged_dot", "blocked", "pallas", "capacity"])
@pytest.mark.parametrize("attention", ["xla", "dense", "pallas"])
def test_kernels_section_selects_the_model_implementation(moe, attention):
  config = base_configs.get_config("tiny")
  config.kernels.update(moe=moe, attention=attention, interpret=True)
  cfg = model_config(config)
  assert (cfg.moe_impl, cfg.attention_impl, cfg.kernel_interpret) == (moe, attention, True)


def test_kernels_section_defaults_and_errors():
  assert model_config(base_configs.get_config("tiny")).moe_impl == "blocked"  # the CPU preset
  assert model_config(base_configs.get_config("scout")).moe_impl == "ragged_dot"
  config = base_configs.get_config("tiny")
  config.kernels.moe = "megablox"
  with pytest.raises(ConfigError, match=r"kernels\.moe='megablox'"):
    model_config(config)
  with pytest.raises(ConfigError, match=r"kernels\.attn"):
    from_config_dict(models.tiny(), {"attn": "xla"})


@pytest.mark.parametrize("name", sorted(models.PRESETS))
def test_every_preset_builds(name):
  cd = models.PRESETS[name]()
  cfg = from_config_dict(cd)
  assert isinstance(cfg, ModelConfig)
  for field in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "num_local_experts", "interleave_moe_layer_step", "dtype"):
    assert getattr(cfg, field) == cd[field], field
  assert cfg.num_blocks * cfg.block_size == cfg.num_hidden_layers
  if cd.vision.enabled:
    assert isinstance(cfg.vision, VisionConfig) and cfg.vision.hidden_size == cd.vision.hidden_size
  else:
    assert cfg.vision is None


def test_preset_rope_scaling():
  # Scout: (16, 1, 1, 8192) after llama-models PR #322 (spec 4.4); Maverick: rope_type 'default' -> no scaling.
  assert from_config_dict(models.scout()).rope_scaling == RopeScaling("llama3", 16.0, 1.0, 1.0, 8192)
  maverick_cd = models.maverick()
  assert maverick_cd.rope_scaling.rope_type == "default"
  assert from_config_dict(maverick_cd).rope_scaling is None
  plain = dict(models.tiny().to_dict(), rope_scaling=dict(rope_type="default", factor=99.0))
  assert from_config_dict(plain).rope_scaling is None


def test_scout_layer_pattern_follows_spec():
  cfg = from_config_dict(models.scout())
  nope = {i for i in range(48) if not cfg.is_rope_layer(i)}
  assert nope == {3, 7, 11, 15, 19, 23, 27, 31, 35, 39, 43, 47}
  assert all(cfg.is_moe_layer(i) for i in range(48))
  assert cfg.block_size == 4 and cfg.num_blocks == 12


def test_maverick_layer_pattern_follows_spec():
  cfg = from_config_dict(models.maverick())
  moe = {i for i in range(48) if cfg.is_moe_layer(i)}
  assert moe == set(range(1, 48, 2))
  nope = {i for i in range(48) if not cfg.is_rope_layer(i)}
  assert nope <= moe  # every NoPE layer of Maverick is an MoE layer (spec 2.4)
  assert cfg.block_size == 4


@pytest.mark.parametrize("interval, step", [(4, 1), (4, 2), (4, 3), (2, 5), (1, 1)])
def test_layer_kinds_are_one_based_modular(interval, step):
  block = math.lcm(interval, step)
  cfg = tiny_config(no_rope_layer_interval=interval, interleave_moe_layer_step=step, num_hidden_layers=2 * block)
  for i in range(cfg.num_hidden_layers):
    assert cfg.is_rope_layer(i) == ((i + 1) % interval != 0)
    assert cfg.is_moe_layer(i) == ((i + 1) % step == 0)
    # The super-block repeats: layer i has the kind of its slot i % block_size.
    assert cfg.is_rope_layer(i) == cfg.is_rope_layer(i % cfg.block_size)
    assert cfg.is_moe_layer(i) == cfg.is_moe_layer(i % cfg.block_size)
  assert cfg.block_size == block


def _run_param_count(*flags):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "llama4_jax.param_count", "--config=configs/base.py:tiny", *flags],
                        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_param_count_cli_rejects_misspelled_override():
  result = _run_param_count("--config.model.hiden_size=3")
  assert result.returncode != 0
  assert "hiden_size" in result.stdout + result.stderr


def test_param_count_cli_applies_override():
  result = _run_param_count("--config.model.hidden_size=128")
  assert result.returncode == 0, result.stderr
  cd = models.tiny()
  cd.hidden_size = 128
  expected = count(from_config_dict(cd))["total"]
  assert expected != count(from_config_dict(models.tiny()))["total"]
  assert f"{expected:,}" in result.stdout
