"""Image preprocessing and image tokens: best-fit grid, resize size, tiles, token layout and input errors."""

import re
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from llama4_jax.data import image as img_lib
from llama4_jax.data.image import (ImageError, best_fit_grid, expand_image_placeholders, image_token_ids,
                                   load_image, num_image_tokens, preprocess_image, resize_size, supported_grids,
                                   to_rgb, tokens_per_tile)
from llama4_jax.data.tokenizer import Tokenizer

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


@pytest.fixture(scope="module")
def tok():
  return Tokenizer.default()


def _norm(rgb):
  """A uint8 RGB triple after /255 and mean 0.5 / std 0.5, as a [3] float array."""
  return (np.asarray(rgb, np.float32) / 255 - 0.5) / 0.5


# (height, width, tile, max_tiles) -> grid, resize (h, w), tokens. Worked by hand with scale(r, c) =
# min(r*tile/height, c*tile/width); the smallest scale >= 1 wins, else the largest; ties -> smallest canvas area.
# Resize targets are min(max(side, tile), canvas side); the side with the smaller scale takes its target, the other
# is floor(side * scale). Token counts: n + 3 for 1x1, else 3 + n*(tiles + 1) + tiles, n = 144 (tile 336, patch 14)
# or 4 (tile 32, patch 8), pixel shuffle 0.5.
TABLE = [
  # Small square: every canvas has scale >= 3.36; 3.36 is shared by all grids with a 1-tile side -> (1,1) by area.
  # Upscaling is capped at the tile: targets 336x336, equal scales -> width floor(100*3.36) = 336.
  (100, 100, 336, 16, (1, 1), (336, 336), 147),
  # Tall: min(0.336r, 1.12c) >= 1 needs r >= 3; smallest is 1.008 at r = 3 for every c -> (3,1) by area.
  # Targets (min(1000, 1008), min(336, 336)) = (1000, 336); scale_h 1.0 <= scale_w 1.12 -> (1000, 300): no resize.
  (1000, 300, 336, 16, (3, 1), (1000, 300), 3 + 144 * 4 + 3),
  # Wide: min(0.672r, 0.224c) >= 1 needs r >= 2, c >= 5; smallest 1.12 at c = 5: (2,5) area 10 beats (3,5).
  # Targets (500, 1500), both scales 1.0 -> kept as is.
  (500, 1500, 336, 16, (2, 5), (500, 1500), 3 + 144 * 11 + 10),
  # Beyond 16:1: no canvas reaches scale 1; (1,16) is the largest, min(3.36, 0.5376). Width target is the canvas
  # 5376 (float32 scale 0.5376) -> height floor(100 * 0.5376) = 53.
  (100, 10000, 336, 16, (1, 16), (53, 5376), 3 + 144 * 17 + 16),
  # Exactly a canvas: scale 1.0 for (2,3) and for larger canvases with r = 2 or c = 3; (2,3) has the least area.
  (672, 1008, 336, 16, (2, 3), (672, 1008), 3 + 144 * 7 + 6),
  # Huge 4:3: all scales < 1; the largest, 0.336 = 42/125, is shared by (4,3), (4,4), (5,3) -> (4,3) by area.
  # Both targets are the canvas (1344, 1008) with equal scales -> width floor(3000 * 0.336f) = 1008.
  (4000, 3000, 336, 16, (4, 3), (1344, 1008), 3 + 144 * 13 + 12),
  # Square 500: min(r, c) * 0.672 >= 1 needs min side 2; 1.344 is shared by (2,2)..(2,8), (3,2)..(8,2) -> (2,2).
  # Targets (500, 500) (the cap keeps the image size), scales 1.0 -> no resize.
  (500, 500, 336, 16, (2, 2), (500, 500), 3 + 144 * 5 + 4),
  # max_tiles = 1: only (1,1). Targets (336, 336); scale_w 0.168 < scale_h 0.336 -> height floor(1000*0.168) = 168.
  (1000, 2000, 336, 1, (1, 1), (168, 336), 147),
  # HF float32 quirk: (4,4) has scale 1344/2505 < 1, the largest (min side 8 would be needed to reach 1). Scales
  # tie, so width = floor(2505 * float32(1344/2505)); the float32 scale rounds down, 1343.9999 -> 1343.
  (2505, 2505, 336, 16, (4, 4), (1344, 1343), 3 + 144 * 17 + 16),
  # Same 4:3 shape as 4000x3000 (scale 7/23 for (4,3), (4,4), (5,3)); width floor(3312 * 0.3043478f) = 1007.
  (4416, 3312, 336, 16, (4, 3), (1344, 1007), 3 + 144 * 13 + 12),
  # Limiting width in float32: no canvas reaches 1; the best of min(0.3594r, 0.06417c) is (2,8) at 0.5134. Targets
  # are the canvas (672, 2688); scale_w < scale_h -> height floor(935 * float32(2688/5236)) = 479 (exactly 480).
  (935, 5236, 336, 16, (2, 8), (479, 2688), 3 + 144 * 17 + 16),
  # 1-pixel-high strip: (1,16) at min(336, 5376/5913) is the best; height floor(1 * 0.909) = 0 is clamped to 1.
  (1, 5913, 336, 16, (1, 16), (1, 5376), 3 + 144 * 17 + 16),
  # Small tiles. min(1.6r, 0.64c) >= 1 needs c >= 2: (1,2) and (2,2) give 1.28, (1,3), (1,4) give 1.6 -> (1,2).
  # Targets (min(32, 32), min(50, 64)) = (32, 50); scale_w 1.0 < scale_h 1.6 -> (20, 50): no upscaling.
  (20, 50, 32, 4, (1, 2), (20, 50), 3 + 4 * 3 + 2),
  # Tiny square: upscaled to the tile, 10 -> 32 (targets 32, equal scales 3.2, floor(10 * 3.2) = 32).
  (10, 10, 32, 4, (1, 1), (32, 32), 7),
  # Downscale tie: min(0.32r, 0.8c) < 1 everywhere; 0.8 for (3,1) and (4,1) -> (3,1). Targets (96, 32) from the
  # canvas; scale_w 0.8 < scale_h 0.96 -> height floor(100 * 0.8) = 80.
  (100, 40, 32, 4, (3, 1), (80, 32), 3 + 4 * 4 + 3),
]


@pytest.mark.parametrize("height, width, tile, max_tiles, grid, size, n_tokens", TABLE)
def test_hand_worked_table(height, width, tile, max_tiles, grid, size, n_tokens):
  assert best_fit_grid(height, width, tile, max_tiles) == grid
  assert resize_size(height, width, grid, tile) == size
  n = tokens_per_tile(tile, 14 if tile == 336 else 8, 0.5)
  assert num_image_tokens(grid, n) == n_tokens


def _brute_force_grid(height, width, tile, max_tiles):
  """Independent re-derivation in exact rationals, candidates enumerated in a different order than HF's."""
  grids = [(r, c) for r in range(1, max_tiles + 1) for c in range(1, max_tiles // r + 1)]
  scale = {g: min(Fraction(g[0] * tile, height), Fraction(g[1] * tile, width)) for g in grids}
  upscales = [s for s in scale.values() if s >= 1]
  chosen = min(upscales) if upscales else max(scale.values())
  tied = [g for g in grids if scale[g] == chosen]
  best = min(g[0] * g[1] for g in tied)
  assert len([g for g in tied if g[0] * g[1] == best]) == 1  # The area tie-break is never ambiguous.
  return next(g for g in tied if g[0] * g[1] == best)


def test_best_fit_matches_brute_force():
  rng = np.random.default_rng(0)
  sizes = [(h, w) for h in (1, 2, 13, 335, 336, 337, 672, 1000, 5376, 9000) for w in (1, 7, 336, 500, 1008, 6000)]
  sizes += [tuple(int(v) for v in rng.integers(1, 7000, size=2)) for _ in range(300)]
  for tile, max_tiles in ((336, 16), (32, 4), (14, 9), (336, 1)):
    for height, width in sizes:
      expected = _brute_force_grid(height, width, tile, max_tiles)
      assert best_fit_grid(height, width, tile, max_tiles) == expected, (height, width, tile, max_tiles)


def test_resize_size_fits_canvas_and_keeps_aspect():
  rng = np.random.default_rng(1)
  for height, width in rng.integers(1, 8000, size=(300, 2)).tolist():
    grid = best_fit_grid(height, width, 336, 16)
    new_h, new_w = resize_size(height, width, grid, 336)
    assert 1 <= new_h <= grid[0] * 336 and 1 <= new_w <= grid[1] * 336
    assert new_h == grid[0] * 336 or new_w == grid[1] * 336 or new_h == max(height, 336) or new_w == max(width, 336)
    # Aspect ratio survives up to the flooring of one side (and the clamp to >= 1 pixel).
    assert abs(new_h * width - new_w * height) <= max(width, height) + height * width / min(height, width)


def test_supported_grids():
  grids = supported_grids(16)
  assert len(grids) == 50 == len(set(grids))  # Sum of the divisor counts of 1..16.
  assert set(grids) == {(r, c) for r in range(1, 17) for c in range(1, 17) if r * c <= 16}
  assert supported_grids(1) == [(1, 1)]
  # HF's docstring order for 4 tiles: aspect-ratio groups in order of first appearance, largest tile count first.
  assert supported_grids(4) == [(1, 4), (2, 2), (1, 1), (4, 1), (1, 3), (3, 1), (1, 2), (2, 1)]
  with pytest.raises(ValueError, match="max_tiles"):
    supported_grids(0)


def test_argument_validation():
  with pytest.raises(ValueError, match="tile_size"):
    best_fit_grid(10, 10, 0, 4)
  with pytest.raises(ValueError, match="height"):
    best_fit_grid(0, 10, 32, 4)
  image = np.zeros((8, 8, 3), np.uint8)
  with pytest.raises(ValueError, match="tile_size"):
    preprocess_image(image, 0, 4)
  with pytest.raises(ValueError, match="max_tiles"):
    preprocess_image(image, 32, 0)
  with pytest.raises(ValueError, match="std"):
    preprocess_image(image, 32, 4, std=(0.5, 0.0, 0.5))


@pytest.mark.parametrize("shape, tile, max_tiles, grid", [
  ((10, 10), 32, 4, (1, 1)), ((20, 50), 32, 4, (1, 2)), ((100, 40), 32, 4, (3, 1)), ((1000, 300), 336, 16, (3, 1)),
])
def test_preprocess_shapes(shape, tile, max_tiles, grid):
  rng = np.random.default_rng(2)
  tiles, got_grid = preprocess_image(rng.integers(0, 256, shape + (3,), dtype=np.uint8), tile, max_tiles)
  n = grid[0] * grid[1]
  assert got_grid == grid
  assert tiles.shape == (n + (n > 1), 3, tile, tile) and tiles.dtype == np.float32
  assert tiles.min() >= -1.0 and tiles.max() <= 1.0


def test_tile_order_is_row_major():
  # 64x64 with tile 32: only (2,2) reaches scale 1, the image is exactly its canvas, so each tile is one quadrant.
  image = np.zeros((64, 64, 3), np.uint8)
  quadrants = [RED, GREEN, BLUE, WHITE]  # Top-left, top-right, bottom-left, bottom-right.
  for k, colour in enumerate(quadrants):
    row, col = divmod(k, 2)
    image[row * 32:(row + 1) * 32, col * 32:(col + 1) * 32] = colour
  tiles, grid = preprocess_image(image, 32, 4)
  assert grid == (2, 2) and tiles.shape == (5, 3, 32, 32)
  for k, colour in enumerate(quadrants):
    np.testing.assert_array_equal(tiles[k], np.broadcast_to(_norm(colour)[:, None, None], (3, 32, 32)))


def test_padding_is_black_and_normalises_to_minus_one():
  # 20x50 at tile 32 -> grid (1,2), kept at 20x50, padded to a 32x64 canvas.
  grey = np.full((20, 50, 3), 128, np.uint8)
  tiles, grid = preprocess_image(grey, 32, 4)
  assert grid == (1, 2)
  canvas = np.concatenate([tiles[0], tiles[1]], axis=2)  # [3, 32, 64]
  np.testing.assert_array_equal(canvas[:, 20:, :], -1.0)
  np.testing.assert_array_equal(canvas[:, :, 50:], -1.0)
  np.testing.assert_allclose(canvas[:, :20, :50], 128 / 255 * 2 - 1, atol=1e-6)


def test_grid_tiles_hold_the_bilinear_resize_at_the_top_left():
  # 100x40 at tile 32 -> grid (3,1), downscaled to 80x32 and padded to 96x32.
  image = np.random.default_rng(4).integers(0, 256, (100, 40, 3), dtype=np.uint8)
  tiles, grid = preprocess_image(image, 32, 4)
  assert grid == (3, 1) and tiles.shape == (4, 3, 32, 32)
  resized = np.asarray(Image.fromarray(image).resize((32, 80), Image.Resampling.BILINEAR), np.float32)
  canvas = np.concatenate(list(tiles[:3]), axis=1)  # [3, 96, 32]
  np.testing.assert_allclose(canvas[:, :80], (resized / 255 - 0.5).transpose(2, 0, 1) / 0.5, atol=1e-6)
  np.testing.assert_array_equal(canvas[:, 80:], -1.0)


def test_global_tile_is_a_distorting_resize():
  # 32x64 (left red, right blue, top rows green) at tile 32 -> grid (1,2) at exact canvas size, plus a squashed
  # 32x32 global tile.
  image = np.zeros((32, 64, 3), np.uint8)
  image[:, :32], image[:, 32:], image[:4] = RED, BLUE, GREEN
  tiles, grid = preprocess_image(image, 32, 4)
  assert grid == (1, 2) and tiles.shape == (3, 3, 32, 32)
  squashed = np.asarray(Image.fromarray(image).resize((32, 32), Image.Resampling.BILINEAR), np.float32)
  np.testing.assert_allclose(tiles[2], (squashed / 255 - 0.5).transpose(2, 0, 1) / 0.5, atol=1e-6)
  # Squashed, not padded: the left half is red, the right half blue, and no -1 padding rows exist.
  np.testing.assert_allclose(tiles[2][:, :4], np.broadcast_to(_norm(GREEN)[:, None, None], (3, 4, 32)))
  np.testing.assert_allclose(tiles[2][:, 4:, :15], np.broadcast_to(_norm(RED)[:, None, None], (3, 28, 15)))
  np.testing.assert_allclose(tiles[2][:, 4:, 17:], np.broadcast_to(_norm(BLUE)[:, None, None], (3, 28, 15)))
  single, single_grid = preprocess_image(image[:, :32], 32, 4)
  assert single_grid == (1, 1) and single.shape == (1, 3, 32, 32)  # One tile: no global tile.


def test_rgba_is_composited_on_white():
  rgba = np.zeros((32, 32, 4), np.uint8)
  rgba[..., 0], rgba[..., 3] = 255, 255  # Opaque red ...
  rgba[0, 0] = (0, 0, 0, 0)  # ... except one fully transparent black pixel.
  rgba[0, 1] = (0, 0, 0, 128)  # Half-transparent black over white: 255 * 127 / 255 = 127.
  rgb = np.asarray(to_rgb(rgba))
  assert tuple(rgb[0, 0]) == WHITE and tuple(rgb[5, 5]) == RED
  assert np.all(np.abs(rgb[0, 1].astype(int) - 127) <= 1)
  tiles, grid = preprocess_image(rgba, 32, 4)
  assert grid == (1, 1)
  np.testing.assert_array_equal(tiles[0, :, 0, 0], 1.0)
  np.testing.assert_array_equal(tiles[0, :, 5, 5], _norm(RED))


def test_custom_mean_std():
  tiles, _ = preprocess_image(np.full((32, 32, 3), 51, np.uint8), 32, 4, mean=(0.0, 0.1, 0.2), std=(1.0, 0.5, 0.25))
  np.testing.assert_allclose(tiles[0, :, 0, 0], [0.2, 0.2, 0.0], atol=1e-6)


def test_tokens_per_tile():
  assert tokens_per_tile(336, 14, 0.5) == 144
  assert tokens_per_tile(336, 14, 1.0) == 576
  assert tokens_per_tile(32, 8, 0.5) == 4
  with pytest.raises(ValueError, match="multiple of patch_size"):
    tokens_per_tile(336, 15, 0.5)
  with pytest.raises(ValueError, match="not a positive integer"):
    tokens_per_tile(42, 14, 0.5)  # 3x3 patches cannot be pixel-shuffled by 0.5.


def test_image_token_ids_layout(tok):
  ids = {name: tok.token_to_id(f"<|{name}|>")
         for name in ("image_start", "image_end", "image", "patch", "tile_x_separator", "tile_y_separator")}
  s, e, i, p, x, y = (ids[k] for k in ("image_start", "image_end", "image", "patch", "tile_x_separator",
                                       "tile_y_separator"))
  assert image_token_ids((1, 1), 2, tok) == [s, i, p, p, e]
  assert image_token_ids((1, 2), 2, tok) == [s, p, p, x, p, p, y, i, p, p, e]
  assert image_token_ids((2, 2), 2, tok) == [s, p, p, x, p, p, y, p, p, x, p, p, y, i, p, p, e]
  assert image_token_ids((2, 1), 1, tok) == [s, p, y, p, y, i, p, e]


def test_image_token_counts(tok):
  patch = tok.token_to_id("<|patch|>")
  for grid in supported_grids(16):
    ids = image_token_ids(grid, 144, tok)
    tiles = grid[0] * grid[1]
    expected = 147 if tiles == 1 else 3 + 144 * (tiles + 1) + tiles
    assert len(ids) == num_image_tokens(grid, 144) == expected
    assert ids.count(patch) == 144 * (tiles + (tiles > 1))  # n patches per grid tile, n more for the global tile.
  assert num_image_tokens((4, 4), 144) == 2467


class _FakeTokenizer:
  """Anything with token_to_id works; ids here are easy to read."""

  def token_to_id(self, name):
    return {"<|image_start|>": 90, "<|image_end|>": 91, "<|image|>": 92, "<|patch|>": 93,
            "<|tile_x_separator|>": 94, "<|tile_y_separator|>": 95}[name]


def test_expand_image_placeholders_in_order():
  prompt = [1, 10, 92, 11, 92, 12]
  expanded = expand_image_placeholders(prompt, [(1, 2), (1, 1)], 1, _FakeTokenizer())
  assert expanded == [1, 10, 90, 93, 94, 93, 95, 92, 93, 91, 11, 90, 92, 93, 91, 12]
  assert expand_image_placeholders([5, 6], [], 3, _FakeTokenizer()) == [5, 6]


def test_expand_image_placeholders_count_mismatch(tok):
  image = tok.token_to_id("<|image|>")
  with pytest.raises(ImageError, match=re.escape("3 <|image|> placeholders but 2 images")):
    expand_image_placeholders([image, 7, image, image], [(1, 1), (2, 2)], 4, tok)
  with pytest.raises(ImageError, match=re.escape("0 <|image|> placeholders but 1 image")):
    expand_image_placeholders([7, 8], [(1, 1)], 4, tok)


def _palette_image(transparent):
  image = Image.new("P", (2, 1))
  image.putpalette(list(BLUE) + list(GREEN))
  image.putpixel((1, 0), 1)
  if transparent:
    image.info["transparency"] = 0  # Palette entry 0 (the blue pixel) is transparent.
  return image


@pytest.mark.parametrize("make, ext, expected", [
  (lambda: Image.new("RGB", (2, 1), RED), "png", [RED, RED]),
  (lambda: Image.new("RGBA", (2, 1), (255, 0, 0, 0)), "png", [WHITE, WHITE]),
  (lambda: Image.new("LA", (2, 1), (40, 255)), "png", [(40, 40, 40)] * 2),
  (lambda: Image.new("L", (2, 1), 40), "png", [(40, 40, 40)] * 2),
  (lambda: _palette_image(False), "png", [BLUE, GREEN]),
  (lambda: _palette_image(True), "png", [WHITE, GREEN]),
  (lambda: Image.new("1", (2, 1), 1), "png", [WHITE, WHITE]),
  (lambda: Image.new("CMYK", (2, 1), (0, 0, 0, 0)), "jpg", [WHITE, WHITE]),
])
def test_load_image_modes(tmp_path, make, ext, expected):
  path = tmp_path / f"x.{ext}"
  make().save(path)
  loaded = load_image(path)
  assert loaded.mode == "RGB" and loaded.size == (2, 1)
  got = [loaded.getpixel((k, 0)) for k in range(2)]
  assert np.all(np.abs(np.asarray(got, int) - np.asarray(expected, int)) <= 2), got  # JPEG may shift by a step.


def test_load_image_errors(tmp_path):
  missing = tmp_path / "missing.png"
  with pytest.raises(ImageError, match=re.escape(str(missing))):
    load_image(missing)
  text = tmp_path / "notes.png"
  text.write_text("not an image")
  with pytest.raises(ImageError, match=r"notes\.png: cannot read image"):
    load_image(text)
  noise = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
  whole = tmp_path / "whole.png"
  Image.fromarray(noise).save(whole)
  cut = tmp_path / "cut.png"
  cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
  with pytest.raises(ImageError, match=r"cut\.png: cannot read image.*truncated"):
    load_image(cut)
  deep = tmp_path / "deep.png"
  Image.fromarray(np.arange(12, dtype=np.uint16).reshape(3, 4) * 1000).save(deep)  # 16-bit grayscale.
  with pytest.raises(ImageError, match=r"deep\.png: unsupported image mode 'I;16'"):
    load_image(deep)


def test_to_rgb_errors():
  with pytest.raises(ImageError, match=re.escape("<array>: image has zero size (shape (0, 5, 3))")):
    to_rgb(np.zeros((0, 5, 3), np.uint8))
  with pytest.raises(ImageError, match="photo.png: image has zero size"):
    to_rgb(Image.new("RGB", (0, 4)), source="photo.png")
  with pytest.raises(ImageError, match="uint8, got float32"):
    to_rgb(np.zeros((4, 4, 3), np.float32))
  with pytest.raises(ImageError, match=re.escape("got (4, 4, 2)")):
    to_rgb(np.zeros((4, 4, 2), np.uint8))
  with pytest.raises(ImageError, match="unsupported image mode 'F'"):
    to_rgb(Image.new("F", (2, 2)))
  with pytest.raises(ImageError, match="got list"):
    to_rgb([[0, 0]])
  source = np.zeros((3, 3, 3), np.uint8)
  assert np.asarray(to_rgb(source)).tolist() == source.tolist() and img_lib.ARRAY_SOURCE == "<array>"
