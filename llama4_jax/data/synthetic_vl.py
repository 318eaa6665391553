"""Synthetic vision-language data: small rendered images with questions whose answers can only be read off the image.

A deterministic, numpy-only generator of interleaved image + text documents, sized for training a tiny vision-language
Llama 4 (32 px tiles of 4 px patches) on a CPU in minutes. Every answer comes from a small closed vocabulary and is
drawn uniformly and independently of the text and the image size, so text alone predicts it no better than chance
while the image settles it; `blank_like` gives the matching image-free control for "is the image used?" evaluations.

Kinds (`KINDS`, with their sampling weights):
  * shape_qa: one big shape; "What colour is the shape?" -> " red", "What shape is it?" -> " circle",
  * count_qa: 1-4 dots of one colour; "How many dots are there?" -> " three",
  * digit_qa: one digit of a 5x7 bitmap font, scaled up; "Which digit is shown?" -> " seven",
  * bar_chart_qa: 2-4 bars of distinct colours; "Which bar is tallest?" -> " the blue bar",
  * caption: a shape or a dots image; "Caption:" -> " A red circle." / " Three blue dots.",
  * compare: two dot images interleaved with text; "Which image has more dots?" -> " the first" / " the second".

A document is its `segments` (text strings and uint8 [H, W, 3] images, in reading order) followed by its `answer`.
Every image keeps a one-pixel background border, and shapes, dots, digits and bars are drawn in flat colours without
anti-aliasing, so the content can be re-derived exactly from the pixels (the unit tests do).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

COLOURS = {
    "red": (215, 35, 35),
    "green": (30, 150, 50),
    "blue": (35, 75, 215),
    "yellow": (235, 195, 20),
    "black": (25, 25, 25),
    "purple": (135, 50, 170),
}
SHAPES = ("circle", "square", "triangle", "cross")
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
COUNT_WORDS = ("one", "two", "three", "four")
BACKGROUND = (255, 255, 255)
# Mostly single-tile images; the others make 2x1, 1x2 and 2x2 tile layouts (and one resize) at 32 px tiles.
IMAGE_SIZES = ((32, 32), (32, 64), (64, 32), (48, 48), (64, 64))
IMAGE_SIZE_WEIGHTS = (0.6, 0.1, 0.1, 0.1, 0.1)
KINDS = {"shape_qa": 0.2, "count_qa": 0.2, "digit_qa": 0.2, "bar_chart_qa": 0.15, "caption": 0.1, "compare": 0.15}

# Background channels lie in [255 - TINT, 255] and foreground channels move by at most COLOUR_JITTER: every colour
# keeps one channel far below the background, so foreground and background never blur together.
TINT = 25
COLOUR_JITTER = 12

_FONT_ROWS = {
    0: (".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."),
    1: ("..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."),
    2: (".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"),
    3: ("#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###."),
    4: ("...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."),
    5: ("#####", "#....", "####.", "....#", "....#", "#...#", ".###."),
    6: ("..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."),
    7: ("#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."),
    8: (".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."),
    9: (".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."),
}
_FONT = {d: np.array([[c == "#" for c in row] for row in rows]) for d, rows in _FONT_ROWS.items()}
FONT_SHAPE = (7, 5)
_COLOUR_NAMES = tuple(COLOURS)


@dataclasses.dataclass(frozen=True, eq=False)
class Example:
  """One document: `segments` (str or uint8 [H, W, 3] image, in reading order) then `answer` (starts with a space).

  Images are made read-only so that a frozen Example really cannot change. Equality is identity: numpy arrays have
  no single truth value, so compare pixel bytes explicitly.
  """

  kind: str
  segments: tuple
  answer: str

  def __post_init__(self):
    for segment in self.segments:
      if isinstance(segment, np.ndarray):
        segment.setflags(write=False)

  @property
  def images(self) -> tuple:
    return tuple(s for s in self.segments if isinstance(s, np.ndarray))


def digit_bitmap(digit: int) -> np.ndarray:
  """The bool [7, 5] glyph of `digit` in the built-in font."""
  return _FONT[digit].copy()


def blank_like(image: np.ndarray) -> np.ndarray:
  """An image of the same shape holding only the white background: the "no image information" control."""
  return np.broadcast_to(np.asarray(BACKGROUND, np.uint8), image.shape).copy()


@functools.lru_cache(maxsize=None)
def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
  # Broadcastable row and column indices, cached per size: the same few sizes are drawn thousands of times.
  yy, xx = np.arange(height)[:, None], np.arange(width)[None, :]
  yy.setflags(write=False)
  xx.setflags(write=False)
  return yy, xx


def shape_mask(shape: str, size: tuple[int, int], centre: tuple[int, int], radius: float) -> np.ndarray:
  """bool [H, W]: `shape` centred at `centre` (row, column) with half-extent `radius` pixels."""
  yy, xx = _grid(*size)
  dy, dx = yy - centre[0], xx - centre[1]
  if shape == "circle":
    return dy * dy + dx * dx <= radius * radius
  ady, adx = np.abs(dy), np.abs(dx)
  if shape == "square":
    return (ady <= radius) & (adx <= radius)
  if shape == "triangle":  # apex up, base along the bottom of the bounding box
    return (ady <= radius) & (2 * adx <= dy + radius)
  if shape == "cross":
    arm = radius / 3
    return ((ady <= arm) & (adx <= radius)) | ((adx <= arm) & (ady <= radius))
  raise ValueError(f"unknown shape {shape!r}; choose from {SHAPES}")


def draw_shape(image: np.ndarray, shape: str, centre: tuple[int, int], radius: float, colour) -> np.ndarray:
  """Paints a filled shape onto `image` in place and returns it."""
  image[shape_mask(shape, image.shape[:2], centre, radius)] = colour
  return image


def draw_digit(image: np.ndarray, digit: int, top_left: tuple[int, int], scale: int, colour) -> np.ndarray:
  """Paints the font glyph of `digit`, each font pixel a `scale` x `scale` block, with its 7x5 frame at `top_left`."""
  glyph = _FONT[digit].repeat(scale, axis=0).repeat(scale, axis=1)
  top, left = top_left
  image[top:top + glyph.shape[0], left:left + glyph.shape[1]][glyph] = colour
  return image


def draw_dots(image: np.ndarray, boxes, colour, *, round_dots: bool = False) -> np.ndarray:
  """Paints one dot per (top, left, size) box: a filled square, or the disc inscribed in it if `round_dots`."""
  for top, left, size in boxes:
    patch = image[top:top + size, left:left + size]
    if round_dots:
      yy, xx = _grid(size, size)
      mid = (size - 1) / 2
      patch[(yy - mid) ** 2 + (xx - mid) ** 2 <= (size / 2) ** 2] = colour
    else:
      patch[:] = colour
  return image


def draw_bars(image: np.ndarray, bars, colours) -> np.ndarray:
  """Paints one bar per (left, width, height), standing on the row above the bottom border, in `colours` order."""
  base = image.shape[0] - 1
  for (left, width, height), colour in zip(bars, colours):
    image[base - height:base, left:left + width] = colour
  return image


def _canvas(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
  # A random near-white tint, so "background" is a learned concept rather than one exact colour.
  image = np.empty((*size, 3), np.uint8)
  image[:] = 255 - rng.integers(0, TINT + 1, 3)
  return image


def _colour(rng: np.random.Generator, name: str) -> np.ndarray:
  jitter = rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, 3)
  return np.clip(np.asarray(COLOURS[name]) + jitter, 0, 255).astype(np.uint8)


def _image_size(rng: np.random.Generator) -> tuple[int, int]:
  return IMAGE_SIZES[rng.choice(len(IMAGE_SIZES), p=IMAGE_SIZE_WEIGHTS)]


def _pick(rng: np.random.Generator, options):
  return options[rng.integers(len(options))]



def _shape_image(rng: np.random.Generator) -> tuple[np.ndarray, str, str]:
  size = _image_size(rng)
  colour, shape = _pick(rng, _COLOUR_NAMES), _pick(rng, SHAPES)
  radius = rng.uniform(0.25, 0.38) * min(size)
  # Integer centres at least ceil(radius) + 1 from every edge keep the one-pixel border free.
  reach = int(np.ceil(radius)) + 1
  centre = (int(rng.integers(reach, size[0] - reach)), int(rng.integers(reach, size[1] - reach)))
  image = draw_shape(_canvas(rng, size), shape, centre, radius, _colour(rng, colour))
  return image, colour, shape


def _dots_image(rng: np.random.Generator, count: int, size: tuple[int, int]) -> tuple[np.ndarray, str]:
  """`count` dots in distinct cells of a 3x3 grid: one dot per cell and a free margin in each cell keep them apart."""
  colour = _pick(rng, _COLOUR_NAMES)
  cell_h, cell_w = size[0] // 3, size[1] // 3
  # Dots grow with the image (4-7 px at 32 px) so that they survive the downscaled global tile of a big image.
  smallest = min(cell_h, cell_w)
  dot = int(rng.integers(max(4, int(0.4 * smallest)), smallest - 2))
  boxes = []
  for cell in rng.choice(9, count, replace=False):
    row, col = divmod(int(cell), 3)
    top = row * cell_h + int(rng.integers(1, cell_h - dot))
    left = col * cell_w + int(rng.integers(1, cell_w - dot))
    boxes.append((top, left, dot))
  image = draw_dots(_canvas(rng, size), boxes, _colour(rng, colour), round_dots=bool(rng.random() < 0.5))
  return image, colour


def _question(text: str) -> str:
  return f"\nQuestion: {text}\nAnswer:"


def _shape_qa(rng: np.random.Generator) -> Example:
  image, colour, shape = _shape_image(rng)
  if rng.random() < 0.5:
    return Example("shape_qa", (image, _question("What colour is the shape?")), f" {colour}")
  return Example("shape_qa", (image, _question("What shape is it?")), f" {shape}")


def _count_qa(rng: np.random.Generator) -> Example:
  count = int(rng.integers(1, 5))
  image, _ = _dots_image(rng, count, _image_size(rng))
  return Example("count_qa", (image, _question("How many dots are there?")), f" {COUNT_WORDS[count - 1]}")


def _digit_qa(rng: np.random.Generator) -> Example:
  size = _image_size(rng)
  digit = int(rng.integers(10))
  max_scale = min((size[0] - 2) // FONT_SHAPE[0], (size[1] - 2) // FONT_SHAPE[1])
  scale = int(rng.integers(max(3, max_scale - 1), max_scale + 1))
  top = int(rng.integers(1, size[0] - FONT_SHAPE[0] * scale))
  left = int(rng.integers(1, size[1] - FONT_SHAPE[1] * scale))
  image = draw_digit(_canvas(rng, size), digit, (top, left), scale, _colour(rng, _pick(rng, _COLOUR_NAMES)))
  return Example("digit_qa", (image, _question("Which digit is shown?")), f" {DIGIT_WORDS[digit]}")


def _bar_chart_qa(rng: np.random.Generator) -> Example:
  size = _image_size(rng)
  count = int(rng.integers(2, 5))
  names = [_COLOUR_NAMES[i] for i in rng.choice(len(_COLOUR_NAMES), count, replace=False)]
  usable = size[0] - 2
  tallest = int(rng.integers(count))
  # The tallest bar beats every other by a quarter of its height: unambiguous, yet not the same picture every time.
  top_height = int(usable * rng.uniform(0.7, 1.0))
  heights = np.maximum(2, (top_height * rng.uniform(0.2, 0.75, count)).astype(int))
  heights[tallest] = top_height
  slot = (size[1] - 2) // count
  bars = []
  for i, height in enumerate(heights):
    width = int(np.clip(slot * rng.uniform(0.5, 0.75), 3, slot - 2))
    left = 1 + i * slot + int(rng.integers(1, slot - width))
    bars.append((left, width, int(height)))
  image = draw_bars(_canvas(rng, size), bars, [_colour(rng, n) for n in names])
  return Example("bar_chart_qa", (image, _question("Which bar is tallest?")), f" the {names[tallest]} bar")


def _caption(rng: np.random.Generator) -> Example:
  if rng.random() < 0.5:
    image, colour, shape = _shape_image(rng)
    return Example("caption", (image, "\nCaption:"), f" A {colour} {shape}.")
  count = int(rng.integers(1, 5))
  image, colour = _dots_image(rng, count, _image_size(rng))
  noun = "dot" if count == 1 else "dots"
  return Example("caption", (image, "\nCaption:"), f" {COUNT_WORDS[count - 1].capitalize()} {colour} {noun}.")


def _compare(rng: np.random.Generator) -> Example:
  counts = rng.choice(4, 2, replace=False) + 1
  first, _ = _dots_image(rng, int(counts[0]), (32, 32))
  second, _ = _dots_image(rng, int(counts[1]), (32, 32))
  # Asking for "fewer" half the time makes the model read the question, not only count.
  more = bool(rng.random() < 0.5)
  first_wins = (counts[0] > counts[1]) == more
  question = _question(f"Which image has {'more' if more else 'fewer'} dots?")
  answer = " the first" if first_wins else " the second"
  return Example("compare", ("Image 1: ", first, "\nImage 2: ", second, question), answer)


_BUILDERS = {"shape_qa": _shape_qa, "count_qa": _count_qa, "digit_qa": _digit_qa, "bar_chart_qa": _bar_chart_qa,
             "caption": _caption, "compare": _compare}


def generate(num_examples: int, seed: int, *, kinds=None) -> list[Example]:
  """`num_examples` Examples, deterministic in `seed`; `kinds` (names from KINDS) restricts the mix, keeping weights."""
  if isinstance(kinds, str):
    kinds = (kinds,)
  names = tuple(KINDS) if kinds is None else tuple(dict.fromkeys(kinds))
  unknown = [k for k in names if k not in KINDS]
  if unknown:
    raise ValueError(f"unknown synthetic_vl kind(s) {unknown}; choose from {list(KINDS)}")
  if not names:
    raise ValueError("kinds must name at least one kind")
  if num_examples < 0:
    raise ValueError(f"num_examples must be >= 0, got {num_examples}")
  weights = np.array([KINDS[k] for k in names])
  rng = np.random.default_rng(seed)
  picks = rng.choice(len(names), size=num_examples, p=weights / weights.sum())
  return [_BUILDERS[names[i]](rng) for i in picks]


def splits(seed: int = 0, num_train: int = 4000, num_eval: int = 200) -> dict[str, list[Example]]:
  """'train' and 'validation' Examples from two seeds derived from `seed`: held-out images are new renderings."""
  train_seed, eval_seed = (int(np.random.SeedSequence((seed, i)).generate_state(1)[0]) for i in range(2))
  return {"train": generate(num_train, train_seed), "validation": generate(num_eval, eval_seed)}
