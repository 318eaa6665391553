"""SFT stage pieces: reply-only loss mask, whole-example packing, the difficulty filter, per-example scores."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from llama4_jax.config import ConfigError
from llama4_jax.data import verifiable
from llama4_jax.data.tokenizer import ChatFormat, Tokenizer
from llama4_jax.model import apply, init_params
from llama4_jax.train import sft
from tests.conftest import tiny_config

TOK = Tokenizer.default()
CHAT = ChatFormat(TOK)
_init = jax.jit(init_params, static_argnums=0)  # eager init runs op by op: seconds instead of a compile


def _problems(n=12, families=("add", "sort", "lookup"), seed=3):
  return list(verifiable.problems(families, (1,), n=n, seed=seed))


def test_loss_mask_is_exactly_the_reply_and_its_eot():
  for p in _problems():
    ex = sft.encode_example(p, CHAT)
    assert ex["inputs"].shape == ex["targets"].shape == ex["loss_mask"].shape
    np.testing.assert_array_equal(ex["inputs"][1:], ex["targets"][:-1])  # next-token targets
    learned = ex["targets"][ex["loss_mask"] == 1].tolist()
    assert learned[-1] == TOK.eot_id and TOK.decode(learned[:-1]) == p.answer
    # the masked tokens are the last ones: nothing after the reply, the prompt and headers never learned
    assert ex["loss_mask"][-len(learned):].all() and not ex["loss_mask"][:-len(learned)].any()
    assert verifiable.check(p, TOK.decode(learned[:-1])) == 1.0


def test_rows_hold_whole_examples_with_their_own_segments():
  examples = [sft.encode_example(p, CHAT) for p in _problems(30)]
  seq_len = 80
  it = sft.PackedExamples(examples, seq_len, batch_size=3, seed=0)
  lengths = {len(e["inputs"]) for e in examples}
  seen = 0
  for _ in range(4):
    batch = next(it)
    for r in range(3):
      seg, pos = batch["segment_ids"][r], batch["positions"][r]
      for s in range(1, seg.max() + 1):
        idx = np.flatnonzero(seg == s)
        assert idx[-1] - idx[0] + 1 == len(idx) and len(idx) in lengths  # contiguous, a whole example
        np.testing.assert_array_equal(pos[idx], np.arange(len(idx)))
        match = [e for e in examples if len(e["inputs"]) == len(idx)
                 and np.array_equal(e["inputs"], batch["inputs"][r, idx])]
        assert match and np.array_equal(match[0]["loss_mask"], batch["loss_mask"][r, idx])
        seen += 1
      pad = seg == 0
      assert not batch["loss_mask"][r, pad].any()
  assert seen > 12  # several examples per row


def test_packed_stream_resumes_from_its_state():
  examples = [sft.encode_example(p, CHAT) for p in _problems(30)]
  a = sft.PackedExamples(examples, 64, 2, seed=1)
  next(a)
  state = json.loads(json.dumps(a.get_state()))  # as stored in a checkpoint
  expected = [next(a) for _ in range(3)]
  b = sft.PackedExamples(examples, 64, 2, seed=1)
  b.set_state(state)
  for want in expected:
    got = next(b)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])


def test_example_longer_than_a_row_is_a_config_error():
  examples = [sft.encode_example(p, CHAT) for p in _problems(4)]
  with pytest.raises(ConfigError, match="data.seq_len=16 is shorter than the longest SFT example"):
    sft.PackedExamples(examples, 16, 2, seed=0)


def test_difficulty_filter_drops_the_easiest_fraction():
  losses = np.array([3.0, 0.5, 2.0, 0.5, 4.0, 1.0, 0.1, 2.5])
  kept, stats = sft.difficulty_filter(losses, 0.5, easy_is_high=False)
  np.testing.assert_array_equal(kept, [0, 2, 4, 7])  # the four highest losses
  assert stats == {"sft_candidates": 8, "sft_kept": 4, "sft_dropped": 4}
  rates = np.array([1.0, 0.0, 0.5, 1.0, 0.25])
  kept, stats = sft.difficulty_filter(rates, 0.4, easy_is_high=True)  # floor(2.0) dropped: the two always solved
  np.testing.assert_array_equal(kept, [1, 2, 4])
  kept, _ = sft.difficulty_filter(np.array([1.0, 1.0, 1.0]), 0.34, easy_is_high=False)  # a tie: the first goes
  np.testing.assert_array_equal(kept, [1, 2])
  kept, stats = sft.difficulty_filter(losses, 0.0, easy_is_high=False)
  assert len(kept) == 8 and stats["sft_dropped"] == 0


def test_per_family_filter_thins_every_family():
  # family a is easy as a whole (low losses): a global filter would drop all of it, the per-family one half.
  scores = np.array([0.1, 0.2, 0.3, 0.4, 5.0, 6.0, 7.0, 8.0])
  groups = [("a", 1)] * 4 + [("b", 1)] * 4
  kept, stats = sft.difficulty_filter(scores, 0.5, easy_is_high=False)
  np.testing.assert_array_equal(kept, [4, 5, 6, 7])
  kept, stats = sft.grouped_difficulty_filter(scores, groups, 0.5, easy_is_high=False)
  np.testing.assert_array_equal(kept, [2, 3, 6, 7])
  assert stats == {"sft_candidates": 8, "sft_kept": 4, "sft_dropped": 4}


def test_reply_losses_match_a_direct_computation():
  cfg = tiny_config(vocab_size=TOK.vocab_size)
  params = _init(cfg, jax.random.key(0))
  pool = [sft.encode_example(p, CHAT) for p in _problems(40)]
  common = max({len(e["inputs"]) for e in pool}, key=lambda n: sum(len(e["inputs"]) == n for e in pool))
  examples = [e for e in pool if len(e["inputs"]) == common][:3]  # one length: the oracle compiles once
  assert len(examples) == 3
  got = sft.reply_losses(cfg, params, examples, batch_size=2)  # two batches, the second padded
  forward = jax.jit(lambda p, x, pos, seg: apply(cfg, p, x, pos, seg)[0])
  for e, g in zip(examples, got):
    n = len(e["inputs"])  # each alone and unpadded: the oracle
    logits = forward(params, jnp.asarray(e["inputs"])[None], jnp.arange(n)[None], jnp.ones((1, n), jnp.int32))
    logp = jax.nn.log_softmax(logits[0].astype(jnp.float32))
    ce = -np.asarray(logp)[np.arange(n), e["targets"]]
    np.testing.assert_allclose(g, ce[e["loss_mask"] == 1].mean(), rtol=1e-5)


def test_packing_does_not_leak_attention_across_examples():
  cfg = tiny_config(vocab_size=TOK.vocab_size)
  params = _init(cfg, jax.random.key(1))
  a, b = (sft.encode_example(p, CHAT) for p in _problems(2))
  row = sft.pack_row([a, b], 96)
  forward = jax.jit(lambda p, x, pos, seg: apply(cfg, p, x, pos, seg)[0])
  logits = forward(params, row["inputs"][None], row["positions"][None], row["segment_ids"][None])
  n = len(b["inputs"])
  alone = forward(params, jnp.asarray(b["inputs"])[None], jnp.arange(n)[None], jnp.ones((1, n), jnp.int32))
  start = len(a["inputs"])
  np.testing.assert_allclose(logits[0, start:start + n], alone[0], atol=1e-4)


def _cfg(**tasks):
  c = base.get_config("tiny")
  c.tasks.update(**tasks)
  return c


@pytest.mark.parametrize("change, message", [
    (dict(tasks=dict(families=("add", "divide"))), "tasks.families: unknown family 'divide'"),
    (dict(tasks=dict(levels=(1, 9))), "tasks.levels: level 9 is not available for family 'add'"),
    (dict(tasks=dict(train_problems=0)), "tasks.train_problems must be >= 1"),
    (dict(sft=dict(drop_easiest=1.0)), "sft.drop_easiest must lie in"),
    (dict(sft=dict(filter_metric="perplexity")), "sft.filter_metric='perplexity'"),
])
def test_bad_sft_settings_name_the_key(change, message):
  c = base.get_config("tiny")
  for section, values in change.items():
    c[section].update(**values)
  with pytest.raises(ConfigError, match=message):
    sft.check_config(c)
