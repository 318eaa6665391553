"""Online-RL throughput at the tiny config: generated tokens/s and update tokens/s, timed apart (asserts nothing).

    python benchmarks/rl_throughput.py --steps=6 --prompts=8 --group=8 --max_new_tokens=16

One RL step as the `rl` stage runs it (llama4_jax/train/rl_stage.py): P prompts (held-out `lookup` and `add`
problems in the chat template) x G samples from the KV-cache generator at temperature 1, the rollout batch, the
sampling policy's token log-probs, and one jitted `rl_step` (GRPO advantages, clip-higher token loss, AdamW). The
model is the tiny preset from its random init and the reward is synthetic (the first generated token is even, true
for about half the samples), so every group has reward variance and every step updates; the timings do not depend
on the reward. Reported: medians over `--steps` steps after `--warmup` untimed ones of the rollout time (generation
and scoring), generated tokens/s (completion tokens incl. the stop token), the update time (log-probs forward +
update step) and update tokens/s (real tokens of the rollout batch, prompt and completion). Prints one JSON line.
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
import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import base as base_configs  # noqa: E402
from llama4_jax.config import model_config  # noqa: E402
from llama4_jax.data import verifiable  # noqa: E402
from llama4_jax.data.tokenizer import ChatFormat, Tokenizer  # noqa: E402
from llama4_jax.host_memory import applied_mode, retain_freed_host_memory  # noqa: E402
from llama4_jax.model import init_params  # noqa: E402
from llama4_jax.sampling import Sampling  # noqa: E402
from llama4_jax.train import rl, rollout  # noqa: E402
from llama4_jax.train.optimizer import make_optimizer  # noqa: E402
from llama4_jax.train.step import init_state  # noqa: E402

STEPS = flags.DEFINE_integer("steps", 6, "timed RL steps")
WARMUP = flags.DEFINE_integer("warmup", 1, "untimed steps first (compilation)")
PROMPTS = flags.DEFINE_integer("prompts", 8, "prompts per step (P)")
GROUP = flags.DEFINE_integer("group", 8, "samples per prompt (G)")
MAX_NEW = flags.DEFINE_integer("max_new_tokens", 16, "completion budget")
SEQ = flags.DEFINE_integer("seq", 64, "rollout batch row length")


def main(argv):
  del argv
  config = base_configs.get_config("tiny")
  model_cfg = model_config(config)
  tok = Tokenizer.default()
  chat = ChatFormat(tok)
  problems = list(verifiable.problems(("lookup", "add"), (1,), n=PROMPTS.value * (STEPS.value + WARMUP.value),
                                      seed=0, split="held_out"))
  params = jax.jit(init_params, static_argnums=0)(model_cfg, jax.random.key(0))
  tx, _ = make_optimizer(config.optim, params, 1000)
  state = init_state(params, tx)
  rl_cfg = rollout.RLConfig.from_config(config.rl)
  logp_fn = jax.jit(functools.partial(rollout.sequence_token_logprobs, model_cfg))
  step_fn = jax.jit(functools.partial(rollout.rl_step, model_cfg=model_cfg, rl_cfg=rl_cfg, tx=tx), donate_argnums=0)
  reward = lambda p, completion: float(bool(completion) and completion[0] % 2 == 0)  # noqa: E731
  rows = []
  for i in range(WARMUP.value + STEPS.value):
    batch_problems = problems[i * PROMPTS.value:(i + 1) * PROMPTS.value]
    t0 = time.perf_counter()
    ro = rollout.sample_token_groups(model_cfg, state.params, [rollout.prompt_ids(p, chat) for p in batch_problems],
                                     GROUP.value, reward, max_new_tokens=MAX_NEW.value,
                                     sampling=Sampling(temperature=1.0, seed=i), tokenizer=tok)
    t1 = time.perf_counter()
    batch = rollout.rollout_batch(ro, SEQ.value)
    advantages = rl.group_advantages(ro.rewards_PG, "grpo").reshape(-1)
    logp_old = logp_fn(state.params, batch)
    state, metrics = step_fn(state, batch, advantages, logp_old, None)
    jax.block_until_ready(metrics["loss"])
    t2 = time.perf_counter()
    if i >= WARMUP.value:
      rows.append({"rollout_s": t1 - t0, "generated": int(ro.completion_lengths_B.sum()), "update_s": t2 - t1,
                   "update_tokens": int(np.sum(batch["segment_ids"] > 0)), "reward": float(ro.rewards_PG.mean())})
  med = lambda k: statistics.median(r[k] for r in rows)  # noqa: E731
  print(json.dumps({
      "benchmark": "rl_throughput", "preset": "tiny", "prompts": PROMPTS.value, "group": GROUP.value,
      "max_new_tokens": MAX_NEW.value, "seq": SEQ.value, "steps": len(rows),
      "median_rollout_s": round(med("rollout_s"), 4),
      "generated_tokens_per_s": round(med("generated") / med("rollout_s"), 1),
      "median_update_s": round(med("update_s"), 4),
      "update_tokens_per_s": round(med("update_tokens") / med("update_s"), 1),
      "generated_tokens_per_step": med("generated"), "update_tokens_per_step": med("update_tokens"),
      "rewards": [round(r["reward"], 3) for r in rows], "host_malloc": applied_mode(), "jax": jax.__version__,
      "device": str(jax.devices()[0])}))


if __name__ == "__main__":
  retain_freed_host_memory()  # before the CPU backend starts (llama4_jax/host_memory.py)
  app.run(main)
