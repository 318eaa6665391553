"""Hyperparameter sweeps: every entry of an experiment's `get_sweep()` as its own training process (issue 10).

    python -m llama4_jax.sweep --config=experiments/<dated>/config.py[:variant] --workdir=<dir> [--parallel=N]

`get_sweep(arg)` in the experiment file returns a list of overrides, each a dict {dotted config key: value}
(e.g. {"optim.learning_rate": 2 ** -8, "model.hidden_size": 128, ...}). Each becomes one run of
`python -m llama4_jax.main --config=<file>[:variant] --workdir=<dir>/<run name> --config.<key>=<value> ...`, at most
`--parallel` at a time. A run that finished has `<dir>/<run name>/sweep_result.json` (its final train and eval
loss, written when its process exits cleanly) and is skipped when the sweep is run again; a run that was killed
resumes from its own checkpoints; a run another process is training (its workdir lock is held: two sweep processes
over one directory) is left to it and reported as in use. When all have run, `<dir>/sweep.csv` holds one row per
run (its overrides, final_train_loss = mean of the last `--tail` logged train losses, final_eval_loss, status) and
`<dir>/sweep.png` plots final loss against log2 of `--x` (default optim.learning_rate), one curve per value of
`--group` (default model.hidden_size): the μTransfer plot. The same sweep file can name a mesh (`mesh.*` overrides) for a cluster.
"""

from __future__ import annotations

import concurrent.futures
import csv
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from typing import Callable, Sequence

from llama4_jax.train import workdir_lock

RESULT = "sweep_result.json"
SUMMARY = "summary.json"  # what llama4_jax.train.loop writes when a run has finished every stage


def load_sweep(config_arg: str) -> list[dict]:
  """The experiment file's `get_sweep(variant)`, checked: a non-empty list of {dotted key: scalar} dicts."""
  path, _, variant = config_arg.partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--config={config_arg!r}: no such experiment file {path!r}")
  spec = importlib.util.spec_from_file_location("sweep_experiment", path)
  module = importlib.util.module_from_spec(spec)
  sys.path.insert(0, os.getcwd())  # experiment files import `configs.*` from the repository root
  spec.loader.exec_module(module)
  if not hasattr(module, "get_sweep"):
    raise ValueError(f"{path} has no get_sweep(); a sweep file returns a list of override dicts from it")
  sweep = module.get_sweep(variant)
  if not isinstance(sweep, (list, tuple)) or not sweep:
    raise ValueError(f"{path}: get_sweep({variant!r}) must return a non-empty list of dicts, got {sweep!r}")
  for i, entry in enumerate(sweep):
    if not isinstance(entry, dict) or not entry:
      raise ValueError(f"{path}: get_sweep entry {i} is not a non-empty dict: {entry!r}")
    for key, value in entry.items():
      if not re.fullmatch(r"[A-Za-z_][\w.]*", str(key)) or not isinstance(value, (int, float, str, bool)):
        raise ValueError(f"{path}: get_sweep entry {i}: {key!r}={value!r} is not a dotted key with a scalar value")
  names = [run_name(e) for e in sweep]
  dupes = sorted({n for n in names if names.count(n) > 1})
  if dupes:
    raise ValueError(f"{path}: get_sweep has repeated entries {dupes}")
  return list(sweep)


def _fmt(value) -> str:
  if isinstance(value, float):
    exp = math.log2(value) if value > 0 else None
    return f"2^{exp:g}" if exp is not None and exp == int(exp) else f"{value:g}"
  return str(value)


def run_name(overrides: dict) -> str:
  """A readable, filesystem-safe name from the overrides: 'learning_rate=2^-8,hidden_size=128'."""
  text = ",".join(f"{k.split('.')[-1]}={_fmt(v)}" for k, v in sorted(overrides.items()))
  return re.sub(r"[^\w.,=^+-]", "_", text)


def command(config_arg: str, workdir: str, overrides: dict) -> list[str]:
  return [sys.executable, "-m", "llama4_jax.main", f"--config={config_arg}", f"--workdir={workdir}",
          *[f"--config.{k}={v}" for k, v in overrides.items()]]


def final_losses(run_dir: str, tail: int) -> dict:
  """final_train_loss (mean of the last `tail` logged train losses) and final_eval_loss from metrics.jsonl."""
  train, evals = [], []
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      if "loss" in row and "stage_step" in row:
        train.append(row["loss"])
      if "eval_loss" in row:
        evals.append(row["eval_loss"])
  if not train:
    raise ValueError(f"{run_dir}/metrics.jsonl holds no train loss")
  return {"final_train_loss": sum(train[-tail:]) / len(train[-tail:]),
          "final_eval_loss": evals[-1] if evals else float("nan")}


def _launch(config_arg: str, run_dir: str, overrides: dict) -> int:
  os.makedirs(run_dir, exist_ok=True)
  with open(os.path.join(run_dir, "sweep.log"), "a") as log:
    return subprocess.run(command(config_arg, run_dir, overrides), stdout=log, stderr=subprocess.STDOUT).returncode


def run_sweep(config_arg: str, workdir: str, parallel: int = 1, tail: int = 3,
              launch: Callable[[str, str, dict], int] = _launch) -> list[dict]:
  """Runs the unfinished entries, then writes sweep.csv; one row per entry with its `status`: 'done' (ran now),
  'skipped' (had a result), or 'failed (exit N)'."""
  sweep = load_sweep(config_arg)
  if parallel < 1:
    raise ValueError(f"--parallel must be >= 1, got {parallel}")
  os.makedirs(workdir, exist_ok=True)

  def one(overrides: dict) -> dict:
    run_dir = os.path.join(workdir, run_name(overrides))
    result_path = os.path.join(run_dir, RESULT)
    if os.path.isfile(result_path):
      with open(result_path) as f:
        return {**json.load(f), "status": "skipped"}
    if workdir_lock.in_use(run_dir):  # another sweep process over this directory is training it
      return {"name": run_name(overrides), **overrides, "status": "in use (another process is training it)"}
    code = launch(config_arg, run_dir, overrides)
    if code != 0:
      return {"name": run_name(overrides), **overrides, "status": f"failed (exit {code})"}
    if not os.path.isfile(os.path.join(run_dir, SUMMARY)):  # exited cleanly before its last step (SIGTERM)
      return {"name": run_name(overrides), **overrides,
              "status": f"failed (stopped before its last step, no {SUMMARY}; rerunning the sweep resumes it)"}
    result = {"name": run_name(overrides), **overrides, **final_losses(run_dir, tail)}
    with open(result_path + ".tmp", "w") as f:
      json.dump(result, f)
    os.replace(result_path + ".tmp", result_path)
    return {**result, "status": "done"}

  with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
    rows = list(pool.map(one, sweep))
  write_csv(rows, os.path.join(workdir, "sweep.csv"))
  return rows


def write_csv(rows: Sequence[dict], path: str) -> None:
  keys = list(dict.fromkeys(k for row in rows for k in row))
  with open(path + ".tmp", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
  os.replace(path + ".tmp", path)


def optimum(rows: Sequence[dict], x: str, group: str, metric: str = "final_train_loss") -> dict:
  """{group value: (best x, its loss)} over the finished rows."""
  best = {}
  for row in rows:
    if row.get(metric) is None or not math.isfinite(row[metric]) or x not in row:
      continue
    g = row.get(group)
    if g not in best or row[metric] < best[g][1]:
      best[g] = (row[x], row[metric])
  return best


def fitted_optimum(rows: Sequence[dict], x: str, group: str, metric: str = "final_train_loss") -> dict:
  """{group value: {"grid": best log2 x on the grid, "fit": the vertex of the parabola through the best point and its
  two neighbours in log2 x (clamped to them), "edge": True where the best point is the grid's first or last, so the
  true optimum may lie outside the swept range (then "fit" is the grid point)}}."""
  out = {}
  for g in sorted({r.get(group) for r in rows if x in r}, key=lambda v: (v is None, v)):
    pts = sorted((math.log2(r[x]), r[metric]) for r in rows if r.get(group) == g and x in r
                 and r.get(metric) is not None and math.isfinite(r[metric]))
    if not pts:
      continue
    j = min(range(len(pts)), key=lambda i: pts[i][1])
    u = pts[j][0]
    if 0 < j < len(pts) - 1:
      (u0, y0), (u1, y1), (u2, y2) = pts[j - 1:j + 2]
      # vertex of the parabola through three points (any spacing)
      den = (u0 - u1) * (u0 - u2) * (u1 - u2)
      a = (u2 * (y1 - y0) + u1 * (y0 - y2) + u0 * (y2 - y1)) / den
      b = (u2 ** 2 * (y0 - y1) + u1 ** 2 * (y2 - y0) + u0 ** 2 * (y1 - y2)) / den
      fit = min(max(-b / (2 * a), u0), u2) if a > 0 else u1
    else:
      fit = u
    out[g] = {"grid": u, "fit": fit, "edge": not 0 < j < len(pts) - 1, "loss": pts[j][1]}
  return out


def transfer_report(rows: Sequence[dict], x: str, group: str, metric: str = "final_train_loss") -> dict:
  """How far the optimum of log2 x moves across `group`: "shift" = fitted optimum at the largest group value minus
  at the smallest (octaves), "spread" = largest minus smallest fitted optimum over all groups, "any_edge" = some
  group's best point lies on the grid's edge (the shift is then a bound, not a measurement)."""
  opt = fitted_optimum(rows, x, group, metric)
  if len(opt) < 2:
    raise ValueError(f"transfer_report needs finished runs at 2 or more values of {group}, got {sorted(opt)}")
  groups = list(opt)
  fits = [v["fit"] for v in opt.values()]
  return {"optimum": opt, "shift": opt[groups[-1]]["fit"] - opt[groups[0]]["fit"], "spread": max(fits) - min(fits),
          "any_edge": any(v["edge"] for v in opt.values())}


def train_curve(run_dir: str) -> dict[int, float]:
  """{step: logged train loss} of a run's metrics.jsonl."""
  curve = {}
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      if "loss" in row and "stage_step" in row:
        curve[int(row["step"])] = float(row["loss"])
  return curve


def _mean_curve(curves: Sequence[dict[int, float]]) -> dict[int, float]:
  """The step-by-step mean of several runs' train curves over the steps all of them logged."""
  steps = set.intersection(*(set(c) for c in curves))
  return {s: sum(c[s] for c in curves) / len(curves) for s in sorted(steps)}


def wider_is_better(workdir: str, rows: Sequence[dict], x: str, group: str, skip_steps: int = 1) -> dict:
  """For each swept x (e.g. learning rate) at which every group value finished: at each logged step past
  `skip_steps` (step 1 is the untrained model: its order is chance), is the train loss strictly lower for every
  larger group value? Returns {x value: {"steps": steps compared, "violations": [(step, smaller g, larger g, their
  losses)], "in_order_from": the first compared step from which every later compared step is in order (None when the
  last one is not), "max_inversion": the largest amount by which a larger group value's loss exceeds (or ties) the
  next smaller one's (0.0 without violations)}}. The runs see the same batches in the same order, so each step
  compares the models on one batch. An x value whose runs end at different steps (a batch-size sweep at a fixed
  token budget: step k is a different amount of data per run) is not judged. A row of `seed_mean` (its 'names': one
  run per seed) stands for its runs' curves averaged step by step."""
  by_x = {}
  for r in rows:
    if x in r and r.get("status", "done") in ("done", "skipped") and math.isfinite(r.get("final_train_loss", math.nan)):
      by_x.setdefault(r[x], {})[r.get(group)] = r["names"] if "names" in r else [r["name"]]
  groups = sorted({r.get(group) for r in rows if x in r})
  out = {}
  for xv, names in sorted(by_x.items()):
    if sorted(names) != groups:
      continue
    curves = [_mean_curve([train_curve(os.path.join(workdir, n)) for n in names[g]]) for g in groups]
    if len({max(c, default=0) for c in curves}) > 1:
      continue
    steps = sorted(set.intersection(*(set(c) for c in curves)) - set(range(skip_steps + 1)))
    violations = [(s, groups[i], groups[i + 1], curves[i][s], curves[i + 1][s])
                  for s in steps for i in range(len(groups) - 1) if not curves[i + 1][s] < curves[i][s]]
    last_bad = max((v[0] for v in violations), default=None)
    later = [t for t in steps if last_bad is None or t > last_bad]
    out[xv] = {"steps": len(steps), "violations": violations, "in_order_from": later[0] if later else None,
               "max_inversion": max((v[4] - v[3] for v in violations), default=0.0)}
  return out


def plot(rows: Sequence[dict], path: str, x: str, group: str, metric: str = "final_train_loss") -> None:
  """Loss against log2(x), one curve per value of `group`, optimum marked."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(5.5, 4))
  groups = sorted({r.get(group) for r in rows if x in r}, key=lambda g: (g is None, g))
  for g in groups:
    pts = sorted((math.log2(r[x]), r[metric]) for r in rows
                 if r.get(group) == g and x in r and r.get(metric) is not None and math.isfinite(r[metric]))
    if pts:
      line, = ax.plot(*zip(*pts), marker="o", label=f"{group.split('.')[-1]}={g}")
      bx, by = min(pts, key=lambda p: p[1])
      ax.plot([bx], [by], marker="*", ms=14, color=line.get_color())
  ax.set(xlabel=f"log2 {x.split('.')[-1]}", ylabel=metric.replace("_", " "))
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path + ".tmp.png", dpi=90)
  plt.close(fig)
  os.replace(path + ".tmp.png", path)


def _has_result(row: dict) -> bool:
  return row.get("status", "done") in ("done", "skipped")


def seed_mean(rows: Sequence[dict]) -> list[dict]:
  """One row per setting (every key but seed, name, status and the final_* results) with its final losses averaged
  over the seeds that finished it; 'seeds' = how many did, 'names' = their runs (when the rows are named)."""
  settings = {}
  for r in rows:
    if not _has_result(r):
      continue
    key = tuple(sorted((k, v) for k, v in r.items() if k not in ("seed", "name", "status") and
                       not k.startswith("final_")))
    settings.setdefault(key, []).append(r)
  metrics = ("final_train_loss", "final_eval_loss")
  return [{**dict(key), "seeds": len(rs), **{m: sum(r[m] for r in rs) / len(rs) for m in metrics
                                             if all(r.get(m) is not None for r in rs)},
           **({"names": sorted(r["name"] for r in rs)} if all("name" in r for r in rs) else {})}
          for key, rs in settings.items()]


def report(rows: Sequence[dict], workdir: str, x: str, group: str, title: str = "") -> None:
  """Prints the best x per group value, the fitted optimum's shift and the per-step ordering (of single runs, or of
  seed means' averaged curves)."""
  print(f"-- {title or 'all runs'}")
  for g, (bx, loss) in sorted(optimum(rows, x, group).items(), key=lambda kv: str(kv[0])):
    print(f"{group}={g}: best {x}={bx:g} (log2 {math.log2(bx):.2f}), final train loss {loss:.4f}")
  if len({r.get(group) for r in rows}) < 2:
    return
  rep = transfer_report(rows, x, group)
  fits = ", ".join(f"{g}: {v['fit']:.2f}{' (edge)' if v['edge'] else ''}" for g, v in rep["optimum"].items())
  print(f"fitted log2 {x} optimum per {group}: {fits}; shift smallest -> largest {rep['shift']:+.2f} "
        f"octaves, spread {rep['spread']:.2f}")
  if not all("name" in r or "names" in r for r in rows):
    return
  for xv, res in wider_is_better(workdir, rows, x, group).items():
    bad = res["violations"]
    print(f"{x}={xv:g}: larger {group} lower train loss at every one of {res['steps']} logged steps"
          if not bad else f"{x}={xv:g}: {len(bad)} violations in {res['steps']} steps, first {bad[0]}, in order "
          f"from step {res['in_order_from']}, largest inversion {res['max_inversion']:.4f}")


def summarize(rows: Sequence[dict], workdir: str, x: str, group: str) -> None:
  """The end-of-sweep printout and workdir/sweep.png. A sweep over several seeds is reported seed by seed, then on
  the losses averaged over the seeds (settings that every seed finished), never mixing seeds in one optimum."""
  finished = [r for r in rows if _has_result(r)]
  seeds = sorted({r.get("seed", 0) for r in finished})
  if len(seeds) <= 1:
    plot(finished, os.path.join(workdir, "sweep.png"), x, group)
    report(finished, workdir, x, group)
    return
  for seed in seeds:
    report([r for r in finished if r.get("seed", 0) == seed], workdir, x, group, f"seed {seed}")
  mean = [r for r in seed_mean(finished) if r["seeds"] == len(seeds)]
  plot(mean, os.path.join(workdir, "sweep.png"), x, group)
  if mean:
    report(mean, workdir, x, group, f"mean over seeds {seeds}")


def main(argv):
  del argv
  from absl import flags
  f = flags.FLAGS
  rows = run_sweep(f.config, f.workdir, f.parallel, f.tail)
  summarize(rows, f.workdir, f.x, f.group)
  failed = [r["name"] for r in rows if r["status"].startswith("failed")]
  busy = [r["name"] for r in rows if r["status"].startswith("in use")]
  print(f"{len(rows)} runs: {sum(r['status'] == 'done' for r in rows)} ran, "
        f"{sum(r['status'] == 'skipped' for r in rows)} already finished, {len(busy)} in use by another process, "
        f"{len(failed)} failed -> {os.path.join(f.workdir, 'sweep.csv')}")
  if failed:
    print("failed (see their sweep.log): " + ", ".join(failed), file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  from absl import app, flags
  flags.DEFINE_string("config", None, "experiment file[:variant] with get_config() and get_sweep()")
  flags.DEFINE_string("workdir", None, "sweep directory (one sub-directory per run)")
  flags.DEFINE_integer("parallel", 1, "runs at once")
  flags.DEFINE_integer("tail", 3, "logged train losses averaged into final_train_loss")
  flags.DEFINE_string("x", "optim.learning_rate", "swept key for the plot's x axis (log2)")
  flags.DEFINE_string("group", "model.hidden_size", "key whose values get one curve each")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
