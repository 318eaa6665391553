"""Scoring model outputs against a benchmark's examples, and the JSON / Markdown report of an evaluation.

`task_scores(bench, examples, predictions)` turns predictions (generated texts, lists of sampled texts for maj@k /
pass@k, or chosen choice indices for log-likelihood tasks) into the benchmark's reported numbers: per-example
answers and scores, the headline metric aggregated the benchmark's way (mean over examples, mean over groups, or
corpus chrF), and per-group scores. `markdown(results)` renders one table per task and an overall table.
"""

from __future__ import annotations

import collections
import json
from typing import Sequence

from llama4_jax.eval import metrics
from llama4_jax.eval.suite import Benchmark, Example

_TUPLE_FIELDS = ("golds", "choices", "images", "tests")


def example_from_json(text: str | bytes) -> Example:
  """Inverse of json.dumps(dataclasses.asdict(example)) (lists back to tuples)."""
  d = json.loads(text)
  for key in _TUPLE_FIELDS:
    d[key] = tuple(d.get(key, ()))
  d["io_cases"] = tuple(tuple(case) for case in d.get("io_cases", ()))
  return Example(**d)


def _answer(bench: Benchmark, example: Example, generation: str) -> str:
  answer = bench.extract(generation, example)
  return "" if answer is None else answer


def score_one(bench: Benchmark, example: Example, prediction) -> dict:
  """{"answer", "score"[, "samples"]} for one example. prediction: a choice index ("loglik"), a generated text, or
  a list of sampled texts: "code" scores their mean (the unbiased pass@1 over the samples), "generate" the majority
  answer (maj@k)."""
  if bench.mode == "loglik":
    index = int(prediction)
    return {"answer": example.choices[index].strip(), "score": float(index == example.answer_index)}
  if isinstance(prediction, str):
    answer = _answer(bench, example, prediction)
    return {"answer": answer, "score": float(bench.score(answer, example))}
  answers = [_answer(bench, example, p) for p in prediction]
  if bench.mode == "code":
    passed = [float(bench.score(a, example)) for a in answers]
    return {"answer": answers[0], "score": sum(passed) / len(passed), "samples": len(passed),
            "correct": int(sum(passed))}
  voted = metrics.majority_vote([a or None for a in answers]) or ""
  return {"answer": voted, "score": float(bench.score(voted, example)), "samples": len(answers)}


def task_scores(bench: Benchmark, examples: Sequence[Example], predictions: Sequence) -> dict:
  """The benchmark's numbers for these predictions: {"metric", "score", "n", "groups", "per_example", "scores"}."""
  if len(examples) != len(predictions):
    raise ValueError(f"benchmark {bench.name!r}: {len(examples)} examples but {len(predictions)} predictions")
  rows = [score_one(bench, ex, p) for ex, p in zip(examples, predictions)]
  by_group: dict[str, list[float]] = collections.defaultdict(list)
  for ex, row in zip(examples, rows):
    by_group[ex.group or "all"].append(row["score"])
  groups = {g: sum(v) / len(v) for g, v in sorted(by_group.items())}
  if bench.aggregate == "corpus_chrf":
    score = metrics.corpus_chrf([r["answer"] for r in rows], [list(ex.golds) for ex in examples])
    groups = {g: metrics.corpus_chrf([r["answer"] for r, ex in zip(rows, examples) if (ex.group or "all") == g],
                                     [list(ex.golds) for ex in examples if (ex.group or "all") == g])
              for g in groups}
  elif bench.aggregate == "macro":
    score = sum(groups.values()) / len(groups)
  else:
    score = sum(r["score"] for r in rows) / len(rows)
  pass_k = {}
  if bench.mode == "code" and rows and "samples" in rows[0]:
    n = rows[0]["samples"]
    for k in sorted({1, n}):
      pass_k[f"pass@{k}"] = sum(metrics.pass_at_k(r["samples"], r["correct"], k) for r in rows) / len(rows)
  return {"metric": bench.metric, "score": score, "n": len(rows), "groups": groups, "per_example": rows,
          "scores": {bench.metric: score, **pass_k}}


def _shown(metric: str, value: float) -> str:
  return f"{value:.2f}" if metric == "chrf" else f"{100 * value:.1f}"  # chrF is already on 0-100


def markdown(results: dict) -> str:
  """One table per task (groups) and the overall table; scores in percent (chrF on its own 0-100 scale)."""
  lines = ["# Evaluation", "", f"checkpoint: `{results.get('checkpoint', '?')}`", "", "## Overall", "",
           "| task | metric | score | examples | seconds |", "|---|---|---|---|---|"]
  tasks = results["tasks"]
  for name, r in tasks.items():
    lines.append(f"| {name} | {r['metric']} | {_shown(r['metric'], r['score'])} | {r['n']} | {r['seconds']:.1f} |")
  if "average" in results:
    lines.append(f"| **average** | mean of the above (chrF / 100) | {100 * results['average']:.1f} | | |")
  for name, r in tasks.items():
    lines += ["", f"## {name}", "", f"{r['metric']}: **{_shown(r['metric'], r['score'])}** over {r['n']} examples"
              + (f" ({r['truncated']} prompts cut from the left to fit the context)" if r.get("truncated") else ""),
              "", "| group | score |", "|---|---|"]
    lines += [f"| {g} | {_shown(r['metric'], v)} |" for g, v in r["groups"].items()]
  skipped = results.get("skipped") or {}
  if skipped:
    lines += ["", "## Not run", ""] + [f"* {name}: {why}" for name, why in skipped.items()]
  return "\n".join(lines) + "\n"


def average(tasks: dict) -> float:
  """Unweighted mean of the tasks' headline scores on a 0-1 scale (chrF divided by 100)."""
  values = [r["score"] / 100 if r["metric"] == "chrf" else r["score"] for r in tasks.values()]
  return sum(values) / len(values)
