"""The Llama 4 post-training order on the tiny model, end to end on CPU (issue 9; stages available so far).

    python -m llama4_jax.main --config=experiments/2026_11_28_curriculum/config.py --workdir=runs/curriculum

pretrain (embedded corpus, 128-token rows) -> midtrain (512-token rows, RoPE theta 5e5 -> 2e6) -> sft (chat-formatted
verifiable problems, the easiest half of each task family dropped by the entering model's reply loss) -> rl (online
RL with GRPO advantages, clip-higher, zero-advantage refill and the pass-rate pool) -> dpo (on-policy pairs of an
accepted and a rejected reply). A multimodal RL stage joins this order (before DPO) when it lands. The question: does online RL raise the held-out pass rate over the SFT checkpoint, and on which task
families? Held-out greedy pass@1 (and pass@4 after RL) are logged at the end of each post-training stage; results
in NOTES.md beside this file. About 30 minutes on the 2-core machine.
Variants: `:smoke` shrinks every stage to seconds.
"""

from configs import base
from configs import default


def get_config(arg: str = ""):
  config = default.get_config("smoke" if arg == "smoke" else "")
  config.tasks.update(families=("add", "sort", "reverse", "lookup"), levels=(1,), train_problems=4000,
                      eval_problems=128, max_new_tokens=16)
  config.sft.update(drop_easiest=0.5, filter_metric="loss")
  config.rl.update(prompts_per_step=8, group_size=8, advantage="grpo", clip_low=0.2, clip_high=0.28, kl_coef=0.0,
                   temperature=1.0, max_rounds=4, pool_low=0.0, pool_high=0.9, refresh_every=20, refresh_prompts=64,
                   pass_k=4)
  config.dpo.update(pair_source="on_policy", prompts=256, samples=4, kind="sigmoid", beta=0.1, pairs_per_step=8)
  theta = dict(rope_theta=2e6)  # the post-training stages keep mid-training's RoPE base
  config.stages = dict(config.stages)
  config.stages["sft"] = base.stage(
      "sft", data=dict(seq_len=128, batch_size=16), train=dict(steps=400, eval_every=200, log_every=25),
      optim=dict(learning_rate=3e-3, warmup_steps=20), model=theta)
  config.stages["rl"] = base.stage(
      "rl", data=dict(seq_len=64), train=dict(steps=80, eval_every=40, log_every=5, checkpoint_every=20),
      optim=dict(learning_rate=3e-4, warmup_steps=5, schedule="constant", weight_decay=0.0), model=theta)
  config.stages["dpo"] = base.stage(
      "dpo", data=dict(seq_len=64), train=dict(steps=40, eval_every=0, log_every=5, checkpoint_every=20),
      optim=dict(learning_rate=1e-4, warmup_steps=5, schedule="constant", weight_decay=0.0), model=theta)
  config.stage_order = ("pretrain", "midtrain", "sft", "rl", "dpo")
  if arg == "smoke":
    config.tasks.update(train_problems=64, eval_problems=8, max_new_tokens=6)
    config.stages["sft"].overrides.data.update(seq_len=64, batch_size=4)
    config.stages["sft"].overrides.train.update(steps=4, eval_every=0, log_every=1)
    config.stages["rl"].overrides.data.update(seq_len=48, batch_size=4)
    config.stages["rl"].overrides.train.update(steps=2, eval_every=0, log_every=1)
    config.stages["dpo"].overrides.data.update(seq_len=48, batch_size=4)
    config.stages["dpo"].overrides.train.update(steps=2, log_every=1)
    config.dpo.update(prompts=8, samples=2, pairs_per_step=2)
    config.rl.update(prompts_per_step=2, group_size=2, refresh_prompts=4, pass_k=2, max_rounds=1)
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of the curriculum experiment (known: smoke)")
  return config
