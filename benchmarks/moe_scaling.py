"""MoE layer time against the number of experts at fixed active parameters (measures; asserts nothing).

    python benchmarks/moe_scaling.py --experts=8,16,32,64,128 --impls=blocked,ragged_dot --tokens=2048,32768

One routed-expert layer of the tiny preset's width (D=256, expert width F=512, top-1, so the parameters each token
uses stay fixed while the total grows with E), for each of `--tokens` token counts, forward + backward
(`jax.value_and_grad` of a scalar of the output with respect to the input and all expert weights) with each
`kernels.moe` path in `--impls`. Router logits are random, so the load is roughly balanced. Per (tokens, impl, E):
the median of `--repeats` jitted calls, timed in rounds over all E (alternating in order, after an untimed round);
ratios are to the smallest E of the same impl and tokens.

Beside each time it prints what the layer cannot avoid: the routed matmuls' FLOPs (fixed in E) and the expert
weights' bytes (growing with E: every expert's weights are read by the forward and by the input gradient, and its
weight gradient is written, 3 x the bytes), with the machine's fp32 matmul rate and its copy bandwidth measured in
the same run, so `model_s` = FLOPs / rate + 3 x weight bytes / bandwidth is the time of an ideal dispatch and
`model_ratio` its growth with E. At few tokens per expert the weight traffic dominates whatever the dispatch does.

`--layer=model` times the model's whole MoE layer instead (llama4_jax/model/moe.py as the decoder runs it: the
router, the routed experts through `kernels.moe`, the always-on shared expert of the same width and the load
statistics; gradients with respect to the input and every parameter), with the same router and expert weights as
the routed-only layer. The shared expert's cost does not grow with E, so this ratio is the smaller of the two; the
routed-only default is the measure of the dispatch itself. Prints one JSON line.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from absl import app, flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import flax.linen as nn  # noqa: E402

from benchmarks.timing import matmul_gflops  # noqa: E402
from configs import models  # noqa: E402
from llama4_jax.config import from_config_dict  # noqa: E402
from llama4_jax.host_memory import applied_mode, retain_freed_host_memory  # noqa: E402
from llama4_jax.model.moe import MoE  # noqa: E402
from llama4_jax.ops import moe as moe_ops  # noqa: E402

EXPERTS = flags.DEFINE_list("experts", "8,16,32,64,128", "expert counts")
IMPLS = flags.DEFINE_list("impls", "blocked,ragged_dot", "kernels.moe paths to time")
TOKENS = flags.DEFINE_list("tokens", "2048", "token counts through the layer (8 x 256 in the training benchmarks)")
HIDDEN = flags.DEFINE_integer("hidden", 256, "model width D")
WIDTH = flags.DEFINE_integer("width", 512, "expert width F")
TOP_K = flags.DEFINE_integer("top_k", 1, "experts per token")
REPEATS = flags.DEFINE_integer("repeats", 7, "timed calls per point")
LAYER = flags.DEFINE_enum("layer", "routed", ["routed", "model"],
                          "routed: the routed experts alone (router + dispatch); model: the model's whole MoE layer "
                          "(model/moe.py: router, routed experts, shared expert, load statistics)")


COPY_BYTES = 256 << 20


def copy_gbps(repeats: int) -> float:
  """Median GB/s (bytes read + written) of a jitted out-of-place scale of a 256 MiB fp32 array."""
  x = jnp.ones((COPY_BYTES // 4,), jnp.float32)
  scale = jax.jit(lambda a: a * 1.5)
  jax.block_until_ready(scale(x))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(scale(x))
    times.append(time.perf_counter() - t0)
  return 2 * COPY_BYTES / statistics.median(times) / 1e9


def layer_costs(t: int, e: int) -> tuple[float, float]:
  """(matmul FLOPs of forward + backward, weight bytes) of one call: the routed experts', plus with `--layer=model`
  the router's and the shared expert's."""
  d, f, k = HIDDEN.value, WIDTH.value, TOP_K.value
  per_token = 2 * (d * 2 * f + f * d)  # gate/up and down, one expert
  flop, weights = 3 * per_token * t * k, e * (d * 2 * f + f * d)
  if LAYER.value == "model":
    flop += 3 * (per_token + 2 * d * e) * t
    weights += d * 2 * f + f * d + d * e
  return flop, 4 * weights


def build_layer(impl: str, e: int, t: int):
  """(jitted forward + backward, its arguments), compiled and run once."""
  d, f, k = HIDDEN.value, WIDTH.value, TOP_K.value
  keys = jax.random.split(jax.random.key(e), 4)
  x = jax.random.normal(keys[0], (t, d), jnp.float32)
  router = jax.random.normal(keys[1], (d, e), jnp.float32)
  gate_up = jax.random.normal(keys[2], (e, d, 2, f), jnp.float32) * d ** -0.5
  down = jax.random.normal(keys[3], (e, f, d), jnp.float32) * f ** -0.5

  if LAYER.value == "model":
    return build_model_layer(impl, x, router, gate_up, down)

  def loss(x, gate_up, down):
    scores, experts, _ = moe_ops.route(x, router, k)
    y, _ = moe_ops.dispatch(impl, x, scores, experts, gate_up, down)
    return jnp.sum(y * y)

  fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
  args = (x, gate_up, down)
  jax.block_until_ready(fn(*args))
  return fn, args


def build_model_layer(impl: str, x_TD, router, gate_up, down):
  """The model's MoE module (one row of T tokens) with the given router and expert weights; forward + backward
  with respect to the input and all its parameters (router and shared expert included)."""
  e, d, _, f = gate_up.shape
  mcfg = models.tiny()
  mcfg.update(dict(hidden_size=d, intermediate_size=f, num_local_experts=e, num_experts_per_tok=TOP_K.value))
  cfg = from_config_dict(mcfg, {"moe": impl})
  module = MoE(cfg)
  x_BLD, valid_BL = x_TD[None], jnp.ones((1, x_TD.shape[0]), bool)
  params = nn.meta.unbox(module.init(jax.random.key(1), x_BLD, valid_BL))["params"]
  params.update(router=router, gate_up=gate_up, down=down)

  def loss(x_BLD, params):
    y, stats = module.apply({"params": params}, x_BLD, valid_BL)
    return jnp.sum(y * y) + sum(jnp.sum(v) for v in jax.tree_util.tree_leaves(stats))

  fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
  args = (x_BLD, params)
  jax.block_until_ready(fn(*args))
  return fn, args


def time_layers(impl: str, experts, t: int) -> dict:
  """Median seconds per expert count, timed in rounds that visit every expert count once (after one untimed
  round), so that a slow spell of the machine or the process's warm-up falls on all of them alike."""
  layers = {e: build_layer(impl, e, t) for e in experts}
  times = {e: [] for e in experts}
  for r in range(REPEATS.value + 1):
    for e in (experts if r % 2 else experts[::-1]):
      fn, args = layers[e]
      t0 = time.perf_counter()
      jax.block_until_ready(fn(*args))
      if r:
        times[e].append(time.perf_counter() - t0)
  return {e: statistics.median(ts) for e, ts in times.items()}


def main(argv):
  del argv
  experts = [int(e) for e in EXPERTS.value]
  tokens = [int(t) for t in TOKENS.value]
  gflops = max(matmul_gflops(((1024, 1024, 1024), (2048, 256, 1024)), 10).values())
  gbps = copy_gbps(7)
  out = {}
  for t in tokens:
    out[str(t)] = {}
    for impl in IMPLS.value:
      rows = time_layers(impl, experts, t)
      model = {}
      for e in experts:
        flop, nbytes = layer_costs(t, e)
        model[e] = flop / (gflops * 1e9) + 3 * nbytes / (gbps * 1e9)
      out[str(t)][impl] = {
          str(e): {"seconds": round(s, 5), "ratio_to_first": round(s / rows[experts[0]], 3),
                   "achieved_gflops": round(layer_costs(t, e)[0] / s / 1e9, 1),
                   "expert_weight_mb": round(layer_costs(t, e)[1] / 1e6, 1), "model_s": round(model[e], 5),
                   "model_ratio": round(model[e] / model[experts[0]], 3), "tokens_per_expert": t * TOP_K.value // e}
          for e, s in rows.items()}
  print(json.dumps({"benchmark": "moe_scaling", "layer": LAYER.value, "tokens": tokens, "hidden": HIDDEN.value,
                    "expert_width": WIDTH.value, "top_k": TOP_K.value, "matmul_gflops": round(gflops, 1),
                    "copy_gbps": round(gbps, 2), "by_tokens": out,
                    "host_malloc": applied_mode(), "jax": jax.__version__,
                    "device": str(jax.devices()[0])}))


if __name__ == "__main__":
  retain_freed_host_memory()  # before the CPU backend starts (llama4_jax/host_memory.py)
  app.run(main)
