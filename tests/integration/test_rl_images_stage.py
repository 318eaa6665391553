"""Multimodal post-training: an `rl` stage and an `sft` stage of a vision-language model on image-task prompts,
inside the training loop, and the config checks that keep image tasks where they work."""

import numpy as np
import pytest

from configs import base
from configs import default_vl
from llama4_jax.config import ConfigError
from llama4_jax.data import verifiable
from llama4_jax.train import rollout, sft
from llama4_jax.train.loop import train_and_evaluate
from llama4_jax.train.metrics import read_metrics


def _config(steps=3):
  config = default_vl.get_config("smoke")
  config.data.batch_size = 8  # 8 simulated devices in this process (tests/conftest.py)
  config.train.update(steps=steps, log_every=1, eval_every=0, checkpoint_every=2, tensorboard=False, progress=False)
  config.tasks.update(families=("image_count", "image_sum", "add"), levels=(1,), train_problems=48,
                      eval_problems=6, max_new_tokens=3)
  config.rl.update(prompts_per_step=2, group_size=4, refresh_every=2, refresh_prompts=4, pass_k=2, max_rounds=3)
  config.stages = {"rl_vision": base.stage("rl", data=dict(seq_len=160),
                                           optim=dict(learning_rate=1e-2, warmup_steps=1))}
  config.stage_order = ("rl_vision",)
  return config


def test_rl_stage_on_image_prompts_updates_with_the_pictures(tmp_path, monkeypatch):
  # A reward a random model earns about half the time (an even number of reply characters), so groups have
  # variance and every step updates; the real checkers would score a random model 0 on every image problem.
  monkeypatch.setattr(verifiable, "check", lambda problem, text: float(len(text) % 2 == 0))
  seen = []
  original = rollout.rl_step

  def spy(state, batch, *args, **kwargs):
    seen.append({k: v.shape for k, v in batch.items()})  # runs while jit traces the update
    return original(state, batch, *args, **kwargs)

  monkeypatch.setattr(rollout, "rl_step", spy)
  config = _config()
  workdir = str(tmp_path / "vl_rl")
  rows = train_and_evaluate(config, workdir)
  logged = [r for r in read_metrics(workdir) if r.get("stage") == "rl_vision" and "reward_mean_sampled" in r]
  assert [r["stage_step"] for r in logged] == [1, 2, 3]
  updated = [r for r in logged if r["no_signal_step"] == 0]
  assert updated and all(np.isfinite(r["loss"]) and np.isfinite(r["entropy"]) for r in updated)
  # The update's batch carries each row's tiles, fixed at (max_num_tiles + 1) per row, behind the patch tokens.
  vision = config.model.vision
  assert len(seen) == 1  # one compiled update shape for every step
  assert seen[0]["pixels"] == (8, vision.max_num_tiles + 1, 3, vision.image_size, vision.image_size)
  # Held-out metrics per family, image families included, greedy and sampled.
  assert {"eval_pass_at_1/image_count", "eval_pass_at_2/image_count", "eval_pass_at_1/add"} <= set(rows[0])


def test_image_tasks_are_refused_where_they_cannot_work(tmp_path):
  config = _config()
  config.stages = {"dpo": base.stage("dpo", data=dict(seq_len=160))}
  config.stage_order = ("dpo",)
  with pytest.raises(ConfigError, match=r"stages.dpo: tasks.families holds image families \['image_count', "
                                        r"'image_sum'\]; a 'dpo' stage takes text families only"):
    train_and_evaluate(config, str(tmp_path / "a"))
  config = _config()
  config.model.vision.enabled = False
  config.data.image_fraction = 0.0
  with pytest.raises(ConfigError, match="no vision tower"):
    train_and_evaluate(config, str(tmp_path / "b"))
  config = _config()
  config.stages.rl_vision.overrides.data.seq_len = 112  # holds the image-text data (108), not a 5-tile prompt (114)
  with pytest.raises(ConfigError, match="data.seq_len=112 cannot hold the longest train prompt"):
    train_and_evaluate(config, str(tmp_path / "c"))


def test_sft_stage_on_image_problems_trains_with_the_pictures(tmp_path, monkeypatch):
  seen = []
  original = sft.reply_losses

  def spy(model_cfg, params, examples, batch_size):
    seen.append(sum("tiles" in e for e in examples))
    return original(model_cfg, params, examples, batch_size)

  monkeypatch.setattr(sft, "reply_losses", spy)
  config = _config(steps=4)
  config.sft.update(drop_easiest=0.5, filter_metric="loss")
  config.stages = {"sft_vision": base.stage("sft", data=dict(seq_len=160), optim=dict(learning_rate=3e-3))}
  config.stage_order = ("sft_vision",)
  workdir = str(tmp_path / "vl_sft")
  rows = train_and_evaluate(config, workdir)
  images = sum(bool(p.images) for p in sft.task_problems(config.tasks, "train"))
  assert images > 0 and seen and seen[0] == images  # the difficulty filter scored the image candidates as such
  row = rows[0]
  assert row["sft_candidates"] == 48 and row["sft_kept"] == 24
  losses = [r["loss"] for r in read_metrics(workdir) if r.get("stage") == "sft_vision" and "loss" in r]
  assert len(losses) == 4 and all(np.isfinite(losses))
  # held-out reply loss and greedy pass@1 on the image families too
  families = {p.family for p in sft.task_problems(config.tasks, "held_out")}
  assert families & set(verifiable.IMAGE_FAMILIES)
  assert {"eval_sft_answer_loss"} | {f"eval_pass_at_1/{f}" for f in families} <= set(row)
