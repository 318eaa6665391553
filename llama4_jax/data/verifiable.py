"""Procedural verifiable-reward tasks with exact checkers, for SFT and RL of a tiny model offline on CPU.

Every problem is drawn from a `numpy.random.Generator`, so a seed fixes it; nothing is downloaded. Families
(`FAMILIES`), each with levels 1..4 (`LEVELS`); a level fixes sizes only, the tables below give them:
  * add / sub / mul: "What is 47+18?" -> "65". Level = digits of each operand and number of operands
    (`_ARITHMETIC_DIGITS`). Subtraction at level 1 never goes negative; above it, answers may ("-123").
  * sort: "Sort ascending: 5 3 9 1" -> "1 3 5 9" (integers separated by single spaces; repeats allowed).
  * reverse: "Reverse the letters: abcd" -> "dcba".
  * lookup: "q=3 b=7 x=1" then "Value of b?" -> "7"; keys are distinct lowercase strings. The queried pair's
    position is in `meta["index"]`, so accuracy against depth doubles as a length-generalisation probe.
  * countdown: "Make 22 from 3 5 7 with + - * (each at most once)." -> e.g. "3*5+7" or "7+5*3". Any
    expression over + - * and parentheses that uses only the listed numbers, each at most once, and equals the target
    scores 1.0; `answer` holds one such solution. Instances are solvable by construction: the target is the value of a
    random expression over all the numbers (the reference answer).

Answer format. Every prompt ends with "\\nAnswer:" (`ANSWER_TAG`). `extract_answer` reads a completion as follows:
take the text after its last "Answer:" (the whole completion if there is none), drop leading whitespace, keep up to
the first newline, and collapse runs of whitespace to one space. So a model may either continue the prompt directly
(" 65\\n...") or reason first and end with "Answer: 65"; passing prompt + completion works too. `check` then compares
exactly with the reference answer (countdown: validity as above) and returns 1.0 or 0.0. `Problem.completion`
(" 65\\n") is the matching SFT target; the newline is the natural stop for a sampler.

Splits. A problem belongs to 'held_out' iff the SHA-256 of its prompt falls in the first `HELD_OUT_PERCENT` of 100
buckets, else to 'train'. The prompt determines the problem (its answer, or for countdown its numbers and target), so
the same problem can never appear in both splits, whatever seeds or levels produced it. `problems` draws problems and
keeps those of the requested split.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import re
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np

from llama4_jax.data import visual_tasks

ANSWER_TAG = "Answer:"
FAMILIES = ("add", "sub", "mul", "sort", "reverse", "lookup", "countdown")
# Image versions (llama4_jax/data/visual_tasks.py): the answer is only in the picture; for vision models' RL stages.
IMAGE_FAMILIES = visual_tasks.FAMILIES
LEVELS: Mapping[str, range] = {**{family: range(1, 5) for family in FAMILIES}, **visual_tasks.LEVELS}
SPLITS = ("train", "held_out")
HELD_OUT_PERCENT = 10

# Digits of each operand, per level: more digits lengthen carry chains, more operands lengthen the computation.
_ARITHMETIC_DIGITS = {
    "add": {1: (2, 2), 2: (4, 4), 3: (6, 6, 6), 4: (8, 8, 8, 8)},
    "sub": {1: (2, 2), 2: (4, 4), 3: (6, 6, 6), 4: (8, 8, 8, 8)},
    "mul": {1: (2, 1), 2: (2, 2), 3: (3, 3), 4: (3, 2, 2)},
}
_OPERATOR = {"add": "+", "sub": "-", "mul": "*"}
_SORT = {1: (4, 9), 2: (6, 99), 3: (8, 999), 4: (12, 999)}  # (list length, largest value); smallest is 0
_REVERSE = {1: 4, 2: 8, 3: 12, 4: 20}  # string length
_LOOKUP = {1: (3, 1, 1), 2: (6, 2, 2), 3: (12, 2, 3), 4: (24, 3, 3)}  # (pairs, key letters, value digits)
# (how many numbers, largest number, largest target). Numbers are distinct and >= 1; targets are >= 1 and never one
# of the numbers, so no instance is solved by copying a number.
_COUNTDOWN = {1: (3, 9, 100), 2: (4, 9, 100), 3: (4, 25, 1000), 4: (5, 50, 1000)}
_COUNTDOWN_TRIES = 1000  # rejection sampling of targets; a level accepts far more than 1 in 1000 draws
_MAX_EXPRESSION_CHARS = 200  # longer countdown answers are rejected before parsing
_MAX_NESTING = 16  # parenthesis depth bound: keeps the recursive-descent parser far from Python's recursion limit
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


@dataclasses.dataclass(frozen=True)
class Problem:
  """One task instance. `answer` is the reference answer in normalised form; `meta` holds the structured inputs
  (operands, list, numbers and target, ...) for analysis and for checkers that need more than the answer string."""

  family: str
  level: int
  prompt: str
  answer: str
  meta: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False)
  # uint8 [H, W, 3] pictures, one per `<|image|>` placeholder in the prompt (image families only).
  images: tuple = dataclasses.field(default=(), compare=False)

  @property
  def split_key(self) -> str:
    """What `split_of` hashes and what tells two problems apart: the prompt, plus content and pixels for images."""
    return visual_tasks.split_key(self.prompt, self.meta, self.images) if self.images else self.prompt

  @property
  def completion(self) -> str:
    """The SFT target to append to `prompt`; `check` scores it 1.0."""
    return f" {self.answer}\n"


def _validate_family(family: str) -> None:
  if family not in LEVELS:
    raise ValueError(f"unknown family {family!r}; allowed: {', '.join(FAMILIES + IMAGE_FAMILIES)}")


def _validate(family: str, level: int) -> None:
  _validate_family(family)
  allowed = LEVELS[family]
  if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or level not in allowed:
    raise ValueError(f"level {level!r} out of range for family {family!r}; allowed: {allowed[0]}..{allowed[-1]}")


def _number(rng: np.random.Generator, digits: int) -> int:
  """A uniform integer with exactly `digits` digits (no leading zero; 1..9 for one digit)."""
  return int(rng.integers(10 ** (digits - 1), 10 ** digits))


def _ask(question: str) -> str:
  return f"{question}\n{ANSWER_TAG}"


def _arithmetic(family: str, level: int, rng: np.random.Generator) -> tuple[str, str, dict]:
  operands = [_number(rng, d) for d in _ARITHMETIC_DIGITS[family][level]]
  if family == "sub" and level == 1:
    operands.sort(reverse=True)  # the easiest level stays non-negative: no sign to learn yet
  if family == "add":
    value = sum(operands)
  elif family == "sub":
    value = operands[0] - sum(operands[1:])
  else:
    value = int(np.prod(np.array(operands, dtype=object)))  # object dtype: Python ints never overflow
  expression = _OPERATOR[family].join(str(x) for x in operands)
  return _ask(f"What is {expression}?"), str(value), {"operands": tuple(operands), "operator": _OPERATOR[family]}


def _sort(level: int, rng: np.random.Generator) -> tuple[str, str, dict]:
  length, largest = _SORT[level]
  values = tuple(int(v) for v in rng.integers(0, largest + 1, size=length))
  answer = " ".join(str(v) for v in sorted(values))
  return _ask(f"Sort ascending: {' '.join(str(v) for v in values)}"), answer, {"values": values}


def _reverse(level: int, rng: np.random.Generator) -> tuple[str, str, dict]:
  text = "".join(_LETTERS[i] for i in rng.integers(0, 26, size=_REVERSE[level]))
  return _ask(f"Reverse the letters: {text}"), text[::-1], {"text": text}


def _key(index: int, letters: int) -> str:
  return "".join(_LETTERS[(index // 26 ** k) % 26] for k in range(letters))


def _lookup(level: int, rng: np.random.Generator) -> tuple[str, str, dict]:
  n_pairs, letters, digits = _LOOKUP[level]
  keys = [_key(int(i), letters) for i in rng.choice(26 ** letters, size=n_pairs, replace=False)]
  pairs = tuple((k, str(_number(rng, digits))) for k in keys)
  index = int(rng.integers(n_pairs))
  listing = " ".join(f"{k}={v}" for k, v in pairs)
  question = f"{listing}\nValue of {pairs[index][0]}?"
  return _ask(question), pairs[index][1], {"pairs": pairs, "key": pairs[index][0], "index": index}


def _random_expression(numbers: list[int], rng: np.random.Generator) -> tuple[str, int]:
  """Combines random pairs of sub-expressions with random operators until one expression over all numbers is left."""
  nodes = [(str(x), x, True) for x in numbers]  # (text, value, is a bare number)
  while len(nodes) > 1:
    i, j = (int(k) for k in rng.choice(len(nodes), size=2, replace=False))
    (left, a, left_bare), (right, b, right_bare) = nodes[i], nodes[j]
    operator = "+-*"[int(rng.integers(3))]
    value = a + b if operator == "+" else a - b if operator == "-" else a * b
    # Every compound operand is parenthesised, so the text parses back to `value` without precedence reasoning.
    text = (left if left_bare else f"({left})") + operator + (right if right_bare else f"({right})")
    nodes = [node for k, node in enumerate(nodes) if k not in (i, j)] + [(text, value, False)]
  return nodes[0][0], nodes[0][1]


def countdown_instance(count: int, largest: int, largest_target: int,
                       rng: np.random.Generator) -> tuple[list[int], int, str]:
  """(distinct numbers in [1, largest], target, one expression over all of them that makes it)."""
  for _ in range(_COUNTDOWN_TRIES):
    numbers = [int(x) for x in rng.choice(np.arange(1, largest + 1), size=count, replace=False)]
    expression, target = _random_expression(numbers, rng)
    if 1 <= target <= largest_target and target not in numbers:
      return numbers, target, expression
  raise RuntimeError(f"no countdown target in [1, {largest_target}] after {_COUNTDOWN_TRIES} draws "
                     f"({count} numbers up to {largest})")


def countdown_question(target: int, shown: str) -> str:
  return f"Make {target} from {shown} with + - * (each at most once)."


def _countdown(level: int, rng: np.random.Generator) -> tuple[str, str, dict]:
  numbers, target, expression = countdown_instance(*_COUNTDOWN[level], rng)
  question = countdown_question(target, " ".join(str(x) for x in numbers))
  return _ask(question), expression, {"numbers": tuple(numbers), "target": target}


_GENERATORS: dict[str, Callable[[int, np.random.Generator], tuple[str, str, dict]]] = {
    "add": lambda level, rng: _arithmetic("add", level, rng),
    "sub": lambda level, rng: _arithmetic("sub", level, rng),
    "mul": lambda level, rng: _arithmetic("mul", level, rng),
    "sort": _sort,
    "reverse": _reverse,
    "lookup": _lookup,
    "countdown": _countdown,
}


def make_problem(family: str, level: int, rng: np.random.Generator) -> Problem:
  """One problem of `family` at `level`, drawn from `rng` (the same generator state gives the same problem)."""
  _validate(family, level)
  if family in visual_tasks.GENERATORS:
    prompt, answer, meta, image = visual_tasks.GENERATORS[family](int(level), rng)
    image.setflags(write=False)
    return Problem(family, int(level), prompt, answer, meta, images=(image,))
  prompt, answer, meta = _GENERATORS[family](int(level), rng)
  return Problem(family, int(level), prompt, answer, meta)


def extract_answer(completion: str) -> str:
  """The final answer in a completion: after the last "Answer:", first non-blank line, whitespace collapsed."""
  tail = completion.rsplit(ANSWER_TAG, 1)[-1]
  first_line = tail.lstrip().split("\n", 1)[0]
  return " ".join(first_line.split())


class _Invalid(Exception):
  """A countdown answer that is malformed or breaks the rules; scored 0.0, never raised out of `check`."""


class _ExpressionParser:
  """Recursive descent over integers, + - * and parentheses (usual precedence, left-associative), evaluating as it
  goes. Each literal is charged against the allowed numbers as soon as it is read, so no work is spent on (and no
  huge value is built from) an answer that already broke the rules."""

  def __init__(self, text: str, numbers: Iterable[int]):
    # [0-9] rather than \d: int() would accept non-ASCII digits such as "٣" as 3.
    self._tokens = re.findall(r"[0-9]+|\S", text)
    self._pos = 0
    self._budget = collections.Counter(numbers)

  def evaluate(self) -> int:
    value = self._sum(0)
    if self._pos != len(self._tokens):
      raise _Invalid(f"unexpected {self._tokens[self._pos]!r}")
    return value

  def _peek(self) -> str | None:
    return self._tokens[self._pos] if self._pos < len(self._tokens) else None

  def _take(self) -> str:
    token = self._peek()
    if token is None:
      raise _Invalid("expression ends early")
    self._pos += 1
    return token

  def _sum(self, depth: int) -> int:
    value = self._product(depth)
    while self._peek() in ("+", "-"):
      operator = self._take()
      rhs = self._product(depth)
      value = value + rhs if operator == "+" else value - rhs
    return value

  def _product(self, depth: int) -> int:
    value = self._atom(depth)
    while self._peek() == "*":
      self._take()
      value *= self._atom(depth)
    return value

  def _atom(self, depth: int) -> int:
    token = self._take()
    if token == "(":
      if depth >= _MAX_NESTING:
        raise _Invalid("parentheses nested too deeply")
      value = self._sum(depth + 1)
      if self._take() != ")":
        raise _Invalid("unbalanced parentheses")
      return value
    if not token.isascii() or not token.isdigit() or (len(token) > 1 and token[0] == "0"):
      raise _Invalid(f"expected a number, got {token!r}")  # also rejects unary minus and leading zeros
    number = int(token)
    if self._budget[number] == 0:
      raise _Invalid(f"{number} is not available (not listed, or already used)")
    self._budget[number] -= 1
    return number


def _countdown_ok(expression: str, numbers: Iterable[int], target: int) -> bool:
  if not expression or len(expression) > _MAX_EXPRESSION_CHARS:
    return False
  try:
    return _ExpressionParser(expression, numbers).evaluate() == target
  except _Invalid:
    return False


def check(problem: Problem, completion: str) -> float:
  """1.0 if the answer extracted from `completion` is correct for `problem`, else 0.0 (see the module docstring)."""
  _validate(problem.family, problem.level)
  answer = extract_answer(completion)
  if problem.family in ("countdown", "image_countdown"):
    correct = _countdown_ok(answer, problem.meta["numbers"], problem.meta["target"])
  else:
    correct = answer == problem.answer
  return 1.0 if correct else 0.0


def split_of(prompt: str) -> str:
  """'held_out' or 'train', a fixed function of the prompt text (stable across processes, unlike hash()); for an
  image problem pass its `split_key`."""
  bucket = int.from_bytes(hashlib.sha256(prompt.encode("utf-8")).digest()[:8], "big") % 100
  return "held_out" if bucket < HELD_OUT_PERCENT else "train"


def problems(families: Iterable[str] | None = None, levels: Iterable[int] | None = None, n: int = 100, seed: int = 0,
             split: str = "train", unique: bool = False) -> Iterator[Problem]:
  """`n` problems of `split`, drawn with family and level uniform over the requested grid.

  `families` defaults to all of `FAMILIES` and `levels` to each family's `LEVELS`. The stream is a fixed function of
  all the arguments. `unique=True` skips repeated prompts (for evaluation sets); the stream then raises RuntimeError
  when the grid runs out of new problems of this split. Bad arguments raise ValueError here, not at the first next().
  """
  families = FAMILIES if families is None else tuple(families)
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
  for family in families:
    _validate_family(family)
  grid = [(f, int(level)) for f in families for level in (LEVELS[f] if levels is None else tuple(levels))]
  for family, level in grid:
    _validate(family, level)
  if not grid:
    raise ValueError("no (family, level) pairs requested")
  return _stream(grid, n, seed, split, unique)


def _stream(grid: list[tuple[str, int]], n: int, seed: int, split: str, unique: bool) -> Iterator[Problem]:
  rng = np.random.default_rng(seed)
  seen: set[str] = set()
  produced = misses = 0
  while produced < n:
    family, level = grid[int(rng.integers(len(grid)))]
    problem = make_problem(family, level, rng)
    key = problem.split_key
    if split_of(key) != split or (unique and key in seen):
      misses += 1
      # Held-out keeps ~1 draw in 10, so 10,000 misses in a row only happen once the grid is exhausted.
      if misses >= 10_000:
        raise RuntimeError(f"only {produced} distinct {split} problems found for {grid}")
      continue
    misses = 0
    if unique:
      seen.add(key)
    produced += 1
    yield problem
