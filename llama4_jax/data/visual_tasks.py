"""Image versions of the verifiable tasks: questions whose answers are only in the picture (multimodal online RL).

Each family draws an image with the embedded renderer (llama4_jax/data/synthetic_vl.py: its digit font, dots and
canvas) and asks a question that the text alone cannot answer; the answer is checked exactly, as in verifiable.py,
and uses the same "\\nAnswer:" format, so a model taught that format on text tasks can be rewarded on these.
  * image_count: dots in a 3x3 grid, "How many dots are in the image?" -> "3". Level = the largest count (3/5/7/9).
  * image_number: a number drawn in the digit font, "Which number is shown?" -> "472". Level = digits (1-4).
  * image_sum: two numbers drawn side by side, "What is the sum of the two numbers shown?" -> "11". Level = digits
    of each number (1-2; levels 3-4 draw three / four one-digit numbers).
  * image_sort: digits drawn in a row, "Sort the digits shown ascending." -> "1 3 5". Level = 3 / 4 / 5 / 6 digits.
  * image_reverse: digits drawn in a row, "Reverse the digits shown." -> "0613". Level = 4 / 6 / 8 / 10 digits.
  * image_countdown: the numbers drawn side by side, the target in the text: "Make 22 from the numbers shown with
    + - * (each at most once)." -> e.g. "3*5+7", checked like countdown (any valid expression over the drawn
    numbers scores). Levels as countdown's, except that level 4 draws five numbers up to 9 (five numbers up to 50
    would not fit 64 pixels).
Key-value lookup has no image version: the embedded font draws digits only.
The prompt starts with one `<|image|>` placeholder (`IMAGE_PLACEHOLDER`), which `rollout.prompt_ids` turns into the
image token, and the problem carries the picture in `Problem.images`.

Splits. The prompt text of an image problem is the same for every instance of a family and level, so the split is a
hash of the prompt, the drawn content (`meta["content"]`) and the image's pixels (`split_key`): held-out problems are
renderings never used for training. Their contents can recur in training (there are only nine dot counts), as in the
validation split of synthetic_vl.py; `unique` evaluation sets never repeat a rendering.
"""

from __future__ import annotations

import hashlib

import numpy as np

from llama4_jax.data import synthetic_vl as vl

IMAGE_PLACEHOLDER = "<|image|>"
FAMILIES = ("image_count", "image_number", "image_sum", "image_sort", "image_reverse", "image_countdown")
LEVELS = {family: range(1, 5) for family in FAMILIES}
_COUNT_MAX = {1: 3, 2: 5, 3: 7, 4: 9}
_SORT_DIGITS = {1: 3, 2: 4, 3: 5, 4: 6}
_SUM_DIGITS = {1: (1, 1), 2: (2, 2), 3: (1, 1, 1), 4: (1, 1, 1, 1)}
_REVERSE_DIGITS = {1: 4, 2: 6, 3: 8, 4: 10}
_COUNTDOWN = {1: (3, 9, 100), 2: (4, 9, 100), 3: (4, 25, 1000), 4: (5, 9, 1000)}  # (numbers, largest, largest target)
_GAP = 4  # font pixels between drawn numbers (inside a number: one)


def _ask(question: str) -> str:
  return f"{IMAGE_PLACEHOLDER}{question}\nAnswer:"


def _text_image(rng: np.random.Generator, words: list[str]) -> tuple[np.ndarray, int]:
  """(image, scale): `words` (strings of digits) drawn left to right in one random colour on a tinted canvas, at
  the largest font scale (up to 3) that fits a canvas of at most 64 x 64 pixels."""
  glyph_h, glyph_w = vl.FONT_SHAPE
  chars = sum(len(w) for w in words)
  gaps = len(words) - 1
  scale = 3
  while scale > 1 and chars * (glyph_w + 1) * scale + gaps * _GAP * scale + 2 > 64:
    scale -= 1
  width = chars * (glyph_w + 1) * scale + gaps * _GAP * scale + 2
  height = glyph_h * scale + 2
  size = (max(32, height + int(rng.integers(0, 9))), max(32, width + int(rng.integers(0, 9))))
  size = (min(size[0], 64), min(size[1], 64))
  image = vl._canvas(rng, size)
  colour = vl._colour(rng, vl._pick(rng, vl._COLOUR_NAMES))
  top = int(rng.integers(1, size[0] - height + 2))
  left = int(rng.integers(1, size[1] - width + 2))
  for w, word in enumerate(words):
    for digit in word:
      vl.draw_digit(image, int(digit), (top, left), scale, colour)
      left += (glyph_w + 1) * scale
    if w < gaps:
      left += _GAP * scale
  return image, scale


def _image_count(level: int, rng: np.random.Generator):
  count = int(rng.integers(1, _COUNT_MAX[level] + 1))
  image, _ = vl._dots_image(rng, count, (48, 48))
  return _ask("How many dots are in the image?"), str(count), {"content": (count,)}, image


def _number(rng: np.random.Generator, digits: int) -> int:
  return int(rng.integers(10 ** (digits - 1) if digits > 1 else 0, 10 ** digits))


def _image_number(level: int, rng: np.random.Generator):
  value = _number(rng, level)
  image, scale = _text_image(rng, [str(value)])
  return _ask("Which number is shown?"), str(value), {"content": (value,), "scale": scale}, image


def _image_sum(level: int, rng: np.random.Generator):
  values = [_number(rng, d) for d in _SUM_DIGITS[level]]
  question = "What is the sum of the two numbers shown?" if len(values) == 2 else "What is the sum of the numbers shown?"
  image, scale = _text_image(rng, [str(v) for v in values])
  return _ask(question), str(sum(values)), {"content": tuple(values), "scale": scale}, image


def _image_sort(level: int, rng: np.random.Generator):
  digits = [int(d) for d in rng.integers(0, 10, _SORT_DIGITS[level])]
  image, scale = _text_image(rng, ["".join(str(d) for d in digits)])
  answer = " ".join(str(d) for d in sorted(digits))
  return _ask("Sort the digits shown ascending."), answer, {"content": tuple(digits), "scale": scale}, image


def _image_reverse(level: int, rng: np.random.Generator):
  digits = "".join(str(int(d)) for d in rng.integers(0, 10, _REVERSE_DIGITS[level]))
  image, scale = _text_image(rng, [digits])
  return _ask("Reverse the digits shown."), digits[::-1], {"content": tuple(int(d) for d in digits),
                                                            "scale": scale}, image


def _image_countdown(level: int, rng: np.random.Generator):
  from llama4_jax.data import verifiable  # imports this module: resolved at call time
  numbers, target, expression = verifiable.countdown_instance(*_COUNTDOWN[level], rng)
  image, scale = _text_image(rng, [str(x) for x in numbers])
  meta = {"content": tuple(numbers), "numbers": tuple(numbers), "target": target, "scale": scale}
  return _ask(verifiable.countdown_question(target, "the numbers shown")), expression, meta, image


GENERATORS = {"image_count": _image_count, "image_number": _image_number, "image_sum": _image_sum,
              "image_sort": _image_sort, "image_reverse": _image_reverse, "image_countdown": _image_countdown}


def split_key(prompt: str, meta, images) -> str:
  """The text whose hash picks an image problem's split (and tells repeats apart): prompt, content and pixels."""
  digest = hashlib.sha256(b"".join(np.ascontiguousarray(i).tobytes() for i in images)).hexdigest()
  return f"{prompt}\n{tuple(meta['content'])!r}\n{digest}"
