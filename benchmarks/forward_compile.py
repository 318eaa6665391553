"""Forward throughput of a model preset and first-call compile time across depths (measures; asserts nothing).

    python benchmarks/forward_compile.py --preset=tiny --batch=8 --seq=256 --depths=8,48

Prints one JSON line per measurement. Trace+lower and XLA compile of the jitted forward are timed separately
(ahead-of-time API); with the super-block scan neither should grow with depth.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from absl import app, flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from configs import base as base_configs  # noqa: E402
from llama4_jax.config import model_config  # noqa: E402
from llama4_jax.host_memory import retain_freed_host_memory  # noqa: E402
from llama4_jax.model import apply, init_params  # noqa: E402

FLAGS = flags.DEFINE_string("preset", "tiny", "model preset from configs/models.py")
BATCH = flags.DEFINE_integer("batch", 8, "rows per forward")
SEQ = flags.DEFINE_integer("seq", 256, "tokens per row")
DEPTHS = flags.DEFINE_string("depths", "8,48", "depths (same width) whose compile time is measured")
REPEATS = flags.DEFINE_integer("repeats", 10, "timed forward calls")


def _forward_fn(cfg):
  return jax.jit(lambda p, t: apply(cfg, p, t)[0])


def measure(cfg, batch, seq, repeats):
  params = init_params(cfg, jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (batch, seq), 0, cfg.vocab_size)
  fn = _forward_fn(cfg)
  t0 = time.perf_counter()
  lowered = fn.lower(params, tokens)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  compiled(params, tokens).block_until_ready()  # warm-up execution
  times = []
  for _ in range(repeats):
    t0_run = time.perf_counter()
    compiled(params, tokens).block_until_ready()
    times.append(time.perf_counter() - t0_run)
  step = statistics.median(times)
  return {"depth": cfg.num_hidden_layers, "trace_lower_s": round(t1 - t0, 3), "compile_s": round(t2 - t1, 3),
          "median_forward_s": round(step, 4), "tokens_per_s": round(batch * seq / step, 1)}


def main(argv):
  del argv
  base = model_config(base_configs.get_config(FLAGS.value))
  print(json.dumps({"preset": FLAGS.value, "device": str(jax.devices()[0]), "batch": BATCH.value, "seq": SEQ.value,
                    **measure(base, BATCH.value, SEQ.value, REPEATS.value)}))
  for depth in (int(d) for d in DEPTHS.value.split(",")):
    cfg = base.replace(num_hidden_layers=depth)
    print(json.dumps({"preset": FLAGS.value, "what": "compile vs depth", **measure(cfg, 1, 64, 3)}))


if __name__ == "__main__":
  retain_freed_host_memory()  # before the CPU backend starts (llama4_jax/host_memory.py)
  app.run(main)
