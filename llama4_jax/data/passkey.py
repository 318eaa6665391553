"""Pass-key texts (Mohtashami & Jaggi 2023): the sentences the length probes use, and training documents built from
them so that a small model learns the retrieval format before its length is tested (llama4_jax/eval/length.py).

A document: repeated filler with the fact "The pass key is NNNNN. Remember it. NNNNN is the pass key." at a random
depth, then the question and its answer, "What is the pass key? The pass key is NNNNN."
"""

from __future__ import annotations

import numpy as np

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
QUESTION = " What is the pass key? The pass key is"


def fact(key: str) -> str:
  return f" The pass key is {key}. Remember it. {key} is the pass key. "


def document(rng: np.random.RandomState, max_filler: int = 6) -> str:
  """One training document: 1..`max_filler` filler sentences' worth of repeats around the fact, question, answer."""
  key = str(rng.randint(10000, 100000))
  reps = int(rng.randint(1, max_filler + 1))
  before = int(rng.randint(0, reps + 1))
  return (FILLER * before + fact(key) + FILLER * (reps - before)).strip() + QUESTION + f" {key}."


def documents(n: int, seed: int = 0, max_filler: int = 6) -> list[str]:
  rng = np.random.RandomState(seed)
  return [document(rng, max_filler) for _ in range(n)]
