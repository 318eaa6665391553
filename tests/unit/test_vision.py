"""Vision tower pieces against the spec's index maps (section 5), and the vision config rules."""

import re

import jax
import numpy as np
import pytest

from configs import base
from llama4_jax.config import ConfigError, VisionConfig, model_config
from llama4_jax.model import apply, init_params
from llama4_jax.model.vision import merge_image_features, patchify, pixel_shuffle, vision_rope_tables
from tests.conftest import tiny_config


@pytest.mark.parametrize("grid, s", [(24, 2), (8, 2), (6, 3)])
def test_pixel_shuffle_index_map(grid, s):
  """Output token (y//s)*(g/s) + x//s, channel (y%s)*s*C + (x%s)*C + c (spec 5.6), element by element."""
  c = 3
  x = np.random.RandomState(0).randn(1, grid * grid, c).astype(np.float32)
  out = np.asarray(pixel_shuffle(x, 1 / s))
  assert out.shape == (1, (grid // s) ** 2, s * s * c)
  for y in range(grid):
    for xx in range(grid):
      for ch in range(c):
        t = (y // s) * (grid // s) + xx // s
        assert out[0, t, (y % s) * s * c + (xx % s) * c + ch] == x[0, y * grid + xx, ch]


def test_patchify_order_is_channel_row_col():
  pix = np.arange(2 * 3 * 8 * 8, dtype=np.float32).reshape(2, 3, 8, 8)
  out = np.asarray(patchify(pix, 4))
  assert out.shape == (2, 4, 48)
  # patch 1 = grid row 0, column 1; element (channel 2, kernel row 3, kernel col 1)
  assert out[1, 1, 2 * 16 + 3 * 4 + 1] == pix[1, 2, 3, 4 + 1]


def test_vision_rope_positions_are_one_based_and_cls_is_identity():
  v = VisionConfig(hidden_size=32, num_attention_heads=2, intermediate_size=128, image_size=16, patch_size=4)
  cos, sin = vision_rope_tables(v)
  assert cos.shape == (17, 8)  # 16 patches + CLS, K/2 = 8 pairs
  np.testing.assert_array_equal(cos[-1], 1.0)
  np.testing.assert_array_equal(sin[-1], 0.0)
  # patch 6 = row 1, column 2: pair 0 rotates by X * f_0 = 3, pair 4 (the first y pair) by Y * f_0 = 2
  np.testing.assert_allclose(cos[6, 0], np.cos(3.0), atol=1e-6)
  np.testing.assert_allclose(sin[6, 0], np.sin(3.0), atol=1e-6)
  np.testing.assert_allclose(sin[6, 4], np.sin(2.0), atol=1e-6)
  np.testing.assert_allclose(sin[6, 1], np.sin(3.0 * 10000 ** (-4 / 16)), atol=1e-6)


def test_merge_replaces_only_patch_tokens_in_order():
  x = np.zeros((2, 6, 2), np.float32)
  tokens = np.array([[5, 9, 9, 5, 9, 1], [9, 1, 1, 1, 1, 1]])
  feats = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2) + 1
  out = np.asarray(merge_image_features(x, tokens, feats, 9))
  np.testing.assert_array_equal(out[0, [1, 2, 4]], feats[0])
  np.testing.assert_array_equal(out[1, 0], feats[1, 0])
  assert not out[0, [0, 3, 5]].any() and not out[1, 1:].any()


@pytest.mark.parametrize("overrides, field", [
    (dict(hidden_size=30), "hidden_size"),  # 30 / 4 heads is not whole
    (dict(hidden_size=40, num_attention_heads=4, intermediate_size=160), "num_attention_heads"),  # head 10, not /4
    (dict(image_size=30), "image_size"),
    (dict(pixel_shuffle_ratio=0.3), "pixel_shuffle_ratio"),
    (dict(intermediate_size=100), "intermediate_size"),
    (dict(vision_output_dim=64), "vision_output_dim"),
    (dict(image_token_id=5000), "image_token_id"),
    (dict(patch_size=0), "model.vision.patch_size"),
])
def test_vision_config_errors_name_the_field(overrides, field):
  v = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=128, image_size=16,
           patch_size=4, projector_input_dim=16, projector_output_dim=16, vision_output_dim=16, image_token_id=50)
  v.update(overrides)
  with pytest.raises(ConfigError, match=re.escape(field)):
    tiny_config(vision=VisionConfig(**v))


def test_text_only_call_of_a_vision_model_equals_the_text_model():
  cfg = model_config(base.get_config("tiny_vl"))
  params = init_params(cfg, jax.random.key(0))
  assert "vision" in params and cfg.vision.tokens_per_tile == 16
  text_params = {k: v for k, v in params.items() if k != "vision"}
  tokens = np.arange(1, 25)[None]
  with_tower = apply(cfg, params, tokens)[0]
  without = apply(cfg.replace(vision=None), text_params, tokens)[0]
  np.testing.assert_array_equal(np.asarray(with_tower), np.asarray(without))


def test_gradients_reach_the_vision_tower_only_through_image_rows():
  from llama4_jax.train.step import LossConfig, loss_and_grads
  v = VisionConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128, image_size=16,
                   patch_size=4, projector_input_dim=16, projector_output_dim=16, vision_output_dim=16,
                   image_token_id=90)
  cfg = tiny_config(vision=v)
  params = init_params(cfg, jax.random.key(0))
  rs = np.random.RandomState(0)
  tokens = rs.randint(0, 80, (4, 12))
  tokens[:2, 3:7] = 90  # rows 0 and 1 hold one tile (4 image tokens) each; rows 2 and 3 are text
  pixels = np.zeros((4, 1, 3, 16, 16), np.float32)
  pixels[:2] = rs.uniform(-1, 1, (2, 1, 3, 16, 16))
  ones = np.ones((4, 12), np.int32)
  batch = {"inputs": tokens, "targets": rs.randint(0, 80, (4, 12)), "positions": np.cumsum(ones, 1) - 1,
           "segment_ids": ones, "loss_mask": ones, "pixels": pixels}
  grad_fn = jax.jit(lambda p, b: loss_and_grads(p, b, cfg, LossConfig(1, 0.0, 0.0))[2]["vision"])
  grads = grad_fn(params, batch)
  assert all(float(np.abs(g).max()) > 0 for g in jax.tree_util.tree_leaves(grads))
  grads = grad_fn(params, {k: x[2:] for k, x in batch.items()})  # the text rows only
  assert all(float(np.abs(g).max()) == 0 for g in jax.tree_util.tree_leaves(grads))
