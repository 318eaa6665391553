"""Llama 4 image preprocessing (tiling onto a best-fit canvas) and the image-token layout in the text sequence.

Pure numpy + PIL; follows spec sections 5.2 and 5.7, with the arithmetic of Hugging Face's `Llama4ImageProcessor`
(`get_best_fit`, `get_max_res_without_distortion`, `_preprocess`) and `Llama4Processor._prompt_split_image`.

Pipeline for one image:
  1. to RGB (alpha composited on white, Meta's convention);
  2. pick a tile grid (rows, cols) with rows*cols <= max_tiles whose canvas needs the least upscaling, or failing
     that the least downscaling, smallest canvas area on ties;
  3. aspect-preserving bilinear resize (upscaling capped at one tile side), black padding right/bottom to the canvas;
  4. scale to [0, 1], normalise, split into row-major tiles; with more than one tile, append a global tile (the
     whole image squashed to tile x tile).
The text side writes each image as one `<|image|>` placeholder, expanded to start/patch/separator/end tokens.
"""

from __future__ import annotations

import math
import os
from typing import Protocol, Sequence

import numpy as np
from PIL import Image

ARRAY_SOURCE = "<array>"
# Modes with a meaningful 8-bit RGB conversion. 16/32-bit integer and float modes (I;16*, I, F) are rejected: PIL
# clips them to 0..255 when converting, which turns e.g. a 16-bit scan into a nearly white image.
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "PA")
_SUPPORTED_MODES = frozenset(("RGB", "L", "P", "1", "CMYK", "YCbCr", "RGBX") + _ALPHA_MODES)
_WHITE = (255, 255, 255)


class ImageError(ValueError):
  """An image that cannot be used; the message names the file (or `<array>`) and the offending value."""


class _TokenLookup(Protocol):
  def token_to_id(self, name: str) -> int: ...


# ----------------------------------------------------------------------------------------------------------------
# Loading and RGB conversion
# ----------------------------------------------------------------------------------------------------------------

def load_image(path: str | os.PathLike) -> Image.Image:
  """Reads an image file fully and returns it in RGB; any problem raises ImageError naming the file."""
  name = os.fspath(path)
  if not os.path.exists(name):
    raise ImageError(f"{name}: no such file")
  try:
    with Image.open(name) as opened:
      # Image.open only reads the header; decoding everything catches truncated or corrupt data (unless a caller
      # has switched on PIL's global ImageFile.LOAD_TRUNCATED_IMAGES).
      opened.load()
      return to_rgb(opened, source=name)
  except ImageError:
    raise
  # PIL reports damaged files through many exception types depending on the codec.
  except (OSError, SyntaxError, ValueError, EOFError, IndexError, Image.DecompressionBombError) as err:
    raise ImageError(f"{name}: cannot read image ({type(err).__name__}: {err})") from err


def _array_to_pil(array: np.ndarray, source: str) -> Image.Image:
  if array.dtype != np.uint8:
    raise ImageError(f"{source}: image array must have dtype uint8, got {array.dtype} (shape {array.shape})")
  channels = array.shape[2] if array.ndim == 3 else None
  if not (array.ndim == 2 or (array.ndim == 3 and channels in (3, 4))):
    raise ImageError(f"{source}: image array must have shape [H, W], [H, W, 3] or [H, W, 4], got {array.shape}")
  if array.shape[0] == 0 or array.shape[1] == 0:
    raise ImageError(f"{source}: image has zero size (shape {array.shape})")
  return Image.fromarray(np.ascontiguousarray(array))  # uint8 [H, W] / [.., 3] / [.., 4] -> L / RGB / RGBA.


def to_rgb(image: Image.Image | np.ndarray, source: str = ARRAY_SOURCE) -> Image.Image:
  """A new RGB PIL image from a PIL image or a uint8 array [H, W], [H, W, 3] or [H, W, 4].

  Transparency (alpha channels and palette / tRNS transparency) is composited on white, as Meta's preprocessing
  does; other supported modes use PIL's conversion.
  """
  if isinstance(image, np.ndarray):
    image = _array_to_pil(image, source)
  elif not isinstance(image, Image.Image):
    raise ImageError(f"{source}: expected a PIL image or a numpy array, got {type(image).__name__}")
  width, height = image.size
  if width == 0 or height == 0:
    raise ImageError(f"{source}: image has zero size (width {width}, height {height})")
  if image.mode not in _SUPPORTED_MODES:
    raise ImageError(f"{source}: unsupported image mode {image.mode!r} (supported: {sorted(_SUPPORTED_MODES)})")
  if image.mode in _ALPHA_MODES or "transparency" in image.info:
    rgba = image.convert("RGBA")
    background = Image.new("RGB", image.size, _WHITE)
    background.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
    return background
  return image.convert("RGB")  # Also copies RGB input, so the result never aliases the caller's image.


# ----------------------------------------------------------------------------------------------------------------
# Grid choice and resize size
# ----------------------------------------------------------------------------------------------------------------

def _check_positive_int(name: str, value: int, minimum: int = 1) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
  return int(value)


def supported_grids(max_tiles: int) -> list[tuple[int, int]]:
  """Every (rows, cols) with rows * cols <= max_tiles, in HF `find_supported_resolutions` order.

  HF walks tile counts from max_tiles down to 1, takes each count's factor pairs (rows ascending) and groups them by
  aspect ratio in order of first appearance. The order only matters for ties, which HF breaks by first index.
  """
  max_tiles = _check_positive_int("max_tiles", max_tiles)
  by_ratio: dict[float, list[tuple[int, int]]] = {}
  for count in range(max_tiles, 0, -1):
    for rows in range(1, count + 1):
      if count % rows == 0:
        by_ratio.setdefault(rows / (count // rows), []).append((rows, count // rows))
  return [grid for group in by_ratio.values() for grid in group]


def best_fit_grid(height: int, width: int, tile_size: int, max_tiles: int) -> tuple[int, int]:
  """The tile grid whose canvas (rows * tile_size, cols * tile_size) HF `get_best_fit` picks for this image.

  scale(canvas) = min(canvas_h / height, canvas_w / width). If some scale >= 1, take the smallest such scale (least
  upscaling; `resize_to_max_canvas=False`), else the largest (least downscaling); among canvases with exactly that
  scale take the smallest area, first in `supported_grids` order. Scales are float32, as in HF's torch code, so
  exact float32 ties count as ties.
  """
  height, width = _check_positive_int("height", height), _check_positive_int("width", width)
  tile_size = _check_positive_int("tile_size", tile_size)
  grids = supported_grids(max_tiles)
  canvas = np.asarray(grids, dtype=np.int64) * tile_size
  scale_h = canvas[:, 0].astype(np.float32) / np.float32(height)
  scale_w = canvas[:, 1].astype(np.float32) / np.float32(width)
  scales = np.minimum(scale_h, scale_w)
  upscaling = scales[scales >= 1]
  selected = upscaling.min() if upscaling.size else scales.max()
  tied = np.flatnonzero(scales == selected)
  areas = canvas[tied, 0] * canvas[tied, 1]
  return grids[int(tied[np.argmin(areas)])]


def _side_scale(target: int, side: int, float32: bool) -> float:
  # In HF a target side taken from the canvas is a torch int tensor, so its scale is float32; one taken from the
  # image or tile size is a Python int, so its scale is float64.
  return np.float32(target) / np.float32(side) if float32 else target / side


def resize_size(height: int, width: int, grid: tuple[int, int], tile_size: int) -> tuple[int, int]:
  """(new_h, new_w) of the aspect-preserving resize before padding to the grid's canvas (HF `_preprocess`).

  Each target side is min(max(image_side, tile_size), canvas_side): never upscale past one tile side, never past
  the canvas. Then HF `get_max_res_without_distortion`: the side with the smaller scale takes its target, the other
  is floor(side * that scale), capped by its own target; both at least 1. Float rounding mirrors HF's mix of
  float32 tensors and Python floats so the integers match exactly.
  """
  height, width = _check_positive_int("height", height), _check_positive_int("width", width)
  tile_size = _check_positive_int("tile_size", tile_size)
  rows, cols = (_check_positive_int("grid rows", grid[0]), _check_positive_int("grid cols", grid[1]))
  canvas_h, canvas_w = rows * tile_size, cols * tile_size
  # Python's min keeps the first argument on equality, so the canvas value (a tensor in HF) wins only when smaller.
  cap_h, cap_w = max(height, tile_size), max(width, tile_size)
  target_h, target_w = min(cap_h, canvas_h), min(cap_w, canvas_w)
  scale_h = _side_scale(target_h, height, canvas_h < cap_h)
  scale_w = _side_scale(target_w, width, canvas_w < cap_w)
  # numpy 2 (NEP 50) keeps a float32 scale's comparisons and products with Python numbers in float32, as torch does
  # for a 0-d tensor. On equal scales the height keeps its target, like HF.
  if scale_w < scale_h:
    new_h, new_w = min(math.floor(height * scale_w), target_h), target_w
  else:
    new_h, new_w = target_h, min(math.floor(width * scale_h), target_w)
  return max(new_h, 1), max(new_w, 1)


# ----------------------------------------------------------------------------------------------------------------
# Pixels: resize, pad, normalise, tile
# ----------------------------------------------------------------------------------------------------------------

def _normalise(pixels: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
  """uint8 [H, W, 3] -> float32 [3, H, W], scaled by 1/255 then (x - mean) / std."""
  scaled = pixels.astype(np.float32) / np.float32(255.0)
  return ((scaled - mean) / std).transpose(2, 0, 1)


def _channel_stats(name: str, values: Sequence[float]) -> np.ndarray:
  stats = np.asarray(values, dtype=np.float32).reshape(-1)
  if stats.shape != (3,) or not np.all(np.isfinite(stats)):
    raise ValueError(f"{name} must be 3 finite numbers (R, G, B), got {values!r}")
  return stats


def preprocess_image(image: Image.Image | np.ndarray, tile_size: int, max_tiles: int,
                     mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.5, 0.5, 0.5),
                     source: str = ARRAY_SOURCE) -> tuple[np.ndarray, tuple[int, int]]:
  """Tiles of one image, float32 [N, 3, tile_size, tile_size], and its grid (rows, cols).

  N = rows * cols, plus one global tile (last) when rows * cols > 1. Grid tiles are row-major: tile row * cols + col.
  """
  tile_size = _check_positive_int("tile_size", tile_size)
  max_tiles = _check_positive_int("max_tiles", max_tiles)
  mean_arr, std_arr = _channel_stats("mean", mean), _channel_stats("std", std)
  if np.any(std_arr == 0):
    raise ValueError(f"std must be non-zero, got {std!r}")
  rgb = to_rgb(image, source=source)
  width, height = rgb.size
  rows, cols = best_fit_grid(height, width, tile_size, max_tiles)
  new_h, new_w = resize_size(height, width, (rows, cols), tile_size)
  canvas = np.zeros((rows * tile_size, cols * tile_size, 3), dtype=np.uint8)  # Black padding right and bottom.
  canvas[:new_h, :new_w] = np.asarray(rgb.resize((new_w, new_h), Image.Resampling.BILINEAR))
  planes = _normalise(canvas, mean_arr, std_arr)
  tiles = planes.reshape(3, rows, tile_size, cols, tile_size).transpose(1, 3, 0, 2, 4)
  tiles = tiles.reshape(rows * cols, 3, tile_size, tile_size)
  if rows * cols > 1:
    # The global tile squashes the whole image to one tile, ignoring aspect ratio.
    thumbnail = np.asarray(rgb.resize((tile_size, tile_size), Image.Resampling.BILINEAR))
    tiles = np.concatenate([tiles, _normalise(thumbnail, mean_arr, std_arr)[None]], axis=0)
  return np.ascontiguousarray(tiles, dtype=np.float32), (rows, cols)


# ----------------------------------------------------------------------------------------------------------------
# Image tokens in the text sequence
# ----------------------------------------------------------------------------------------------------------------

def tokens_per_tile(tile_size: int, patch_size: int, pixel_shuffle_ratio: float) -> int:
  """`<|patch|>` tokens per tile: (tile_size / patch_size)^2 patches, shrunk by pixel shuffle to ratio^2 of that."""
  tile_size = _check_positive_int("tile_size", tile_size)
  patch_size = _check_positive_int("patch_size", patch_size)
  if not pixel_shuffle_ratio > 0:
    raise ValueError(f"pixel_shuffle_ratio must be > 0, got {pixel_shuffle_ratio!r}")
  if tile_size % patch_size:
    raise ValueError(f"tile_size {tile_size} is not a multiple of patch_size {patch_size}")
  side = tile_size // patch_size
  # Pixel shuffle regroups the side x side patch grid into (side*ratio) x (side*ratio) tokens.
  shuffled = side * pixel_shuffle_ratio
  if not math.isclose(shuffled, round(shuffled), rel_tol=0, abs_tol=1e-9) or round(shuffled) < 1:
    raise ValueError(f"{side}x{side} patches with pixel_shuffle_ratio {pixel_shuffle_ratio} give "
                     f"{shuffled ** 2:g} tokens per tile, not a positive integer")
  return round(shuffled) ** 2


def _check_grid(grid: tuple[int, int]) -> tuple[int, int]:
  if len(grid) != 2:
    raise ValueError(f"grid must be (rows, cols), got {grid!r}")
  return _check_positive_int("grid rows", grid[0]), _check_positive_int("grid cols", grid[1])


def num_image_tokens(grid: tuple[int, int], n_per_tile: int) -> int:
  """Length of `image_token_ids(grid, n_per_tile, ...)`: n + 3 for one tile, else 3 + n*(tiles+1) + tiles."""
  rows, cols = _check_grid(grid)
  n_per_tile = _check_positive_int("n_per_tile", n_per_tile)
  tiles = rows * cols
  return n_per_tile + 3 if tiles == 1 else 3 + n_per_tile * (tiles + 1) + tiles


def image_token_ids(grid: tuple[int, int], n_per_tile: int, tokenizer: _TokenLookup) -> list[int]:
  """The token block of one image (spec 5.7, HF `_prompt_split_image`).

  <|image_start|>, then for grids with more than one tile, per row: each column's n patches with
  <|tile_x_separator|> between columns and <|tile_y_separator|> after the row; then <|image|> and n patches (the
  global tile, or the only tile), then <|image_end|>.
  """
  rows, cols = _check_grid(grid)
  n_per_tile = _check_positive_int("n_per_tile", n_per_tile)
  special = {name: tokenizer.token_to_id(f"<|{name}|>")
             for name in ("image_start", "image_end", "image", "patch", "tile_x_separator", "tile_y_separator")}
  patches = [special["patch"]] * n_per_tile
  ids = [special["image_start"]]
  if rows * cols > 1:
    for _ in range(rows):
      for col in range(cols):
        ids.extend(patches)
        if col < cols - 1:
          ids.append(special["tile_x_separator"])
      ids.append(special["tile_y_separator"])
  ids.append(special["image"])
  ids.extend(patches)
  ids.append(special["image_end"])
  return ids


def expand_image_placeholders(token_ids: Sequence[int], grids: Sequence[tuple[int, int]], n_per_tile: int,
                              tokenizer: _TokenLookup) -> list[int]:
  """Replaces the k-th `<|image|>` placeholder in `token_ids` by the token block of the k-th image's grid."""
  placeholder = tokenizer.token_to_id("<|image|>")
  count = sum(1 for token in token_ids if token == placeholder)
  if count != len(grids):
    raise ImageError(f"{count} <|image|> placeholder{'' if count == 1 else 's'} but "
                     f"{len(grids)} image{'' if len(grids) == 1 else 's'}")
  blocks = iter([image_token_ids(grid, n_per_tile, tokenizer) for grid in grids])
  expanded: list[int] = []
  for token in token_ids:
    if token == placeholder:
      expanded.extend(next(blocks))
    else:
      expanded.append(int(token))
  return expanded
