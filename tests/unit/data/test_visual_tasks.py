"""Image versions of the verifiable tasks: answers from the drawn content, pictures that hold exactly that content,
prompts that cannot give the answer away, splits by rendering, determinism."""

import numpy as np
import pytest

from llama4_jax.data import synthetic_vl as vl
from llama4_jax.data import verifiable as vf
from llama4_jax.data import visual_tasks as vt

GRID = [(family, level) for family in vf.IMAGE_FAMILIES for level in vf.LEVELS[family]]


def _draw(family, level, n=20, seed=0):
  rng = np.random.default_rng(seed)
  return [vf.make_problem(family, level, rng) for _ in range(n)]


def _foreground(image):
  """Pixels that differ from the canvas tint (the top-left pixel is always background)."""
  return np.any(image.astype(int) != image[0, 0].astype(int), axis=-1)


@pytest.mark.parametrize("family,level", GRID)
def test_answer_follows_the_drawn_content_and_checks(family, level):
  for p in _draw(family, level):
    content = p.meta["content"]
    expected = {"image_count": lambda c: str(c[0]), "image_number": lambda c: str(c[0]),
                "image_sum": lambda c: str(sum(c)), "image_sort": lambda c: " ".join(map(str, sorted(c))),
                "image_reverse": lambda c: "".join(map(str, c))[::-1],
                "image_countdown": lambda c: p.answer}[family]
    assert p.answer == expected(content)
    assert vf.check(p, f" {p.answer}\n") == 1.0 and vf.check(p, " 123456789\n") == 0.0
    if family == "image_countdown":  # the reference expression uses exactly the drawn numbers, once each
      used = sorted(int(t) for t in "".join(c if c.isdigit() else " " for c in p.answer).split())
      assert used == sorted(content) and p.meta["numbers"] == content
      assert f"Make {p.meta['target']} from the numbers shown" in p.prompt
      assert vf.check(p, f" {p.answer}+{content[0]}\n") == 0.0  # a number used twice
    assert p.prompt.startswith(vt.IMAGE_PLACEHOLDER) and p.prompt.endswith("\nAnswer:")
    assert p.prompt.count(vt.IMAGE_PLACEHOLDER) == len(p.images) == 1
    image = p.images[0]
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert 32 <= image.shape[0] <= 64 and 32 <= image.shape[1] <= 64
    assert not image.flags.writeable


@pytest.mark.parametrize("family", ["image_number", "image_sum", "image_sort", "image_reverse", "image_countdown"])
def test_digit_pictures_hold_exactly_the_content_glyphs(family):
  # Glyphs never overlap, so the foreground is the sum of the drawn digits' font pixels at the recorded scale.
  for level in vf.LEVELS[family]:
    for p in _draw(family, level, n=10, seed=level):
      digits = "".join(str(v) for v in p.meta["content"])
      font_pixels = sum(int(vl.digit_bitmap(int(d)).sum()) for d in digits)
      assert int(_foreground(p.images[0]).sum()) == font_pixels * p.meta["scale"] ** 2


def _components(mask):
  """Number of 4-connected foreground regions (a plain flood fill; the pictures are at most 64 x 64)."""
  seen, count = np.zeros_like(mask), 0
  for start in zip(*np.nonzero(mask)):
    if seen[start]:
      continue
    count += 1
    stack = [start]
    seen[start] = True
    while stack:
      r, c = stack.pop()
      for rr, cc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
        if 0 <= rr < mask.shape[0] and 0 <= cc < mask.shape[1] and mask[rr, cc] and not seen[rr, cc]:
          seen[rr, cc] = True
          stack.append((rr, cc))
  return count


def test_dot_pictures_show_exactly_the_counted_dots():
  for level in vf.LEVELS["image_count"]:
    for p in _draw("image_count", level, n=15, seed=level):
      assert _components(_foreground(p.images[0])) == p.meta["content"][0]


@pytest.mark.parametrize("family", vf.IMAGE_FAMILIES)
def test_the_prompt_alone_cannot_give_the_answer(family):
  problems = _draw(family, 2, n=30)
  assert len({p.answer for p in problems}) > 1
  if family == "image_countdown":  # the target is in the text, the numbers to make it from only in the picture
    for p in problems:
      assert not any(str(x) in p.prompt.replace(str(p.meta["target"]), "") for x in p.meta["numbers"])
    return
  assert len({p.prompt for p in problems}) == 1  # one question text per family and level


def test_splits_are_disjoint_renderings_and_unique_sets_never_repeat_one():
  families = vf.IMAGE_FAMILIES
  train = list(vf.problems(families, (1,), n=300, seed=0, split="train"))
  held = list(vf.problems(families, (1,), n=40, seed=0, split="held_out", unique=True))
  keys = lambda ps: {p.split_key for p in ps}  # noqa: E731
  assert not keys(train) & keys(held)
  assert len(keys(held)) == len(held)
  assert all(vf.split_of(p.split_key) == "held_out" for p in held)
  # The key sees the pixels: the same content drawn twice is two different problems.
  a, b = _draw("image_count", 1, n=2)
  a2 = vf.Problem(a.family, a.level, a.prompt, a.answer, a.meta, images=b.images)
  assert a.split_key != a2.split_key


def test_deterministic_in_the_seed_and_text_default_unchanged():
  one, two = _draw("image_sort", 3, n=5, seed=7), _draw("image_sort", 3, n=5, seed=7)
  assert all(np.array_equal(x.images[0], y.images[0]) and x.answer == y.answer for x, y in zip(one, two))
  # `problems()` without families stays text-only, so existing text mixes are not changed by the image families.
  assert not any(p.images for p in vf.problems(n=50, seed=0))
  with pytest.raises(ValueError, match="image_count"):
    vf.make_problem("image_cout", 1, np.random.default_rng(0))
