"""The RL stage's driver without a model: refill rounds, masked filler groups, no-signal steps, pool state."""

import types

import numpy as np

from configs import base
from llama4_jax.data.tokenizer import Tokenizer
from llama4_jax.train import rl_stage, rollout

STATE = types.SimpleNamespace(params=None)  # the sampler and update are stubbed: no model


def _driver(rewards_by_round, **rl):
  """A driver whose sampler returns the given [P, G] rewards round after round (fixed 3-token completions)."""
  cfg = base.get_config("tiny")
  cfg.tasks.update(families=("lookup",), train_problems=32, eval_problems=4, max_new_tokens=4)
  cfg.rl.update(prompts_per_step=3, group_size=4, refresh_every=1000, refresh_prompts=2, **rl)
  driver = rl_stage.RLDriver(cfg, None, Tokenizer.default(), None, None, seed=0)
  rounds = iter(rewards_by_round)

  def fake_sample(params, ids, seed):
    rewards = np.asarray(next(rounds), np.float32) if len(ids) == 3 else np.zeros((len(ids), 4), np.float32)
    b = rewards.size
    return rollout.Rollouts(prompt_tokens=((1, 2, 3),) * b, completion_tokens=((7, 8, 9),) * b, rewards_PG=rewards,
                            completion_lengths_B=np.full(b, 3, np.int32), finished_B=np.ones(b, bool))

  driver._sample = fake_sample
  seen = {}

  def fake_update(state, batch, advantages_B, logp_old, logp_ref):
    seen.update(batch=batch, advantages=np.asarray(advantages_B))
    return state, {"loss": 0.5, "tokens": float(batch["loss_mask"].sum())}

  driver._update, driver._logp = fake_update, lambda params, batch: None
  return driver, seen


def test_zero_advantage_groups_are_refilled_then_masked():
  # round 1: one group with variance; round 2: one more; max_rounds=2 leaves one of three groups unfilled.
  driver, seen = _driver([[[1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]],
                          [[0, 0, 0, 0], [0, 1, 1, 0], [1, 1, 1, 1]]], max_rounds=2)
  _, m = driver.update(STATE, 0)
  assert (m["rounds"], m["unfilled_groups"], m["no_signal_step"]) == (2, 1, 0)
  assert m["filtered_fraction"] == 4 / 6
  np.testing.assert_allclose(m["reward_mean"], np.mean([[1, 0, 0, 0], [0, 1, 1, 0]]))
  np.testing.assert_allclose(m["reward_mean_sampled"], 11 / 24)
  mask = seen["batch"]["loss_mask"]
  assert mask[:8].sum() == 8 * 3 and not mask[8:].any()  # the filler group has no loss tokens
  assert not seen["advantages"][8:].any() and seen["advantages"][:8].any()


def test_a_step_without_any_signal_makes_no_update():
  driver, seen = _driver([[[0] * 4] * 3, [[1] * 4] * 3], max_rounds=2)
  new_state, m = driver.update(STATE, 0)
  assert new_state is STATE and not seen
  assert (m["no_signal_step"], m["unfilled_groups"], m["filtered_fraction"]) == (1, 3, 1.0)


def test_pool_state_round_trips_through_json():
  driver, _ = _driver([[[1, 0, 0, 0]] * 3])
  driver.update(STATE, 0)
  state = driver.get_state()
  assert any(x is not None for x in state["pass_rate"]) and any(x is None for x in state["pass_rate"])
  other, _ = _driver([])
  other.set_state(state)
  np.testing.assert_array_equal(other.pool.pass_rate, driver.pool.pass_rate)
  np.testing.assert_array_equal(other.pool.observations, driver.pool.observations)
