"""Verifiable-reward tasks: reference answers against independent oracles, exact checkers, countdown validity,
answer extraction, determinism, disjoint splits and argument errors."""

import collections
import dataclasses
import re

import numpy as np
import pytest

from llama4_jax.data import verifiable as vf
from llama4_jax.data.verifiable import Problem, check, extract_answer, make_problem, problems

GRID = [(family, level) for family in vf.FAMILIES for level in vf.LEVELS[family]]
PER_CELL = 25


def _draw(family, level, seed=0, n=PER_CELL):
  rng = np.random.default_rng(seed)
  return [make_problem(family, level, rng) for _ in range(n)]


def _question(problem):
  assert problem.prompt.endswith("\n" + vf.ANSWER_TAG)
  return problem.prompt[:-len("\n" + vf.ANSWER_TAG)]


def _oracle(problem):
  """The answer recomputed from the prompt text alone (eval is fine here: the test builds or checks the input)."""
  question = _question(problem)
  if problem.family in ("add", "sub", "mul"):
    expression = re.fullmatch(r"What is ([0-9+\-*]+)\?", question).group(1)
    return str(eval(expression))
  if problem.family == "sort":
    return " ".join(str(v) for v in sorted(int(v) for v in question.split(": ")[1].split()))
  if problem.family == "reverse":
    return question.split(": ")[1][::-1]
  if problem.family == "lookup":
    listing, asked = question.split("\n")
    table = dict(pair.split("=") for pair in listing.split())
    assert len(table) == len(listing.split())  # keys are distinct
    return table[re.fullmatch(r"Value of ([a-z]+)\?", asked).group(1)]
  raise AssertionError(problem.family)


def _perturb(answer):
  """Changes the last character: any exact checker must then reject the answer."""
  last = answer[-1]
  if last.isdigit():
    return answer[:-1] + str((int(last) + 1) % 10)
  return answer[:-1] + ("a" if last != "a" else "b")


def _flip_first_operator(expression):
  i = next(k for k, c in enumerate(expression) if c in "+-*")
  return expression[:i] + {"+": "-", "-": "*", "*": "+"}[expression[i]] + expression[i + 1:]


@pytest.mark.parametrize("family,level", GRID)
def test_reference_passes_and_perturbed_fails(family, level):
  for problem in _draw(family, level):
    assert (problem.family, problem.level) == (family, level)
    assert check(problem, problem.completion) == 1.0
    assert check(problem, problem.prompt + problem.completion) == 1.0
    assert check(problem, f"Working it out.\n{vf.ANSWER_TAG}  {problem.answer}  \nDone.") == 1.0
    if family == "countdown":
      assert check(problem, _flip_first_operator(problem.answer)) == 0.0
    else:
      assert problem.answer == _oracle(problem)
      assert check(problem, _perturb(problem.answer)) == 0.0
    assert check(problem, "") == 0.0


def test_family_specific_wrong_answers_fail():
  for problem in _draw("sort", 2):
    values = problem.meta["values"]
    if list(values) != sorted(values):
      assert check(problem, " ".join(map(str, values))) == 0.0
    assert check(problem, " ".join(map(str, sorted(values, reverse=True)))) == (1.0 if len(set(values)) == 1 else 0.0)
    assert check(problem, ",".join(map(str, sorted(values)))) == 0.0  # the separator is a single space
  for problem in _draw("reverse", 2):
    assert check(problem, problem.meta["text"]) == (1.0 if problem.meta["text"] == problem.answer else 0.0)
  for problem in _draw("lookup", 3):
    others = {v for k, v in problem.meta["pairs"] if v != problem.answer}
    assert all(check(problem, v) == 0.0 for v in others)
    assert problem.meta["pairs"][problem.meta["index"]] == (problem.meta["key"], problem.answer)
  negative = [p for p in _draw("sub", 2) if p.answer.startswith("-")]
  assert negative
  assert all(check(p, p.answer[1:]) == 0.0 for p in negative)
  assert all(not p.answer.startswith("-") for p in _draw("sub", 1, n=200))  # level 1 stays non-negative


def test_levels_grow_and_level_one_prompts_are_short():
  for family in vf.FAMILIES:
    lengths = [np.mean([len(p.prompt) for p in _draw(family, level)]) for level in vf.LEVELS[family]]
    assert lengths == sorted(lengths), family
    assert max(len(p.prompt) for p in _draw(family, 1, n=200)) < 64, family


@pytest.mark.parametrize("level", vf.LEVELS["countdown"])
def test_countdown_instances_are_solvable_by_construction(level):
  count, largest, largest_target = vf._COUNTDOWN[level]
  for problem in _draw("countdown", level, seed=3):
    numbers, target = problem.meta["numbers"], problem.meta["target"]
    assert len(numbers) == len(set(numbers)) == count and all(1 <= x <= largest for x in numbers)
    assert 1 <= target <= largest_target and target not in numbers
    assert problem.prompt.startswith(f"Make {target} from {' '.join(map(str, numbers))} ")
    # The reference solution uses every number exactly once and really equals the target.
    assert collections.Counter(int(x) for x in re.findall(r"[0-9]+", problem.answer)) == collections.Counter(numbers)
    assert eval(problem.answer) == target
    assert check(problem, problem.answer) == 1.0


def _countdown(numbers, target):
  return Problem("countdown", 1, "unused", "unused", {"numbers": tuple(numbers), "target": target})


@pytest.mark.parametrize("completion,score", [
    ("3*5+7", 1.0), ("7+5*3", 1.0), (" ( 7 + (5*3) ) ", 1.0), ("Answer: 7+3*5", 1.0),
    ("(3+5)*7", 0.0),  # wrong value (56)
    ("3*5+7+7", 0.0), ("5*5-3", 0.0),  # reuses 7 / 5
    ("4*5+2", 0.0), ("15+7", 0.0), ("22", 0.0),  # numbers not offered
    ("", 0.0), ("3*5+", 0.0), ("(3*5+7", 0.0), ("3*5+7)", 0.0), ("3 5 7", 0.0), ("3*5 7", 0.0), ("()", 0.0),
    ("3**5", 0.0), ("35/5+7", 0.0), ("3*5+7=22", 0.0), ("3x5+7", 0.0), ("03*5+7", 0.0), ("3*5+-7", 0.0),
    ("__import__('os').system('true')", 0.0), ("٣*5+7", 0.0),  # Arabic-Indic 3: int() would accept it
    ("(" * 40 + "3*5+7" + ")" * 40, 0.0), ("+".join(["7"] * 500), 0.0),
])
def test_countdown_checker(completion, score):
  assert check(_countdown((3, 5, 7), 22), completion) == score


def test_countdown_checker_rules():
  assert check(_countdown((8, 30, 2), 22), "30-8") == 1.0
  assert check(_countdown((8, 30, 2), 22), "-8+30") == 0.0  # no unary minus
  assert check(_countdown((5, 5, 3), 22), "5*5-3") == 1.0  # a repeated number may be used as often as listed
  assert check(_countdown((5, 5, 3), 22), "5*5-3+5-5") == 0.0
  assert check(_countdown((1, 2, 3, 4), 5), "((((2+3))))") == 1.0  # reasonable nesting is fine


def test_countdown_parser_matches_python_precedence():
  rng = np.random.default_rng(7)
  for _ in range(300):
    numbers = [int(x) for x in rng.choice(np.arange(1, 60), size=4, replace=False)]
    expression = str(numbers[0])
    for x in numbers[1:]:
      expression += "+-*"[int(rng.integers(3))] + str(x)
    if rng.random() < 0.5:  # a parenthesised middle pair
      parts = re.split(r"([+\-*])", expression)
      parts[2], parts[4] = "(" + parts[2], parts[4] + ")"
      expression = "".join(parts)
    value = eval(expression)
    assert check(_countdown(numbers, value), expression) == 1.0, expression
    assert check(_countdown(numbers, value + 1), expression) == 0.0, expression


@pytest.mark.parametrize("completion,expected", [
    (" 65\nWhat is 1+1?", "65"),
    ("\n\n  65  ", "65"),
    ("Let me think: 60+5.\nAnswer: 65\nmore text", "65"),
    ("Answer: 1\nso the Answer:  2   3 \n", "2 3"),
    ("What is 60+5?\nAnswer: 65", "65"),
    ("Answer:\n65\nignored", "65"),
    ("Answer:", ""),
    ("", ""),
])
def test_extract_answer(completion, expected):
  assert extract_answer(completion) == expected


def test_check_reads_the_answer_out_of_extra_text():
  problem = _draw("sort", 1)[0]
  assert check(problem, f"I sort them.\n{vf.ANSWER_TAG} {problem.answer.replace(' ', '   ')}\nDone") == 1.0
  assert check(problem, f"{vf.ANSWER_TAG} {problem.answer}\nNo wait.\n{vf.ANSWER_TAG} 0") == 0.0  # last tag wins
  assert check(problem, f"I think {problem.answer}") == 0.0  # no tag: the whole first line is the answer


def test_deterministic_for_a_seed_and_different_across_seeds():
  for family in vf.FAMILIES:
    assert _draw(family, 2, seed=5) == _draw(family, 2, seed=5)
    assert _draw(family, 2, seed=5) != _draw(family, 2, seed=6)
  first = [p.prompt for p in problems(n=60, seed=1)]
  assert first == [p.prompt for p in problems(n=60, seed=1)]
  assert first != [p.prompt for p in problems(n=60, seed=2)]
  assert {p.family for p in problems(n=300, seed=1)} == set(vf.FAMILIES)
  assert {(p.family, p.level) for p in problems(["lookup", "sort"], [2, 4], n=100)} == {
      ("lookup", 2), ("lookup", 4), ("sort", 2), ("sort", 4)}


def test_splits_are_disjoint_and_follow_the_prompt_hash():
  # Level 1 has few distinct prompts (e.g. 810 for mul), so unrouted draws would collide across streams.
  draws = [p.prompt for f in ("add", "mul") for p in _draw(f, 1, seed=0, n=1500)]
  assert len(set(draws)) < len(draws)
  held_out_share = np.mean([vf.split_of(prompt) == "held_out" for prompt in draws])
  assert 0.07 < held_out_share < 0.13  # HELD_OUT_PERCENT = 10; the binomial sd here is ~0.006
  train = {p.prompt for s in (0, 1) for p in problems(["add", "mul"], [1], n=1500, seed=s)}
  held_out = {p.prompt for s in (0, 2) for p in problems(["add", "mul"], [1], n=300, seed=s, split="held_out")}
  assert held_out and train and not train & held_out
  assert {vf.split_of(prompt) for prompt in held_out} == {"held_out"}
  assert {vf.split_of(prompt) for prompt in train} == {"train"}


def test_unique_held_out_stream_enumerates_the_split_then_stops():
  expected = {f"What is {a}*{b}?\n{vf.ANSWER_TAG}" for a in range(10, 100) for b in range(1, 10)}
  expected = {prompt for prompt in expected if vf.split_of(prompt) == "held_out"}
  got = []
  with pytest.raises(RuntimeError, match="distinct held_out problems"):
    for problem in problems(["mul"], [1], n=10_000, seed=0, split="held_out", unique=True):
      got.append(problem.prompt)
  assert len(got) == len(set(got)) and set(got) == expected


def test_problem_is_frozen():
  problem = _draw("add", 1)[0]
  with pytest.raises(dataclasses.FrozenInstanceError):
    problem.answer = "0"
  assert hash(problem) == hash(dataclasses.replace(problem))


def test_bad_family_level_and_split_raise():
  rng = np.random.default_rng(0)
  with pytest.raises(ValueError, match=r"unknown family 'division'; allowed: add, sub, mul, sort"):
    make_problem("division", 1, rng)
  for level in (0, 5, 2.0, True):
    with pytest.raises(ValueError, match=rf"level {level!r} out of range for family 'sort'; allowed: 1\.\.4"):
      make_problem("sort", level, rng)
  with pytest.raises(ValueError, match="unknown family 'nope'"):
    problems(["add", "nope"])  # raised at the call, before iterating
  with pytest.raises(ValueError, match=r"level 9 out of range for family 'add'"):
    problems(["add"], [1, 9])
  with pytest.raises(ValueError, match=r"unknown split 'test'; allowed: train, held_out"):
    problems(split="test")
  with pytest.raises(ValueError, match="unknown family 'nope'"):
    check(Problem("nope", 1, "p", "a"), "a")
