"""Our train step (or forward) against Hugging Face transformers on the same model and batch, side by side.

    python benchmarks/train_vs_hf.py --config=configs/base.py:tiny --rounds=10             # train steps
    python benchmarks/train_vs_hf.py --mode=forward --rounds=10                             # forward only
    python benchmarks/train_vs_hf.py --config.model.dtype=bfloat16 --hf_compute=bfloat16    # bf16 compute, both

Same weights on both sides: our params are exported with `llama4_jax.save_hf` and loaded by
`transformers.Llama4ForCausalLM.from_pretrained` (fp32, sdpa attention, `torch.set_num_threads(2)`). Before anything
runs, the two forwards' logits on the benchmark batch are compared once (printed, never asserted).
Train mode: ours is the jitted, donated `train_step` of llama4_jax/train/loop.py; Hugging Face's is forward, mean
cross entropy over every token against the same targets, backward, gradient clipping at `config.optim.clip_norm`
(as HF's Trainer and our optimizer do), `torch.optim.AdamW` step, zero_grad. Forward mode: both without gradients.
After warm-up the two ALTERNATE for `--rounds` rounds (which goes first flips each round), so machine noise hits both;
medians are reported with ratio = HF time / our time. Prints one JSON line; asserts nothing.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import statistics
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from absl import app, flags  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from benchmarks.timing import define_positions_flag  # noqa: E402

import llama4_jax  # noqa: E402
from llama4_jax.config import model_config  # noqa: E402
from llama4_jax.host_memory import applied_mode, retain_freed_host_memory  # noqa: E402
from llama4_jax.model import init_params  # noqa: E402
from llama4_jax.train.optimizer import make_optimizer  # noqa: E402
from llama4_jax.train.step import LossConfig, init_state, train_step, synthetic_batch  # noqa: E402

CONFIG = config_flags.DEFINE_config_file("config", os.path.join(ROOT, "configs/base.py") + ":tiny",
                                         "experiment config file[:preset], as for llama4_jax.main")
MODE = flags.DEFINE_enum("mode", "train", ["train", "forward"], "what is timed on both sides")
BATCH = flags.DEFINE_integer("batch", 8, "rows per step (0: config.data.batch_size)")
SEQ = flags.DEFINE_integer("seq", 256, "tokens per row (0: config.data.seq_len)")
POSITIONS = define_positions_flag()
ROUNDS = flags.DEFINE_integer("rounds", 10, "alternating timed rounds (one step of each side per round)")
WARMUP = flags.DEFINE_integer("warmup", 2, "untimed steps of each side after our compile")
THREADS = flags.DEFINE_integer("torch_threads", 2, "torch.set_num_threads")
HF_COMPUTE = flags.DEFINE_enum("hf_compute", "float32", ["float32", "bfloat16"],
                               "Hugging Face compute dtype: bfloat16 runs its forward (and so its backward) under "
                               "torch.autocast on fp32 weights, the analogue of --config.model.dtype=bfloat16")


def load_hf_model(model_cfg, params, directory: str):
  import torch
  import transformers
  path = llama4_jax.save_hf(model_cfg, params, os.path.join(directory, "hf"))
  return transformers.Llama4ForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")


def hf_optimizer(model, optim_cfg):
  """AdamW with our hyper-parameters and our weight-decay exclusion (constant learning rate: timing only)."""
  import torch
  excluded = lambda name: any(p in name for p in optim_cfg.weight_decay_exclude)  # noqa: E731
  named = list(model.named_parameters())
  groups = [{"params": [p for n, p in named if not excluded(n)], "weight_decay": optim_cfg.weight_decay},
            {"params": [p for n, p in named if excluded(n)], "weight_decay": 0.0}]
  return torch.optim.AdamW(groups, lr=optim_cfg.learning_rate, betas=(optim_cfg.b1, optim_cfg.b2),
                           eps=optim_cfg.eps)


def hf_steps(model, batch, optim_cfg, mode: str, compute: str = "float32"):
  """A function running one Hugging Face step (train: returns the loss; forward: None)."""
  import contextlib
  import torch
  inputs = torch.from_numpy(batch["inputs"]).long()
  targets = torch.from_numpy(batch["targets"]).long()
  autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if compute == "bfloat16" else (
      contextlib.nullcontext)
  if mode == "forward":
    model.eval()

    def forward_step():
      with torch.no_grad(), autocast():
        model(input_ids=inputs).logits
      return None
    return forward_step
  model.train()
  opt = hf_optimizer(model, optim_cfg)

  def train_step_hf():
    with autocast():
      logits = model(input_ids=inputs).logits.float()
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    return hf_update(model, opt, loss, optim_cfg.clip_norm)
  return train_step_hf


def hf_update(model, opt, loss, clip_norm) -> float:
  """Backward, global-norm clipping (as our optimizer does), the AdamW step and zero_grad; returns the loss."""
  import torch
  loss.backward()
  if clip_norm and clip_norm > 0:
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
  opt.step()
  opt.zero_grad(set_to_none=True)
  return float(loss.detach())


def our_steps(config, model_cfg, params, batch, mode: str):
  """One timed step of ours (blocks until done) -> loss or None. Train mode donates `params` into the state."""
  if mode == "forward":
    fn = jax.jit(lambda p, t: llama4_jax.apply(model_cfg, p, t)[0])
    tokens = jax.device_put(batch["inputs"])

    def forward_step():
      fn(params, tokens).block_until_ready()
      return None
    return forward_step
  tx, schedule = make_optimizer(config.optim, params, config.train.steps)
  box = {"state": init_state(params, tx), "i": 0}
  step_fn = jax.jit(functools.partial(train_step, model_cfg=model_cfg, train_cfg=LossConfig.from_config(
      config.train), tx=tx, schedule=schedule), donate_argnums=0)
  device_batch, key = jax.device_put(batch), jax.random.key(config.seed)

  def train_step_ours():
    box["state"], metrics = jax.block_until_ready(step_fn(box["state"], device_batch,
                                                          jax.random.fold_in(key, box["i"])))
    box["i"] += 1
    return float(metrics["loss"])
  return train_step_ours


def timed(fn):
  t0 = time.perf_counter()
  out = fn()
  return time.perf_counter() - t0, out


def main(argv):
  del argv
  import torch
  import transformers
  torch.set_num_threads(THREADS.value)
  config = CONFIG.value
  model_cfg = model_config(config)
  batch_size = BATCH.value or int(config.data.batch_size)
  seq_len = SEQ.value or int(config.data.seq_len)
  params = init_params(model_cfg, jax.random.key(config.seed))
  batch = synthetic_batch(model_cfg.vocab_size, batch_size, seq_len, positions=POSITIONS.value)
  with tempfile.TemporaryDirectory() as tmp:
    hf_model = load_hf_model(model_cfg, params, tmp)
  # Agreement check on the untrained weights, before any update (and before our step donates the params).
  ours_logits = np.asarray(llama4_jax.forward(model_cfg, params, batch["inputs"]))
  with torch.no_grad():
    hf_logits = hf_model.eval()(input_ids=torch.from_numpy(batch["inputs"]).long()).logits.float().numpy()
  diff = float(np.max(np.abs(ours_logits - hf_logits)))
  scale = float(np.max(np.abs(hf_logits)))
  del ours_logits, hf_logits

  ours = our_steps(config, model_cfg, params, batch, MODE.value)
  hf = hf_steps(hf_model, batch, config.optim, MODE.value, HF_COMPUTE.value)
  compile_s, our_first_loss = timed(ours)  # compile + first step, then the first HF step on the same weights
  _, hf_first_loss = timed(hf)
  for _ in range(max(WARMUP.value - 1, 0)):
    ours(), hf()
  our_times, hf_times = [], []
  for r in range(ROUNDS.value):
    pair = [(ours, our_times), (hf, hf_times)]
    for fn, times in (pair if r % 2 == 0 else pair[::-1]):
      times.append(timed(fn)[0])
  tokens = batch_size * seq_len
  our_s, hf_s = statistics.median(our_times), statistics.median(hf_times)
  print(json.dumps({
      "benchmark": "train_vs_hf", "mode": MODE.value, "preset": config.get("preset", "?"),
      "moe_impl": model_cfg.moe_impl, "our_compute": str(model_cfg.dtype), "hf_compute": HF_COMPUTE.value,
      "batch": batch_size, "seq": seq_len, "positions_given": POSITIONS.value, "rounds": ROUNDS.value,
      "our_median_step_s": round(our_s, 4), "hf_median_step_s": round(hf_s, 4),
      "our_tokens_per_s": round(tokens / our_s, 1), "hf_tokens_per_s": round(tokens / hf_s, 1),
      "ratio_hf_over_ours": round(hf_s / our_s, 3), "our_step": (
          "jitted donated train_step: forward, CE + z-loss + balance loss, backward, clip, AdamW" if MODE.value ==
          "train" else "jitted forward"),
      "hf_step": ("forward, CE over all tokens, backward, clip_grad_norm_, AdamW, zero_grad" if MODE.value == "train"
                  else "forward under no_grad, eval mode"),
      "our_step_s": [round(t, 4) for t in our_times], "hf_step_s": [round(t, 4) for t in hf_times],
      "logits_max_abs_diff": diff, "logits_max_abs": round(scale, 4),
      "first_loss_ours": None if our_first_loss is None else round(our_first_loss, 6),
      "first_loss_hf": None if hf_first_loss is None else round(hf_first_loss, 6),
      "our_compile_and_first_step_s": round(compile_s, 2), "processor": platform.processor(),
      "machine": platform.machine(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
      "host_malloc": applied_mode(), "torch": torch.__version__, "transformers": transformers.__version__,
      "jax": jax.__version__,
      "device": str(jax.devices()[0])}))


if __name__ == "__main__":
  retain_freed_host_memory()  # before the CPU backend starts (llama4_jax/host_memory.py)
  app.run(main)
