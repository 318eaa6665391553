"""The main job end to end: falling loss, stage chaining, kill/resume to the bit, SIGTERM, corrupted checkpoints."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import default as default_config
from llama4_jax.train import data as train_data
from llama4_jax.train import workdir_lock
from llama4_jax.train.checkpoint import CheckpointMismatchError
from llama4_jax.train.loop import train_and_evaluate
from llama4_jax.train.metrics import read_metrics
from tests.integration import subprocess_env

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _in_process_smoke():
  """The smoke experiment for runs inside this test process, which has 8 simulated devices (tests/conftest.py): the
  default mesh is data parallel over all of them, so every batch needs a multiple of 8 rows. The subprocess runs
  below see one device and keep the smoke shapes."""
  config = default_config.get_config("smoke")
  config.data.batch_size = 8
  config.stages.midtrain.overrides.data.batch_size = 8
  return config
SMOKE = "configs/default.py:smoke"


def _main(workdir, *extra, wait=True):
  cmd = [sys.executable, "-m", "llama4_jax.main", f"--config={SMOKE}", f"--workdir={workdir}", *extra]
  env = subprocess_env()
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  if wait:
    out, _ = proc.communicate(timeout=600)
    return proc.returncode, out
  return proc


def _losses(workdir):
  by_step = {}
  for r in read_metrics(workdir):
    if "loss" in r:
      by_step[r["step"]] = r["loss"]
  return by_step


def _wait_for_step(workdir, step, proc, timeout=300):
  path = os.path.join(workdir, "metrics.jsonl")
  t0 = time.time()
  while time.time() - t0 < timeout:
    if proc.poll() is not None:
      raise AssertionError(f"run ended early:\n{proc.stdout.read()}")
    if os.path.exists(path):
      with open(path) as f:
        steps = [json.loads(line)["step"] for line in f if line.strip().endswith("}")]
      if steps and max(steps) >= step:
        return
    time.sleep(0.05)
  raise AssertionError("timed out waiting for training progress")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
  """One uninterrupted run of the smoke experiment (subprocess, like a user)."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  code, out = _main(workdir)
  assert code == 0, out
  return workdir, out


def test_reference_run_summary_and_metrics(reference_run):
  workdir, out = reference_run
  assert "Run summary" in out and "pretrain" in out and "midtrain" in out
  records = read_metrics(workdir)
  losses = _losses(workdir)
  assert sorted(losses) == list(range(1, 17))  # 12 pretrain + 4 midtrain steps, one record each
  for key in ("loss", "learning_rate", "tokens_per_s"):
    assert all(key in r for r in records if "loss" in r)
  assert any("eval_loss" in r and "eval_perplexity" in r for r in records)
  assert any(k.startswith("moe_load_max/layer_") for k in records[0])


def test_kill_and_resume_is_bit_identical(reference_run, tmp_path):
  ref_dir, _ = reference_run
  workdir = str(tmp_path / "killed")
  proc = _main(workdir, wait=False)
  _wait_for_step(workdir, 7, proc)
  proc.send_signal(signal.SIGKILL)  # no chance to save anything
  proc.wait()
  code, out = _main(workdir)
  assert code == 0, out
  assert _losses(workdir) == _losses(ref_dir)  # exact float equality, every step


def test_sigterm_saves_and_exits_cleanly(reference_run, tmp_path):
  ref_dir, _ = reference_run
  workdir = str(tmp_path / "preempted")
  proc = _main(workdir, wait=False)
  _wait_for_step(workdir, 5, proc)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, out
  assert "SIGTERM: saved stage pretrain" in out
  saved = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints", "pretrain")) if s.isdigit())
  last_logged = max(_losses(workdir))
  assert saved and saved[-1] == last_logged  # the checkpoint is at the step the run stopped, not an older one
  assert not os.path.exists(os.path.join(workdir, "summary.json"))  # what tells a sweep the run is not finished
  code, out = _main(workdir)
  assert code == 0, out
  assert _losses(workdir) == _losses(ref_dir)
  with open(os.path.join(workdir, "summary.json")) as f:
    assert json.load(f)["complete"] is True


def test_corrupted_newest_checkpoint_falls_back(reference_run, tmp_path):
  ref_dir, _ = reference_run
  workdir = str(tmp_path / "corrupt")
  proc = _main(workdir, wait=False)
  _wait_for_step(workdir, 10, proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  ckpt_dir = os.path.join(workdir, "checkpoints", "pretrain")
  newest = max(int(s) for s in os.listdir(ckpt_dir) if s.isdigit())
  damaged = 0
  for root, _, files in os.walk(os.path.join(ckpt_dir, str(newest), "state")):
    for name in files:
      with open(os.path.join(root, name), "r+b") as f:
        f.truncate(max(os.path.getsize(os.path.join(root, name)) // 3, 1))
        damaged += 1
  assert damaged
  code, out = _main(workdir)
  assert code == 0, out
  assert f"checkpoint {os.path.join(ckpt_dir, str(newest))} is unreadable" in out
  assert os.path.isdir(os.path.join(ckpt_dir, "corrupt"))
  assert _losses(workdir) == _losses(ref_dir)


def test_bad_override_key_fails_before_compiling(tmp_path):
  t0 = time.time()
  code, out = _main(str(tmp_path / "bad"), "--config.train.stpes=3")
  assert code != 0 and "stpes" in out
  assert not os.path.exists(tmp_path / "bad" / "checkpoints")
  assert time.time() - t0 < 120


def test_bad_stage_override_and_incompatible_workdir(tmp_path):
  config = _in_process_smoke()
  config.stages.midtrain.overrides.train["stepz"] = 3
  with pytest.raises(Exception, match=r"stages\.midtrain\.overrides\.train\.stepz"):
    train_and_evaluate(config, str(tmp_path / "x"))
  config = _in_process_smoke()
  config.stage_order = ("pretrain",)
  config.train.update(steps=2, tensorboard=True, progress=False)
  workdir = str(tmp_path / "compat")
  train_and_evaluate(config, workdir)
  assert any(f.startswith("events") for f in os.listdir(os.path.join(workdir, "tensorboard")))
  other = _in_process_smoke()
  other.stage_order = ("pretrain",)
  other.model.hidden_size = 32
  with pytest.raises(CheckpointMismatchError, match="incompatible"):
    train_and_evaluate(other, workdir)
  # One training process per workdir: while another holds the lock a run is refused before any work, naming the
  # workdir and the holder's pid; the runs above released it, by finishing and by failing.
  held = workdir_lock.acquire(workdir)
  try:
    with pytest.raises(workdir_lock.WorkdirInUseError, match=rf"{workdir} is in use .*\(pid {os.getpid()}\)"):
      train_and_evaluate(config, workdir)
  finally:
    workdir_lock.release(held)
  assert not workdir_lock.in_use(workdir)


def test_loss_falls_and_stages_chain(tmp_path):
  """Loss clearly falls; the second stage starts from the first stage's final parameters."""
  config = _in_process_smoke()
  config.train.update(steps=40, eval_every=0, checkpoint_every=100, tensorboard=False, progress=False)
  config.optim.update(learning_rate=1e-2, warmup_steps=5)
  workdir = str(tmp_path / "falls")
  rows = train_and_evaluate(config, workdir)
  losses = _losses(workdir)
  first, last = np.mean([losses[s] for s in (1, 2, 3)]), np.mean([losses[s] for s in (38, 39, 40)])
  assert last < first - 0.7, (first, last)  # ~ln(4096)=8.3 -> about 7.3 in 40 tiny steps
  assert rows[0]["eval_loss"] < first

  # Chaining: midtrain's first logged loss is the loss of pretrain's final params on midtrain's first batch.
  from llama4_jax.config import from_config_dict
  from llama4_jax.train.checkpoint import Checkpointer
  from llama4_jax.train.loop import resolve_stages
  from llama4_jax.train.step import eval_step
  (_, _, pre_cfg), (_, _, mid_cfg) = resolve_stages(config)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints", "pretrain"), 3, None, False)
  import orbax.checkpoint as ocp
  final = ckpt._manager.restore(40, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  ckpt.close()
  model_cfg = from_config_dict(mid_cfg.model)
  docs = train_data.documents(mid_cfg.data, model_cfg)
  batch = next(iter(train_data.train_batches(mid_cfg.data, docs["train"], mid_cfg.seed)))
  out = eval_step(jax.tree_util.tree_map(np.asarray, final["params"]), batch, model_cfg=model_cfg)
  np.testing.assert_allclose(float(out["ce"]) / float(out["tokens"]), losses[41], rtol=1e-5)


def test_run_stops_after_consecutive_nonfinite_updates(tmp_path):
  from llama4_jax.train.loop import NonFiniteError
  config = _in_process_smoke()
  config.stage_order = ("pretrain",)
  config.model.initializer_range = 1e30  # logits overflow: every loss is non-finite
  config.train.update(steps=10, max_nonfinite_in_a_row=3, tensorboard=False, progress=False, checkpoint_every=100)
  with pytest.raises(NonFiniteError, match="3 consecutive updates"):
    train_and_evaluate(config, str(tmp_path / "nan"))
  records = read_metrics(str(tmp_path / "nan"))
  assert [r["skipped"] for r in records if "skipped" in r] == [1.0, 1.0, 1.0]


def test_generate_command_loads_the_training_workdir(reference_run):
  from llama4_jax.generate import GenerationError, load_checkpoint
  from tests.integration.test_generate_cli import run_generate
  workdir, _ = reference_run
  cfg, params, tok = load_checkpoint(workdir)  # the last stage's newest checkpoint
  assert cfg.hidden_size == 64 and tok.vocab_size == cfg.vocab_size and params["embed"].shape == (4096, 64)
  # A named stage: pretraining's own model config (mid-training raised the RoPE base) and its own weights.
  pre_cfg, pre_params, _ = load_checkpoint(workdir, stage="pretrain")
  assert (pre_cfg.rope_theta, cfg.rope_theta) == (5e5, 2e6)
  assert not np.array_equal(np.asarray(pre_params["embed"]), np.asarray(params["embed"]))
  with pytest.raises(GenerationError, match="no stage 'sft' in this workdir"):
    load_checkpoint(workdir, stage="sft")
  code, out, err = run_generate(f"--checkpoint={workdir}", "--prompt=The function", "--max_new_tokens=4")
  assert code == 0, err
