"""The sweep runner (llama4_jax/sweep.py): entries as separate training processes, in parallel, resumed by skipping
finished runs, results in a CSV and the μTransfer plot; bad sweep files named."""

import csv
import json
import math
import os
import shutil
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


def test_a_run_another_process_is_training_is_left_to_it(tmp_path):
  # Two sweep processes over one directory once trained the same run at once (interleaved metrics, shared
  # checkpoints): a run whose workdir lock is held is not launched, and rerunning the sweep later launches it.
  from llama4_jax.train import workdir_lock
  config, workdir = _experiment(tmp_path), str(tmp_path / "sweep")
  busy = os.path.join(workdir, "hidden_size=32,learning_rate=2^-7")
  held = workdir_lock.acquire(busy)
  launched = []
  rows = sweep.run_sweep(config, workdir, launch=lambda c, d, o: launched.append(os.path.basename(d)) or 2)
  assert launched == ["hidden_size=64,learning_rate=2^-5"]
  assert rows[0]["status"].startswith("in use") and rows[1]["status"] == "failed (exit 2)"
  assert sweep.seed_mean(rows) == []  # neither has a result
  workdir_lock.release(held)
  sweep.run_sweep(config, workdir, launch=lambda c, d, o: launched.append(os.path.basename(d)) or 2)
  assert launched[1:] == ["hidden_size=32,learning_rate=2^-7", "hidden_size=64,learning_rate=2^-5"]


def test_failed_runs_are_reported_and_retried(tmp_path):
  config, workdir = _experiment(tmp_path), str(tmp_path / "sweep")
  rows = sweep.run_sweep(config, workdir, launch=lambda *a: 2)
  assert [r["status"] for r in rows] == ["failed (exit 2)"] * 2
  assert not os.path.exists(os.path.join(workdir, rows[0]["name"], sweep.RESULT))


def test_a_run_that_exits_cleanly_before_its_last_step_is_not_recorded(tmp_path):
  # SIGTERM makes a training run save, print and exit 0 (tests/integration/test_train_loop.py); without the loop's
  # summary.json the sweep must not take the losses it logged so far as the run's result.
  from llama4_jax.train import loop
  assert sweep.SUMMARY == loop.SUMMARY
  config, workdir = _experiment(tmp_path), str(tmp_path / "sweep")

  def stopped_early(config_arg, run_dir, overrides, finish=False):
    _fake_run(workdir, os.path.basename(run_dir), {1: 8.0, 2: 7.0})
    if finish:
      open(os.path.join(run_dir, sweep.SUMMARY), "w").write("{}")
    return 0

  rows = sweep.run_sweep(config, workdir, launch=stopped_early)
  assert all(r["status"].startswith("failed (stopped before its last step") for r in rows), rows
  assert not any(os.path.exists(os.path.join(workdir, r["name"], sweep.RESULT)) for r in rows)
  for r in rows:
    shutil.rmtree(os.path.join(workdir, r["name"]))
  rows = sweep.run_sweep(config, workdir, launch=lambda c, d, o: stopped_early(c, d, o, finish=True))
  assert [r["status"] for r in rows] == ["done", "done"] and rows[0]["final_train_loss"] == 7.5


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


def test_fitted_optimum_finds_the_parabola_vertex_between_grid_points():
  # loss = (log2 lr - c)^2 exactly: the fit recovers c between grid points; at the grid's edge it says so.
  rows = [{"lr": 2.0 ** e, "w": w, "final_train_loss": (e - c) ** 2 + 1}
          for e in range(-10, -4) for w, c in ((64, -7.3), (128, -7.8), (512, -4.0))]
  opt = sweep.fitted_optimum(rows, "lr", "w")
  assert opt[64]["grid"] == -7 and opt[64]["fit"] == pytest.approx(-7.3) and not opt[64]["edge"]
  assert opt[128]["grid"] == -8 and opt[128]["fit"] == pytest.approx(-7.8)
  assert opt[512] == {"grid": -5, "fit": -5, "edge": True, "loss": 2.0}
  rep = sweep.transfer_report([r for r in rows if r["w"] != 512], "lr", "w")
  assert rep["shift"] == pytest.approx(-0.5) and rep["spread"] == pytest.approx(0.5) and not rep["any_edge"]
  assert sweep.transfer_report(rows, "lr", "w")["any_edge"]
  # a diverged run (nan) is left out, not taken as the best
  rows.append({"lr": 2.0 ** -4, "w": 64, "final_train_loss": float("nan")})
  assert sweep.fitted_optimum(rows, "lr", "w")[64]["grid"] == -7
  with pytest.raises(ValueError, match="2 or more values of w"):
    sweep.transfer_report([r for r in rows if r["w"] == 64], "lr", "w")


def _fake_run(workdir, name, losses):
  os.makedirs(os.path.join(workdir, name))
  with open(os.path.join(workdir, name, "metrics.jsonl"), "w") as f:
    for step, loss in losses.items():
      f.write(json.dumps({"step": step, "stage_step": step, "loss": loss}) + "\n")
    f.write(json.dumps({"step": max(losses), "eval_loss": 1.0}) + "\n")


def test_wider_is_better_compares_every_logged_step(tmp_path):
  workdir = str(tmp_path)
  rows = []
  curves = {(0.01, 32): {1: 8.0, 10: 6.0, 20: 5.0}, (0.01, 64): {1: 8.1, 10: 5.5, 20: 4.5},
            (0.1, 32): {1: 8.0, 10: 6.0, 20: 5.0}, (0.1, 64): {1: 7.9, 10: 6.2, 20: 4.0},
            (1.0, 32): {1: 8.0, 10: 6.0, 20: 5.0}, (1.0, 64): {1: 8.0, 10: 5.0, 20: 5.0}}
  for (lr, w), losses in curves.items():
    name = f"lr={lr},w={w}"
    _fake_run(workdir, name, losses)
    rows.append({"name": name, "lr": lr, "w": w, "final_train_loss": losses[20], "status": "done"})
  res = sweep.wider_is_better(workdir, rows, "lr", "w")
  # step 1 (untrained) is not compared
  assert res[0.01] == {"steps": 2, "violations": [], "in_order_from": 10, "max_inversion": 0.0}
  assert res[0.1] == {"steps": 2, "violations": [(10, 32, 64, 6.0, 6.2)], "in_order_from": 20,
                      "max_inversion": pytest.approx(0.2)}
  # a tie is a violation; out of order at the last step: in order from no step
  assert res[1.0] == {"steps": 2, "violations": [(20, 32, 64, 5.0, 5.0)], "in_order_from": None,
                      "max_inversion": 0.0}
  # an x value where some width did not finish is not judged
  rows[3]["status"] = "failed (exit 1)"
  assert list(sweep.wider_is_better(workdir, rows, "lr", "w")) == [0.01, 1.0]
  # runs of different lengths (batch sizes over one token budget) are not compared step by step
  _fake_run(workdir, "short", {1: 8.0, 10: 4.0})
  rows[3] = {"name": "short", "lr": 0.1, "w": 64, "final_train_loss": 4.0, "status": "done"}
  assert list(sweep.wider_is_better(workdir, rows, "lr", "w")) == [0.01, 1.0]
  # a seed mean's row compares its runs' curves averaged step by step: at lr 0.1 the 64-wide run of seed 0 is behind
  # at step 10 (6.2 vs 6.0), that of seed 1 ahead (5.0 vs 6.0); the means, 5.6 vs 6.0, are in order
  _fake_run(workdir, "s1,lr=0.1,w=32", {1: 8.0, 10: 6.0, 20: 5.0})
  _fake_run(workdir, "s1,lr=0.1,w=64", {1: 8.0, 10: 5.0, 20: 4.0})
  mean_rows = [{"names": ["lr=0.1,w=32", "s1,lr=0.1,w=32"], "lr": 0.1, "w": 32, "final_train_loss": 5.0},
               {"names": ["lr=0.1,w=64", "s1,lr=0.1,w=64"], "lr": 0.1, "w": 64, "final_train_loss": 4.0}]
  assert sweep.wider_is_better(workdir, mean_rows, "lr", "w")[0.1] == \
      {"steps": 2, "violations": [], "in_order_from": 10, "max_inversion": 0.0}
  assert sweep.wider_is_better(workdir, mean_rows[:1] + [{**mean_rows[1], "names": ["lr=0.1,w=64"]}], "lr", "w")[
      0.1]["violations"] == [(10, 32, 64, 6.0, 6.2)]


def test_summary_of_a_two_seed_sweep_reports_each_seed_then_the_mean(tmp_path, capsys):
  # seed 0 prefers lr 0.01 at both widths, seed 1 prefers 0.1; the mean (0.01: 4.5 / 4.0, 0.1: 4.75 / 4.25) 0.01.
  workdir, rows = str(tmp_path), []
  final = {(0, 0.01, 32): 4.0, (0, 0.1, 32): 6.0, (0, 0.01, 64): 3.5, (0, 0.1, 64): 5.0,
           (1, 0.01, 32): 5.0, (1, 0.1, 32): 3.5, (1, 0.01, 64): 4.5, (1, 0.1, 64): 3.5}
  for (seed, lr, w), loss in final.items():
    name = f"seed={seed},lr={lr},w={w}"
    _fake_run(workdir, name, {1: 8.0, 10: loss + 1.0 - w / 64, 20: loss})
    rows.append({"name": name, "seed": seed, "lr": lr, "w": w, "final_train_loss": loss, "final_eval_loss": loss,
                 "status": "done"})
  sweep.summarize(rows, workdir, "lr", "w")
  out = capsys.readouterr().out
  per_seed, mean = out.split("-- seed 1")[0], out.split("-- mean over seeds [0, 1]")[1]
  assert "w=32: best lr=0.01" in per_seed and "w=64: best lr=0.01" in per_seed
  assert "w=32: best lr=0.1 " in out.split("-- seed 1")[1].split("-- mean")[0]
  assert "w=32: best lr=0.01 (log2 -6.64), final train loss 4.5000" in mean
  assert "w=64: best lr=0.01 (log2 -6.64), final train loss 4.0000" in mean
  assert open(os.path.join(workdir, "sweep.png"), "rb").read(4) == b"\x89PNG"
  means = {(r["lr"], r["w"]): r for r in sweep.seed_mean(rows)}
  assert means[(0.1, 64)]["seeds"] == 2 and means[(0.1, 64)]["final_train_loss"] == 4.25
  assert means[(0.1, 64)]["names"] == ["seed=0,lr=0.1,w=64", "seed=1,lr=0.1,w=64"]
