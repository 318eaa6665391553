"""Codistillation: the mixed soft/hard loss against a direct computation, the alpha schedule, teacher checks."""

import json

import jax
import numpy as np
import pytest

from configs import base
from llama4_jax.config import ConfigError, model_config
from llama4_jax.train import distill


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("alpha, temperature", [(0.0, 1.0), (0.3, 2.0), (1.0, 0.5)])
def test_loss_matches_a_direct_computation(alpha, temperature):
  rs = np.random.RandomState(0)
  s, t = rs.randn(2, 5, 11).astype(np.float32), 3 * rs.randn(2, 5, 11).astype(np.float32)
  targets = rs.randint(0, 11, (2, 5))
  mask = np.array([[1, 1, 1, 0, 0], [1, 0, 1, 1, 1]])
  loss, parts = distill.distill_loss(s, t, targets, mask, alpha, temperature)
  ce = -np.log(_softmax(s)[np.arange(2)[:, None], np.arange(5)[None], targets])
  p, q = _softmax(t / temperature), _softmax(s / temperature)
  kl = (p * (np.log(p) - np.log(q))).sum(-1)
  w = mask / mask.sum()
  np.testing.assert_allclose(parts["ce"], (ce * w).sum(), rtol=1e-5)
  np.testing.assert_allclose(parts["kl"], (kl * w).sum(), rtol=1e-5)
  np.testing.assert_allclose(loss, (1 - alpha) * (ce * w).sum() + alpha * temperature**2 * (kl * w).sum(), rtol=1e-5)


def test_soft_gradient_vanishes_when_student_equals_teacher_and_teacher_gets_none():
  rs = np.random.RandomState(1)
  x = rs.randn(1, 4, 7).astype(np.float32)
  targets, mask = np.zeros((1, 4), np.int32), np.ones((1, 4))
  g_s, g_t = jax.grad(lambda s, t: distill.distill_loss(s, t, targets, mask, 1.0, 2.0)[0], argnums=(0, 1))(x, x)
  np.testing.assert_allclose(g_s, 0.0, atol=1e-6)
  assert not np.asarray(g_t).any()  # the teacher is frozen


def test_alpha_schedules():
  assert distill.alpha_at(0, 11, 0.9, 0.1, "linear") == pytest.approx(0.9)
  assert distill.alpha_at(5, 11, 0.9, 0.1, "linear") == pytest.approx(0.5)
  assert distill.alpha_at(10, 11, 0.9, 0.1, "linear") == pytest.approx(0.1)
  assert distill.alpha_at(5, 11, 0.9, 0.1, "cosine") == pytest.approx(0.5)
  assert distill.alpha_at(2, 11, 0.9, 0.1, "cosine") > distill.alpha_at(2, 11, 0.9, 0.1, "linear")
  assert distill.alpha_at(7, 11, 0.9, 0.1, "constant") == 0.9


def test_teacher_checks_name_the_key(tmp_path):
  cfg = base.get_config("tiny")
  student = model_config(cfg)
  with pytest.raises(ConfigError, match="distill.teacher='' is not a directory"):
    distill.check_config(cfg, student)
  cfg.distill.teacher = str(tmp_path)
  with pytest.raises(ConfigError, match="holds neither experiment.json"):
    distill.check_config(cfg, student)
  (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 999}))
  with pytest.raises(ConfigError, match="has vocab_size=999, the student 4096"):
    distill.check_config(cfg, student)
  (tmp_path / "config.json").write_text(json.dumps({"text_config": {"vocab_size": 4096}}))
  distill.check_config(cfg, student)
  cfg.distill.schedule = "step"
  with pytest.raises(ConfigError, match="distill.schedule='step'"):
    distill.check_config(cfg, student)
