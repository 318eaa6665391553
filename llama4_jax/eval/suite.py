"""The benchmark suite's vocabulary: one `Example` per question, one `Benchmark` per benchmark family.

A `Benchmark` reads the benchmark's released files from a local directory into `Example`s (prompt already formatted,
few-shot included), says how the model answers (`mode`), how an answer is pulled out of a generation (`extract`),
how it is scored against the example (`score`) and how scores add up (`aggregate`). The families live in
`text_benchmarks.py` and `vision_benchmarks.py`; `BENCHMARKS` below names them all. seqio Tasks wrap them in
`llama4_jax.data.tasks.register_benchmark`; `python -m llama4_jax.eval.run` runs them.

Modes:
  * "loglik": multiple choice by log-likelihood: the model scores each of `choices` as a continuation of `prompt`
    (sum of token log-probabilities); the prediction is the argmax (`answer_index` is the gold).
  * "generate": greedy (or sampled, for maj@k) generation of up to `max_new_tokens` after `prompt`, cut at any of
    `stop`; `extract(generation, example)` gives the answer that `score` compares with the golds.
  * "code": like "generate", then `score` runs the extracted program against `tests` / `io_cases` in the sandbox.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Sequence

SAMPLE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "samples")
MODES = ("loglik", "generate", "code")


@dataclasses.dataclass(frozen=True)
class Example:
  """One question, ready for the model."""

  id: str
  prompt: str  # the full prompt (few-shot included); the model continues right after it
  golds: tuple[str, ...]  # every acceptable reference answer (the first is the one reports show)
  choices: tuple[str, ...] = ()  # "loglik": the continuations scored, e.g. (" A", " B", " C", " D")
  answer_index: int = -1  # "loglik": index of the correct choice
  group: str = ""  # subject / category / language: per-group scores and macro averages
  images: tuple[str, ...] = ()  # image file paths, one per <|image|> placeholder in `prompt`, in order
  tests: tuple[str, ...] = ()  # "code": assert statements run after the program (MBPP)
  io_cases: tuple[tuple[str, str], ...] = ()  # "code": (stdin, expected stdout) pairs (LiveCodeBench)
  setup: str = ""  # "code": test setup code run before the tests


@dataclasses.dataclass(frozen=True)
class Benchmark:
  """A benchmark family: how to read, prompt, answer, extract, score and aggregate."""

  name: str  # "mmlu", "math", ...
  mode: str  # one of MODES
  metric: str  # the reported metric's name: "macro_accuracy", "exact_match", "f1", "anls", "chrf", "pass@1", ...
  read: Callable[..., list[Example]]  # read(data_dir, shots=..., seed=...) -> examples; shots None = the default
  layout: str  # the expected files under data_dir/<name>/, for error messages and the README
  default_shots: int = 0
  max_new_tokens: int = 32
  stop: tuple[str, ...] = ("\n\n",)  # generation stops at the first of these (the text after it is dropped)
  extract: Callable[[str, Example], str] | None = None  # "generate"/"code": generation -> answer
  score: Callable[[str, Example], float] | None = None  # answer (or chosen choice) -> per-example score
  aggregate: str = "mean"  # "mean" over examples, "macro" (mean over groups), "corpus_chrf" (sacrebleu corpus chrF)
  multimodal: bool = False

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"benchmark {self.name!r}: mode {self.mode!r} is not one of {MODES}")
    if self.mode != "loglik" and (self.extract is None or self.score is None):
      raise ValueError(f"benchmark {self.name!r}: mode {self.mode!r} needs extract and score")
    if self.aggregate not in ("mean", "macro", "corpus_chrf"):
      raise ValueError(f"benchmark {self.name!r}: aggregate {self.aggregate!r} is not mean, macro or corpus_chrf")


def benchmark_dir(data_dir: str, name: str, layout: str) -> str:
  """`data_dir/name`, or a FileNotFoundError that names the path and the files expected there."""
  path = os.path.join(data_dir, name)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"benchmark {name!r}: {path} is not a directory; expected {layout}")
  return path


def require_file(path: str, name: str, layout: str) -> str:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"benchmark {name!r}: {path} does not exist; expected {layout}")
  return path


def all_benchmarks() -> dict[str, Benchmark]:
  """Every family by name (text and vision)."""
  from llama4_jax.eval import text_benchmarks, vision_benchmarks
  found = {}
  for bench in (*text_benchmarks.BENCHMARKS, *vision_benchmarks.BENCHMARKS):
    if bench.name in found:
      raise ValueError(f"benchmark name {bench.name!r} is defined twice")
    found[bench.name] = bench
  return found


def get(name: str) -> Benchmark:
  benches = all_benchmarks()
  if name not in benches:
    raise ValueError(f"unknown benchmark {name!r}; known: {sorted(benches)}")
  return benches[name]


def load(name: str, data_dir: str, shots: int | None = None, limit: int | None = None, seed: int = 0
         ) -> list[Example]:
  """The examples of benchmark `name` under `data_dir` (first `limit` of them, in file order)."""
  bench = get(name)
  if shots is not None and shots < 0:
    raise ValueError(f"shots must be >= 0, got {shots}")
  examples = bench.read(data_dir, shots=bench.default_shots if shots is None else shots, seed=seed)
  if not examples:
    raise ValueError(f"benchmark {name!r}: no examples under {os.path.join(data_dir, name)}")
  return examples[:limit] if limit else examples


def choice_letters(n: int) -> Sequence[str]:
  if not 1 <= n <= 26:
    raise ValueError(f"multiple choice with {n} options: between 1 and 26 supported")
  return [chr(ord("A") + i) for i in range(n)]
