"""The `distill` stage in the training loop: a teacher workdir's soft targets pull the student towards it."""

import numpy as np

from configs import base
from configs import default as default_config
from llama4_jax.train.loop import train_and_evaluate
from llama4_jax.train.metrics import read_metrics


def _config():
  config = default_config.get_config("smoke")
  config.data.batch_size = 8  # 8 simulated devices in this process (tests/conftest.py)
  config.train.update(steps=2, log_every=1, eval_every=0, checkpoint_every=100, tensorboard=False, progress=False)
  config.stages = {"pretrain": base.stage("lm")}
  config.stage_order = ("pretrain",)
  return config


def test_distill_stage_follows_the_teacher(tmp_path):
  teacher = str(tmp_path / "teacher")
  config = _config()
  config.optim.update(learning_rate=1e-2, warmup_steps=1)
  config.train.steps = 8  # a teacher that differs from the student's fresh init
  train_and_evaluate(config, teacher)

  student = _config()
  student.seed = 1
  student.distill.update(teacher=teacher, alpha_start=1.0, alpha_end=0.6, schedule="linear", temperature=2.0)
  student.stages = {"distill": base.stage("distill", train=dict(steps=5), optim=dict(learning_rate=1e-2,
                                                                                       warmup_steps=1))}
  student.stage_order = ("distill",)
  workdir = str(tmp_path / "student")
  train_and_evaluate(student, workdir)
  logged = [r for r in read_metrics(workdir) if "kl" in r]
  alphas = np.asarray([r["alpha"] for r in logged])
  np.testing.assert_allclose(alphas, [1.0, 0.9, 0.8, 0.7, 0.6], rtol=1e-6)  # linear over the stage's steps
  assert all(np.isfinite(r["kl"]) and r["kl"] >= 0 for r in logged)
  assert logged[-1]["kl"] < 0.5 * logged[0]["kl"], [r["kl"] for r in logged]  # mostly soft targets: KL falls
  mixed = [(1 - a) * r["ce"] + a * 4.0 * r["kl"] for a, r in zip(alphas, logged)]  # T^2 = 4
  np.testing.assert_allclose([r["loss"] for r in logged], mixed, rtol=1e-5)
