"""Tables and comparison plots of the finished study (what NOTES.md quotes).

    python experiments/2026_11_28_length_generalization/summarize.py runs [--plots=<dir>]

Reads every evaluation `run.sh` writes (`<runs>/len_<arm>/<eval>/length.json`) that exists so far and prints, per
arm: held-out perplexity at each length with its ratio to the perplexity at the arm's own training length (256 for
pretraining-only arms, 1,024 after mid-training), the longest length at which that ratio stays within `--tolerance`
(the "generalizes to" column), passkey accuracy per length (mean over depths) and multi-key needle accuracy. Writes
two plots (perplexity vs length, passkey accuracy vs length; one line per arm) into --plots.
"""

from __future__ import annotations

import argparse
import json
import math
import os

# (label, workdir name, evaluation directory, training length of the checkpoint evaluated)
ARMS = (
    ("rope", "len_rope", "eval", 256),
    ("irope", "len_irope", "eval", 256),
    ("irope + temperature tuning", "len_irope", "eval_temp", 256),
    ("nope", "len_nope", "eval", 256),
    ("rope + dynamic NTK, zero-shot", "len_rope", "eval_dynamic", 256),
    *((f"rope -> {m} @1024", f"len_rope_{m}", "eval", 1024)
      for m in ("none", "pi", "ntk", "dynamic", "yarn", "llama3", "abf")),
)


def load(runs: str) -> list[tuple[str, int, dict]]:
  found = []
  for label, workdir, name, train_len in ARMS:
    path = os.path.join(runs, workdir, name, "length.json")
    if os.path.exists(path):
      with open(path) as f:
        found.append((label, train_len, json.load(f)))
  return found


def generalizes_to(result: dict, train_len: int, tolerance: float) -> int | None:
  """The longest evaluated length L >= train_len with ppl(L') <= (1 + tolerance) ppl(train_len) for every
  evaluated L' in [train_len, L]; None when the training length was not evaluated."""
  ppl = {int(k): v["ppl"] for k, v in result["loss"].items()}
  if train_len not in ppl:
    return None
  best = train_len
  for length in sorted(n for n in ppl if n > train_len):
    if ppl[length] > (1 + tolerance) * ppl[train_len]:
      break
    best = length
  return best


def past_training_ppl(result: dict, length: int, train_len: int) -> float | None:
  """Perplexity of the positions at or past `train_len` in the rows of `length` tokens (from the position bins,
  which are of equal width; bins starting before `train_len` are left out)."""
  row = result["loss"].get(str(length))
  if row is None or length <= train_len:
    return None
  means = [b["mean"] for b in row["bins"] if b["start"] >= train_len]
  return math.exp(sum(means) / len(means)) if means else None


def tables(found, tolerance: float) -> str:
  lengths = sorted({int(n) for _, _, r in found for n in r["lengths"]})
  head = "| arm | " + " | ".join(str(n) for n in lengths)
  rule = "|---|" + "---|" * len(lengths)
  lines = [f"Held-out perplexity (ratio to the perplexity at the arm's training length); generalizes to = the longest "
           f"length within {tolerance:.0%} of it", "", head + " | generalizes to |", rule + "---|"]
  for label, train_len, r in found:
    base = r["loss"].get(str(train_len), {}).get("ppl")
    cells = []
    for n in lengths:
      row = r["loss"].get(str(n))
      cells.append("" if row is None else f"{row['ppl']:.1f}" + (f" ({row['ppl'] / base:.2f})" if base else ""))
    reach = generalizes_to(r, train_len, tolerance)
    lines.append(f"| {label} | " + " | ".join(cells) + f" | {reach if reach is not None else '?'} |")
  lines += ["", "Perplexity of the positions past the arm's training length only (unseen positions; ratio to the "
            "whole-row perplexity at the training length)", "", head + " |", rule]
  for label, train_len, r in found:
    base = r["loss"].get(str(train_len), {}).get("ppl")
    cells = []
    for n in lengths:
      ppl = past_training_ppl(r, n, train_len)
      cells.append("" if ppl is None else f"{ppl:.1f}" + (f" ({ppl / base:.2f})" if base else ""))
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
  lines += ["", "Passkey accuracy (mean over depths) / multi-key needle accuracy", "", head + " |", rule]
  for label, _, r in found:
    cells = []
    for n in lengths:
      grid, needle = r["passkey"].get(str(n)), r["needle"].get(str(n))
      key = "" if not grid else f"{sum(grid.values()) / len(grid):.2f}"
      cells.append(key + ("" if needle is None else f" / {needle:.2f}"))
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def plot(found, out_dir: str) -> list[str]:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for name, ylabel, value in (
      ("perplexity_vs_length.png", "held-out perplexity", lambda r, n: r["loss"][n]["ppl"]),
      ("passkey_vs_length.png", "passkey accuracy (mean over depths)",
       lambda r, n: sum(r["passkey"][n].values()) / len(r["passkey"][n]))):
    fig, ax = plt.subplots(figsize=(8, 5))
    colors = plt.get_cmap("tab20")  # 12 arms: the dark tones first, then the light ones
    for i, (label, _, r) in enumerate(found):
      xs = [n for n in r["lengths"] if str(n) in r["loss"] and (name.startswith("perp") or r["passkey"].get(str(n)))]
      ax.plot(xs, [value(r, str(n)) for n in xs], marker="o", label=label, color=colors((2 * i) % 20 + (2 * i) // 20),
              linestyle="--" if "@1024" in label else "-")
    ax.set_xscale("log", base=2)
    if name.startswith("perp"):
      ax.set_yscale("log")
    ax.axvline(256, color="grey", lw=0.8)
    ax.axvline(1024, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("context length (tokens); grey: 256 pretraining, dotted: 1,024 mid-training")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(out_dir, name)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)
  return paths


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("runs")
  parser.add_argument("--plots", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "plots"))
  parser.add_argument("--tolerance", type=float, default=0.1)
  args = parser.parse_args()
  found = load(args.runs)
  if not found:
    raise SystemExit(f"no length.json under {args.runs}/len_*/: run run.sh first")
  print(tables(found, args.tolerance))
  print("\nwrote " + ", ".join(plot(found, args.plots)))


if __name__ == "__main__":
  main()
