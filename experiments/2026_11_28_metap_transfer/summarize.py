"""Markdown tables of finished sweeps of this experiment (what NOTES.md quotes).

    python experiments/2026_11_28_metap_transfer/summarize.py runs/metap_width_metap runs/metap_width_standard \
        [--group=model.hidden_size] [--plots=experiments/2026_11_28_metap_transfer/plots --axis=width]

Per sweep directory (its sweep.csv, or its runs' sweep_result.json files while the sweep is still going): the best
log2 learning rate per group value on the grid and fitted between grid points (llama4_jax.sweep.fitted_optimum), for
the final train loss and for the held-out eval loss; the shift of the fitted optimum from the smallest to the largest
group value in octaves; and the wider-is-better check (llama4_jax.sweep.wider_is_better) at each learning rate.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from llama4_jax import sweep  # noqa: E402


def load_rows(workdir: str) -> list[dict]:
  rows = []
  for path in sorted(glob.glob(os.path.join(workdir, "*", sweep.RESULT))):
    with open(path) as f:
      rows.append({**json.load(f), "status": "done"})
  return rows


def table(workdir: str, group: str, x: str = "optim.learning_rate", rows: list[dict] | None = None,
          title: str = "") -> str:
  """`rows` (default: all of the workdir's finished runs) of one seed, or seed means (the per-step check then on the
  seeds' train curves averaged step by step)."""
  rows = load_rows(workdir) if rows is None else rows
  lines = [f"**{os.path.basename(os.path.normpath(workdir))}{title}** ({len(rows)} runs)", "",
           f"| {group.split('.')[-1]} | best log2 LR, train (grid / fit) | final train loss | "
           "best log2 LR, eval (grid / fit) | eval loss |", "|---|---|---|---|---|"]
  reports = {}
  for metric in ("final_train_loss", "final_eval_loss"):
    reports[metric] = sweep.transfer_report(rows, x, group, metric)
  tr, ev = reports["final_train_loss"]["optimum"], reports["final_eval_loss"]["optimum"]
  for g in tr:
    def cell(o):
      return f"{o['grid']:g} / {o['fit']:.2f}{' (edge)' if o['edge'] else ''}"
    lines.append(f"| {g} | {cell(tr[g])} | {tr[g]['loss']:.4f} | {cell(ev[g])} | {ev[g]['loss']:.4f} |")
  lines.append("")
  for metric, rep in reports.items():
    lines.append(f"{metric}: fitted optimum shift smallest -> largest {rep['shift']:+.2f} octaves, spread "
                 f"{rep['spread']:.2f}{' (an optimum on the grid edge)' if rep['any_edge'] else ''}")
  lines.append("")
  wider = sweep.wider_is_better(workdir, rows, x, group) if all("name" in r or "names" in r for r in rows) else {}
  groups = list(tr)
  pairs = list(zip(groups[:-1], groups[1:]))
  name = group.split(".")[-1]
  if not wider:
    return "\n".join(lines)
  lines += [f"Larger {name}, lower train loss: logged steps out of {next(iter(wider.values()))['steps']} "
            f"(every {name} in order / per adjacent pair); the step from which every logged step is in order; the "
            "largest inversion (a larger model's loss minus the next smaller one's):", ""]
  lines += ["| LR | all in order | " + " | ".join(f"{a} -> {b}" for a, b in pairs) + " | in order from step | "
            "largest inversion |", "|---|---|" + "---|" * len(pairs) + "---|---|"]
  for xv, res in sorted(wider.items()):
    n_bad = len({v[0] for v in res["violations"]})
    per_pair = [res["steps"] - sum(1 for v in res["violations"] if (v[1], v[2]) == p) for p in pairs]
    start = "never" if res["in_order_from"] is None else res["in_order_from"]
    lines.append(f"| 2^{math.log2(xv):g} | {res['steps'] - n_bad} | " + " | ".join(map(str, per_pair))
                 + f" | {start} | {res['max_inversion']:.3f} |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("workdirs", nargs="+")
  parser.add_argument("--group", default="model.hidden_size")
  parser.add_argument("--plots", default=None, help="directory for the plots (none by default)")
  parser.add_argument("--axis", default="width", help="the plot file names' axis part")
  args = parser.parse_args()
  for w in args.workdirs:
    rows = load_rows(w)
    seeds = sorted({r.get("seed", 0) for r in rows})
    if len(seeds) == 1:
      print(table(w, args.group, rows=rows))
    else:  # each seed alone, then the losses averaged over seeds (settings every seed finished)
      for seed in seeds:
        print(table(w, args.group, rows=[r for r in rows if r.get("seed", 0) == seed], title=f", seed {seed}"))
        print()
      mean = [r for r in sweep.seed_mean(rows) if r["seeds"] == len(seeds)]
      print(table(w, args.group, rows=mean, title=f", mean over seeds {seeds}"))
    print()
    if args.plots:
      kind = os.path.basename(os.path.normpath(w)).split("_")[-1]
      path = os.path.join(args.plots, f"sweep_{args.axis}_{kind}{'_seed_mean' if len(seeds) > 1 else ''}.png")
      sweep.plot(rows if len(seeds) == 1 else mean, path, "optim.learning_rate", args.group)
      print(f"plot: {path}\n")


if __name__ == "__main__":
  main()
