"""Online-RL machinery: rollout sampling and scoring, the rollout batch layout, log-probs, the policy update, and a
token-level bandit that a few RL steps must learn."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from llama4_jax.data import verifiable
from llama4_jax.data.tokenizer import ChatFormat, Tokenizer
from llama4_jax.model import apply, init_params, param_shapes
from llama4_jax.sampling import Sampling
from llama4_jax.train import rl, rollout
from llama4_jax.train.rollout import RLConfig, Rollouts
from llama4_jax.train.step import init_state
from tests.conftest import tiny_config

TX = optax.adam(1e-2)  # no weight decay: a zero gradient is a zero update
SEQ_LEN = 8  # one batch shape for every policy-update test, so each jitted function compiles once


def _compiled(rl_cfg: RLConfig = RLConfig(), temperature: float = 1.0):
  """(apply, sequence_token_logprobs, rl_step) on tiny_config(), jitted once per setting and shared by the tests."""
  return _compiled_once(rl_cfg, float(temperature))  # positional: one cache entry per setting, however called


@functools.lru_cache(maxsize=None)
def _compiled_once(rl_cfg: RLConfig, temperature: float):
  cfg = tiny_config()
  return (jax.jit(functools.partial(apply, cfg)),
          jax.jit(functools.partial(rollout.sequence_token_logprobs, cfg, temperature=temperature)),
          jax.jit(functools.partial(rollout.rl_step, model_cfg=cfg, rl_cfg=rl_cfg, tx=TX)))


def _rollouts(prompts, completions, group_size=2) -> Rollouts:
  b = len(prompts)
  return Rollouts(prompt_tokens=tuple(map(tuple, prompts)), completion_tokens=tuple(map(tuple, completions)),
                  rewards_PG=np.zeros((b // group_size, group_size), np.float32),
                  completion_lengths_B=np.array([len(c) for c in completions], np.int32),
                  finished_B=np.zeros(b, bool))


# --- prompts, scoring, sampling ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tok():
  return Tokenizer.default()


def test_prompt_ids_is_one_user_turn_with_open_assistant_header(tok):
  chat = ChatFormat(tok)
  problem = verifiable.make_problem("add", 1, np.random.default_rng(0))
  ids = rollout.prompt_ids(problem, chat)
  header = chat.encode_header("assistant")
  assert ids[-len(header):] == header
  assert ids == [tok.bos_id] + chat.encode_message("user", problem.prompt) + header
  assert tok.decode(ids).count(problem.prompt) == 1


def test_sample_groups_repeats_prompts_and_scores_with_check(tok, monkeypatch):
  rng = np.random.default_rng(1)
  problems = [verifiable.make_problem("add", 1, rng), verifiable.make_problem("sort", 1, rng)]
  right = [tok.encode(p.completion) + [tok.eot_id] for p in problems]
  wrong = tok.encode(" 0\n") + [tok.eot_id]
  reasoned = tok.encode(f"Let me think.\nAnswer: {problems[1].answer}") + [tok.eot_id]
  cut = tok.encode(problems[0].completion)  # correct, but no stop token: not finished
  fake = [right[0], wrong, cut, right[1], reasoned, wrong]
  seen = {}

  def fake_generate(cfg, params, prompts, *, max_new_tokens, sampling, tokenizer, images=None):
    assert images is None  # text problems: no pictures
    seen["prompts"] = prompts
    return [list(c) for c in fake]

  monkeypatch.setattr(rollout, "generate", fake_generate)
  ro = rollout.sample_groups(tiny_config(vocab_size=tok.vocab_size), None, problems, 3, max_new_tokens=32,
                             sampling=Sampling(temperature=1.0), tokenizer=tok)
  chat = ChatFormat(tok)
  assert [list(p) for p in seen["prompts"]] == [rollout.prompt_ids(p, chat) for p in problems for _ in range(3)]
  np.testing.assert_array_equal(ro.rewards_PG, [[1, 0, 1], [1, 1, 0]])
  assert ro.rewards_PG.dtype == np.float32 and (ro.num_prompts, ro.group_size) == (2, 3)
  np.testing.assert_array_equal(ro.finished_B, [True, True, False, True, True, True])
  np.testing.assert_array_equal(ro.completion_lengths_B, [len(c) for c in fake])
  assert ro.completions[0] == problems[0].completion  # the stop token is not part of the text
  assert ro.problems == tuple(problems)


def test_sample_groups_real_model_gives_distinct_samples_per_group(tok):
  cfg = tiny_config(vocab_size=tok.vocab_size)
  # Random numpy leaves of the right shapes: a sampling test needs finite logits, not init_params' scheme, whose
  # compile for this vocabulary would cost more than the rest of the test.
  rs = np.random.RandomState(0)
  params = jax.tree_util.tree_map(lambda s: (0.1 * rs.randn(*s.shape)).astype(s.dtype), param_shapes(cfg))
  problems = list(verifiable.problems(["add"], [1], n=2, seed=3))
  ro = rollout.sample_groups(cfg, params, problems, 4, max_new_tokens=5, sampling=Sampling(temperature=1.0, seed=7),
                             tokenizer=tok)
  assert len(ro.prompt_tokens) == 8 and ro.rewards_PG.shape == (2, 4)
  for p in range(2):  # one generate call, one key per step, yet the G identical rows differ
    assert len(set(ro.completion_tokens[p * 4:(p + 1) * 4])) == 4
  for b, text in enumerate(ro.completions):
    assert ro.rewards_PG.reshape(-1)[b] == verifiable.check(problems[b // 4], text)
  assert np.all(ro.completion_lengths_B <= 5)


@pytest.mark.parametrize("group_size", [1, 0, 2.0])
def test_bad_group_size_is_named(group_size):
  with pytest.raises(ValueError, match="group_size"):
    rollout.sample_token_groups(tiny_config(), None, [[1, 2]], group_size, lambda p, c: 0.0, max_new_tokens=1,
                                sampling=Sampling(temperature=1.0))


def test_greedy_sampling_is_rejected():
  with pytest.raises(ValueError, match="temperature"):
    rollout.sample_token_groups(tiny_config(), None, [[1, 2]], 4, lambda p, c: 0.0, max_new_tokens=1,
                                sampling=Sampling(temperature=0.0))


# --- batch layout ------------------------------------------------------------------------------------------------

def test_rollout_batch_layout_by_hand():
  batch = rollout.rollout_batch(_rollouts([[5, 6, 7], [1]], [[8, 9], [2, 3, 4]]), seq_len=6, pad_id=99)
  want = {"inputs": [[5, 6, 7, 8, 99, 99], [1, 2, 3, 99, 99, 99]],
          "targets": [[6, 7, 8, 9, 99, 99], [2, 3, 4, 99, 99, 99]],
          "positions": [[0, 1, 2, 3, 0, 0], [0, 1, 2, 0, 0, 0]],
          "segment_ids": [[1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]],
          "loss_mask": [[0, 0, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]]}
  assert set(batch) == set(want)
  for key, value in want.items():
    assert batch[key].dtype == np.int32, key
    np.testing.assert_array_equal(batch[key], value, err_msg=key)


def test_rollout_batch_exact_fit_and_overlong_error():
  ro = _rollouts([[5, 6, 7], [1]], [[8, 9], [2, 3, 4]])
  assert rollout.rollout_batch(ro, seq_len=4)["loss_mask"][0].tolist() == [0, 0, 1, 1]
  with pytest.raises(ValueError, match=r"rollout 0: prompt 3 \+ completion 2 tokens need seq_len >= 4, got "
                                       r"seq_len=3"):
    rollout.rollout_batch(ro, seq_len=3)


# --- log-probs and the policy update -----------------------------------------------------------------------------

def _tiny_batch():
  """16 rollouts (8 groups of 2) with prompts of 3-5 and completions of 1-3 random tokens."""
  rs = np.random.RandomState(0)
  prompts = [rs.randint(0, 97, 3 + i % 3).tolist() for i in range(16)]
  completions = [rs.randint(0, 97, 1 + i % 3).tolist() for i in range(16)]
  return rollout.rollout_batch(_rollouts(prompts, completions), seq_len=SEQ_LEN)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_sequence_token_logprobs_match_apply_on_the_mask(temperature):
  params = init_params(tiny_config(), jax.random.key(1))
  batch = _tiny_batch()
  apply_fn, logp_fn, _ = _compiled(temperature=temperature)
  got = np.asarray(logp_fn(params, batch))
  logits, _ = apply_fn(params, batch["inputs"], batch["positions"], batch["segment_ids"])
  want = np.asarray(rl.token_logprobs(logits / temperature, batch["targets"]))
  mask = batch["loss_mask"].astype(bool)
  np.testing.assert_allclose(got[mask], want[mask], rtol=1e-5, atol=1e-5)
  assert np.all(got[~mask] == 0.0) and np.all(got[mask] < 0.0)


def _max_change(a, b) -> float:
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in
             zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def test_rl_step_zero_advantages_leave_params_unchanged_and_loss_matches():
  params = init_params(tiny_config(), jax.random.key(2))
  batch = _tiny_batch()
  _, logp_fn, step = _compiled()
  old = logp_fn(params, batch)
  state, m = step(init_state(params, TX), batch, jnp.zeros(16), old)
  jax.tree_util.tree_map(np.testing.assert_array_equal, state.params, params)
  assert int(state.step) == 1 and int(m["skipped"]) == 0 and float(m["grad_norm"]) == 0.0
  assert "approx_kl" not in m

  adv = jnp.asarray(np.tile([1.0, -1.0, 0.5, -0.5], 4), jnp.float32)
  state, m = step(init_state(params, TX), batch, adv, old)
  assert _max_change(state.params, params) > 1e-3
  want, _ = rl.policy_loss(old, old, adv, batch["loss_mask"], 0.2, 0.28)
  np.testing.assert_allclose(m["loss"], want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(m["response_length"], np.mean([1 + i % 3 for i in range(16)]), rtol=1e-6)
  assert float(m["clip_fraction"]) == 0.0 and abs(float(m["ratio_mean"]) - 1.0) < 1e-5  # on-policy: ratio 1
  assert 0.0 < float(m["entropy"]) <= np.log(97) + 1e-4


def test_rl_step_kl_term_to_a_different_reference():
  params = init_params(tiny_config(), jax.random.key(3))
  ref_params = init_params(tiny_config(), jax.random.key(4))
  batch = _tiny_batch()
  _, logp_fn, _ = _compiled()
  old, ref = logp_fn(params, batch), logp_fn(ref_params, batch)
  state0 = init_state(params, TX)
  step = _compiled(RLConfig(kl_coef=0.1))[2]
  state, m = step(state0, batch, jnp.zeros(16), old, ref)
  want_kl = np.asarray(jnp.exp(ref - old) - (ref - old) - 1.0)[batch["loss_mask"].astype(bool)].mean()
  np.testing.assert_allclose(m["approx_kl"], want_kl, rtol=1e-5)
  assert float(m["approx_kl"]) > 0.01
  np.testing.assert_allclose(m["loss"], 0.1 * m["approx_kl"], rtol=1e-5)  # zero advantages: the KL term alone
  assert _max_change(state.params, params) > 1e-3  # ... and its gradient moves the policy
  with pytest.raises(ValueError, match="kl_coef"):  # raised while tracing, before any compile
    step(state0, batch, jnp.zeros(16), old)


def test_rl_step_skips_a_nonfinite_update():
  params = init_params(tiny_config(), jax.random.key(3))
  batch = _tiny_batch()
  _, logp_fn, step = _compiled()
  bad_B = np.zeros(16, np.float32)
  bad_B[1] = np.nan
  state, m = step(init_state(params, TX), batch, bad_B, logp_fn(params, batch))
  assert int(m["skipped"]) == 1 and int(state.nonfinite_total) == 1 and int(state.nonfinite_in_a_row) == 1
  assert int(state.step) == 1
  jax.tree_util.tree_map(np.testing.assert_array_equal, state.params, params)
  state, m = step(state, batch, np.ones(16, np.float32), logp_fn(params, batch))
  assert int(m["skipped"]) == 0 and int(state.nonfinite_in_a_row) == 0 and int(state.nonfinite_total) == 1


def test_rl_config_from_config_and_validation():
  section = ml_collections.ConfigDict({"clip_high": 0.3, "kl_coef": 0, "aggregation": "seq_mean", "group_size": 8})
  assert RLConfig.from_config(section) == RLConfig(clip_high=0.3, kl_coef=0.0, aggregation="seq_mean")
  assert RLConfig.from_config({}) == RLConfig()
  with pytest.raises(ValueError, match="rl.aggregation"):
    RLConfig(aggregation="sum")
  with pytest.raises(ValueError, match="rl.clip_low"):
    RLConfig.from_config({"clip_low": 1.0})


# --- end to end: RL learns a token-level bandit --------------------------------------------------------------------

def test_rl_learns_a_token_bandit():
  """Prompt = a fixed token list; reward 1 when the first sampled token is in TARGET (about 20% of a near-uniform
  random model's mass). 15 on-policy GRPO steps with Adam must raise both the exact expected reward and the mean
  reward of fresh samples."""
  cfg = tiny_config()
  target = np.arange(10, 30)
  prompts = [[1, 2, 3, 4], [5, 6, 7, 8]]
  state = init_state(init_params(cfg, jax.random.key(0)), TX)
  apply_fn, logp_fn, step = _compiled()
  reward = lambda p, completion: float(completion[0] in target)  # noqa: E731

  def sample(params, seed):
    return rollout.sample_token_groups(cfg, params, prompts, 8, reward, max_new_tokens=1,
                                       sampling=Sampling(temperature=1.0, seed=seed))

  def expected_reward(params):  # the target set's probability mass after each prompt
    logits, _ = apply_fn(params, jnp.asarray(prompts))
    return float(jnp.mean(jnp.sum(jax.nn.softmax(logits[:, -1])[:, target], -1)))

  def fresh_mean(params):  # 64 fresh samples, seeds disjoint from training
    return float(np.mean([sample(params, 1000 + s).rewards_PG.mean() for s in range(4)]))

  exact0, fresh0 = expected_reward(state.params), fresh_mean(state.params)
  for i in range(15):
    ro = sample(state.params, i)
    batch = rollout.rollout_batch(ro, seq_len=SEQ_LEN)
    advantages_B = rl.group_advantages(ro.rewards_PG).reshape(-1)
    state, metrics = step(state, batch, advantages_B, logp_fn(state.params, batch))
    assert int(metrics["skipped"]) == 0
  exact1, fresh1 = expected_reward(state.params), fresh_mean(state.params)
  print(f'bandit: expected reward {exact0:.3f} -> {exact1:.3f}, fresh samples {fresh0:.3f} -> {fresh1:.3f}')
  assert 0.1 < exact0 < 0.35, exact0
  assert exact1 > exact0 + 0.3, (exact0, exact1)
  assert fresh1 > fresh0 + 0.25, (fresh0, fresh1)
