"""Image-text examples -> token rows with tiles: layout, text-only loss, packing without splitting images, the mix."""

import dataclasses
import re

import numpy as np
import pytest

from configs import base, default_vl
from llama4_jax.config import ConfigError, model_config
from llama4_jax.data import multimodal, synthetic_vl
from llama4_jax.data.tokenizer import Tokenizer
from llama4_jax.train import data as train_data

TOK = Tokenizer.default()
VISION = model_config(base.get_config("tiny_vl")).vision
IMAGE_IDS = [TOK.token_to_id(n) for n in multimodal.IMAGE_TOKEN_NAMES]
PATCH = TOK.token_to_id("<|patch|>")


@pytest.fixture(scope="module")
def examples():
  return synthetic_vl.generate(60, seed=3)


def test_encoded_example_layout_and_masks(examples):
  for ex in examples:
    enc = multimodal.encode_example(ex, TOK, VISION)
    n_tiles = enc.tiles.shape[0]
    assert n_tiles >= len(ex.images) and enc.tiles.shape[1:] == (3, 32, 32)
    assert np.sum(enc.inputs == PATCH) == n_tiles * VISION.tokens_per_tile  # one patch run per tile
    assert enc.inputs[0] == TOK.bos_id and enc.targets[-1] == TOK.eos_id
    # Loss on text only: masked exactly where the target is an image token.
    np.testing.assert_array_equal(enc.loss_mask == 0, np.isin(enc.targets, IMAGE_IDS))
    # The answer mask covers exactly the answer's tokens (before the end-of-text).
    answer_ids = TOK.encode(ex.answer)
    np.testing.assert_array_equal(enc.targets[enc.answer_mask == 1], answer_ids)
    assert np.all(enc.loss_mask[enc.answer_mask == 1] == 1)


def test_blank_images_keep_the_token_layout(examples):
  for ex in examples[:10]:
    real = multimodal.encode_example(ex, TOK, VISION)
    blank = multimodal.encode_example(multimodal.with_blank_images(ex), TOK, VISION)
    np.testing.assert_array_equal(real.inputs, blank.inputs)
    assert real.tiles.shape == blank.tiles.shape and not np.array_equal(real.tiles, blank.tiles)


def _check_row(row):
  """Every document in the row holds whole images: its patch tokens match the row's tiles in order."""
  valid_tiles = int(np.sum(np.any(row["pixels"] != 0, axis=(1, 2, 3))))
  assert np.sum(row["inputs"] == PATCH) == valid_tiles * VISION.tokens_per_tile
  assert np.all(row["loss_mask"][row["segment_ids"] == 0] == 0)


def test_packed_rows_never_split_an_image_and_resume_exactly(examples):
  rows = multimodal.PackedRows(examples, TOK, VISION, seq_len=128, tiles_per_row=8, seed=0)
  first = [next(rows) for _ in range(5)]
  for row in first:
    _check_row(row)
    assert row["segment_ids"].max() >= 1
  assert any(r["segment_ids"].max() >= 2 for r in first)  # rows do pack several examples
  state = rows.get_state()
  after = [next(rows) for _ in range(4)]
  again = multimodal.PackedRows(examples, TOK, VISION, seq_len=128, tiles_per_row=8, seed=0)
  again.set_state(state)
  for a, b in zip(after, [next(again) for _ in range(4)]):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_too_short_rows_name_the_key(examples):
  longest = max(examples, key=lambda e: len(multimodal.encode_example(e, TOK, VISION).inputs))
  with pytest.raises(ConfigError, match="data.seq_len=40"):
    next(multimodal.PackedRows([longest], TOK, VISION, seq_len=40, tiles_per_row=8, seed=0))
  many = max(examples, key=lambda e: multimodal.encode_example(e, TOK, VISION).tiles.shape[0])
  with pytest.raises(ConfigError, match="data.tiles_per_row=1"):
    next(multimodal.PackedRows([many], TOK, VISION, seq_len=256, tiles_per_row=1, seed=0))


def _smoke():
  config = default_vl.get_config("smoke")
  return config, model_config(config)


def test_mixed_batches_hold_the_configured_share_of_image_rows():
  config, cfg = _smoke()
  config.data.update(batch_size=4, image_fraction=0.5)
  docs = train_data.documents(config.data, cfg)
  it = train_data.MixedBatches(config.data, cfg, docs["train"], seed=0)
  batch = next(it)
  assert batch["pixels"].shape == (4, config.data.tiles_per_row, 3, 32, 32)
  has_patch = np.any(batch["inputs"] == PATCH, axis=1)
  np.testing.assert_array_equal(has_patch, [True, True, False, False])
  assert not batch["pixels"][2:].any()  # text rows carry zero tiles
  state = it.get_state()
  expected = next(it)
  again = train_data.MixedBatches(config.data, cfg, docs["train"], seed=0)
  again.set_state(state)
  got = next(again)
  for k in expected:
    np.testing.assert_array_equal(expected[k], got[k], err_msg=k)


def test_image_eval_batches_score_answers_only():
  config, cfg = _smoke()
  real = train_data.image_eval_batches(config.data, cfg)
  blank = train_data.image_eval_batches(config.data, cfg, blank=True)
  assert len(real) == len(blank) == -(-config.data.image_eval_examples // config.data.batch_size)
  for r, b in zip(real, blank):
    np.testing.assert_array_equal(r["inputs"], b["inputs"])
    np.testing.assert_array_equal(r["loss_mask"], b["loss_mask"])
    assert r["loss_mask"].sum() > 0 and not np.array_equal(r["pixels"], b["pixels"])


@pytest.mark.parametrize("change, key", [
    (dict(image_fraction=1.5), "data.image_fraction"),
    (dict(tiles_per_row=0), "data.tiles_per_row"),
    (dict(image_eval_examples=0), "data.image_eval_examples"),
    (dict(seq_len=64), "data.seq_len=64"),
])
def test_bad_image_data_settings_name_the_key(change, key):
  config, cfg = _smoke()
  config.data.update(change)
  with pytest.raises(ConfigError, match=key):
    train_data.check_data_config(config.data, cfg)


def test_image_rows_need_a_vision_model_and_the_tokenizers_patch_id():
  config = base.get_config("tiny")
  config.data.image_fraction = 0.25
  with pytest.raises(ConfigError, match="data.image_fraction=0.25 needs a model with a vision tower"):
    train_data.check_data_config(config.data, model_config(config))
  config, cfg = _smoke()
  with pytest.raises(ConfigError, match=re.escape("image_token_id=5 is not the tokenizer's <|patch|> id")):
    train_data.check_data_config(config.data, cfg.replace(vision=dataclasses.replace(cfg.vision, image_token_id=5)))
