"""The `sft` stage in the training loop: filter counts logged, held-out pass@1, scored with the entering model."""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import base
from configs import default as default_config
from llama4_jax.config import ConfigError, from_config_dict
from llama4_jax.data.tokenizer import ChatFormat
from llama4_jax.train import data as train_data
from llama4_jax.train import sft
from llama4_jax.train.checkpoint import Checkpointer
from llama4_jax.train.loop import resolve_stages, train_and_evaluate
from llama4_jax.train.metrics import read_metrics


def _config():
  config = default_config.get_config("smoke")
  config.data.batch_size = 8  # 8 simulated devices in this process (tests/conftest.py)
  config.train.update(steps=2, eval_every=0, checkpoint_every=100, tensorboard=False, progress=False)
  config.tasks.update(train_problems=64, eval_problems=8, max_new_tokens=6)
  config.sft.update(drop_easiest=0.75, score_batch_size=16)
  config.stages = {"pretrain": base.stage("lm"),
                   "sft": base.stage("sft", data=dict(seq_len=64), train=dict(steps=2))}
  config.stage_order = ("pretrain", "sft")
  return config


def test_sft_stage_filters_with_the_entering_model_and_reports_pass_at_1(tmp_path):
  config = _config()
  workdir = str(tmp_path / "sft")
  rows = train_and_evaluate(config, workdir)
  row = rows[1]
  # 75% dropped within each family: floor(0.75 n) of lookup 20, reverse 14, sub 12, sort 9, add 9
  assert (row["sft_candidates"], row["sft_kept"], row["sft_dropped"]) == (64, 18, 46)
  assert row["sft_mean_score_kept"] > row["sft_mean_score_all"]  # the hardest (highest-loss) quarters were kept
  assert 0.0 <= row["eval_pass_at_1"] <= 1.0 and np.isfinite(row["eval_sft_answer_loss"])
  assert {f"eval_pass_at_1/{f}" for f in config.tasks.families} >= {k for k in row if k.startswith("eval_pass_at_1/")}
  logged = [r for r in read_metrics(workdir) if r.get("stage") == "sft"]
  assert any(r.get("sft_dropped") == 46 for r in logged) and any("eval_pass_at_1" in r for r in logged)
  assert all(np.isfinite(r["loss"]) for r in logged if "loss" in r)

  # The scores were taken with pretrain's final parameters (the model entering the stage), not a fresh init.
  (_, _, _), (_, _, sft_cfg) = resolve_stages(config)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints", "pretrain"), 3, None, False)
  final = ckpt._manager.restore(2, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  ckpt.close()
  model_cfg = from_config_dict(sft_cfg.model)
  chat = ChatFormat(train_data.tokenizer_for("", sft_cfg.data.num_reserved_special_tokens))
  examples = [sft.encode_example(p, chat) for p in sft.task_problems(sft_cfg.tasks, "train")]
  params = jax.tree_util.tree_map(np.asarray, final["params"])
  scores = sft.reply_losses(model_cfg, params, examples, 16)
  np.testing.assert_allclose(row["sft_mean_score_all"], scores.mean(), rtol=1e-5)


def test_sft_stage_settings_are_checked_before_compiling(tmp_path):
  config = _config()
  config.stages.sft.overrides.data.seq_len = 20
  with pytest.raises(ConfigError, match=r"stages\.sft: data\.seq_len=20 is shorter than the longest SFT example"):
    train_and_evaluate(config, str(tmp_path / "short"))
  assert not os.path.exists(tmp_path / "short" / "checkpoints")
  config = _config()
  config.stages.sft.overrides["sft"] = {"drop_easiest": 1.5}
  with pytest.raises(ConfigError, match=r"stages\.sft: sft\.drop_easiest must lie in \[0, 1\), got 1.5"):
    train_and_evaluate(config, str(tmp_path / "drop"))
