"""DPO / cDPO / IPO losses and sequence log-probs against direct numpy computations of the formulas."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llama4_jax.train import dpo


def _np_log_sigmoid(x):
  return -np.logaddexp(0.0, -x)


def _pairs(seed=0, n=6):
  rs = np.random.RandomState(seed)
  return tuple(rs.uniform(-40, -5, n).astype(np.float32) for _ in range(4))  # pi_c, pi_r, ref_c, ref_r


def test_sequence_logprob_matches_a_loop():
  rs = np.random.RandomState(0)
  logits = rs.randn(3, 6, 11).astype(np.float32) * 2
  tokens = rs.randint(0, 11, (3, 6))
  mask = np.array([[0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]])
  got = dpo.sequence_logprob(logits, tokens, mask)
  assert got.shape == (3,) and got.dtype == jnp.float32
  for b in range(3):
    want = 0.0
    for t in range(6):
      if mask[b, t]:
        row = logits[b, t].astype(np.float64)
        want += row[tokens[b, t]] - np.log(np.sum(np.exp(row)))
    np.testing.assert_allclose(got[b], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind,beta,eps", [("sigmoid", 0.1, 0.0), ("sigmoid", 0.5, 0.1), ("sigmoid", 2.0, 0.3),
                                           ("ipo", 0.1, 0.0), ("ipo", 1.0, 0.0)])
def test_dpo_loss_matches_numpy(kind, beta, eps):
  pc, pr, rc, rr = _pairs()
  loss, m = dpo.dpo_loss(pc, pr, rc, rr, beta, label_smoothing=eps, kind=kind)
  c, r = pc.astype(np.float64) - rc, pr.astype(np.float64) - rr
  delta = c - r
  if kind == "sigmoid":
    per_pair = -(1 - eps) * _np_log_sigmoid(beta * delta) - eps * _np_log_sigmoid(-beta * delta)
  else:
    per_pair = (delta - 1 / (2 * beta)) ** 2
  np.testing.assert_allclose(loss, per_pair.mean(), rtol=1e-5)
  np.testing.assert_allclose(m["chosen_reward"], np.mean(beta * c), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(m["rejected_reward"], np.mean(beta * r), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(m["reward_margin"], np.mean(beta * delta), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(m["reward_accuracy"], np.mean(delta > 0), rtol=1e-6)
  assert 0.0 < float(m["reward_accuracy"]) < 1.0  # the fixture has pairs on both sides


def test_dpo_metrics_and_loss_at_known_points():
  z = np.zeros(2, np.float32)
  loss, m = dpo.dpo_loss(np.array([1.0, -1.0]), z, z, z, beta=0.5)
  np.testing.assert_allclose(loss, np.mean([-_np_log_sigmoid(0.5), -_np_log_sigmoid(-0.5)]), rtol=1e-6)
  assert float(m["reward_accuracy"]) == 0.5
  # Delta = 0: the sigmoid loss is log 2 whatever eps, IPO is (1 / (2 beta))^2.
  np.testing.assert_allclose(dpo.dpo_loss(z, z, z, z, 0.1, 0.2)[0], np.log(2.0), rtol=1e-6)
  np.testing.assert_allclose(dpo.dpo_loss(z, z, z, z, 0.25, kind="ipo")[0], 4.0, rtol=1e-6)


@pytest.mark.parametrize("kind,eps", [("sigmoid", 0.0), ("sigmoid", 0.2), ("ipo", 0.0)])
def test_raising_chosen_logprob_lowers_the_loss(kind, eps):
  pc, pr, rc, rr = _pairs(1)
  rc = pc - 0.1  # small Delta, below IPO's target 1 / (2 beta) = 5
  rr = pr + 0.1
  fn = lambda c, r: dpo.dpo_loss(c, r, rc, rr, 0.1, eps, kind)[0]  # noqa: E731
  g_c, g_r = jax.grad(fn, argnums=(0, 1))(pc, pr)
  assert np.all(np.asarray(g_c) < 0) and np.all(np.asarray(g_r) > 0)
  assert float(fn(pc + 0.5, pr)) < float(fn(pc, pr))


def test_sigmoid_loss_stays_finite_for_large_margins():
  z = np.zeros(1, np.float32)
  loss, _ = dpo.dpo_loss(z, np.array([5000.0], np.float32), z, z, beta=1.0, label_smoothing=0.1)
  np.testing.assert_allclose(loss, 0.9 * 5000.0, rtol=1e-5)  # -0.9 log sigma(-5000) - 0.1 log sigma(5000)
  g = jax.grad(lambda c: dpo.dpo_loss(c, z, z, z, beta=1.0)[0])(np.array([-5000.0], np.float32))
  assert np.all(np.isfinite(g))


def test_dpo_loss_jits():
  pc, pr, rc, rr = _pairs(2)
  eager = dpo.dpo_loss(pc, pr, rc, rr, 0.1, 0.1)[0]
  jitted = jax.jit(lambda *a: dpo.dpo_loss(*a, 0.1, 0.1)[0])(pc, pr, rc, rr)
  np.testing.assert_allclose(jitted, eager, rtol=1e-6)


@pytest.mark.parametrize("kwargs,match", [
    (dict(kind="hinge"), "'hinge'"),
    (dict(beta=0.0), "beta=0.0"),
    (dict(beta=-1.0), "beta=-1.0"),
    (dict(label_smoothing=0.5), "label_smoothing=0.5"),
    (dict(label_smoothing=-0.1), "label_smoothing=-0.1"),
    (dict(kind="ipo", label_smoothing=0.1), "label_smoothing=0.1"),
])
def test_dpo_loss_rejects_bad_arguments(kwargs, match):
  pc, pr, rc, rr = _pairs()
  args = dict(beta=0.1)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    dpo.dpo_loss(pc, pr, rc, rr, **args)


def test_dpo_loss_rejects_mismatched_shapes():
  pc, pr, rc, rr = _pairs()
  with pytest.raises(ValueError, match="share one shape"):
    dpo.dpo_loss(pc, pr[:3], rc, rr, 0.1)
