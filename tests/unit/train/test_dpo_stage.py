"""The DPO stage's pieces: pairs from sampled replies, and the update step against the direct formula."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from llama4_jax.data import verifiable
from llama4_jax.data.tokenizer import Tokenizer
from llama4_jax.model import init_params
from llama4_jax.train import dpo, dpo_stage, rollout
from llama4_jax.train.step import init_state
from tests.conftest import tiny_config

TOK = Tokenizer.default()


def _stub(monkeypatch, rewards_PG):
  """sample_groups returning replies (10 + b,) scored by the given rewards, with 3-token prompts."""
  def fake(model_cfg, params, problems, group_size, *, max_new_tokens, sampling, tokenizer):
    b = len(problems) * group_size
    return rollout.Rollouts(prompt_tokens=tuple((1, 2, 3 + b // group_size) for b in range(b)),
                            completion_tokens=tuple((10 + i, TOK.eot_id) for i in range(b)),
                            rewards_PG=np.asarray(rewards_PG, np.float32), completion_lengths_B=np.full(b, 2),
                            finished_B=np.ones(b, bool))
  monkeypatch.setattr(rollout, "sample_groups", fake)


def test_on_policy_pairs_take_an_accepted_and_a_rejected_reply(monkeypatch):
  _stub(monkeypatch, [[0, 1, 0], [1, 1, 1], [0, 0, 0], [0, 0, 1]])
  problems = list(verifiable.problems(("add",), (1,), n=4, seed=0))
  pairs, stats = dpo_stage.build_pairs(None, None, problems, TOK, samples=3, source="on_policy", max_new_tokens=4,
                                       seed=0)
  assert stats["dpo_pairs"] == 2 and stats["dpo_pair_fraction"] == 0.5
  # problem 0: reply 1 accepted, reply 0 rejected; problem 3: reply 11 accepted, reply 9 rejected
  assert [r[0] for r in pairs.completion_tokens] == [11, 10, 21, 19]
  assert pairs.prompt_tokens[0] == pairs.prompt_tokens[1] == (1, 2, 3) and pairs.prompt_tokens[2] == (1, 2, 6)


def test_reference_pairs_use_the_answer_as_chosen(monkeypatch):
  _stub(monkeypatch, [[0, 1], [1, 1], [0, 0]])
  problems = list(verifiable.problems(("add",), (1,), n=3, seed=0))
  pairs, stats = dpo_stage.build_pairs(None, None, problems, TOK, samples=2, source="reference", max_new_tokens=4,
                                       seed=0)
  assert stats["dpo_pairs"] == 2  # problems 0 and 2 have a rejected reply
  assert pairs.completion_tokens[0] == tuple(TOK.encode(problems[0].answer)) + (TOK.eot_id,)
  assert pairs.completion_tokens[1][0] == 10 and pairs.completion_tokens[3][0] == 14


def test_dpo_step_matches_the_formula_and_learns_the_preference():
  cfg = tiny_config(vocab_size=TOK.vocab_size)
  params = jax.jit(init_params, static_argnums=0)(cfg, jax.random.key(0))
  pairs = rollout.Rollouts(prompt_tokens=((1, 5, 6), (1, 5, 6), (1, 7), (1, 7)),
                           completion_tokens=((20, 21), (30, 31), (40,), (50, 51, 52)),
                           rewards_PG=np.asarray([[1, 0], [1, 0]], np.float32),
                           completion_lengths_B=np.asarray([2, 2, 1, 3]), finished_B=np.ones(4, bool))
  batch = rollout.rollout_batch(pairs, 8)
  logp = jax.jit(functools.partial(dpo_stage.sequence_logprobs, cfg))
  ref = logp(params, batch)
  direct = np.asarray(rollout.sequence_token_logprobs(cfg, params, batch)).sum(-1)
  np.testing.assert_allclose(ref, direct, rtol=1e-6)
  tx = optax.adam(1e-2)
  step = jax.jit(functools.partial(dpo_stage.dpo_step, model_cfg=cfg, tx=tx, beta=0.5, label_smoothing=0.0,
                                   kind="sigmoid"))
  state, m = step(init_state(params, tx), batch, ref)
  np.testing.assert_allclose(m["loss"], np.log(2.0), rtol=1e-6)  # policy == reference: -log sigmoid(0)
  # zero up to float32 rounding: the policy's log-probs (inside the step) and the reference's (logp) come from two
  # compiled programs, and sequence log-probs near -10 carry rounding of about 1e-6 (the CI saw -4.8e-7)
  assert abs(float(m["reward_margin"])) < 1e-5
  for _ in range(5):
    state, m = step(state, batch, ref)
  now = logp(state.params, batch)
  margin = (now[0::2] - ref[0::2]) - (now[1::2] - ref[1::2])
  assert (margin > 0).all() and m["reward_accuracy"] == 1.0
  loss, _ = dpo.dpo_loss(now[0::2], now[1::2], ref[0::2], ref[1::2], 0.5)
  assert loss < np.log(2.0) - 0.05
