"""Synthetic vision-language data: determinism, image format, and answers re-derived from the pixels alone."""

import collections

import numpy as np
import pytest

from llama4_jax.data import synthetic_vl as sv

# Farther from the background than this in some channel is foreground (colours keep one channel below ~60).
FOREGROUND_DISTANCE = 40


@pytest.fixture(scope="module")
def examples():
  return sv.generate(1500, 11)


def _of_kind(examples, kind):
  picked = [e for e in examples if e.kind == kind]
  assert picked, kind
  return picked


def _foreground(image):
  # The one-pixel border is background by construction (checked in test_images_are_uint8_rgb_...).
  distance = np.abs(image.astype(int) - image[0, 0].astype(int)).max(-1)
  return distance > FOREGROUND_DISTANCE


def _crop(mask):
  rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
  return mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def _nearest_colour(pixels):
  """The COLOURS name nearest the median foreground colour; asserts the match is within the jitter."""
  rgb = np.median(pixels.reshape(-1, 3), axis=0)
  distances = {name: np.linalg.norm(rgb - np.array(c)) for name, c in sv.COLOURS.items()}
  name = min(distances, key=distances.get)
  assert distances[name] <= np.sqrt(3) * sv.COLOUR_JITTER + 1, (rgb, name)
  return name


def _shape_name(mask):
  crop = _crop(mask)
  fill = crop.mean()
  if fill > 0.97:
    return "square"
  if 0.68 < fill < 0.88:
    return "circle"
  if crop[-1].all():  # a triangle's base spans its bounding box; a cross's bottom row is only its arm
    return "triangle"
  return "cross" if crop[crop.shape[0] // 2].all() else None


def _count_components(mask):
  """4-connected components by min-label propagation (numpy only)."""
  big = mask.size + 1
  labels = np.where(mask, np.arange(1, mask.size + 1).reshape(mask.shape), big)
  while True:
    padded = np.pad(labels, 1, constant_values=big)
    stacked = np.stack([labels, padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]])
    updated = np.where(mask, stacked.min(0), big)
    if (updated == labels).all():
      return len(np.unique(labels[mask]))
    labels = updated


def _digit_shown(mask):
  """The digits whose scaled font glyph is exactly the foreground."""
  crop = _crop(mask)
  found = []
  for digit in range(10):
    glyph = _crop(sv.digit_bitmap(digit))
    scale = crop.shape[0] // glyph.shape[0]
    if scale and crop.shape == (glyph.shape[0] * scale, glyph.shape[1] * scale):
      if (crop == glyph.repeat(scale, 0).repeat(scale, 1)).all():
        found.append(digit)
  return found


def _bars(image):
  """(height, colour name) per bar, left to right: bars are runs of foreground columns."""
  mask = _foreground(image)
  cols = mask.any(0)
  starts = np.flatnonzero(cols & ~np.r_[False, cols[:-1]])
  ends = np.flatnonzero(cols & ~np.r_[cols[1:], False])
  base = image.shape[0] - 2
  return [(int(mask[:, s:e + 1].sum(0).max()), _nearest_colour(image[base, s:e + 1])) for s, e in zip(starts, ends)]


def _image_bytes(example):
  return [im.tobytes() for im in example.images]


def test_generate_is_deterministic_in_seed():
  a, b, c = sv.generate(60, 7), sv.generate(60, 7), sv.generate(60, 8)
  for x, y in zip(a, b):
    assert (x.kind, x.answer) == (y.kind, y.answer)
    assert [s for s in x.segments if isinstance(s, str)] == [s for s in y.segments if isinstance(s, str)]
    assert [im.shape for im in x.images] == [im.shape for im in y.images]
    assert _image_bytes(x) == _image_bytes(y)
  assert [_image_bytes(x) for x in a] != [_image_bytes(x) for x in c]
  assert len(sv.generate(0, 7)) == 0


def test_images_are_uint8_rgb_with_background_border(examples):
  for example in examples:
    assert example.answer.startswith(" ") and isinstance(example.segments[-1], str)
    assert example.segments[-1].endswith(("Answer:", "Caption:"))
    assert len(example.images) == (2 if example.kind == "compare" else 1)
    for image in example.images:
      assert image.dtype == np.uint8 and image.shape[:2] in sv.IMAGE_SIZES and image.shape[2] == 3
      assert not image.flags.writeable
      border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
      assert (border == image[0, 0]).all() and image[0, 0].min() >= 255 - sv.TINT
      assert _foreground(image).any()


def test_every_kind_appears_and_kinds_restrict(examples):
  assert {e.kind for e in examples} == set(sv.KINDS)
  assert {e.kind for e in sv.generate(50, 1, kinds=["digit_qa", "compare"])} == {"digit_qa", "compare"}
  assert {e.kind for e in sv.generate(10, 1, kinds="caption")} == {"caption"}


def test_unknown_kind_is_named():
  with pytest.raises(ValueError, match="no_such_kind"):
    sv.generate(10, 0, kinds=["shape_qa", "no_such_kind"])
  with pytest.raises(ValueError, match="at least one"):
    sv.generate(10, 0, kinds=[])


def test_shape_masks_are_told_apart():
  for shape in sv.SHAPES:
    for radius in (8.0, 10.5, 12.2, 20.0):
      assert _shape_name(sv.shape_mask(shape, (48, 48), (24, 23), radius)) == shape, (shape, radius)
  with pytest.raises(ValueError, match="hexagon"):
    sv.shape_mask("hexagon", (32, 32), (16, 16), 8)


def test_shape_answers_match_pixels(examples):
  for example in _of_kind(examples, "shape_qa"):
    image = example.images[0]
    mask = _foreground(image)
    derived = (_nearest_colour(image[mask]), _shape_name(mask))
    assert example.answer[1:] in derived, (example.answer, derived)
    assert "colour" in example.segments[-1] if example.answer[1:] in sv.COLOURS else "shape" in example.segments[-1]


def test_count_answers_match_components(examples):
  for example in _of_kind(examples, "count_qa"):
    count = _count_components(_foreground(example.images[0]))
    assert example.answer == f" {sv.COUNT_WORDS[count - 1]}"


def test_compare_answers_match_components(examples):
  for example in _of_kind(examples, "compare"):
    first, second = (_count_components(_foreground(im)) for im in example.images)
    assert first != second
    more = "more dots" in example.segments[-1]
    assert example.answer == (" the first" if (first > second) == more else " the second")
    assert example.segments[0] == "Image 1: " and example.segments[2] == "\nImage 2: "


def test_caption_answers_match_pixels(examples):
  for example in _of_kind(examples, "caption"):
    image = example.images[0]
    mask = _foreground(image)
    colour = _nearest_colour(image[mask])
    if example.answer.startswith(" A "):
      assert example.answer == f" A {colour} {_shape_name(mask)}."
    else:
      count = _count_components(mask)
      noun = "dot" if count == 1 else "dots"
      assert example.answer == f" {sv.COUNT_WORDS[count - 1].capitalize()} {colour} {noun}."


def test_digit_answers_match_font(examples):
  for example in _of_kind(examples, "digit_qa"):
    shown = _digit_shown(_foreground(example.images[0]))
    assert [f" {sv.DIGIT_WORDS[d]}" for d in shown] == [example.answer]


def test_tallest_bar_matches_answer(examples):
  for example in _of_kind(examples, "bar_chart_qa"):
    bars = _bars(example.images[0])
    heights = sorted(h for h, _ in bars)
    assert 2 <= len(bars) <= 4 and len({c for _, c in bars}) == len(bars)
    assert heights[-2] <= 0.8 * heights[-1]  # no near ties
    assert example.answer == f" the {max(bars)[1]} bar"


def test_splits_do_not_share_images():
  data = sv.splits(0, num_train=1000, num_eval=200)
  assert len(data["train"]) == 1000 and len(data["validation"]) == 200
  train = {b for e in data["train"] for b in _image_bytes(e)}
  held_out = {b for e in data["validation"] for b in _image_bytes(e)}
  assert len(held_out) == sum(len(e.images) for e in data["validation"])
  assert not train & held_out


def _classes(example):
  """(group, answer class) pairs: a group is one question (or one caption attribute) with a closed answer set."""
  if example.kind != "caption":
    return [(example.segments[-1].split("Question: ")[-1].split("\n")[0], example.answer)]
  words = example.answer.strip(" .").lower().split()
  return [("caption colour", words[1]), ("caption content", words[2] if words[0] == "a" else words[0])]


def test_answer_classes_are_balanced():
  num_classes = {"What colour is the shape?": 6, "What shape is it?": 4, "How many dots are there?": 4,
                 "Which digit is shown?": 10, "Which bar is tallest?": 6, "Which image has more dots?": 2,
                 "Which image has fewer dots?": 2, "caption colour": 6, "caption content": 8}
  groups = collections.defaultdict(collections.Counter)
  for kind in sv.KINDS:
    for example in sv.generate(1200, 5, kinds=[kind]):
      for group, answer in _classes(example):
        groups[group][answer] += 1
  assert {g: len(c) for g, c in groups.items()} == num_classes
  for group, counts in groups.items():
    # iid uniform draws of ~100-300 per class stay well inside 1.6x; a class drawn twice as often does not
    assert max(counts.values()) <= 1.6 * min(counts.values()), (group, counts)


def test_blank_like_has_shape_and_no_foreground(examples):
  image = examples[0].images[0]
  blank = sv.blank_like(image)
  assert blank.shape == image.shape and blank.dtype == np.uint8 and blank.flags.writeable
  assert (blank == np.array(sv.BACKGROUND, np.uint8)).all() and not _foreground(blank).any()
  assert _foreground(image).any()  # the source is untouched
