"""Coordinate check: does a parameterization keep activation sizes independent of width? (issue 10)

    python -m llama4_jax.coord_check --config=configs/base.py:tiny --config.parameterization=mup \\
        --widths=64,128,256,512 --steps=4 --out=runs/coord_mup

For each width (the hidden size; attention heads at the config's head_dim, the dense FFN and expert widths scaled
with it; the config's own shape is the base shape wherever `param_scaling.base` leaves 0), the first stage of the
config trains `--steps` updates from one seed on the config's data with its optimizer and parameterization
(llama4_jax/parameterization.py). Before every update, and after the last, the model runs on that step's batch and
records the mean |x| of every layer's attention output, FFN / MoE output and residual stream, and of the logits.
Writes <out>.json (values[step][activation] = one value per width, plus the log-log slope of each curve) and
<out>.png (a panel per step, one line per activation, x = width, log-log axes). Under `mup` / `metap` the curves stay
flat in width after the first updates; under `standard` they grow (microsoft/mup's "coord check").
"""

from __future__ import annotations

import copy
import functools
import json
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from llama4_jax.config import ConfigError, model_config
from llama4_jax.model.multipliers import scale_leaves
from llama4_jax.model.transformer import Transformer


def scaled_config(config, width: int):
  """A copy of `config` at hidden size `width`: heads = width / head_dim (the key/value head ratio kept), FFN and
  expert widths scaled by width / hidden_size; `param_scaling.base` entries left at 0 become the config's own."""
  m = config.model
  ratio = width / m.hidden_size
  group = m.num_attention_heads // m.num_key_value_heads
  heads = width // m.head_dim
  if width % m.head_dim or heads % group:
    raise ConfigError(f"width {width} must be a multiple of model.head_dim={m.head_dim} x the query heads per "
                      f"key/value head ({group})")
  sizes = {"intermediate_size": m.intermediate_size * ratio, "intermediate_size_mlp": m.intermediate_size_mlp * ratio}
  for key, value in sizes.items():
    if value != int(value):
      raise ConfigError(f"width {width}: model.{key}={getattr(m, key)} x {ratio} is not an integer")
  out = copy.deepcopy(config)
  base = out.param_scaling.base
  for key in ("hidden_size", "num_attention_heads", "head_dim", "intermediate_size", "intermediate_size_mlp",
              "num_local_experts", "num_hidden_layers"):
    if not base[key]:
      base[key] = m[key]
  out.model.update(hidden_size=width, num_attention_heads=heads, num_key_value_heads=heads // group,
                   **{k: int(v) for k, v in sizes.items()})
  return out


def _activations(cfg, params, batch):
  """{name: mean |x|} for every layer's outputs ('layer_07/ffn_out', ...) and the logits."""
  (logits, _), inter = Transformer(cfg).apply({"params": scale_leaves(params, cfg.forward_multipliers)},
                                              batch["inputs"], batch["positions"], batch["segment_ids"],
                                              mutable=["intermediates"])
  out = {"logits": jnp.mean(jnp.abs(logits))}
  for j, layer in inter["intermediates"]["blocks"].items():
    for name, (values,) in layer.items():
      for b in range(cfg.num_blocks):
        out[f"layer_{b * cfg.block_size + int(j.split('_')[1]):02d}/{name}"] = values[b]
  return out


def record(config, width: int, steps: int) -> list[dict[str, float]]:
  """Per step (steps + 1 entries: before each update and after the last) the mean |x| of every activation."""
  from llama4_jax.train import data as train_data
  from llama4_jax.train.loop import resolve_stages
  from llama4_jax.train.optimizer import make_optimizer
  from llama4_jax.train.step import LossConfig, init_state, train_step
  from llama4_jax.model import init_params
  (_, _, cfg), *_ = resolve_stages(scaled_config(config, width))
  mcfg = model_config(cfg)
  params = init_params(mcfg, jax.random.key(cfg.seed))
  tx, schedule = make_optimizer(cfg.optim, params, cfg.train.steps)
  update = functools.partial(train_step, model_cfg=mcfg, train_cfg=LossConfig.from_config(cfg.train), tx=tx,
                             schedule=schedule)

  @jax.jit
  def measure_then_update(state, batch):  # one compile per width (the update after the last record is unused)
    return _activations(mcfg, state.params, batch), update(state, batch, None)[0]

  batches = iter(train_data.train_batches(cfg.data, train_data.documents(cfg.data, mcfg)["train"], cfg.seed, mcfg))
  state, out = init_state(params, tx), []
  for _ in range(steps + 1):
    acts, state = measure_then_update(state, {k: jnp.asarray(v) for k, v in next(batches).items()})
    out.append({k: float(v) for k, v in jax.device_get(acts).items()})
  return out


def slope(widths: Sequence[int], values: Sequence[float]) -> float:
  """Least-squares slope of log2(value) against log2(width): 0 = flat, 1 = grows like the width."""
  x, y = np.log2(np.asarray(widths, float)), np.log2(np.maximum(np.asarray(values, float), 1e-30))
  return float(np.polyfit(x, y, 1)[0])


def coord_check(config, widths: Sequence[int], steps: int) -> dict:
  runs = [record(config, w, steps) for w in widths]
  names = list(runs[0][0])
  values = [{n: [run[t][n] for run in runs] for n in names} for t in range(steps + 1)]
  slopes = [{n: slope(widths, v[n]) for n in names} for v in values]
  return {"parameterization": config.get("parameterization", "standard"), "widths": list(widths), "steps": steps,
          "values": values, "slopes": slopes,
          "mean_abs_slope": [float(np.mean([abs(s) for s in per.values()])) for per in slopes]}


def plot(result: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  n = len(result["values"])
  fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.4), sharey=True, squeeze=False)
  for t, ax in enumerate(axes[0]):
    for name, ys in result["values"][t].items():
      ax.plot(result["widths"], ys, color="black" if name == "logits" else None, lw=2 if name == "logits" else 0.8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(result["widths"], [str(w) for w in result["widths"]])
    ax.minorticks_off()
    ax.set(xlabel="width", title=f"step {t} (mean |slope| {result['mean_abs_slope'][t]:.2f})")
  axes[0][0].set_ylabel("mean |x|")
  fig.suptitle(f"coordinate check: {result['parameterization']}")
  fig.tight_layout()
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=90)
  plt.close(fig)
  os.replace(tmp, path)


def write(result: dict, out: str) -> tuple[str, str]:
  """<out>.json and <out>.png, each written to a temporary name and renamed."""
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out + ".json.tmp", "w") as f:
    json.dump(result, f, indent=1)
  os.replace(out + ".json.tmp", out + ".json")
  plot(result, out + ".png")
  return out + ".json", out + ".png"


def main(argv):
  del argv
  from absl import flags
  f = flags.FLAGS
  widths = [int(w) for w in f.widths]
  if len(widths) < 2 or sorted(set(widths)) != widths:
    raise ConfigError(f"--widths must be at least two increasing values, got {f.widths}")
  result = coord_check(f.config, widths, f.steps)
  for path in write(result, f.out):
    print(path)
  print("mean |log-log slope| per step:", " ".join(f"{s:.3f}" for s in result["mean_abs_slope"]))


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", "configs/base.py:tiny", "experiment config (first stage is used)")
  flags.DEFINE_list("widths", ["64", "128", "256", "512"], "hidden sizes")
  flags.DEFINE_integer("steps", 4, "updates to record")
  flags.DEFINE_string("out", "coord_check", "output prefix (<out>.json, <out>.png)")
  app.run(main)
