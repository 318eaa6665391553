"""Runs benchmark families on a checkpoint and writes the report.

    python -m llama4_jax.eval.run --checkpoint=<workdir or HF dir> --tasks=mmlu,math,... \
        [--data_dir=<dir holding mmlu/, math/, ...>] --out=<dir> [--limit=N] [--shots=N] [--samples=k --temperature=T]

Every task's examples are read (through its seqio Task, `llama4_jax.data.tasks.register_benchmark`) before the
model is loaded, so a missing file fails at once. Log-likelihood tasks score every choice in one batched forward
pass per bucket of similar lengths; generation tasks decode in batches through the KV-cache generator (images through
the vision path); code tasks run the extracted programs in the sandbox. Writes `results.json`, `results.md` (one
table per task and the overall table) and `predictions/<task>.jsonl` under --out. `--data_dir` defaults to the
project's own sample files (llama4_jax/eval/samples), so the command runs out of the box on the tiny model.
`--tasks=all` runs every family; multimodal ones are listed as not run when the model has no vision tower.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from typing import Sequence

import numpy as np

from llama4_jax.eval import report, suite
from llama4_jax.eval.suite import Benchmark, Example

BUCKET = 32  # log-likelihood rows are padded to a multiple of this (few distinct shapes to compile)


class Progress:
  """A one-line progress bar on stderr: task, bar, done/total, elapsed."""

  def __init__(self, name: str, total: int, stream=sys.stderr):
    self.name, self.total, self.stream, self.start, self.done = name, total, stream, time.time(), 0

  def update(self, n: int) -> None:
    self.done += n
    filled = int(30 * self.done / max(self.total, 1))
    self.stream.write(f"\r{self.name:>14} [{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} "
                      f"{time.time() - self.start:6.1f}s")
    if self.done >= self.total:
      self.stream.write("\n")
    self.stream.flush()


def _fit(prompt: list[int], room: int) -> tuple[list[int], bool]:
  """The prompt cut from the left (after <|begin_of_text|>) to at most `room` tokens."""
  if len(prompt) <= room:
    return prompt, False
  return prompt[:1] + prompt[len(prompt) - room + 1:], True


@functools.lru_cache(maxsize=8)
def _logprob_fn(cfg):
  import jax
  from llama4_jax.model import apply

  @jax.jit
  def token_logprobs(params, tokens_BL):
    logits_BLV, _ = apply(cfg, params, tokens_BL)
    logp_BLV = jax.nn.log_softmax(logits_BLV[:, :-1], axis=-1)
    return jax.numpy.take_along_axis(logp_BLV, tokens_BL[:, 1:, None], axis=-1)[..., 0]
  return token_logprobs


def loglik_choices(cfg, params, tok, examples: Sequence[Example], batch: int, progress=None) -> tuple[list, int]:
  """Per example the index of its most likely choice (sum of the choice tokens' log-probabilities after the
  prompt); and how many prompts were cut to fit the context."""
  rows, truncated = [], 0  # (example index, choice index, tokens, number of continuation tokens)
  for i, ex in enumerate(examples):
    context = tok.encode(ex.prompt, bos=True)
    for j, choice in enumerate(ex.choices):
      cont = tok.encode(choice)
      ctx, cut = _fit(context, cfg.max_position_embeddings - len(cont))
      truncated += cut and j == 0
      rows.append((i, j, ctx + cont, len(cont)))
  order = sorted(range(len(rows)), key=lambda r: len(rows[r][2]))
  totals = np.full((len(examples), max(len(ex.choices) for ex in examples)), -np.inf)
  fn = _logprob_fn(cfg)
  for start in range(0, len(order), batch):
    group = [rows[r] for r in order[start:start + batch]]
    width = -(-max(len(g[2]) for g in group) // BUCKET) * BUCKET
    tokens = np.zeros((batch, width), np.int32)  # right padding: causal attention never looks at it
    for b, (_, _, ids, _) in enumerate(group):
      tokens[b, :len(ids)] = ids
    logp = np.asarray(fn(params, tokens))
    for b, (i, j, ids, n) in enumerate(group):
      totals[i, j] = float(logp[b, len(ids) - 1 - n:len(ids) - 1].sum())
    if progress:
      progress.update(len(group))
  return [int(np.argmax(t)) for t in totals], truncated


def _cut_at_stops(text: str, stops: Sequence[str]) -> str:
  ends = [text.find(s) for s in stops if s and s in text]
  return text[:min(ends)] if ends else text


def generations(cfg, params, tok, bench: Benchmark, examples: Sequence[Example], batch: int, samples: int,
                temperature: float, max_new_tokens: int, seed: int, progress=None) -> tuple[list, int]:
  """Per example its generated text (a list of `samples` texts when samples > 1), cut at the benchmark's stop
  strings; and how many prompts were cut from the left to fit the context."""
  from llama4_jax.generate import generate
  from llama4_jax.sampling import Sampling
  room = cfg.max_position_embeddings - max_new_tokens
  if room < 2:
    raise ValueError(f"{bench.name}: max_new_tokens={max_new_tokens} leaves no room for a prompt in the model's "
                     f"max_position_embeddings={cfg.max_position_embeddings}; pass a smaller --max_new_tokens")
  prompts, truncated = [], 0
  for ex in examples:
    ids = tok.encode(ex.prompt, bos=True, allowed_special={"<|image|>"})
    if ex.images and len(ids) > room:
      raise ValueError(f"{bench.name} example {ex.id}: a {len(ids)}-token prompt with images does not fit "
                       f"max_position_embeddings={cfg.max_position_embeddings} - {max_new_tokens} new tokens")
    ids, cut = _fit(ids, room)
    prompts.append(ids)
    truncated += cut
  order = sorted(range(len(examples)), key=lambda i: len(prompts[i]))
  out: list = [[] for _ in examples]
  for start in range(0, len(order), batch):
    idx = order[start:start + batch]
    images = [list(examples[i].images) for i in idx] if bench.multimodal else None
    for s in range(samples):
      sampling = Sampling(temperature=temperature, seed=seed + s)
      new = generate(cfg, params, [prompts[i] for i in idx], max_new_tokens=max_new_tokens, sampling=sampling,
                     images=images, tokenizer=tok)
      for i, ids in zip(idx, new):
        text = tok.decode([t for t in ids if t < tok.num_base_tokens])
        out[i].append(_cut_at_stops(text, bench.stop))
    if progress:
      progress.update(len(idx))
  return [o[0] if samples == 1 else o for o in out], truncated


def evaluate_task(cfg, params, tok, bench: Benchmark, examples: Sequence[Example], *, batch: int = 8,
                  samples: int = 1, temperature: float = 0.0, max_new_tokens: int = 0, seed: int = 0,
                  progress=None) -> dict:
  """One task's report entry (report.task_scores plus seconds, truncated and the raw predictions)."""
  start = time.time()
  if bench.mode == "loglik":
    predictions, truncated = loglik_choices(cfg, params, tok, examples, batch, progress)
  else:
    predictions, truncated = generations(cfg, params, tok, bench, examples, batch, samples, temperature,
                                         max_new_tokens or bench.max_new_tokens, seed, progress)
  result = report.task_scores(bench, examples, predictions)
  for ex, row, pred in zip(examples, result["per_example"], predictions):
    row.update(id=ex.id, group=ex.group, golds=list(ex.golds), prediction=pred)
  result.update(seconds=time.time() - start, truncated=truncated)
  return result


def _write(path: str, text: str) -> None:
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path + ".tmp", "w") as f:
    f.write(text)
  os.replace(path + ".tmp", path)


def select_tasks(names: Sequence[str]) -> list[Benchmark]:
  known = suite.all_benchmarks()
  if list(names) == ["all"]:
    return list(known.values())
  unknown = [n for n in names if n not in known]
  if unknown or not names:
    raise ValueError(f"--tasks: unknown benchmark(s) {unknown or names}; known: {sorted(known)} or 'all'")
  return [known[n] for n in names]


def run(checkpoint: str, task_names: Sequence[str], data_dir: str, out_dir: str, *, limit: int | None = None,
        shots: int | None = None, batch: int = 8, samples: int = 1, temperature: float = 0.0,
        max_new_tokens: int = 0, seed: int = 0, stage: str | None = None) -> dict:
  """Reads every task's examples, loads the checkpoint, evaluates, writes the report; returns the results."""
  from llama4_jax.data import tasks as seqio_tasks
  from llama4_jax.generate import load_checkpoint
  if samples < 1 or (samples > 1 and temperature <= 0):
    raise ValueError(f"--samples={samples} needs --temperature > 0 (got {temperature}): greedy samples are identical")
  benches = select_tasks(task_names)
  examples = {b.name: seqio_tasks.benchmark_examples(b.name, data_dir, shots, seed, limit) for b in benches}
  cfg, params, tok = load_checkpoint(checkpoint, stage)
  results = {"checkpoint": os.path.abspath(checkpoint), "data_dir": os.path.abspath(data_dir), "tasks": {},
             "skipped": {}, "settings": dict(limit=limit, shots=shots, samples=samples, temperature=temperature,
                                             seed=seed)}
  for bench in benches:
    if bench.multimodal and cfg.vision is None:
      results["skipped"][bench.name] = "multimodal, and the model has no vision tower"
      continue
    todo = examples[bench.name]  # the bar counts choice rows (log-likelihood) or prompts (generation)
    progress = Progress(bench.name, sum(len(ex.choices) for ex in todo) if bench.mode == "loglik" else len(todo))
    result = evaluate_task(cfg, params, tok, bench, examples[bench.name], batch=batch, samples=samples,
                           temperature=temperature, max_new_tokens=max_new_tokens, seed=seed, progress=progress)
    rows = result.pop("per_example")
    _write(os.path.join(out_dir, "predictions", f"{bench.name}.jsonl"),
           "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    results["tasks"][bench.name] = result
  if results["tasks"]:
    results["average"] = report.average(results["tasks"])
  _write(os.path.join(out_dir, "results.json"), json.dumps(results, indent=1, ensure_ascii=False))
  _write(os.path.join(out_dir, "results.md"), report.markdown(results))
  return results


def main(argv):
  from absl import flags
  f = flags.FLAGS
  if len(argv) > 1:
    raise SystemExit(f"unexpected arguments: {argv[1:]}")
  try:
    results = run(f.checkpoint, f.tasks, f.data_dir, f.out, limit=f.limit or None,
                  shots=None if f.shots < 0 else f.shots, batch=f.batch, samples=f.samples,
                  temperature=f.temperature, max_new_tokens=f.max_new_tokens, seed=f.seed, stage=f.stage)
  except (ValueError, OSError) as e:
    raise SystemExit(f"error: {e}") from None
  print(report.markdown(results))
  print(f"wrote {os.path.join(f.out, 'results.json')} and results.md")


if __name__ == "__main__":
  from absl import app, flags
  from llama4_jax.host_memory import retain_freed_host_memory
  retain_freed_host_memory()  # before the CPU backend starts
  flags.DEFINE_string("checkpoint", None, "training workdir or Hugging Face directory")
  flags.DEFINE_string("stage", None, "workdir stage to load (default: the last)")
  flags.DEFINE_list("tasks", "all", "benchmark families (llama4_jax/eval/suite.py), or 'all'")
  flags.DEFINE_string("data_dir", suite.SAMPLE_DIR, "directory holding <task>/ in each benchmark's released format")
  flags.DEFINE_string("out", None, "output directory")
  flags.DEFINE_integer("limit", 0, "first N examples per task (0: all)")
  flags.DEFINE_integer("shots", -1, "few-shot examples (-1: each benchmark's standard number)")
  flags.DEFINE_integer("batch", 8, "prompts (generation) or choice rows (log-likelihood) per batch")
  flags.DEFINE_integer("samples", 1, "samples per prompt: maj@k for generated answers, pass@k for code")
  flags.DEFINE_float("temperature", 0.0, "sampling temperature (0: greedy)")
  flags.DEFINE_integer("max_new_tokens", 0, "0: each benchmark's own limit")
  flags.DEFINE_integer("seed", 0, "sampling and choice-shuffling seed")
  flags.mark_flags_as_required(["checkpoint", "out"])
  app.run(main)
