"""Online-RL math against direct numpy computations: log-probs, advantages, clipped loss, prompt filtering."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llama4_jax.train import rl


def _np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


# --- token log-probs and entropy ---------------------------------------------------------------------------------

def test_token_logprobs_match_a_loop_and_are_float32():
  rs = np.random.RandomState(0)
  logits = rs.randn(2, 3, 7).astype(np.float32) * 3
  tokens = rs.randint(0, 7, (2, 3))
  got = rl.token_logprobs(jnp.asarray(logits, jnp.bfloat16), tokens)
  assert got.dtype == jnp.float32
  ref = _np_log_softmax(np.asarray(jnp.asarray(logits, jnp.bfloat16), np.float32))
  for b in range(2):
    for t in range(3):  # no shift: position t's logits score tokens[:, t]
      np.testing.assert_allclose(got[b, t], ref[b, t, tokens[b, t]], rtol=1e-5, atol=1e-5)


def test_entropy_masked_mean_and_safe_with_banned_tokens():
  rs = np.random.RandomState(1)
  logits = rs.randn(2, 3, 5).astype(np.float32)
  logits[0, 0, 2] = -np.inf  # a banned token must not give NaN
  mask = np.array([[1, 1, 0], [0, 1, 0]])
  logp = _np_log_softmax(logits)
  p = np.exp(logp)
  ent = -np.sum(np.where(p > 0, p * np.where(p > 0, logp, 0.0), 0.0), -1)
  want = (ent[0, 0] + ent[0, 1] + ent[1, 1]) / 3
  np.testing.assert_allclose(rl.entropy(logits, mask), want, rtol=1e-5)
  np.testing.assert_allclose(rl.entropy(np.zeros((1, 1, 4), np.float32), np.ones((1, 1))), np.log(4), rtol=1e-6)
  assert float(rl.entropy(logits, np.zeros((2, 3)))) == 0.0


# --- group advantages --------------------------------------------------------------------------------------------

REWARDS = np.array([[1.0, 0.0, 0.0, 1.0], [0.5, 2.0, -1.0, 0.0], [0.1, 0.1, 0.1, 0.1], [0.0, 0.0, 0.0, 1.0]],
                   np.float32)


def _np_advantages(r, kind):
  out = np.zeros_like(r, dtype=np.float64)
  g = r.shape[1]
  for p in range(r.shape[0]):
    row = r[p].astype(np.float64)
    if np.all(row == row[0]):
      continue
    for i in range(g):
      if kind == "rloo":
        out[p, i] = row[i] - np.mean(np.delete(row, i))
      elif kind == "dr_grpo":
        out[p, i] = row[i] - row.mean()
      else:
        out[p, i] = (row[i] - row.mean()) / (np.std(row, ddof=1) + 1e-6)
  return out


@pytest.mark.parametrize("kind", rl.ADVANTAGE_KINDS)
def test_group_advantages_match_numpy(kind):
  got = rl.group_advantages(REWARDS, kind)
  assert got.dtype == jnp.float32 and got.shape == REWARDS.shape
  np.testing.assert_allclose(got, _np_advantages(REWARDS, kind), rtol=1e-5, atol=1e-6)
  # Constant group (0.1 is inexact in float32): exactly zero, no NaN, under every kind.
  assert np.all(np.asarray(got[2]) == 0.0)
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(jax.jit(rl.group_advantages, static_argnums=1)(REWARDS, kind), got, rtol=1e-6)


def test_grpo_uses_sample_std_and_rloo_is_scaled_centering():
  # G = 2, rewards {0, 1}: sample std = 1/sqrt(2) gives +-1/sqrt(2); population std (0.5) would give +-1.
  np.testing.assert_allclose(rl.group_advantages(np.array([[0.0, 1.0]]), "grpo"), [[-0.5 ** 0.5, 0.5 ** 0.5]],
                             rtol=1e-5)
  r = REWARDS[[0, 1, 3]]
  centred = r - r.mean(1, keepdims=True)
  np.testing.assert_allclose(rl.group_advantages(r, "rloo"), centred * 4 / 3, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(rl.group_advantages(r, "dr_grpo").sum(1), 0.0, atol=1e-6)


def test_group_advantages_reject_bad_arguments():
  with pytest.raises(ValueError, match="'ppo'"):
    rl.group_advantages(REWARDS, "ppo")
  with pytest.raises(ValueError, match="group size 1"):
    rl.group_advantages(np.ones((3, 1)), "grpo")
  with pytest.raises(ValueError, match=r"\(8,\)"):
    rl.group_advantages(np.ones(8), "rloo")


# --- policy loss -------------------------------------------------------------------------------------------------

def _np_policy_loss(new, old, adv, mask, lo, hi, kl_coef, ref, aggregation):
  ratio = np.exp(new - old)
  adv = np.broadcast_to(adv[:, None] if adv.ndim == 1 else adv, new.shape)
  per_tok = np.zeros(new.shape)
  for b in range(new.shape[0]):
    for t in range(new.shape[1]):
      a, r = adv[b, t], ratio[b, t]
      per_tok[b, t] = -min(r * a, min(max(r, 1 - lo), 1 + hi) * a)
      if ref is not None:
        d = ref[b, t] - new[b, t]
        per_tok[b, t] += kl_coef * (np.exp(d) - d - 1)
  if aggregation == "token_mean":
    return np.sum(per_tok * mask) / np.sum(mask)
  rows = [np.sum(per_tok[b] * mask[b]) / mask[b].sum() for b in range(len(mask)) if mask[b].sum() > 0]
  return np.mean(rows)


# log ratios: inside the clip, above 1 + 0.28, between 1 + 0.2 and 1 + 0.28 (clipped only by a symmetric clip), below
# 1 - 0.2; row 3 is empty (all masked) so seq_mean must skip it.
LOG_RATIO = np.log(np.array([[1.05, 1.5, 1.25, 0.7, 0.95],
                             [0.6, 1.0, 1.4, 0.9, 1.1],
                             [1.25, 0.75, 0.5, 1.3, 1.0],
                             [2.0, 0.1, 1.0, 1.0, 1.0]]))
MASK = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [0, 0, 0, 0, 0]], np.float32)
ADV = np.array([1.0, -0.5, 2.0, 3.0], np.float32)


def _inputs(seed=0):
  rs = np.random.RandomState(seed)
  old = rs.uniform(-3, -0.1, MASK.shape).astype(np.float32)
  new = (old + LOG_RATIO).astype(np.float32)
  ref = (new + rs.uniform(-0.5, 0.5, MASK.shape)).astype(np.float32)
  return new, old, ref


@pytest.mark.parametrize("aggregation", rl.AGGREGATIONS)
@pytest.mark.parametrize("clip,kl_coef", [((0.2, 0.28), 0.0), ((0.2, 0.2), 0.0), ((0.1, 0.28), 0.05)])
def test_policy_loss_matches_numpy(aggregation, clip, kl_coef):
  new, old, ref = _inputs()
  use_ref = ref if kl_coef > 0 else None
  loss, metrics = rl.policy_loss(new, old, ADV, MASK, clip[0], clip[1], kl_coef, use_ref, aggregation)
  want = _np_policy_loss(new.astype(np.float64), old, ADV, MASK, clip[0], clip[1], kl_coef, use_ref, aggregation)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  ratio = np.exp(new.astype(np.float64) - old)
  np.testing.assert_allclose(metrics["ratio_mean"], np.sum(ratio * MASK) / MASK.sum(), rtol=1e-5)
  assert float(metrics["tokens"]) == 12
  assert ("approx_kl" in metrics) == (use_ref is not None)


def test_asymmetric_clip_fraction_and_zero_gradient_where_clipped():
  new, old, _ = _inputs()
  # Active clips with (0.2, 0.28): row 0 (A > 0): ratio 1.5; row 1 (A < 0): ratio 0.6; row 2 (A > 0): 1.3.
  # Ratio 1.25 (A > 0) is inside 1 + 0.28 but clipped by a symmetric 0.2; ratios below 1 - 0.2 with A > 0 are not.
  _, m = rl.policy_loss(new, old, ADV, MASK, 0.2, 0.28)
  np.testing.assert_allclose(m["clip_fraction"], 3 / 12, rtol=1e-6)
  _, m = rl.policy_loss(new, old, ADV, MASK, 0.2, 0.2)
  np.testing.assert_allclose(m["clip_fraction"], 5 / 12, rtol=1e-6)
  grad = jax.grad(lambda x: rl.policy_loss(x, old, ADV, MASK, 0.2, 0.28)[0])(new)
  clipped = np.zeros(MASK.shape, bool)
  clipped[0, 1] = clipped[1, 0] = clipped[2, 3] = True
  assert np.all(np.asarray(grad)[clipped] == 0.0)
  assert np.all(np.asarray(grad)[(MASK > 0) & ~clipped] != 0.0)
  assert np.all(np.asarray(grad)[MASK == 0] == 0.0)


def test_token_advantages_broadcast_and_k3_value():
  new, old, ref = _inputs()
  per_seq = rl.policy_loss(new, old, ADV, MASK)[0]
  per_tok = rl.policy_loss(new, old, np.broadcast_to(ADV[:, None], MASK.shape), MASK)[0]
  np.testing.assert_allclose(per_seq, per_tok, rtol=1e-6)
  # One token, ratio 1 and A = 0: the loss is kl_coef * k3 alone. ref - new = 0.5: e^0.5 - 0.5 - 1 = 0.148721...
  k3 = np.exp(0.5) - 1.5
  one = np.ones((1, 1), np.float32)
  loss, m = rl.policy_loss(-one, -one, np.zeros(1), one, kl_coef=0.1, logp_ref=-0.5 * one)
  np.testing.assert_allclose(m["approx_kl"], k3, rtol=1e-6)
  np.testing.assert_allclose(loss, 0.1 * k3, rtol=1e-6)
  assert float(m["kl_old"]) == 0.0
  # KL(old || new) via k3 on the ratio: ratio - 1 - log ratio.
  _, m = rl.policy_loss(0.3 * one, 0.0 * one, np.ones(1), one)
  np.testing.assert_allclose(m["kl_old"], np.exp(0.3) - 1.3, rtol=1e-5)


def test_policy_loss_jits_with_static_settings():
  new, old, ref = _inputs()
  fn = functools.partial(rl.policy_loss, clip_low=0.2, clip_high=0.28, kl_coef=0.01, aggregation="seq_mean")
  eager, _ = fn(new, old, ADV, MASK, logp_ref=ref)
  jitted, _ = jax.jit(fn)(new, old, ADV, MASK, logp_ref=ref)
  np.testing.assert_allclose(jitted, eager, rtol=1e-6)


@pytest.mark.parametrize("kwargs,match", [
    (dict(aggregation="sum"), "'sum'"),
    (dict(clip_low=1.0), "clip_low=1.0"),
    (dict(clip_low=-0.1), "clip_low=-0.1"),
    (dict(clip_high=-0.2), "clip_high=-0.2"),
    (dict(kl_coef=-1.0), "kl_coef=-1.0"),
    (dict(kl_coef=0.1), "needs logp_ref"),
])
def test_policy_loss_rejects_bad_arguments(kwargs, match):
  new, old, _ = _inputs()
  with pytest.raises(ValueError, match=match):
    rl.policy_loss(new, old, ADV, MASK, **kwargs)


def test_policy_loss_rejects_bad_shapes():
  new, old, _ = _inputs()
  with pytest.raises(ValueError, match="advantages"):
    rl.policy_loss(new, old, ADV[:3], MASK)
  with pytest.raises(ValueError, match="mask"):
    rl.policy_loss(new, old, ADV, MASK[:, :3])
  with pytest.raises(ValueError, match="logp_old"):
    rl.policy_loss(new, old[:2], ADV, MASK)


# --- zero-advantage filtering and refill --------------------------------------------------------------------------

def test_zero_advantage_mask():
  np.testing.assert_array_equal(rl.zero_advantage_mask(REWARDS), [True, True, False, True])
  np.testing.assert_array_equal(rl.zero_advantage_mask(np.array([[1.0, np.nan], [0.0, 0.0]])), [False, False])


def _round(pattern, start):
  """Groups of 3 rewards: 'k' has variance (kept), 's' all solved, 'u' all unsolved; items are prompt numbers."""
  rows = {"k": [1.0, 0.0, 1.0], "s": [1.0, 1.0, 1.0], "u": [0.0, 0.0, 0.0]}
  return np.array([rows[c] for c in pattern]), list(range(start, start + len(pattern)))


def test_group_refill_counts_and_batch():
  acc = rl.GroupRefill(batch_prompts=4)
  assert not acc.add(*_round("ksuk", 0))
  assert acc.kept == 2 and acc.filtered == 2
  assert acc.add(*_round("uukkk", 4))  # fills with the first two kept groups; one more overflows
  items, rewards, stats = acc.pop_batch()
  assert items == [0, 3, 6, 7]
  assert rewards.shape == (4, 3) and np.all(rewards.max(1) > rewards.min(1))
  assert stats == {"rounds": 2, "groups_seen": 9, "groups_kept": 4, "groups_filtered": 4, "groups_overflow": 1,
                   "filtered_fraction": 4 / 9}
  assert acc.kept == 0 and acc.seen == 0  # reset for the next batch
  with pytest.raises(RuntimeError, match="0 of 4"):
    acc.pop_batch()


def test_refill_from_stream_and_when_it_runs_dry():
  stream = iter([_round("sss", 0), _round("kuk", 3), _round("uks", 6), _round("kkk", 9)])
  items, _, stats = rl.refill(stream, batch_prompts=3)
  assert items == [3, 5, 7] and stats["rounds"] == 3 and stats["groups_filtered"] == 6
  assert next(stream)[1] == [9, 10, 11]  # the stream is not drawn past the full batch
  with pytest.raises(RuntimeError, match="1 of 3 .* after 2 rounds"):
    rl.refill(iter([_round("ks", 0), _round("uu", 2)]), batch_prompts=3)
  with pytest.raises(RuntimeError, match="after 1 rounds"):
    rl.refill(iter([_round("ss", 0)] * 5), batch_prompts=1, max_rounds=1)


def test_group_refill_rejects_bad_arguments():
  with pytest.raises(ValueError, match="batch_prompts=0"):
    rl.GroupRefill(0)
  acc = rl.GroupRefill(2)
  with pytest.raises(ValueError, match="2 items for 3 groups"):
    acc.add(np.zeros((3, 2)), [0, 1])
  with pytest.raises(ValueError, match=r"\(4,\)"):
    acc.add(np.zeros(4))


# --- pass-rate pool ------------------------------------------------------------------------------------------------

def test_pass_rate_pool_update_is_an_ema():
  pool = rl.PassRatePool(["a", "b", "c"], decay=0.75)
  pool.update(["a", "b"], [0.5, 1.0])
  pool.update(["a", "a"], [1.0, 0.0])  # applied in order
  np.testing.assert_allclose(pool.pass_rate[:2], [(0.75 * 0.5 + 0.25) * 0.75, 1.0])
  assert np.isnan(pool.pass_rate[2])
  np.testing.assert_array_equal(pool.observations, [3, 1, 0])


def test_pass_rate_pool_samples_band_and_unseen_never_solved():
  ids = np.arange(8)
  pool = rl.PassRatePool(ids, low=0.2, high=0.6, revisit_weight=0.0)
  # 0: solved (retired), 1: never solved, 2: too easy, 3-4: in band, 5: below band, 6-7: unseen.
  pool.update([0, 1, 2, 3, 4, 5], [1.0, 0.0, 0.9, 0.25, 0.6, 0.1])
  np.testing.assert_array_equal(pool.in_band(), [0, 0, 0, 1, 1, 0, 0, 0])
  np.testing.assert_array_equal(pool.weights(), [0, 0, 0, 1, 1, 0, 1, 1])
  rng = np.random.default_rng(0)
  draws = np.concatenate([pool.sample(4, rng) for _ in range(50)])
  assert set(draws.tolist()) == {3, 4, 6, 7}
  assert len(set(pool.sample(4, rng).tolist())) == 4  # without replacement when enough prompts have weight
  assert len(pool.sample(6, rng)) == 6  # with replacement when not
  s = pool.summary()
  assert s["prompts"] == 8 and s["seen_fraction"] == 6 / 8
  fractions = [s["in_band_fraction"], s["solved_fraction"], s["unsolved_fraction"]]
  np.testing.assert_allclose(fractions, [2 / 6, 1 / 6, 1 / 6])
  np.testing.assert_allclose(s["mean_pass_rate"], np.mean([1.0, 0.0, 0.9, 0.25, 0.6, 0.1]))


def test_pass_rate_pool_revisits_out_of_band_but_not_solved():
  pool = rl.PassRatePool(range(4), low=0.0, high=0.5, revisit_weight=0.25)
  pool.update(range(4), [1.0, 0.0, 0.9, 0.3])
  np.testing.assert_array_equal(pool.weights(), [0.0, 0.25, 0.25, 1.0])
  draws = pool.sample(3000, np.random.default_rng(1))
  counts = np.bincount(draws, minlength=4) / 3000
  assert counts[0] == 0.0
  np.testing.assert_allclose(counts[1:], [0.25 / 1.5, 0.25 / 1.5, 1 / 1.5], atol=0.03)
  solved = rl.PassRatePool(range(2), revisit_weight=1.0)
  solved.update(range(2), [1.0, 1.0])
  with pytest.raises(RuntimeError, match="retired"):
    solved.sample(1, np.random.default_rng(0))
  assert np.isnan(rl.PassRatePool([7]).summary()["mean_pass_rate"])


def test_pass_rate_pool_refresh_period():
  pool = rl.PassRatePool(range(3), refresh_every=5)
  assert [s for s in range(17) if pool.needs_refresh(s)] == [0, 5, 10, 15]


@pytest.mark.parametrize("kwargs,match", [
    (dict(low=0.7, high=0.6), "low=0.7"),
    (dict(high=1.5), "high=1.5"),
    (dict(decay=1.0), "decay=1.0"),
    (dict(refresh_every=0), "refresh_every=0"),
    (dict(revisit_weight=-0.1), "revisit_weight=-0.1"),
])
def test_pass_rate_pool_rejects_bad_settings(kwargs, match):
  with pytest.raises(ValueError, match=match):
    rl.PassRatePool(range(3), **kwargs)


def test_pass_rate_pool_rejects_bad_updates_atomically():
  pool = rl.PassRatePool(["x", "y"])
  with pytest.raises(ValueError, match="'z'"):
    pool.update(["x", "z"], [0.5, 0.5])
  with pytest.raises(ValueError, match="1.5"):
    pool.update(["x", "y"], [0.5, 1.5])
  assert np.all(np.isnan(pool.pass_rate))  # nothing applied by the failed calls
  with pytest.raises(ValueError, match="distinct"):
    rl.PassRatePool(["x", "x"])
  with pytest.raises(ValueError, match="n=0"):
    pool.sample(0, np.random.default_rng(0))
  with pytest.raises(ValueError, match="step=-1"):
    pool.needs_refresh(-1)
