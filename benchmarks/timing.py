"""Timing helpers shared by the benchmark scripts: the machine's matmul rate, the timed train-step loop and the
train-step benchmarks' `--positions` flag."""

from __future__ import annotations

import statistics
import time

from absl import flags
import jax
import jax.numpy as jnp


def define_positions_flag():
  """`--positions` of the train-step benchmarks (train_vs_hf, train_throughput); call once, at the script's top."""
  return flags.DEFINE_bool(
      "positions", False, "give our step the batch's positions and segment ids (the packed-row path: the chunked "
      "layers decide per batch, by a lax.cond, whether a query sees the previous block); by default the rows are "
      "tokens alone, one document each, as Hugging Face's side gets them")


def matmul_gflops(shapes, repeats: int, device=None, dtype=jnp.float32) -> dict:
  """Median GFLOP/s of a jitted matmul per (M, K, N) shape, keyed 'MxKxN', on `dtype` operands accumulated in
  float32 (the host's speed drifts: time it next to the measurement it calibrates)."""
  device = device or jax.devices()[0]
  mm = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32))
  out = {}
  for m, k, n in shapes:
    a = jax.device_put(jax.random.normal(jax.random.key(0), (m, k), jnp.float32).astype(dtype), device)
    b = jax.device_put(jax.random.normal(jax.random.key(1), (k, n), jnp.float32).astype(dtype), device)
    mm(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      mm(a, b).block_until_ready()
      times.append(time.perf_counter() - t0)
    out[f"{m}x{k}x{n}"] = 2 * m * k * n / statistics.median(times) / 1e9
  return out


def timed_steps(step_fn, state, batch, key, warmup: int, steps: int):
  """Runs `warmup` then `steps` more train steps (rng folded from 1 on; step 0 is the caller's first call) and
  returns (state, last metrics, per-step seconds of the timed ones)."""
  metrics = None
  for i in range(warmup):
    state, metrics = jax.block_until_ready(step_fn(state, batch, jax.random.fold_in(key, 1 + i)))
  times = []
  for i in range(steps):
    t0 = time.perf_counter()
    state, metrics = jax.block_until_ready(step_fn(state, batch, jax.random.fold_in(key, 1 + warmup + i)))
    times.append(time.perf_counter() - t0)
  return state, metrics, times
