"""Did a stage raise the held-out pass rate? A paired comparison of two stages of one curriculum workdir.

    python experiments/2026_11_28_curriculum/paired_eval.py --workdir=runs/curriculum --before=sft --after=rl

Both stages' newest checkpoints answer the same held-out problems greedily (`tasks` of the experiment config, with
the overrides of the `--after` stage or of `--tasks_stage`); per
family and overall it prints pass@1 before and after, the problems gained and lost, and the exact two-sided McNemar
p-value (a binomial test on the problems whose outcome changed), as one JSON line. Paired, so it is far more
sensitive than comparing two pass rates as if they were independent samples.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from llama4_jax.data import verifiable  # noqa: E402
from llama4_jax.data.tokenizer import ChatFormat  # noqa: E402
from llama4_jax.generate import load_checkpoint  # noqa: E402
from llama4_jax.sampling import Sampling  # noqa: E402
from llama4_jax.train import sft  # noqa: E402

WORKDIR = flags.DEFINE_string("workdir", None, "the curriculum's workdir", required=True)
BEFORE = flags.DEFINE_string("before", "sft", "stage whose newest checkpoint is the baseline")
AFTER = flags.DEFINE_string("after", "rl", "stage whose newest checkpoint is compared with it")
CONFIG = flags.DEFINE_string("config", os.path.join(HERE, "config.py"), "experiment config (its `tasks` section)")
TASKS_STAGE = flags.DEFINE_string("tasks_stage", None, "stage whose `tasks` (with its overrides) give the held-out "
                                  "problems; default: --after")


def mcnemar_p(gained: int, lost: int) -> float:
  """Exact two-sided McNemar p-value: P(a Binomial(gained + lost, 1/2) count is as extreme as the smaller one)."""
  n, k = gained + lost, min(gained, lost)
  if n == 0:
    return 1.0
  return min(1.0, 2.0 * sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n)


def compare(passed_before: np.ndarray, passed_after: np.ndarray, families) -> dict:
  families = np.asarray(families)
  out = {}
  for family in ["all"] + sorted(set(families.tolist())):
    sel = np.ones(len(families), bool) if family == "all" else families == family
    a, b = passed_before[sel], passed_after[sel]
    gained, lost = int(np.sum(~a & b)), int(np.sum(a & ~b))
    out[family] = {"problems": int(sel.sum()), "before": round(float(a.mean()), 4), "after": round(float(b.mean()), 4),
                   "gained": gained, "lost": lost, "mcnemar_p": round(mcnemar_p(gained, lost), 4)}
  return out


def main(argv):
  del argv
  spec = importlib.util.spec_from_file_location("experiment_config", CONFIG.value)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("")
  tasks = config.tasks
  stage = config.stages[TASKS_STAGE.value or AFTER.value]
  tasks.update(stage.overrides.get("tasks", {}))  # e.g. rl_vision's image families
  problems = sft.task_problems(tasks, "held_out")
  passed = {}
  for stage in (BEFORE.value, AFTER.value):
    cfg, params, tok = load_checkpoint(WORKDIR.value, stage=stage)
    texts = sft.completions(cfg, params, problems, ChatFormat(tok), max_new_tokens=tasks.max_new_tokens,
                            sampling=Sampling(), batch_size=len(problems))
    passed[stage] = np.asarray([verifiable.check(p, t) for p, t in zip(problems, texts)], bool)
  result = compare(passed[BEFORE.value], passed[AFTER.value], [p.family for p in problems])
  print(json.dumps({"workdir": WORKDIR.value, "before": BEFORE.value, "after": AFTER.value, **result}))


if __name__ == "__main__":
  app.run(main)
