"""The sweep runner (llama4_jax/sweep.py): entries as separate training processes, in parallel, resumed by skipping
finished runs, results in a CSV and the μTransfer plot; bad sweep files named."""

import csv
import math
import os
import textwrap

import pytest

from llama4_jax import sweep
from tests.integration import subprocess_env

EXPERIMENT = textwrap.dedent('''
    from configs import base

    def get_config(arg=""):
      c = base.get_config("tiny")
      c.model.update(hidden_size=32, num_attention_heads=2, num_key_value_heads=1, head_dim=16, intermediate_size=32,
                     intermediate_size_mlp=64, num_local_experts=4)
      c.data.update(seq_len=32, batch_size=2, max_documents=60, eval_batches=1)
      c.train.update(steps=3, log_every=1, eval_every=3, checkpoint_every=3, tensorboard=False, progress=False)
      c.parameterization = "mup"
      return c

    def get_sweep(arg=""):
      # the second is twice as wide: mup adds its multipliers to main's locked config
      return [{"optim.learning_rate": 2.0 ** e, "model.hidden_size": w} for e, w in ((-7, 32), (-5, 64))]
    ''')


def _experiment(tmp_path, text=EXPERIMENT):
  path = tmp_path / "exp.py"
  path.write_text(text)
  return str(path)


def test_sweep_runs_entries_in_parallel_then_skips_finished_ones(tmp_path, monkeypatch):
  for key, value in subprocess_env().items():  # one CPU device per run, the shared compilation cache
    monkeypatch.setenv(key, value)
  monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
  config, workdir = _experiment(tmp_path), str(tmp_path / "sweep")
  rows = sweep.run_sweep(config, workdir, parallel=2)
  logs = [open(os.path.join(workdir, r["name"], "sweep.log")).read()[-2000:] for r in rows]
  assert [r["status"] for r in rows] == ["done", "done"], logs
  assert [r["name"] for r in rows] == ["hidden_size=32,learning_rate=2^-7", "hidden_size=64,learning_rate=2^-5"]
  for r in rows:
    assert math.isfinite(r["final_train_loss"]) and math.isfinite(r["final_eval_loss"])
  with open(os.path.join(workdir, "sweep.csv")) as f:
    table = list(csv.DictReader(f))
  assert [float(t["optim.learning_rate"]) for t in table] == [2.0 ** -7, 2.0 ** -5]
  # Again: nothing runs, the results are read back.
  launched = []
  again = sweep.run_sweep(config, workdir, parallel=2, launch=lambda *a: launched.append(a) or 0)
  assert not launched and [r["status"] for r in again] == ["skipped", "skipped"]
  # A run without its result (killed before it finished) is the only one launched again.
  os.remove(os.path.join(workdir, rows[1]["name"], sweep.RESULT))
  third = sweep.run_sweep(config, workdir, launch=lambda c, d, o: launched.append(o) or 0)
  assert launched == [{"optim.learning_rate": 2.0 ** -5, "model.hidden_size": 64}]
  assert [r["status"] for r in third] == ["skipped", "done"]
  sweep.plot(third, os.path.join(workdir, "sweep.png"), "optim.learning_rate", "model.hidden_size")
  assert open(os.path.join(workdir, "sweep.png"), "rb").read(4) == b"\x89PNG"


def test_failed_runs_are_reported_and_retried(tmp_path):
  config, workdir = _experiment(tmp_path), str(tmp_path / "sweep")
  rows = sweep.run_sweep(config, workdir, launch=lambda *a: 2)
  assert [r["status"] for r in rows] == ["failed (exit 2)"] * 2
  assert not os.path.exists(os.path.join(workdir, rows[0]["name"], sweep.RESULT))


def test_optimum_per_group():
  rows = [{"lr": 2.0 ** e, "w": w, "final_train_loss": (e + 6 + (w == 64)) ** 2}
          for e in range(-9, -3) for w in (32, 64)]
  assert sweep.optimum(rows, "lr", "w") == {32: (2.0 ** -6, 0), 64: (2.0 ** -7, 0)}


@pytest.mark.parametrize("body,message", [
    ("def get_config(arg=''):\n  return None\n", "has no get_sweep"),
    ("def get_sweep(arg=''):\n  return []\n", "must return a non-empty list"),
    ("def get_sweep(arg=''):\n  return [{'optim.learning_rate': [1]}]\n", "is not a dotted key with a scalar"),
    ("def get_sweep(arg=''):\n  return [{'a.b': 1}, {'a.b': 1}]\n", "repeated entries"),
])
def test_bad_sweep_files_are_named(tmp_path, body, message):
  path = _experiment(tmp_path, body)
  with pytest.raises(ValueError, match=message):
    sweep.load_sweep(path)
  with pytest.raises(FileNotFoundError, match="no such experiment file"):
    sweep.load_sweep(str(tmp_path / "missing.py"))
