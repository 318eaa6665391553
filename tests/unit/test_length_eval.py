"""Length-generalization probes (llama4_jax/eval/length.py): per-position loss against a direct computation, the
passkey and multi-key needle generators and their scorer, config overrides, and the command end to end."""

import json
import os
import subprocess
import sys

import jax
import llama4_jax.generate  # noqa: F401  (the module, patched below)
import numpy as np
import pytest

import llama4_jax
from llama4_jax.config import RopeScaling
from llama4_jax.data.tokenizer import Tokenizer
from llama4_jax.eval import length as L
from tests.conftest import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def tok():
  return Tokenizer.default()


def _direct_nll(cfg, params, tokens):
  """The same quantity from one whole-row forward pass, position by position."""
  logits = np.asarray(llama4_jax.forward(cfg, params, tokens), np.float64)
  out = np.zeros((tokens.shape[0], tokens.shape[1] - 1))
  for b in range(tokens.shape[0]):
    for t in range(tokens.shape[1] - 1):
      row = logits[b, t]
      out[b, t] = np.log(np.exp(row - row.max()).sum()) + row.max() - row[tokens[b, t + 1]]
  return out


@pytest.mark.parametrize("overrides,length,piece", [
    ({}, 37, None),  # pieces of one chunk (8): past the chunk, odd length
    (dict(attention_chunk_size=None, no_rope_layer_interval=0), 29, 4),  # all-RoPE global, pieces of 4
    (dict(rope_scaling=RopeScaling("yarn", 4.0, original_max_position_embeddings=16)), 21, 8),
])
def test_piece_nll_equals_the_direct_per_position_loss(overrides, length, piece):
  cfg = tiny_config(**overrides)
  params = llama4_jax.init_params(cfg, jax.random.key(1))
  tokens = np.random.RandomState(0).randint(0, cfg.vocab_size, (2, length))
  got = L.piece_nll(cfg, params, tokens, piece)
  assert got.shape == (2, length - 1) and got.dtype == np.float32
  np.testing.assert_allclose(got, _direct_nll(cfg, params, tokens), atol=1e-4, rtol=0)


def test_piece_nll_does_not_pad_the_last_piece_for_dynamic_ntk():
  """Dynamic NTK takes the current length from the positions fed: padding the last piece up to the piece size
  would grow the base of rows that never pass the original length."""
  plain = tiny_config(attention_chunk_size=None, no_rope_layer_interval=0, rope_scaling=None)
  dynamic = plain.replace(rope_scaling=RopeScaling("dynamic", 4.0, original_max_position_embeddings=24))
  params = llama4_jax.init_params(plain, jax.random.key(2))
  tokens = np.random.RandomState(1).randint(0, plain.vocab_size, (2, 24))
  np.testing.assert_allclose(L.piece_nll(dynamic, params, tokens, 16), L.piece_nll(plain, params, tokens, 16),
                             atol=1e-5, rtol=0)  # the same up to float32 rounding of the two frequency formulas
  longer = np.random.RandomState(2).randint(0, plain.vocab_size, (2, 40))  # past the original length: differs
  assert np.abs(L.piece_nll(dynamic, params, longer, 16) - L.piece_nll(plain, params, longer, 16)).max() > 1e-3


def test_piece_nll_rejects_a_single_token():
  cfg = tiny_config()
  with pytest.raises(ValueError, match=r"length >= 2"):
    L.piece_nll(cfg, None, np.zeros((1, 1), np.int32))


def test_binned_means():
  values = np.arange(20, dtype=np.float64).reshape(2, 10)  # rows 0..9 and 10..19
  bins = L.binned(values, 2)
  assert bins == [{"start": 0, "end": 5, "mean": 7.0}, {"start": 5, "end": 10, "mean": 12.0}]
  assert [b["end"] - b["start"] for b in L.binned(values, 3)] == [3, 4, 3]


def test_held_out_rows_come_from_the_held_out_documents(tok):
  rows = L.held_out_rows(tok, 300, 2)
  assert rows.shape == (2, 300) and rows[0, 0] == tok.bos_id
  assert (rows == tok.bos_id).sum() >= 1
  again = L.held_out_rows(tok, 300, 2)
  np.testing.assert_array_equal(rows, again)  # deterministic
  with pytest.raises(ValueError, match="held-out text has"):
    L.held_out_rows(tok, 10 ** 7, 1)
  stream = L.held_out_stream(tok, 600)  # read once, cut per length: the same rows
  np.testing.assert_array_equal(L.held_out_rows(tok, 300, 2, stream=stream), rows)
  np.testing.assert_array_equal(L.held_out_rows(tok, 150, 3, offset=100, stream=stream),
                                L.held_out_rows(tok, 150, 3, offset=100))
  with pytest.raises(ValueError, match="held-out stream has 600 tokens"):
    L.held_out_rows(tok, 301, 2, stream=stream)


def test_evaluate_reads_the_held_out_text_once(tok, monkeypatch):
  from llama4_jax.data import tasks
  reads = []
  real = tasks.task_texts
  monkeypatch.setattr(tasks, "task_texts", lambda *a, **k: reads.append(a) or real(*a, **k))
  cfg = tiny_config(vocab_size=tok.vocab_size, max_position_embeddings=8192)
  params = llama4_jax.init_params(cfg, jax.random.key(2))
  total = len(L.held_out_stream(tok))
  reads.clear()
  big = total // 3 + 1  # only two rows of this length fit in the held-out text
  out = L.evaluate(cfg, params, tok, [64, 96, big], rows=3, bins=2, depths=[], trials=0, needle_keys=2,
                   needle_trials=0, progress=lambda _: None)
  assert len(reads) == 1 and sorted(out["loss"], key=int) == ["64", "96", str(big)]
  assert [out["loss"][k]["rows"] for k in ("64", "96", str(big))] == [3, 3, 2]  # rows: at most 3, as text allows
  direct = L.piece_nll(cfg, params, L.held_out_rows(tok, 96, 3))
  assert out["loss"]["96"]["mean"] == pytest.approx(float(direct.mean()), abs=1e-6)
  with pytest.raises(ValueError, match=f"held-out text has {total} tokens, fewer than the length {total + 1}"):
    L.evaluate(cfg, params, tok, [total + 1], rows=1, bins=2, depths=[], trials=0, needle_keys=2, needle_trials=0)


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_passkey_probe(tok, depth):
  probe = L.passkey_probe(tok, 400, depth, np.random.RandomState(3))
  assert len(probe.tokens) == 400 and probe.tokens[0] == tok.bos_id
  assert len(probe.answer) == 5 and probe.answer.isdigit()
  text_after = tok.decode(list(probe.tokens[probe.fact_at:]))
  assert text_after.startswith(f" The pass key is {probe.answer}.")
  assert tok.decode(list(probe.tokens)).endswith(L.PASSKEY_QUESTION)
  question = len(tok.encode(L.PASSKEY_QUESTION))
  fact = len(tok.encode(f" The pass key is {probe.answer}. Remember it. {probe.answer} is the pass key. "))
  room = 400 - 1 - question - fact
  assert probe.fact_at == 1 + round(depth * room)  # depth 0 right after BOS, depth 1 right before the question
  with pytest.raises(ValueError, match="too short"):
    L.passkey_probe(tok, 20, depth, np.random.RandomState(0))
  with pytest.raises(ValueError, match="depth 1.5"):
    L.passkey_probe(tok, 400, 1.5, np.random.RandomState(0))


def test_needle_probe(tok):
  probe = L.needle_probe(tok, 600, 4, np.random.RandomState(5))
  text = tok.decode(list(probe.tokens))
  assert len(probe.tokens) == 600 and text.count("The special magic number for") == 5  # 4 facts + the question
  assert f"is {probe.answer}." in text and len(probe.answer) == 6
  word = text.rsplit("special magic number for ", 1)[1].split(" ")[0]
  assert tok.decode(list(probe.tokens[probe.fact_at:])).startswith(f" The special magic number for {word} is "
                                                                    f"{probe.answer}.")
  with pytest.raises(ValueError, match="needle keys=0"):
    L.needle_probe(tok, 600, 0, np.random.RandomState(0))


@pytest.mark.parametrize("generated,ok", [(" 12345.", True), ("12345 and more", True), (" 1234", False),
                                          (" 123456", False), (" the key is 12345", False), ("", False),
                                          (" 12345\n", True)])
def test_retrieved(generated, ok):
  assert L.retrieved("12345", generated) is ok


def test_run_probes_scores_the_greedy_continuation(tok, monkeypatch):
  probes = [L.passkey_probe(tok, 200, 0.5, np.random.RandomState(i)) for i in range(3)]
  answers = {p.tokens: p.answer for p in probes}
  calls = []

  def fake_generate(cfg, params, prompts, max_new_tokens, sampling):
    calls.append((len(prompts), max_new_tokens, sampling.temperature))
    return [tok.encode(" " + answers[tuple(p)] if i != 1 else " 00000") for i, p in enumerate(prompts)]

  monkeypatch.setattr(sys.modules["llama4_jax.generate"], "generate", fake_generate)
  assert L.run_probes(None, None, tok, probes, batch=4) == [True, False, True]
  assert calls[0][0] == 3 and calls[0][2] == 0.0


def test_apply_overrides():
  cfg = tiny_config()
  out = L.apply_overrides(cfg, ["model.attn_temperature_tuning=false", "model.attention_chunk_size=16",
                                "model.floor_scale=8", "model.rope_scaling.factor=4"])
  assert (out.attn_temperature_tuning, out.attention_chunk_size, out.floor_scale) == (False, 16, 8)
  assert out.rope_scaling.factor == 4 and out.rope_scaling.rope_type == "llama3"
  assert L.apply_overrides(cfg, ["model.attention_chunk_size=null"]).attention_chunk_size is None
  for bad, msg in (("model.chunk=3", "no field 'chunk'"), ("attention_chunk_size=3", "expected model."),
                   ("model.rope_scaling.bogus=1", "no field 'bogus'")):
    with pytest.raises(ValueError, match=msg):
      L.apply_overrides(cfg, [bad])


@pytest.mark.slow
def test_command_writes_json_and_plots(tmp_path, tok):
  cfg = tiny_config(vocab_size=tok.vocab_size, max_position_embeddings=128)
  params = llama4_jax.init_params(cfg, jax.random.key(0))
  ckpt = llama4_jax.save_hf(cfg, params, str(tmp_path / "hf"))
  out = tmp_path / "out"
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  proc = subprocess.run([sys.executable, "-m", "llama4_jax.eval.length", f"--checkpoint={ckpt}", "--lengths=64,160",
                         "--rows=1", "--bins=4", "--passkey_depths=0,1", "--passkey_trials=1", "--needle_trials=1",
                         "--needle_keys=2", "--train_length=64", "--set=model.attn_temperature_tuning=false",
                         f"--out={out}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads((out / "length.json").read_text())
  assert result["lengths"] == [64, 160] and result["overrides"] == ["model.attn_temperature_tuning=false"]
  assert result["model"]["attn_temperature_tuning"] is False
  assert result["model"]["max_position_embeddings"] >= 160 + 32  # raised for the probe
  for n in ("64", "160"):
    loss = result["loss"][n]
    assert np.isfinite(loss["mean"]) and len(loss["bins"]) == 4 and loss["ppl"] == pytest.approx(np.exp(loss["mean"]))
    assert set(result["passkey"][n]) == {"0.0", "1.0"} and 0 <= result["needle"][n] <= 1
  for name in ("ppl_vs_length.png", "loss_by_position.png", "passkey.png"):
    assert (out / name).read_bytes()[:4] == b"\x89PNG"
