"""The evaluation runner's pieces (llama4_jax/eval/report.py, run.py): aggregation the benchmarks' ways, maj@k and
pass@k, log-likelihood choice scoring against a direct computation, batched generation against `generate`."""

import dataclasses
import json

import jax
import numpy as np
import pytest

import llama4_jax
from llama4_jax.data.tokenizer import Tokenizer
from llama4_jax.eval import report, run
from llama4_jax.eval.suite import Benchmark, Example
from tests.conftest import tiny_config


def _bench(**kw):
  base = dict(name="fake", mode="generate", metric="exact_match", read=lambda *a, **k: [], layout="-",
              extract=lambda text, ex: text.strip(), score=lambda ans, ex: float(ans in ex.golds))
  base.update(kw)
  return Benchmark(**base)


def _ex(i, gold, group="", **kw):
  return Example(id=str(i), prompt=f"q{i}", golds=(gold,), group=group, **kw)


def test_example_json_round_trip():
  ex = Example(id="7", prompt="p", golds=("a", "b"), choices=(" A", " B"), answer_index=1, group="g",
               images=("x.png",), tests=("assert f() == 1",), io_cases=(("1\n", "2\n"),), setup="import os")
  assert report.example_from_json(json.dumps(dataclasses.asdict(ex))) == ex


def test_mean_and_macro_aggregation():
  examples = [_ex(0, "a", "g1"), _ex(1, "b", "g1"), _ex(2, "c", "g1"), _ex(3, "d", "g2")]
  preds = ["a", "b", "x", "x"]  # g1: 2/3, g2: 0/1
  mean = report.task_scores(_bench(), examples, preds)
  assert mean["score"] == pytest.approx(0.5) and mean["groups"] == {"g1": pytest.approx(2 / 3), "g2": 0.0}
  macro = report.task_scores(_bench(aggregate="macro"), examples, preds)
  assert macro["score"] == pytest.approx(1 / 3)
  assert [r["answer"] for r in mean["per_example"]] == preds
  with pytest.raises(ValueError, match="4 examples but 3 predictions"):
    report.task_scores(_bench(), examples, preds[:3])


def test_loglik_scores_the_chosen_index():
  examples = [_ex(0, "B", choices=(" A", " B"), answer_index=1), _ex(1, "A", choices=(" A", " B"), answer_index=0)]
  out = report.task_scores(_bench(mode="loglik", metric="accuracy"), examples, [1, 1])
  assert out["score"] == 0.5 and [r["answer"] for r in out["per_example"]] == ["B", "B"]


def test_majority_vote_over_samples_and_corpus_chrf():
  examples = [_ex(0, "7"), _ex(1, "3")]
  out = report.task_scores(_bench(), examples, [["7", "8", "7"], ["1", "2", "3"]])  # maj: 7 (right), 1 (wrong)
  assert out["score"] == 0.5 and out["per_example"][0]["samples"] == 3
  from llama4_jax.eval import metrics
  chrf = _bench(metric="chrf", aggregate="corpus_chrf", score=lambda a, ex: metrics.chrf(a, ex.golds))
  texts = [_ex(0, "the cat sat", "ek"), _ex(1, "a dog ran far", "ke")]
  out = report.task_scores(chrf, texts, ["the cat sat", "a dog"])
  assert out["score"] == pytest.approx(metrics.corpus_chrf(["the cat sat", "a dog"], [["the cat sat"],
                                                                                     ["a dog ran far"]]))
  assert out["groups"]["ek"] == pytest.approx(100.0) and out["groups"]["ke"] < 100


def test_code_samples_give_unbiased_pass_at_k():
  bench = _bench(mode="code", metric="pass@1", score=lambda ans, ex: float(ans == "ok"))
  examples = [_ex(0, ""), _ex(1, "")]
  out = report.task_scores(bench, examples, [["ok", "no", "no", "ok"], ["no"] * 4])
  assert out["score"] == pytest.approx(0.25)  # (2/4 + 0) / 2
  assert out["scores"]["pass@4"] == pytest.approx(0.5) and out["scores"]["pass@1"] == pytest.approx(0.25)


def test_markdown_tables():
  tasks = {"mmlu": {"metric": "macro_accuracy", "score": 0.25, "n": 4, "seconds": 1.0, "groups": {"a": 0.5}},
           "mtob": {"metric": "chrf", "score": 40.0, "n": 2, "seconds": 2.0, "groups": {"ek": 40.0},
                    "truncated": 1}}
  text = report.markdown({"checkpoint": "c", "tasks": tasks, "average": report.average(tasks),
                          "skipped": {"chartqa": "no vision"}})
  assert "| mmlu | macro_accuracy | 25.0 | 4 |" in text and "| mtob | chrf | 40.00 | 2 |" in text
  assert "| **average** | mean of the above (chrF / 100) | 32.5 |" in text
  assert "1 prompts cut from the left" in text and "* chartqa: no vision" in text


@pytest.fixture(scope="module")
def model():
  tok = Tokenizer.default()
  cfg = tiny_config(vocab_size=tok.vocab_size, bos_token_id=tok.bos_id, max_position_embeddings=64)
  return cfg, llama4_jax.init_params(cfg, jax.random.key(3)), tok


def test_loglik_choices_match_a_direct_computation(model):
  cfg, params, tok = model
  examples = [Example(id="0", prompt="The sky is", golds=("B",), choices=(" green", " blue", " a colour"),
                      answer_index=1),
              Example(id="1", prompt="x " * 80, golds=("A",), choices=(" A", " B"), answer_index=0)]  # cut to fit
  got, truncated = run.loglik_choices(cfg, params, tok, examples, batch=2)
  assert truncated == 1
  for ex, pick in zip(examples, got):
    sums = []
    for choice in ex.choices:
      ctx, cont = tok.encode(ex.prompt, bos=True), tok.encode(choice)
      ctx = ctx if len(ctx) + len(cont) <= 64 else ctx[:1] + ctx[len(ctx) + len(cont) - 63:]
      ids = np.asarray([ctx + cont])
      logits = np.asarray(llama4_jax.forward(cfg, params, ids), np.float64)[0]
      logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
          - logits.max(-1, keepdims=True)
      sums.append(sum(logp[len(ctx) - 1 + k, cont[k]] for k in range(len(cont))))
    assert pick == int(np.argmax(sums))
    assert len(ex.choices) > 1


def test_generations_equal_generate_and_stop_at_the_stop_string(model):
  cfg, params, tok = model
  bench = _bench(stop=("e",), max_new_tokens=6)
  examples = [Example(id=str(i), prompt=p, golds=("",)) for i, p in enumerate(["def f():", "import", "x = 1"])]
  got, truncated = run.generations(cfg, params, tok, bench, examples, batch=2, samples=1, temperature=0.0,
                                   max_new_tokens=6, seed=0)
  assert truncated == 0
  for ex, text in zip(examples, got):
    ids = llama4_jax.generate(cfg, params, [tok.encode(ex.prompt, bos=True)], max_new_tokens=6, tokenizer=tok)[0]
    full = tok.decode([t for t in ids if t < tok.num_base_tokens])
    assert text == full.split("e")[0]


def test_samples_need_a_temperature(tmp_path):
  with pytest.raises(ValueError, match="--samples=3 needs --temperature > 0"):
    run.run(str(tmp_path), ["mmlu"], str(tmp_path), str(tmp_path / "out"), samples=3)
  with pytest.raises(ValueError, match="unknown benchmark"):
    run.select_tasks(["mmlu", "nope"])


def test_seqio_task_yields_the_examples_and_scores_with_the_benchmarks_metric():
  import seqio
  from llama4_jax.data import tasks
  from llama4_jax.eval import suite
  direct = suite.load("mgsm", suite.SAMPLE_DIR)
  assert tasks.benchmark_examples("mgsm", suite.SAMPLE_DIR) == direct
  task = seqio.get_mixture_or_task(tasks.register_benchmark("mgsm", suite.SAMPLE_DIR))
  first = next(task.get_dataset(sequence_length=None, split="test", shuffle=False).as_numpy_iterator())
  assert first["inputs"].decode() == direct[0].prompt and first["targets"].decode() == direct[0].golds[0]
  targets = [json.dumps(dataclasses.asdict(ex)) for ex in direct]
  right = [f"... The answer is {ex.golds[0]}." for ex in direct]
  (metric_fn,) = task.metric_fns
  assert metric_fn(targets, right) == {"exact_match": 1.0}
  assert metric_fn(targets, ["no idea"] * len(direct)) == {"exact_match": 0.0}
  with pytest.raises(FileNotFoundError, match="mgsm"):
    tasks.benchmark_examples("mgsm", "/nonexistent")  # re-registered with the new directory, which is missing


def test_generation_budget_must_leave_room_for_the_prompt(model):
  cfg, params, tok = model
  with pytest.raises(ValueError, match="max_new_tokens=63 leaves no room"):
    run.generations(cfg, params, tok, _bench(), [_ex(0, "a")], batch=1, samples=1, temperature=0.0,
                    max_new_tokens=63, seed=0)
