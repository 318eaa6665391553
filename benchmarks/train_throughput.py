"""Training throughput and MFU of the main job's train step (measures; asserts nothing).

    python benchmarks/train_throughput.py --config=configs/base.py:tiny --batch=8 --seq=256 --steps=10

Builds exactly what `llama4_jax/train/loop.py` runs (params, the optimizer from `config.optim`, TrainState, the jitted
`train_step` with the state donated) on a random batch of one document per row, times `--steps` steps after
`--warmup` untimed ones and prints one JSON line. The matmul peak in the compute dtype (`config.model.dtype`
operands, float32 accumulation: the bf16 peak is about twice fp32's on a CPU with avx512_bf16) is measured in the
same process (median of repeated jitted 1024x1024x1024 and 2048x256x1024 matmuls, before and after the model, best
GFLOP/s), so
MFU = model FLOPs per step (llama4_jax/flops.py) / median step time / peak is not skewed by machine noise between
runs. `--batch` / `--seq` default to the anchors' peer setting (8 x 256); 0 takes config.data.batch_size / seq_len.
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from absl import app, flags  # noqa: E402

from benchmarks.timing import define_positions_flag, matmul_gflops, timed_steps  # noqa: E402
import jax  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from llama4_jax.config import model_config  # noqa: E402
from llama4_jax.flops import training_flops_per_step  # noqa: E402
from llama4_jax.host_memory import applied_mode, retain_freed_host_memory, training_state_bytes  # noqa: E402
from llama4_jax.model import init_params  # noqa: E402
from llama4_jax.train.optimizer import make_optimizer  # noqa: E402
from llama4_jax.train.step import LossConfig, init_state, train_step, synthetic_batch  # noqa: E402

CONFIG = config_flags.DEFINE_config_file("config", os.path.join(ROOT, "configs/base.py") + ":tiny",
                                         "experiment config file[:preset], as for llama4_jax.main")
BATCH = flags.DEFINE_integer("batch", 8, "rows per step (0: config.data.batch_size)")
SEQ = flags.DEFINE_integer("seq", 256, "tokens per row (0: config.data.seq_len)")
POSITIONS = define_positions_flag()
STEPS = flags.DEFINE_integer("steps", 10, "timed train steps")
WARMUP = flags.DEFINE_integer("warmup", 2, "untimed steps after the compile")
PEAK_REPEATS = flags.DEFINE_integer("peak_repeats", 20, "timed calls per matmul shape for the peak")

PEAK_SHAPES = ((1024, 1024, 1024), (2048, 256, 1024))  # (M, K, N): a square one and a token x hidden x ffw one
# On an accelerator those are far too small to reach the card's rate: big square and token x hidden x ffw products.
ACCELERATOR_PEAK_SHAPES = ((8192, 8192, 8192), (16384, 2048, 8192))


def peak_shapes():
  return PEAK_SHAPES if jax.default_backend() == "cpu" else ACCELERATOR_PEAK_SHAPES


def shape_from(config, batch: int, seq: int) -> tuple[int, int]:
  return batch or int(config.data.batch_size), seq or int(config.data.seq_len)


def build(config):
  """(model_cfg, state, jitted donated step) exactly as llama4_jax.train.loop.run_stage builds them."""
  model_cfg = model_config(config)
  params = init_params(model_cfg, jax.random.key(config.seed))
  tx, schedule = make_optimizer(config.optim, params, config.train.steps)
  state = init_state(params, tx)
  step_fn = jax.jit(functools.partial(train_step, model_cfg=model_cfg, train_cfg=LossConfig.from_config(
      config.train), tx=tx, schedule=schedule), donate_argnums=0)
  return model_cfg, state, step_fn


def model_summary(config, model_cfg) -> dict:
  keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
          "num_local_experts", "num_experts_per_tok", "attention_chunk_size", "moe_impl", "remat_policy",
          "scan_unroll", "dtype", "param_dtype")
  return {"preset": config.get("preset", "?"), **{k: getattr(model_cfg, k) for k in keys},
          "micro_batches": int(config.train.micro_batches)}


def main(argv):
  del argv
  config = CONFIG.value
  # Before the CPU backend starts (llama4_jax/host_memory.py); a large training state keeps the C library's defaults.
  retain_freed_host_memory(state_bytes=training_state_bytes(model_config(config)))
  batch_size, seq_len = shape_from(config, BATCH.value, SEQ.value)
  model_cfg, state, step_fn = build(config)
  peak_before = matmul_gflops(peak_shapes(), PEAK_REPEATS.value, dtype=model_cfg.dtype)
  batch = jax.device_put(synthetic_batch(model_cfg.vocab_size, batch_size, seq_len, positions=POSITIONS.value))
  key = jax.random.key(config.seed)
  t0 = time.perf_counter()
  state, metrics = jax.block_until_ready(step_fn(state, batch, jax.random.fold_in(key, 0)))
  compile_and_first_s = time.perf_counter() - t0
  first_loss = float(metrics["loss"])
  state, metrics, times = timed_steps(step_fn, state, batch, key, WARMUP.value, STEPS.value)
  peak_after = matmul_gflops(peak_shapes(), PEAK_REPEATS.value, dtype=model_cfg.dtype)
  peaks = {k: max(peak_before[k], peak_after[k]) for k in peak_before}
  peak = max(peaks.values())
  step_s = statistics.median(times)
  flops = training_flops_per_step(model_cfg, batch_size, seq_len)
  achieved = flops["total"] / step_s / 1e9
  print(json.dumps({
      "benchmark": "train_throughput", **model_summary(config, model_cfg), "batch": batch_size, "seq": seq_len,
      "positions_given": POSITIONS.value,
      "tokens_per_step": batch_size * seq_len, "steps": len(times), "median_step_s": round(step_s, 4),
      "min_step_s": round(min(times), 4), "max_step_s": round(max(times), 4),
      "tokens_per_s": round(batch_size * seq_len / step_s, 1), "model_gflops_per_step": round(flops["total"] / 1e9, 3),
      "attention_share_of_flops": round(flops["attention"] / flops["total"], 4),
      "achieved_gflops": round(achieved, 2), "peak_gflops": round(peak, 2), "peak_dtype": str(model_cfg.dtype),
      "peak_gflops_by_shape": {k: round(v, 2) for k, v in peaks.items()}, "mfu": round(achieved / peak, 4),
      "compile_and_first_step_s": round(compile_and_first_s, 2),
      "attention_impl": model_cfg.attention_impl, "first_loss": round(first_loss, 4),
      "last_loss": round(float(metrics["loss"]), 4), "host_malloc": applied_mode(), "jax": jax.__version__,
      "device": str(jax.devices()[0]),
      "device_count": jax.device_count()}))


if __name__ == "__main__":
  app.run(main)
