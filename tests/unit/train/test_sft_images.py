"""SFT rows with pictures: image problems are encoded as the generator sees them, rows carry their tiles, and the
teacher-forced reply loss reads the picture (tiny_vl with random weights)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from configs import base
from llama4_jax.config import ConfigError, model_config
from llama4_jax.data import verifiable
from llama4_jax.data.tokenizer import ChatFormat, Tokenizer
from llama4_jax.model import param_shapes
from llama4_jax.train import rollout, sft

TOK = Tokenizer.default()
CHAT = ChatFormat(TOK)


@pytest.fixture(scope="module")
def cfg():
  return model_config(base.get_config("tiny_vl"))


def _problems(n, families=("image_count", "image_number", "add"), seed=5):
  return list(verifiable.problems(families, (1,), n=n, seed=seed))


def test_image_example_is_the_generators_prompt_then_the_reply(cfg):
  for p in _problems(9):
    ex = sft.encode_example(p, CHAT, cfg)
    ids = np.concatenate([ex["inputs"][:1], ex["targets"]]).tolist()
    learned = ex["targets"][ex["loss_mask"] == 1].tolist()
    assert learned[-1] == TOK.eot_id and TOK.decode(learned[:-1]) == p.answer
    assert ex["loss_mask"][-len(learned):].all() and not ex["loss_mask"][:-len(learned)].any()
    prompt = ids[:-len(learned)]
    if not p.images:
      assert "tiles" not in ex
      assert prompt == rollout.prompt_ids(p, CHAT)  # text: the chat template's dialog is the sampling prompt
      continue
    want, tiles = rollout.expand_images(cfg, rollout.prompt_ids(p, CHAT), p.images, TOK)
    assert prompt == list(want)  # the expanded prompt the KV-cache generator prefills
    np.testing.assert_array_equal(ex["tiles"], tiles)
    v = cfg.vision
    assert prompt.count(v.image_token_id) == ex["tiles"].shape[0] * v.tokens_per_tile


def test_image_example_needs_a_vision_tower():
  p = _problems(3, families=("image_count",))[0]
  with pytest.raises(ConfigError, match="'image_count' problem carries a picture but the model has no vision"):
    sft.encode_example(p, CHAT)


def test_rows_carry_their_examples_tiles_in_order(cfg):
  examples = [sft.encode_example(p, CHAT, cfg) for p in _problems(24)]
  v = cfg.vision
  tiles_per_row, shape = sft.tile_layout(cfg, examples, 8)
  assert (tiles_per_row, shape) == (8, (v.num_channels, v.image_size, v.image_size))
  stream = sft.PackedExamples(examples, 256, 4, seed=0, tiles_per_row=8, tile_shape=shape)
  by_inputs = {}  # image problems of one family and level can share every token (the picture differs)
  for e in examples:
    by_inputs.setdefault(e["inputs"].tobytes(), []).append(e)
  seen_text = seen_image = 0
  for _ in range(6):
    batch = next(stream)
    assert batch["pixels"].shape == (4, 8, *shape)
    for r in range(4):
      at = 0
      for seg in range(1, int(batch["segment_ids"][r].max()) + 1):
        same = by_inputs[batch["inputs"][r][batch["segment_ids"][r] == seg].tobytes()]  # whole examples only
        if "tiles" in same[0]:
          k = same[0]["tiles"].shape[0]
          assert any(np.array_equal(batch["pixels"][r, at:at + k], e["tiles"]) for e in same)
          at += k
          seen_image += 1
        else:
          seen_text += 1
      assert at <= 8 and not batch["pixels"][r, at:].any()  # zero tiles after the row's pictures
      # the row's patch tokens and tiles agree, as the model's scatter of image features requires
      assert int((batch["inputs"][r] == v.image_token_id).sum()) == at * v.tokens_per_tile
  assert seen_text and seen_image


def test_tiles_per_row_too_small_is_a_config_error(cfg):
  examples = [sft.encode_example(p, CHAT, cfg) for p in _problems(6, families=("image_count",))]
  most = max(e["tiles"].shape[0] for e in examples)
  with pytest.raises(ConfigError, match=f"data.tiles_per_row={most - 1} is fewer than the {most} image tiles"):
    sft.check_fits(examples, 256, most - 1)
  text = [sft.encode_example(p, CHAT, cfg) for p in _problems(6, families=("add",))]
  assert sft.tile_layout(cfg, text, 8) == (None, None)  # text SFT rows keep no pixels
  assert "pixels" not in sft.pack_row(text[:2], 64)


def test_reply_loss_reads_the_picture(cfg):
  rs = np.random.RandomState(0)
  params = jax.tree_util.tree_map(lambda s: (0.1 * rs.randn(*s.shape)).astype(s.dtype), param_shapes(cfg))
  examples = [sft.encode_example(p, CHAT, cfg) for p in _problems(4, families=("image_count",))]
  blank = [{**e, "tiles": np.zeros_like(e["tiles"])} for e in examples]
  real = sft.reply_losses(cfg, params, examples, 4)
  without = sft.reply_losses(cfg, params, blank, 4)
  assert np.all(np.isfinite(real)) and np.all(np.abs(real - without) > 1e-6)
  # one example alone in its row scores the same as in a batch (rows do not interact)
  np.testing.assert_allclose(sft.reply_losses(cfg, params, examples[:1], 1), real[:1], rtol=1e-5)
