"""Two local processes x four CPU devices (jax.distributed over 127.0.0.1, gloo collectives) train exactly like one
process x eight devices: same global batches, same sharded step, same losses."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


def _launch(workdir: Path, processes: int, devices: int) -> list[dict]:
  cmd = [sys.executable, "-m", "llama4_jax.launch", f"--num_processes={processes}",
         f"--devices_per_process={devices}", "--", "--config=configs/default.py:smoke", f"--workdir={workdir}",
         "--config.stage_order=('pretrain',)", "--config.train.steps=4", "--config.train.checkpoint_every=2",
         "--config.train.eval_every=0", "--config.data.batch_size=8", "--config.mesh.data=2",
         "--config.mesh.expert=4", "--config.train.progress=False"]
  env = dict(os.environ, XLA_FLAGS="")
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  with open(workdir / "metrics.jsonl") as f:
    return [json.loads(line) for line in f]


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
  one = _launch(tmp_path / "one", 1, 8)
  two = _launch(tmp_path / "two", 2, 4)
  loss = lambda rows: np.asarray([r["loss"] for r in rows if "loss" in r])  # noqa: E731
  assert len(loss(two)) == 4, "metrics must be written once (by process 0), one line per step"
  np.testing.assert_allclose(loss(two), loss(one), rtol=1e-5)
  assert [r["step"] for r in two if "loss" in r] == [1, 2, 3, 4]
  evals = lambda rows: [r["eval_loss"] for r in rows if "eval_loss" in r]  # noqa: E731
  np.testing.assert_allclose(evals(two), evals(one), rtol=1e-5)
  # The collective checkpoint is complete: every step directory orbax finished, none left temporary.
  steps = sorted(p.name for p in (tmp_path / "two" / "checkpoints" / "pretrain").iterdir() if p.name.isdigit())
  assert steps[-1] == "4"


def test_launch_reports_the_failing_process(tmp_path):
  """A process that exits with an error stops the run and its exit code comes back (no hang)."""
  cmd = [sys.executable, "-m", "llama4_jax.launch", "--num_processes=2", "--devices_per_process=1", "--",
         "--config=configs/default.py:smoke", f"--workdir={tmp_path}", "--config.mesh.dta=1"]
  proc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, XLA_FLAGS=""), capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode != 0
  assert "dta" in proc.stdout + proc.stderr
