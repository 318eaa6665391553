"""Greedy generation: our prefill + compiled decode loop against Hugging Face `generate`, side by side.

    python benchmarks/generate_vs_hf.py --config=configs/base.py:tiny --rounds=7 --moe_impls=blocked,ragged_dot,dense \
        --profile

Same weights on both sides: our params are exported with `llama4_jax.save_hf` and loaded by
`transformers.Llama4ForCausalLM.from_pretrained` (fp32, sdpa attention, `torch.set_num_threads(2)`). The prompts are
`--batch` rows of `--prompt_len` random token ids below the tokenizer's first special id (3840 on the tiny preset),
all of the same length; both sides then produce exactly `--new` tokens per row greedily with no stop token (ours:
`Sampling(stop_tokens=())`; Hugging Face: `eos_token_id=None` in the generation config, checked by the output length).

Timed per side and round, each on fresh inputs:
  ours  prefill   `generate._start` (validation, cache allocation, the jitted chunk-sized prefill pieces, last logits)
        decode    the jitted while_loop `fns["loop"]` over `--new` steps
        total     `llama4_jax.generate.generate` end to end (a separate call)
  HF    prefill   one forward over the prompts with `use_cache=True, logits_to_keep=1` (what `generate` prefills)
        total     `model.generate(input_ids, attention_mask, max_new_tokens, do_sample=False)`
        decode    total - prefill (medians)
Ours runs once per kernels.moe variant in `--moe_impls` (same params; the variants differ only in how the MoE layer
computes); the headline is the variant with the fastest median end-to-end time. After compile and warm-up the sides
ALTERNATE for `--rounds` rounds (the order flips each round), so machine noise hits both; medians are reported with
ratio = HF time / our time. The greedy tokens of both sides are compared once (printed, never asserted). With
`--profile`, one jitted decode step is also timed per variant (against the loop's per-step time) along with the jit
cache sizes (recompiles). A 1024^3 fp32 matmul is timed before and after (the host's speed drifts). Prints one JSON
line; asserts nothing.
"""

from __future__ import annotations

import dataclasses
import importlib
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
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from ml_collections import config_flags  # noqa: E402

import llama4_jax  # noqa: E402
from llama4_jax.config import model_config  # noqa: E402
from llama4_jax.host_memory import retain_freed_host_memory  # noqa: E402
from llama4_jax.model import init_params  # noqa: E402
from llama4_jax.sampling import Sampling  # noqa: E402
from benchmarks.timing import matmul_gflops  # noqa: E402

gen = importlib.import_module("llama4_jax.generate")  # the module (the package exports the function)

CONFIG = config_flags.DEFINE_config_file("config", os.path.join(ROOT, "configs/base.py") + ":tiny",
                                         "experiment config file[:preset], as for llama4_jax.main")
BATCH = flags.DEFINE_integer("batch", 8, "prompts")
PROMPT_LEN = flags.DEFINE_integer("prompt_len", 64, "tokens per prompt")
NEW = flags.DEFINE_integer("new", 64, "new tokens per prompt (no early stop)")
ROUNDS = flags.DEFINE_integer("rounds", 7, "alternating timed rounds")
WARMUP = flags.DEFINE_integer("warmup", 2, "untimed rounds of each side after our compile")
MOE_IMPLS = flags.DEFINE_list("moe_impls", "blocked,ragged_dot,dense", "kernels.moe variants of ours to time")
FIRST_SPECIAL = flags.DEFINE_integer("first_special", 3840, "prompt ids are drawn from [0, first_special)")
PROFILE = flags.DEFINE_bool("profile", False, "also time single jitted decode steps and report jit cache sizes")
THREADS = flags.DEFINE_integer("torch_threads", 2, "torch.set_num_threads")


def load_hf_model(model_cfg, params, directory: str):
  import torch
  import transformers
  path = llama4_jax.save_hf(model_cfg, params, os.path.join(directory, "hf"))
  model = transformers.Llama4ForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
  model.generation_config.eos_token_id = None  # no early stop: every row produces exactly `--new` tokens
  model.generation_config.pad_token_id = model_cfg.pad_token_id
  return model.eval()


def clock(fn):
  t0 = time.perf_counter()
  out = fn()
  return time.perf_counter() - t0, out


def ours_fns(cfg, params, prompts, new: int):
  """(split: () -> (prefill s, decode s, tokens), total: () -> (s, tokens)) for one ModelConfig."""
  sampling = Sampling(stop_tokens=())

  def split():
    t0 = time.perf_counter()
    fns, state, _, decode_params = gen._start(cfg, params, prompts, new, sampling, None, None, None)
    jax.block_until_ready(state)
    t1 = time.perf_counter()
    state = jax.block_until_ready(fns["loop"](decode_params, state, jnp.asarray(new, jnp.int32)))
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, np.asarray(state["out"]), int(state["t"])

  def total():
    return clock(lambda: gen.generate(cfg, params, prompts, max_new_tokens=new, sampling=sampling))
  return split, total


def hf_fns(model, prompts, new: int):
  import torch
  ids = torch.tensor(np.asarray(prompts), dtype=torch.long)
  mask = torch.ones_like(ids)

  def prefill():
    with torch.no_grad():
      return clock(lambda: model(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1).logits)[0]

  def total():
    seconds, out = clock(lambda: model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new,
                                                do_sample=False))
    return seconds, out[:, ids.shape[1]:].numpy()
  return prefill, total


def step_profile(cfg, params, prompts, new: int, repeats: int = 20) -> dict:
  """Median seconds of one jitted decode step (fns['step'], a fresh state per prefill) and the jit cache sizes."""
  sampling = Sampling(stop_tokens=())
  fns, state, _, decode_params = gen._start(cfg, params, prompts, new, sampling, None, None, None)
  state = jax.block_until_ready(fns["step"](decode_params, state))  # compile
  times = []
  for _ in range(min(repeats, new - 1)):
    seconds, state = clock(lambda: jax.block_until_ready(fns["step"](decode_params, state)))  # noqa: B023
    times.append(seconds)
  sizes = {name: fns[name]._cache_size() for name in ("prefill", "loop", "step")}
  return {"step_s": statistics.median(times), "jit_cache_sizes": sizes}


def rates(prefill_s, decode_s, total_s, prompt_tokens, new_tokens) -> dict:
  return {"prefill_tok_s": round(prompt_tokens / prefill_s, 1), "decode_new_tok_s": round(new_tokens / decode_s, 1),
          "end_to_end_new_tok_s": round(new_tokens / total_s, 1), "prefill_s": round(prefill_s, 5),
          "decode_s": round(decode_s, 5), "total_s": round(total_s, 5)}


def main(argv):
  del argv
  import torch
  import transformers
  torch.set_num_threads(THREADS.value)
  config = CONFIG.value
  gflops_before = matmul_gflops([(1024, 1024, 1024)], repeats=5)["1024x1024x1024"]
  base_cfg = model_config(config)
  batch, plen, new = BATCH.value, PROMPT_LEN.value, NEW.value
  params = init_params(base_cfg, jax.random.key(config.seed))
  rng = np.random.default_rng(config.seed)
  prompts = rng.integers(0, min(FIRST_SPECIAL.value, base_cfg.vocab_size), (batch, plen)).tolist()
  with tempfile.TemporaryDirectory() as tmp:
    hf_model = load_hf_model(base_cfg, params, tmp)
  hf_prefill, hf_total = hf_fns(hf_model, prompts, new)
  ours = {impl: ours_fns(dataclasses.replace(base_cfg, moe_impl=impl), params, prompts, new)
          for impl in MOE_IMPLS.value}

  # Compile + warm-up (untimed); the first outputs give the greedy-agreement check.
  compile_s, first = {}, {}
  for impl, (split, total) in ours.items():
    compile_s[impl], (_, first[impl]) = clock(total)
    first[impl] = np.asarray([row + [-1] * (new - len(row)) for row in first[impl]])
  _, hf_tokens = hf_total()
  for _ in range(WARMUP.value):
    for split, total in ours.values():
      split(), total()
    hf_prefill(), hf_total()

  times = {impl: {"prefill": [], "decode": [], "total": [], "steps": []} for impl in ours}
  times["hf"] = {"prefill": [], "total": []}

  def run_hf():
    times["hf"]["prefill"].append(hf_prefill())
    seconds, out = hf_total()
    times["hf"]["total"].append(seconds)
    times["hf"]["new_tokens_per_row"] = int(out.shape[1])

  def run_ours(impl):
    split, total = ours[impl]
    p, d, _, steps = split()
    times[impl]["prefill"].append(p)
    times[impl]["decode"].append(d)
    times[impl]["steps"].append(steps)
    times[impl]["total"].append(total()[0])

  for r in range(ROUNDS.value):
    order = [lambda i=impl: run_ours(i) for impl in ours] + [run_hf]
    for fn in (order if r % 2 == 0 else order[::-1]):
      fn()

  med = lambda xs: statistics.median(xs)  # noqa: E731
  prompt_tokens, new_tokens = batch * plen, batch * new
  hf_p, hf_t = med(times["hf"]["prefill"]), med(times["hf"]["total"])
  hf = rates(hf_p, hf_t - hf_p, hf_t, prompt_tokens, new_tokens)
  variants = {}
  for impl in ours:
    t = times[impl]
    o = rates(med(t["prefill"]), med(t["decode"]), med(t["total"]), prompt_tokens, new_tokens)
    o["ratios_hf_over_ours"] = {"prefill": round(hf_p / med(t["prefill"]), 3),
                                "decode": round((hf_t - hf_p) / med(t["decode"]), 3),
                                "end_to_end": round(hf_t / med(t["total"]), 3)}
    o["greedy_agreement_with_hf"] = round(float(np.mean(first[impl] == hf_tokens)), 4)
    o["rows_identical_to_hf"] = int(np.sum(np.all(first[impl] == hf_tokens, axis=1)))
    o["first_divergence_per_row"] = [int(np.argmax(a != b)) if np.any(a != b) else new
                                     for a, b in zip(first[impl], hf_tokens)]
    o["decode_steps_run"] = sorted(set(t["steps"]))
    o["compile_and_first_generate_s"] = round(compile_s[impl], 2)
    o["total_s_rounds"] = [round(x, 4) for x in t["total"]]
    if PROFILE.value:
      prof = step_profile(dataclasses.replace(base_cfg, moe_impl=impl), params, prompts, new)
      o["one_step_s"] = round(prof["step_s"], 6)
      o["loop_s_per_step"] = round(med(t["decode"]) / new, 6)
      o["jit_cache_sizes"] = prof["jit_cache_sizes"]
    variants[impl] = o
  gflops_after = matmul_gflops([(1024, 1024, 1024)], repeats=5)["1024x1024x1024"]
  best = min(variants, key=lambda k: variants[k]["total_s"])
  hf["total_s_rounds"] = [round(x, 4) for x in times["hf"]["total"]]
  hf["new_tokens_per_row"] = times["hf"].get("new_tokens_per_row")
  print(json.dumps({
      "benchmark": "generate_vs_hf", "preset": config.get("preset", "?"), "batch": batch, "prompt_len": plen,
      "new_tokens": new, "rounds": ROUNDS.value, "greedy": True, "best_moe_impl": best,
      "ours_best": variants[best], "hf": hf, "ours_by_moe_impl": variants,
      "ours_variants_agree": {impl: bool(np.array_equal(first[impl], first[best])) for impl in ours},
      "host_matmul_gflops_before_after": [round(gflops_before, 1), round(gflops_after, 1)],
      "processor": platform.processor(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
      "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "transformers": transformers.__version__,
      "jax": jax.__version__, "device": str(jax.devices()[0])}))


if __name__ == "__main__":
  retain_freed_host_memory()  # before the CPU backend starts (llama4_jax/host_memory.py)
  app.run(main)
