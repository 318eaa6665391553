"""The Llama 4 post-training order on the tiny vision-language model, end to end on CPU (issue 9).

    python -m llama4_jax.main --config=experiments/2026_11_28_curriculum/config.py --workdir=runs/curriculum

pretrain (embedded corpus mixed with the embedded image-text set, 128-token rows) -> midtrain (512-token text rows,
RoPE theta 5e5 -> 2e6) -> sft (chat-formatted `sort` and `lookup` problems, the easiest half of each family dropped
by the entering model's reply loss) -> rl (online RL on the same families: GRPO advantages, clip-higher,
zero-advantage refill and the pass-rate pool) -> sft_vision (SFT rows with pictures: dots to count and numbers to
read, llama4_jax/data/visual_tasks.py, mixed with the text families as replay) -> rl_vision (the RL loop on the same
mix of image and text prompts) -> dpo (one pass over on-policy pairs of an accepted and a rejected reply, at a low
rate). The question: does online RL raise the held-out pass rate over the SFT checkpoint, and on which task
families? Held-out greedy pass@1 (and pass@k after RL) are logged at the end of each post-training stage (256
held-out text problems: 130 sort, 126 lookup; 256 for the mixed stages), beside the held-out image-text answer loss
with and without the image; results in NOTES.md beside this file. Post-training rows are 128 tokens (144 for
rl_vision: an image prompt is about 114). SFT stops at 150 steps and RL runs at 3e-4: the setting under which RL
raised sort's held-out pass@1 from 0.569 to 0.685 (paired McNemar p = 0.017; NOTES.md, third and fourth runs;
`paired_eval.py` beside this file compares two stages of a workdir that way). About 45 minutes on the 2-core
machine.
Variants: `:smoke` shrinks every stage to seconds.
"""

from configs import base
from configs import default_vl


def get_config(arg: str = ""):
  smoke = arg == "smoke"
  if arg and not smoke:
    raise ValueError(f"unknown variant {arg!r} of the curriculum experiment (known: smoke)")
  config = default_vl.get_config("smoke" if smoke else "")
  config.data.update(image_fraction=0.5)
  config.train.update(steps=300)
  config.tasks.update(families=("sort", "lookup"), levels=(1,), train_problems=4000, eval_problems=256,
                      max_new_tokens=16)
  config.sft.update(drop_easiest=0.5, filter_metric="loss")
  config.rl.update(prompts_per_step=8, group_size=8, advantage="grpo", clip_low=0.2, clip_high=0.28, kl_coef=0.0,
                   temperature=1.0, max_rounds=4, pool_low=0.0, pool_high=0.9, refresh_every=20, refresh_prompts=64,
                   pass_k=4)
  config.dpo.update(pair_source="on_policy", prompts=512, samples=4, kind="sigmoid", beta=0.1, pairs_per_step=8)
  theta = dict(rope_theta=2e6)  # the stages after mid-training keep its RoPE base
  # sft_vision and rl_vision: the image families mixed with the text families (a quarter of the problems each), so
  # that the text skills are replayed while the image ones are taught (an image-only rl_vision at 1e-3 collapsed
  # onto one reply and left sort at 0.0: NOTES.md, fourth run)
  mixed = dict(families=("sort", "lookup", "image_count", "image_number"), levels=(1,), train_problems=2000,
               eval_problems=256, max_new_tokens=16)
  config.stages = {
      "pretrain": base.stage("lm"),
      "midtrain": base.stage(
          "lm", data=dict(seq_len=512, batch_size=2, image_fraction=0.0),
          train=dict(steps=40, eval_every=20, checkpoint_every=20), optim=dict(learning_rate=1e-3, warmup_steps=5),
          model=theta),
      "sft": base.stage(
          "sft", data=dict(seq_len=128, batch_size=16), train=dict(steps=150, eval_every=150, log_every=25),
          optim=dict(learning_rate=3e-3, warmup_steps=20), model=theta),
      "rl": base.stage(
          "rl", data=dict(seq_len=128), train=dict(steps=100, eval_every=50, log_every=5, checkpoint_every=25),
          optim=dict(learning_rate=3e-4, warmup_steps=5, schedule="constant", weight_decay=0.0), model=theta),
      "sft_vision": base.stage(
          "sft", data=dict(seq_len=128, batch_size=16), tasks=mixed, train=dict(steps=60, eval_every=60, log_every=10),
          optim=dict(learning_rate=1e-3, warmup_steps=5), model=theta),
      "rl_vision": base.stage(
          "rl", data=dict(seq_len=144), tasks=mixed,
          train=dict(steps=40, eval_every=20, log_every=5, checkpoint_every=20),
          optim=dict(learning_rate=3e-4, warmup_steps=5, schedule="constant", weight_decay=0.0), model=theta),
      "dpo": base.stage(
          "dpo", data=dict(seq_len=128), train=dict(steps=12, eval_every=0, log_every=2, checkpoint_every=12),
          optim=dict(learning_rate=3e-5, warmup_steps=2, schedule="constant", weight_decay=0.0), model=theta),
  }
  config.stage_order = ("pretrain", "midtrain", "sft", "rl", "sft_vision", "rl_vision", "dpo")
  if smoke:
    config.train.update(steps=6)
    config.tasks.update(train_problems=64, eval_problems=8, max_new_tokens=6)
    s = config.stages
    s["midtrain"].overrides.data.update(seq_len=128, batch_size=1)
    s["midtrain"].overrides.train.update(steps=2, eval_every=0)
    s["sft"].overrides.data.update(batch_size=4)
    s["sft"].overrides.train.update(steps=4, eval_every=0, log_every=1)
    s["rl"].overrides.data.update(batch_size=4)
    s["rl"].overrides.train.update(steps=2, eval_every=0, log_every=1)
    s["sft_vision"].overrides.tasks.update(train_problems=32, eval_problems=8, max_new_tokens=4)
    s["sft_vision"].overrides.data.update(batch_size=4)
    s["sft_vision"].overrides.train.update(steps=2, eval_every=0, log_every=1)
    s["rl_vision"].overrides.tasks.update(train_problems=16, eval_problems=8, max_new_tokens=4)
    s["rl_vision"].overrides.data.update(batch_size=4)
    s["rl_vision"].overrides.train.update(steps=2, eval_every=0, log_every=1)
    s["dpo"].overrides.data.update(batch_size=4)
    s["dpo"].overrides.train.update(steps=2, log_every=1)
    config.dpo.update(prompts=8, samples=2, pairs_per_step=2, pair_source="reference")  # untrained: no on-policy pair
    config.rl.update(prompts_per_step=2, group_size=2, refresh_prompts=4, pass_k=2, max_rounds=1)
  return config
