"""Coordinate check (llama4_jax/coord_check.py) on a tiny fast case: activation sizes grow with width under
standard parameterization after a few Adam steps and stay flat under mup; the JSON and PNG are written."""

import json

import pytest

from configs import base
from llama4_jax import coord_check as cc
from llama4_jax.config import ConfigError


def _config(kind):
  config = base.get_config("tiny")
  config.model.update(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                      intermediate_size=32, intermediate_size_mlp=64, num_local_experts=4)
  config.data.update(seq_len=32, batch_size=8, max_documents=100)  # 8: the simulated devices split the batch
  config.optim.update(learning_rate=1e-2, warmup_steps=0, clip_norm=0.0)
  config.train.update(steps=2)
  config.parameterization = kind
  return config


def test_scaled_config_keeps_head_dim_and_scales_the_widths():
  c = cc.scaled_config(_config("mup"), 128)
  m = c.model
  assert (m.hidden_size, m.num_attention_heads, m.num_key_value_heads, m.head_dim) == (128, 8, 4, 16)
  assert (m.intermediate_size, m.intermediate_size_mlp) == (128, 256)
  assert (c.param_scaling.base.hidden_size, c.param_scaling.base.intermediate_size) == (32, 32)
  with pytest.raises(ConfigError, match="width 40 must be a multiple of model.head_dim=16"):
    cc.scaled_config(_config("mup"), 40)


def test_standard_grows_with_width_and_mup_stays_flat(tmp_path):
  widths = [32, 128]  # two widths (4x) keep it to four compiles
  std = cc.coord_check(_config("standard"), widths, steps=2)
  mup = cc.coord_check(_config("mup"), widths, steps=2)
  assert len(std["values"]) == 3 and "logits" in std["values"][0] and "layer_03/ffn_out" in std["values"][0]
  # After two Adam steps: standard's activations grow roughly like the width (log-log slope ~1-2), mup's do not.
  assert std["mean_abs_slope"][-1] > 0.8, std["mean_abs_slope"]
  assert mup["mean_abs_slope"][-1] < 0.3, mup["mean_abs_slope"]
  json_path, png_path = cc.write(mup, str(tmp_path / "coord" / "mup"))
  assert json.load(open(json_path))["widths"] == widths
  assert open(png_path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
