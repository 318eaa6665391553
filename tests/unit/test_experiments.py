"""Every experiment config under experiments/ resolves (stage kinds, overrides, task and RL settings) without running.

Resolved in a one-device subprocess, as a user runs them (this test process has 8 simulated devices, which would
ask every batch to split eight ways)."""

import glob
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import base
from llama4_jax import sweep
from tests.integration import subprocess_env

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = sorted(glob.glob(os.path.join(REPO, "experiments", "*", "config.py")) +
                 glob.glob(os.path.join(REPO, "experiments", "*.py")))

_RESOLVE = """
import importlib.util, sys
from llama4_jax.train.loop import resolve_stages
for path in sys.argv[1:]:
  spec = importlib.util.spec_from_file_location("experiment_config", path)
  module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
  for variant in ("", "smoke"):
    config = module.get_config(variant)
    names = [name for name, _, _ in resolve_stages(config)]
    assert names == list(config.stage_order), (path, variant, names)
    print("resolved", path, variant or "-", ",".join(config.stages[n].kind for n in names))
"""


def _load(path):
  spec = importlib.util.spec_from_file_location("experiment_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_every_experiment_and_its_smoke_variant_resolve():
  assert any(p.endswith(os.path.join("2026_11_28_curriculum", "config.py")) for p in CONFIGS)
  out = subprocess.run([sys.executable, "-c", _RESOLVE, *CONFIGS], cwd=REPO, env=subprocess_env(),
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.count("resolved") == 2 * len(CONFIGS), out.stdout


def test_curriculum_follows_the_llama4_order():
  config = _load(os.path.join(REPO, "experiments", "2026_11_28_curriculum", "config.py")).get_config("")
  assert [config.stages[name].kind for name in config.stage_order] == ["lm", "lm", "sft", "rl", "sft", "rl", "dpo"]
  # The second RL stage is the multimodal one: image-task prompts on the model's vision tower mixed with the text
  # tasks, after an SFT stage on the same mix; the first SFT and RL stages are text only.
  sft_vision, rl_vision = (config.stages[n].overrides for n in config.stage_order[4:6])
  assert config.model.vision.enabled and any(f.startswith("image_") for f in rl_vision.tasks.families)
  assert set(rl_vision.tasks.families) == set(sft_vision.tasks.families)
  assert set(config.tasks.families) < set(rl_vision.tasks.families)
  assert not any(f.startswith("image_") for f in config.tasks.families)


def test_curriculum_paired_evaluation_statistics():
  paired = _load(os.path.join(REPO, "experiments", "2026_11_28_curriculum", "paired_eval.py"))
  # Exact McNemar: 25 problems gained and 10 lost -> 2 * P(Binomial(35, 1/2) <= 10).
  want = 2 * sum(__import__("math").comb(35, i) for i in range(11)) / 2 ** 35
  assert abs(paired.mcnemar_p(25, 10) - want) < 1e-12 and 0.016 < want < 0.017
  assert paired.mcnemar_p(0, 0) == 1.0 and paired.mcnemar_p(7, 7) == 1.0 and paired.mcnemar_p(6, 0) == 2 / 64
  before = np.array([1, 1, 0, 0, 1, 0], bool)
  after = np.array([1, 0, 1, 1, 1, 0], bool)
  out = paired.compare(before, after, ["a", "a", "a", "b", "b", "b"])
  assert out["all"] == {"problems": 6, "before": 0.5, "after": 0.6667, "gained": 2, "lost": 1, "mcnemar_p": 1.0}
  assert (out["a"]["gained"], out["a"]["lost"], out["b"]["gained"], out["b"]["lost"]) == (1, 1, 1, 0)


def test_metap_transfer_sweeps_span_the_issue_ranges_and_resolve():
  from llama4_jax.train.loop import resolve_stages
  module = _load(os.path.join(REPO, "experiments", "2026_11_28_metap_transfer", "config.py"))
  for arg, key, span in (("metap,width", "model.hidden_size", 8), ("standard,depth", "model.num_hidden_layers", 4),
                         ("metap,batch", "data.batch_size", 4)):
    runs = module.get_sweep(arg)
    lrs = sorted({r["optim.learning_rate"] for r in runs})
    values = sorted({r[key] for r in runs})
    assert len(lrs) >= 6 and all(b == 2 * a for a, b in zip(lrs, lrs[1:]))  # powers of two
    assert values[-1] == span * values[0] and len(runs) == len(lrs) * len(values)
    if key == "data.batch_size":  # a fixed token budget across batch sizes
      assert len({r["data.batch_size"] * r["train.steps"] for r in runs}) == 1
    config = module.get_config(arg)
    assert config.parameterization == arg.split(",")[0]
    for run in (runs[0], runs[-1]):  # the extremes resolve (shapes, heads, batch splits)
      c = module.get_config(arg)
      for dotted, value in run.items():
        section, name = dotted.split(".")
        c[section][name] = value
      (_, _, cfg), = resolve_stages(c)
      assert cfg.model[key.split(".")[1]] == run[key] if key.startswith("model") else cfg.data.batch_size == run[key]


def test_metap_transfer_long_variant_runs_whole_seeds_first_and_summarize_averages_seeds(tmp_path):
  folder = os.path.join(REPO, "experiments", "2026_11_28_metap_transfer")
  module = _load(os.path.join(folder, "config.py"))
  runs = module.get_sweep("metap,long")
  widths = sorted({r["model.hidden_size"] for r in runs})
  assert widths[-1] == 8 * widths[0] and module.get_config("metap,long").train.steps >= 1000
  half = len(runs) // 2
  assert {r["seed"] for r in runs[:half]} == {0} and {r["seed"] for r in runs[half:]} == {1}
  assert [{k: v for k, v in r.items() if k != "seed"} for r in runs[:half]] == \
      [{k: v for k, v in r.items() if k != "seed"} for r in runs[half:]]
  with pytest.raises(ValueError, match="width and batch axes only"):
    module.get_config("metap,depth,long")
  # long on the batch axis: the same tokens at every batch size, the warm-up fixed in tokens; its base-batch runs
  # are the width sweep's width-64 runs (every override is that config's default)
  batch = module.get_sweep("metap,batch,long")
  assert sorted({r["data.batch_size"] for r in batch}) == [8, 16, 32] and [r["seed"] for r in batch[:1]] == [0]
  assert {r["data.batch_size"] * r["train.steps"] for r in batch} == {8 * module.get_config("metap,long").train.steps}
  assert {r["data.batch_size"] * r["optim.warmup_steps"] for r in batch} == {8 * 20}
  assert {r["train.eval_every"] - r["train.steps"] for r in batch} == {0}
  base_runs = [r for r in batch if r["data.batch_size"] == 8]
  config = module.get_config("metap,batch,long")
  assert all(config[k.split(".")[0]][k.split(".")[1]] == v for r in base_runs for k, v in r.items()
             if k.startswith(("data.", "train.", "optim.warmup")))
  assert config == module.get_config("metap,long")
  # metap couples the hidden matrices' weight decay to their width LR rule; `uncoupled` (the rule of the sweeps
  # before 2026-12-06) keeps the decay coefficient fixed
  for arg, want in (("metap,long", 1.0), ("metap,long,uncoupled", 0.0)):
    rules = module.get_config(arg).param_scaling.metap
    assert rules.routed_experts.wd_width == rules.attn_q.wd_width == want and rules.embedding.wd_width == 0.0
  # any metap constant or exponent from the variant, for sweeps over the rules themselves
  config = module.get_config("metap,long,norms.lr_width=-1,embedding.lr_width=-0.5")
  assert (config.param_scaling.metap.norms.lr_width, config.param_scaling.metap.embedding.lr_width) == (-1.0, -0.5)
  assert module.get_sweep("metap,long,norms.lr_width=-1") == module.get_sweep("metap,long")
  rules = module.get_config("metap,hidden.lr_width=-1.5,hidden.wd_width=1.5").param_scaling.metap
  assert [rules[g].lr_width for g in module.HIDDEN_GROUPS] == [-1.5] * 7 and rules.router.lr_width == 0.0
  assert rules.routed_experts.wd_width == 1.5 and rules.embedding.lr_width == rules.norms.lr_width == 0.0
  assert set(module.HIDDEN_GROUPS) == {g for g, r in base.param_scaling_config().metap.items() if r.lr_width == -1}
  for arg, message in (("metap,norm.lr_width=-1", "no param_scaling.metap.norm.lr_width"),
                       ("metap,norms.lr=fast", "'fast' is not a number"), ("standard,norms.lr=2", "set metap rules")):
    with pytest.raises(ValueError, match=message):
      module.get_config(arg)
  # part of a sweep by learning-rate range, seed and width; the runs keep their names in the whole sweep
  whole = {sweep.run_name(r) for r in module.get_sweep("metap,long")}
  part = module.get_sweep("metap,long,lr=-8:-7,seed=1,width=64,hidden.lr=0.25")
  assert sorted((r["optim.learning_rate"], r["seed"], r["model.hidden_size"]) for r in part) == \
      [(2.0 ** -8, 1, 64), (2.0 ** -7, 1, 64)]
  assert {sweep.run_name(r) for r in part} <= whole
  assert module.get_config("metap,long,lr=-8:-7,seed=1,width=64") == module.get_config("metap,long")
  beyond = module.get_sweep("metap,depth,lr=-5:-4,seed=1")
  assert sorted({r["optim.learning_rate"] for r in beyond}) == [2.0 ** -5, 2.0 ** -4] and len(beyond) == 6
  assert {r["seed"] for r in beyond} == {1} and "seed" not in module.get_sweep("metap,depth,seed=0")[0]
  for arg, message in (("metap,lr=-4:-6", "a <= b"), ("metap,long,seed=one", "'one' is not an integer"),
                       ("metap,long,width=48", "selects no run")):
    with pytest.raises(ValueError, match=message):
      module.get_sweep(arg)
  rows = [{"name": f"a{s}", "seed": s, "optim.learning_rate": 0.5, "model.hidden_size": 32,
           "final_train_loss": 1.0 + s, "final_eval_loss": 2.0 + s} for s in (0, 1)]
  rows.append({"name": "b0", "seed": 0, "optim.learning_rate": 0.25, "model.hidden_size": 32,
               "final_train_loss": 5.0, "final_eval_loss": 5.0})
  mean = sorted(sweep.seed_mean(rows), key=lambda r: r["optim.learning_rate"])
  assert [(r["seeds"], r["final_train_loss"], r["final_eval_loss"]) for r in mean] == [(1, 5.0, 5.0), (2, 1.5, 2.5)]
