"""The length-generalization study (experiments/2026_11_28_length_generalization): its arms set the layer patterns
and extension methods they name, and one arm runs end to end (pretrain, mid-train with YaRN, length probes)."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.integration import subprocess_env

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXPERIMENT = os.path.join(REPO, "experiments", "2026_11_28_length_generalization", "config.py")


def _module():
  spec = importlib.util.spec_from_file_location("length_study", EXPERIMENT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


# Resolved in a one-device subprocess, as the study runs (this test process has 8 simulated devices).
_RESOLVE = """
import importlib.util, json, sys
from llama4_jax.config import model_config
from llama4_jax.train.loop import resolve_stages
spec = importlib.util.spec_from_file_location("length_study", sys.argv[1])
module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
out = {}
for arm in sys.argv[2:]:
  out[arm] = []
  for name, _, cfg in resolve_stages(module.get_config(arm)):
    m = model_config(cfg)
    rs = m.rope_scaling
    out[arm].append(dict(stage=name, rope=[m.is_rope_layer(i) for i in range(m.num_hidden_layers)],
                         chunk=m.attention_chunk_size, theta=m.rope_theta, temp=m.attn_temperature_tuning,
                         floor=m.floor_scale, kind=rs.rope_type if rs else None,
                         original=rs.original_max_position_embeddings if rs else None, seq=cfg.data.seq_len,
                         batch=cfg.data.batch_size))
print(json.dumps(out))
"""


def test_arms_set_the_patterns_and_methods_they_name():
  arms = ["rope", "irope", "nope", "rope,pi", "rope,yarn", "rope,abf", "rope,none", "rope,dynamic"]
  proc = subprocess.run([sys.executable, "-c", _RESOLVE, EXPERIMENT, *arms], cwd=REPO, env=subprocess_env(),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = json.loads(proc.stdout.strip().splitlines()[-1])
  (rope,), (irope,), (nope,) = got["rope"], got["irope"], got["nope"]
  assert all(rope["rope"]) and rope["chunk"] is None
  assert irope["rope"] == [True, True, True, False] and irope["chunk"] == 64
  assert not irope["temp"] and irope["floor"] == 64  # temperature tuning is switched on at evaluation only
  assert not any(nope["rope"])
  for arm, want in (("rope,pi", ("linear", 10000.0)), ("rope,yarn", ("yarn", 10000.0)), ("rope,abf", (None, 160000.0)),
                    ("rope,none", (None, 10000.0)), ("rope,dynamic", ("dynamic", 10000.0))):
    pre, mid = got[arm]
    assert (pre["stage"], mid["stage"]) == ("pretrain", "midtrain") and pre["kind"] is None, arm
    assert (mid["kind"], mid["theta"]) == want and all(mid["rope"]), arm
    assert (pre["seq"], mid["seq"]) == (256, 1024) and pre["seq"] * pre["batch"] == mid["seq"] * mid["batch"], arm
  assert got["rope,yarn"][1]["original"] == 256 and got["rope,dynamic"][1]["original"] == 256
  with pytest.raises(ValueError, match="applies to the `rope` pattern"):
    _module().get_config("irope,pi")
  with pytest.raises(ValueError, match="unknown variant"):
    _module().get_config("alibi")


@pytest.mark.slow
def test_yarn_arm_trains_and_is_probed_past_its_length(tmp_path):
  env = subprocess_env()
  workdir = tmp_path / "len"
  run = subprocess.run([sys.executable, "-m", "llama4_jax.main", f"--config={EXPERIMENT}:rope,yarn,smoke",
                        f"--workdir={workdir}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert run.returncode == 0, run.stderr[-3000:]
  out = tmp_path / "eval"
  probe = subprocess.run([sys.executable, "-m", "llama4_jax.eval.length", f"--checkpoint={workdir}",
                          "--lengths=64,256", "--rows=1", "--bins=4", "--passkey_depths=0.5", "--passkey_trials=1",
                          "--needle_trials=0", "--train_length=64", f"--out={out}"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert probe.returncode == 0, probe.stderr[-3000:]
  result = json.loads((out / "length.json").read_text())
  assert result["model"]["rope_scaling"]["rope_type"] == "yarn"  # the mid-trained stage's model was loaded
  assert set(result["loss"]) == {"64", "256"} and result["needle"] == {}


def test_summary_reads_the_probes_and_finds_how_far_each_arm_generalizes(tmp_path):
  spec = importlib.util.spec_from_file_location("length_summary", os.path.join(os.path.dirname(EXPERIMENT),
                                                                                 "summarize.py"))
  summary = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(summary)

  def result(ppls, past):
    loss = {str(n): {"ppl": p, "bins": [{"start": 0, "end": n // 2, "mean": 0.0},
                                        {"start": n // 2, "end": n, "mean": past}]} for n, p in ppls.items()}
    return {"lengths": list(ppls), "loss": loss, "passkey": {"256": {"0.0": 1.0, "1.0": 0.0}}, "needle": {}}

  r = result({256: 10.0, 512: 10.5, 1024: 12.0, 2048: 10.0}, 2.0)
  assert summary.generalizes_to(r, 256, 0.1) == 512  # 1024 breaks the 10% band; 2048 back inside does not count
  assert summary.generalizes_to(r, 128, 0.1) is None
  assert summary.past_training_ppl(r, 512, 256) == pytest.approx(2.718281828 ** 2.0)  # only the bin from 256 on
  assert summary.past_training_ppl(r, 256, 256) is None
  for arm, name in (("len_rope", "eval"), ("len_irope", "eval_temp")):
    os.makedirs(tmp_path / arm / name)
    (tmp_path / arm / name / "length.json").write_text(json.dumps(r))
  found = summary.load(str(tmp_path))
  assert [label for label, _, _ in found] == ["rope", "irope + temperature tuning"]
  text = summary.tables(found, 0.1)
  assert "| rope | 10.0 (1.00) | 10.5 (1.05) | 12.0 (1.20) | 10.0 (1.00) | 512 |" in text
  assert "| rope | 0.50 |" in text  # passkey: the mean over depths
  assert len(summary.plot(found, str(tmp_path / "plots"))) == 2
