"""`python -m llama4_jax.eval.run` end to end: a tiny vision-language model evaluated on the project's sample files
of every benchmark family (the README example), JSON + Markdown + predictions written; bad input fails early."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from llama4_jax.config import VisionConfig
from llama4_jax.convert.hf import save_hf
from llama4_jax.eval import suite
from llama4_jax.model import init_params
from tests.conftest import tiny_config
from tests.integration import subprocess_env

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(*args):
  return subprocess.run([sys.executable, "-m", "llama4_jax.eval.run", *args], cwd=REPO, env=subprocess_env(),
                        capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  vision = VisionConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128,
                        image_size=16, patch_size=4, projector_input_dim=16, projector_output_dim=16,
                        vision_output_dim=16, image_token_id=3840 + 92, max_num_tiles=4)
  cfg = tiny_config(vocab_size=4096, bos_token_id=3840, eos_token_id=3841, pad_token_id=3858, vision=vision,
                    max_position_embeddings=4096)
  params = jax.tree_util.tree_map(np.asarray, init_params(cfg, jax.random.key(0)))
  return save_hf(cfg, params, str(tmp_path_factory.mktemp("ckpt") / "hf"))


def test_every_family_runs_on_the_sample_files(hf_dir, tmp_path):
  out = tmp_path / "eval"
  proc = _run(f"--checkpoint={hf_dir}", f"--out={out}", "--limit=2", "--max_new_tokens=8")
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((out / "results.json").read_text())
  names = set(suite.all_benchmarks())
  assert set(results["tasks"]) == names and not results["skipped"] and len(names) == 14
  for name, r in results["tasks"].items():
    assert r["n"] == 2 and r["metric"] == suite.get(name).metric, name
    assert 0 <= r["score"] <= (100 if r["metric"] == "chrf" else 1), name
    rows = [json.loads(line) for line in (out / "predictions" / f"{name}.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all({"id", "answer", "score", "golds", "prediction"} <= set(r) for r in rows)
  md = (out / "results.md").read_text()
  assert "## Overall" in md and all(f"| {n} |" in md for n in names) and "**average**" in md
  assert "mmlu" in proc.stderr and "30/30" not in proc.stderr  # the progress bar: 2 questions x 4 choices = 8
  assert "8/8" in proc.stderr


def test_text_only_model_lists_the_multimodal_tasks_as_not_run(tmp_path):
  cfg = tiny_config(vocab_size=4096, bos_token_id=3840, eos_token_id=3841, pad_token_id=3858,
                    max_position_embeddings=4096)
  params = jax.tree_util.tree_map(np.asarray, init_params(cfg, jax.random.key(1)))
  ckpt = save_hf(cfg, params, str(tmp_path / "hf"))
  proc = _run(f"--checkpoint={ckpt}", f"--out={tmp_path / 'eval'}", "--tasks=mmlu,chartqa", "--limit=1")
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((tmp_path / "eval" / "results.json").read_text())
  assert list(results["tasks"]) == ["mmlu"] and "vision tower" in results["skipped"]["chartqa"]


def test_bad_input_fails_before_the_model_loads(hf_dir, tmp_path):
  proc = _run(f"--checkpoint={hf_dir}", f"--out={tmp_path}", "--tasks=mmlu,nonesuch")
  assert proc.returncode != 0 and "nonesuch" in proc.stderr and "known:" in proc.stderr
  proc = _run(f"--checkpoint={tmp_path / 'missing'}", f"--out={tmp_path}", "--tasks=gpqa", f"--data_dir={tmp_path}")
  assert proc.returncode != 0 and str(tmp_path / "gpqa") in proc.stderr  # the data fails first, naming its path
