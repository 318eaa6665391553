"""First-call compile time of the training step across depths at the same width (measures; asserts nothing).

    python benchmarks/train_compile.py --preset=tiny --depths=8,48 --rounds=2

Builds the main job's jitted, donated train step (forward, losses, backward, clipping, AdamW: what
`benchmarks/train_throughput.py` and `llama4_jax/train/loop.py` build) for each depth and times trace + lower and
the XLA compile separately with the ahead-of-time API on one 8 x 256 batch. The depth is a `scan` over the repeating
super-block, so neither should grow much with depth. One untimed compile first warms the backend; then the depths
alternate for `--rounds` rounds (fresh jit objects each time, so every compile is a real one) and the medians are
reported with the ratio of each depth to the first. Prints one JSON line.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from absl import app, flags  # noqa: E402
import jax  # noqa: E402

from benchmarks.train_throughput import BATCH, SEQ, build  # noqa: E402 (also its --batch / --seq flags)
from configs import base as base_configs  # noqa: E402
from llama4_jax.host_memory import retain_freed_host_memory  # noqa: E402
from llama4_jax.train.step import synthetic_batch  # noqa: E402

PRESET = flags.DEFINE_string("preset", "tiny", "model preset from configs/models.py")
DEPTHS = flags.DEFINE_list("depths", "8,48", "num_hidden_layers values (same width)")
ROUNDS = flags.DEFINE_integer("rounds", 2, "alternating compiles per depth")
UNROLL = flags.DEFINE_integer("scan_unroll", -1, "model.scan_unroll (-1: the preset's; 0: auto)")


def compile_once(depth: int) -> tuple[float, float, int]:
  """(trace + lower seconds, XLA compile seconds, super-blocks per scan iteration as resolved)."""
  config = base_configs.get_config(PRESET.value)
  config.model.num_hidden_layers = depth
  if UNROLL.value >= 0:
    config.model.scan_unroll = UNROLL.value
  model_cfg, state, step_fn = build(config)
  batch = synthetic_batch(model_cfg.vocab_size, BATCH.value, SEQ.value)
  t0 = time.perf_counter()
  lowered = step_fn.lower(state, batch, jax.random.key(0))
  t1 = time.perf_counter()
  lowered.compile()
  return t1 - t0, time.perf_counter() - t1, model_cfg.unroll


def main(argv):
  del argv
  depths = [int(d) for d in DEPTHS.value]
  compile_once(depths[0])  # backend warm-up, untimed
  times = {d: [] for d in depths}
  for r in range(ROUNDS.value):
    for d in (depths if r % 2 == 0 else depths[::-1]):
      times[d].append(compile_once(d))
  rows = {}
  for d in depths:
    lower = statistics.median(t[0] for t in times[d])
    comp = statistics.median(t[1] for t in times[d])
    rows[d] = {"trace_lower_s": round(lower, 3), "compile_s": round(comp, 3), "total_s": round(lower + comp, 3),
               "unroll": times[d][0][2]}
  first = rows[depths[0]]
  for d in depths:
    rows[d]["total_ratio_to_first"] = round(rows[d]["total_s"] / first["total_s"], 3)
  unroll = UNROLL.value if UNROLL.value >= 0 else int(base_configs.get_config(PRESET.value).model.scan_unroll)
  print(json.dumps({"benchmark": "train_compile", "preset": PRESET.value, "scan_unroll": unroll,
                    "batch": BATCH.value, "seq": SEQ.value,
                    "rounds": ROUNDS.value, "by_depth": rows, "jax": jax.__version__,
                    "device": str(jax.devices()[0])}))


if __name__ == "__main__":
  retain_freed_host_memory()  # before the CPU backend starts (llama4_jax/host_memory.py)
  app.run(main)
