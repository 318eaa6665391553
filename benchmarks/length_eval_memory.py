"""Peak memory and time of the length probe's per-position loss against the evaluation length (issue 11).

    python benchmarks/length_eval_memory.py --lengths=1024,4096,16384 --chunk=256

The tiny preset (fp32, random weights) with `attention_chunk_size=--chunk`; one row of random tokens per length
through `llama4_jax.eval.length.piece_nll` (the KV-cache decoder in chunk-sized pieces, as the
`python -m llama4_jax.eval.length` command runs it), each length in a fresh subprocess so its peak resident set
(`ru_maxrss`) is its own. Prints one JSON line with per-length peak RSS, the KV cache's bytes, seconds (a second
pass over the row, after the compiling first one) and the ratios to the shortest length; asserts nothing. The issue's yardstick: at 4x the length, peak
memory within 5x.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from absl import app, flags  # noqa: E402

LENGTHS = flags.DEFINE_list("lengths", "1024,4096,16384", "evaluation lengths")
CHUNK = flags.DEFINE_integer("chunk", 256, "attention_chunk_size (the prefill piece)")
ONE = flags.DEFINE_integer("one", 0, "internal: measure this single length in this process")


def measure(length: int, chunk: int) -> dict:
  import jax
  import numpy as np

  import configs.base as base
  from llama4_jax.config import model_config
  from llama4_jax.eval.length import piece_nll
  from llama4_jax.model import init_cache, init_params

  cfg = model_config(base.get_config("tiny")).replace(attention_chunk_size=chunk,
                                                      max_position_embeddings=max(length, 4096))
  params = init_params(cfg, jax.random.key(0))
  tokens = np.random.default_rng(0).integers(0, 3840, (1, length)).astype(np.int32)
  t0 = time.perf_counter()
  piece_nll(cfg, params, tokens)  # compiles for this cache size
  first = time.perf_counter() - t0
  t0 = time.perf_counter()
  nll = piece_nll(cfg, params, tokens)
  seconds = time.perf_counter() - t0
  cache = init_cache(cfg, 1, length)
  cache_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(cache))
  return {"length": length, "seconds": round(seconds, 3), "first_call_seconds": round(first, 3),
          "mean_nll": round(float(nll.mean()), 4),
          "kv_cache_mb": round(cache_bytes / 1e6, 2),
          "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main(argv):
  del argv
  if ONE.value:
    print(json.dumps(measure(ONE.value, CHUNK.value)))
    return
  rows = []
  for length in sorted(int(x) for x in LENGTHS.value):
    out = subprocess.run([sys.executable, __file__, f"--one={length}", f"--chunk={CHUNK.value}"], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
  first = rows[0]
  for r in rows:
    r["rss_ratio"] = round(r["peak_rss_mb"] / first["peak_rss_mb"], 3)
    r["time_ratio"] = round(r["seconds"] / first["seconds"], 3)
  import jax
  print(json.dumps({"benchmark": "length_eval_memory", "preset": "tiny", "chunk": CHUNK.value, "rows": rows,
                    "jax": jax.__version__, "machine": platform.machine(), "cpus": os.cpu_count()}))


if __name__ == "__main__":
  app.run(main)
