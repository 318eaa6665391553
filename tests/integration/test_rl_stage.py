"""The `rl` and `dpo` stages in the training loop: rollouts, refill, pool, KL, pairs, held-out metrics, config checks."""

import os

import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import base
from configs import default as default_config
from llama4_jax.config import ConfigError
from llama4_jax.data.tokenizer import ChatFormat
from llama4_jax.train import rollout
from llama4_jax.train.checkpoint import Checkpointer
from llama4_jax.train.loop import train_and_evaluate
from llama4_jax.train.metrics import read_metrics


def _config(steps=8):
  config = default_config.get_config("smoke")
  config.data.batch_size = 8  # 8 simulated devices in this process (tests/conftest.py)
  config.train.update(steps=steps, log_every=1, eval_every=0, checkpoint_every=4, tensorboard=False, progress=False)
  config.tasks.update(families=("lookup", "add"), train_problems=64, eval_problems=8, max_new_tokens=4)
  config.rl.update(prompts_per_step=4, group_size=8, refresh_every=4, refresh_prompts=8, kl_coef=0.01, pass_k=2,
                   max_rounds=2)
  config.dpo.update(prompts=16, samples=4, pairs_per_step=4, beta=0.1)
  config.stages = {"rl": base.stage("rl", data=dict(seq_len=48), optim=dict(learning_rate=1e-2, warmup_steps=1)),
                   "dpo": base.stage("dpo", data=dict(seq_len=48), train=dict(steps=3),
                                     optim=dict(learning_rate=1e-3, warmup_steps=0, weight_decay=0.0))}
  config.stage_order = ("rl",)
  return config


def _even_first_token(model_cfg, params, problems, group_size, *, max_new_tokens, sampling, tokenizer):
  """A reward a random tiny model earns about half the time: the first generated token id is even."""
  chat = ChatFormat(tokenizer)
  prompts = [rollout.prompt_ids(p, chat) for p in problems]
  reward = lambda p, completion: float(bool(completion) and completion[0] % 2 == 0)  # noqa: E731
  return rollout.sample_token_groups(model_cfg, params, prompts, group_size, reward, max_new_tokens=max_new_tokens,
                                     sampling=sampling, tokenizer=tokenizer)


def test_rl_then_dpo_stages_raise_the_reward_and_log_the_loop(tmp_path, monkeypatch):
  monkeypatch.setattr(rollout, "sample_groups", _even_first_token)
  config = _config()
  config.stage_order = ("rl", "dpo")
  # Larger initial weights give peaked next-token distributions, so a few hundred samples can move their parity.
  config.model.initializer_range = 0.3
  workdir = str(tmp_path / "rl")
  rows = train_and_evaluate(config, workdir)
  logged = [r for r in read_metrics(workdir) if r.get("stage") == "rl" and "reward_mean_sampled" in r]
  assert [r["stage_step"] for r in logged] == list(range(1, 9))
  for r in logged:
    for key in ("reward_mean", "filtered_fraction", "rounds", "approx_kl", "entropy", "clip_fraction",
                "response_length", "pool_in_band_fraction", "pool_mean_pass_rate", "generated_tokens_per_s",
                "update_tokens_per_s"):
      assert key in r and np.isfinite(r[key]), (key, r)
    assert r["no_signal_step"] == 0 and r["unfilled_groups"] == 0 and r["approx_kl"] >= 0
    assert 0 < r["response_length"] <= 4
  first = np.mean([r["reward_mean_sampled"] for r in logged[:3]])
  last = np.mean([r["reward_mean_sampled"] for r in logged[-3:]])
  assert last > first + 0.12, (first, last)  # 0.47 -> 0.67 here; the bandit of test_rollout.py goes much further
  assert logged[-1]["approx_kl"] > logged[0]["approx_kl"]  # the policy moved away from the frozen reference
  assert {"eval_pass_at_1", "eval_pass_at_2", "eval_pass_at_2/lookup"} <= set(rows[0])
  assert rows[0]["eval_pass_at_2"] >= 0.5  # the synthetic reward is checked at evaluation too; almost always met

  # DPO after RL, pairs built on-policy (an accepted and a rejected reply) by the model leaving RL, which is also
  # the frozen reference: the first update sees policy == reference, so its loss is exactly -log sigmoid(0).
  steps = [r for r in read_metrics(workdir) if r.get("stage") == "dpo" and "reward_margin" in r]
  assert len(steps) == 3 and steps[0]["dpo_pairs"] > 0
  np.testing.assert_allclose(steps[0]["loss"], np.log(2.0), rtol=1e-5)
  assert abs(steps[0]["reward_margin"]) < 1e-5 and steps[-1]["reward_margin"] > 1e-3
  assert steps[0]["dpo_sampled_pass_rate"] > 0.6  # the RL-trained policy, not the ~0.5 of the initial one
  assert 0.0 <= rows[1]["eval_dpo_preference_accuracy"] <= 1.0 and "eval_pass_at_1" in rows[1]

  # The prompt pool's pass rates travel in the checkpoint's data state.
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints", "rl"), 3, None, False)
  data = ckpt._manager.restore(8, args=ocp.args.Composite(data=ocp.args.JsonRestore()))["data"]
  ckpt.close()
  measured = [x for x in data["pass_rate"] if x is not None]
  assert len(data["pass_rate"]) == 64 and measured and np.mean(measured) > 0.5


@pytest.mark.parametrize("section, change, message", [
    ("rl", dict(group_size=1), r"stages\.rl: rl\.group_size must be >= 2, got 1"),
    ("rl", dict(advantage="ppo"), r"stages\.rl: rl\.advantage='ppo'"),
    ("rl", dict(clip_low=1.5), r"stages\.rl: rl\.clip_low=1\.5"),
    ("tasks", dict(max_new_tokens=40), r"stages\.rl: data\.seq_len=48 cannot hold the longest train prompt"),
    ("dpo", dict(pair_source="human"), r"stages\.dpo: dpo\.pair_source='human'"),
    ("dpo", dict(kind="ipo", label_smoothing=0.1), r"stages\.dpo: dpo\.label_smoothing=0\.1"),
])
def test_rl_settings_are_checked_before_compiling(tmp_path, section, change, message):
  config = _config()
  config.stage_order = ("rl", "dpo")
  config[section].update(**change)
  with pytest.raises(ConfigError, match=message):
    train_and_evaluate(config, str(tmp_path / "bad"))
  assert not os.path.exists(tmp_path / "bad" / "checkpoints")
