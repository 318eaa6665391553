"""Early-fusion parity with transformers 5.23.0 `Llama4ForConditionalGeneration` (fp32, max |delta logits| <= 1e-4).

Random tiny vision-language models (several tile sizes, patch sizes and head sizes) are saved with
`save_pretrained`, loaded with `llama4_jax.load_hf` and run on rows that mix text with image blocks: one-tile
images, multi-tile images with their global tile, and two images in one row. Rows are longer than two text
attention chunks. `save_hf` must give a directory transformers reads back to the same logits.
"""

import numpy as np
import pytest
import torch
import transformers

import llama4_jax
from tests.parity.test_hf_parity import BASE

pytestmark = pytest.mark.parity
TOL = 1e-4
PATCH_ID, OTHER_IMAGE_IDS = 100, (90, 91, 94, 95, 98)  # <|patch|> and start/end/separator stand-ins

VISION = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, image_size=16,
              patch_size=4, pixel_shuffle_ratio=0.5, projector_input_dim=40, projector_output_dim=40,
              vision_output_dim=40, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})

# (name, vision overrides, tiles per image in row 0, tiles per image in row 1); 5 = a 2x2 grid + global tile.
CASES = [
    ("tile16_patch4_one_tile_each", {}, [1], [1]),
    ("tile24_patch4_odd_grid_multi_tile", dict(image_size=24, num_attention_heads=4), [5], [1, 3]),
    ("tile28_patch7_head12_two_images", dict(hidden_size=48, num_attention_heads=4, intermediate_size=192,
                                             image_size=28, patch_size=7), [3, 1], [2]),
]


def _hf_model(vision_overrides, seed=0):
  cfg = transformers.Llama4Config(text_config={**BASE, "vocab_size": 128},
                                  vision_config={**VISION, **vision_overrides}, image_token_index=PATCH_ID)
  torch.manual_seed(seed)
  model = transformers.Llama4ForConditionalGeneration(cfg).eval()
  with torch.no_grad():  # HF initialises some vision weights to zero or one; randomise so every tensor matters
    for name, p in model.named_parameters():
      if name.startswith(("vision_model", "multi_modal_projector")):
        p.copy_(torch.randn_like(p) * (0.3 if p.ndim > 1 else 0.5) + (1.0 if "layernorm" in name else 0.0))
  return model


def _row(rng, tiles_per_image, per_tile, length):
  """Text, then each image block (stand-in start/separator tokens around its <|patch|> runs), padded with text."""
  text = lambda n: list(rng.randint(0, 90, n))  # noqa: E731  (ids below every image id)
  row = text(5)
  for tiles in tiles_per_image:
    row += [OTHER_IMAGE_IDS[0]]
    for t in range(tiles):
      row += [PATCH_ID] * per_tile + [OTHER_IMAGE_IDS[2 + t % 3]]
    row += [OTHER_IMAGE_IDS[1]] + text(3)
  assert len(row) <= length
  return row + text(length - len(row))


@pytest.mark.parametrize("name,vision,row0,row1", CASES, ids=[c[0] for c in CASES])
def test_vision_language_logits_match_transformers(tmp_path, name, vision, row0, row1):
  model = _hf_model(vision)
  model.save_pretrained(tmp_path / "hf")
  cfg, params = llama4_jax.load_hf(str(tmp_path / "hf"))
  v = cfg.vision
  assert v is not None and v.image_size == model.config.vision_config.image_size
  rng = np.random.RandomState(1)
  length = max(sum(row0), sum(row1)) * (v.tokens_per_tile + 1) + 30  # well past two text chunks (8)
  ids = np.array([_row(rng, row0, v.tokens_per_tile, length), _row(rng, row1, v.tokens_per_tile, length)])
  pixels = rng.uniform(-1, 1, (sum(row0) + sum(row1), 3, v.image_size, v.image_size)).astype(np.float32)
  with torch.no_grad():
    ref = model(input_ids=torch.tensor(ids), pixel_values=torch.tensor(pixels)).logits.float().numpy()
  ours = np.asarray(llama4_jax.forward(cfg, params, ids, pixel_values=pixels))
  assert ours.shape == ref.shape and np.abs(ref).max() > 0.1
  np.testing.assert_allclose(ours, ref, atol=TOL, rtol=0)
  # The image really moves the logits: with other pixels the image positions and everything after them change.
  other = np.asarray(llama4_jax.forward(cfg, params, ids, pixel_values=pixels[::-1].copy()))
  assert np.abs(other - ours).max() > 1e-2


def test_save_hf_round_trip_through_transformers(tmp_path):
  model = _hf_model(CASES[1][1])
  model.save_pretrained(tmp_path / "hf")
  cfg, params = llama4_jax.load_hf(str(tmp_path / "hf"))
  out = llama4_jax.save_hf(cfg, params, str(tmp_path / "exported"))
  back = transformers.Llama4ForConditionalGeneration.from_pretrained(out).eval()
  rng = np.random.RandomState(2)
  ids = np.array([_row(rng, [5], cfg.vision.tokens_per_tile, 70)])
  pixels = rng.uniform(-1, 1, (5, 3, cfg.vision.image_size, cfg.vision.image_size)).astype(np.float32)
  with torch.no_grad():
    ref = back(input_ids=torch.tensor(ids), pixel_values=torch.tensor(pixels)).logits.float().numpy()
  np.testing.assert_allclose(np.asarray(llama4_jax.forward(cfg, params, ids, pixel_values=pixels)), ref, atol=TOL,
                             rtol=0)


def test_patch_count_mismatch_names_both_counts(tmp_path):
  model = _hf_model({})
  model.save_pretrained(tmp_path / "hf")
  cfg, params = llama4_jax.load_hf(str(tmp_path / "hf"))
  ids = np.array([_row(np.random.RandomState(0), [1], cfg.vision.tokens_per_tile, 30)])
  two_tiles = np.zeros((2, 3, 16, 16), np.float32)
  with pytest.raises(ValueError, match=r"4 image tokens .* 2 tiles x 4 = 8 image features"):
    llama4_jax.forward(cfg, params, ids, pixel_values=two_tiles)
  with pytest.raises(ValueError, match=r"4 image tokens .* no pixel_values"):
    llama4_jax.forward(cfg, params, ids)
