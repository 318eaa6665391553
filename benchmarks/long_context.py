"""Forward + backward over one long row: does it complete, and does memory grow linearly with the length?

    python benchmarks/long_context.py --lengths=4096,8192,16384,32768 --chunk=1024

The tiny preset (fp32) with `attention_chunk_size=--chunk` and `max_position_embeddings` raised to the longest
length; one row of random tokens (one document) per length; `--remat` sets model.remat_policy. For each length a
fresh subprocess (so its peak resident memory is its own) compiles `jax.value_and_grad` of the mean next-token
cross-entropy with the default kernels (`kernels.attention=xla`: on rows this long, banded chunked attention one
chunk at a time on RoPE layers and query-blocked attention on the global NoPE layers, both rematerialised;
`kernels.moe=blocked`), runs it `--repeats` times and reports:
  * temp_bytes   XLA's compiled temporary buffer size (`memory_analysis()`), the activation memory of the step,
  * peak_rss     the subprocess's peak resident set (`ru_maxrss`, includes the runtime and the parameters),
  * seconds      median wall time of one forward + backward after compile, and compile seconds.
The parent prints one JSON line with the curve and the ratios to the shortest length; asserts nothing.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from absl import app, flags  # noqa: E402

LENGTHS = flags.DEFINE_list("lengths", "4096,8192,16384,32768", "row lengths to measure")
CHUNK = flags.DEFINE_integer("chunk", 1024, "attention_chunk_size of the RoPE layers")
REPEATS = flags.DEFINE_integer("repeats", 2, "timed forward + backward passes per length")
REMAT = flags.DEFINE_string("remat", "none", "model.remat_policy")
ONE = flags.DEFINE_integer("one", 0, "internal: measure this single length in this process")


def measure(length: int, chunk: int, repeats: int, remat: str) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np

  import configs.base as base
  from llama4_jax.config import model_config
  from llama4_jax.model import apply, init_params

  cfg = model_config(base.get_config("tiny")).replace(attention_chunk_size=chunk, remat_policy=remat,
                                                      max_position_embeddings=max(length, 4096))
  params = init_params(cfg, jax.random.key(0))
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 3840, (1, length)), jnp.int32)

  def loss(p, tokens):
    logits, _ = apply(cfg, p, tokens[:, :-1])
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1))

  t0 = time.perf_counter()
  compiled = jax.jit(jax.value_and_grad(loss)).lower(params, tokens).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  times, value = [], None
  for _ in range(repeats):
    t0 = time.perf_counter()
    value, grads = jax.block_until_ready(compiled(params, tokens))
    times.append(time.perf_counter() - t0)
  finite = bool(np.isfinite(float(value))) and all(bool(jnp.all(jnp.isfinite(g)))
                                                   for g in jax.tree_util.tree_leaves(grads))
  return {"length": length, "temp_bytes": int(mem.temp_size_in_bytes),
          "argument_bytes": int(mem.argument_size_in_bytes), "output_bytes": int(mem.output_size_in_bytes),
          "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
          "seconds": round(statistics.median(times), 3), "compile_s": round(compile_s, 2),
          "loss": round(float(value), 5), "finite": finite}


def main(argv):
  del argv
  if ONE.value:
    print(json.dumps(measure(ONE.value, CHUNK.value, REPEATS.value, REMAT.value)))
    return
  rows = []
  for length in (int(x) for x in LENGTHS.value):
    command = [sys.executable, os.path.abspath(__file__), f"--one={length}", f"--chunk={CHUNK.value}",
               f"--repeats={REPEATS.value}", f"--remat={REMAT.value}"]
    out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode or not lines:
      rows.append({"length": length, "failed": out.stderr[-2000:]})
      continue
    rows.append(json.loads(lines[-1]))
  base_row = next((r for r in rows if "temp_bytes" in r), None)
  for r in rows:
    if base_row is not None and "temp_bytes" in r:
      scale = r["length"] / base_row["length"]
      r["length_ratio"] = scale
      r["temp_ratio"] = round(r["temp_bytes"] / base_row["temp_bytes"], 3)
      r["rss_ratio"] = round(r["peak_rss_bytes"] / base_row["peak_rss_bytes"], 3)
      r["time_ratio"] = round(r["seconds"] / base_row["seconds"], 3)
  import jax
  print(json.dumps({"benchmark": "long_context", "preset": "tiny", "chunk": CHUNK.value, "remat": REMAT.value,
                    "rows": rows,
                    "processor": platform.processor(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
                    "jax": jax.__version__}))


if __name__ == "__main__":
  app.run(main)
