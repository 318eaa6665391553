"""Train-step throughput of the main job on 1 device vs meshes of simulated CPU devices (measures; asserts nothing).

    python benchmarks/scale_out.py --config=configs/default.py --devices=8 \
        --meshes="data=8 expert=8 data=2,expert=4 fsdp=8" --warmup=3 --steps=10

The device count is fixed when JAX starts, so the parent runs every configuration in a fresh subprocess of this
script (`--mode=worker --mesh=...`): first one device (no mesh, `parallel=None`, as `llama4_jax/train/loop.py`
runs when the mesh has one device), then each mesh of `--meshes` on `--devices` devices
(XLA_FLAGS=--xla_force_host_platform_device_count). Each worker builds what `run_stage` builds for the stage
`--stage` (params and TrainState sharded by `sharding.param_specs` / `state_specs`, the batch split over the batch
axes, the train step jitted with those shardings and the state donated), compiles it ahead of time, times
`--steps` steps after `--warmup` untimed ones on a `synthetic_batch` of the stage's data shapes, and prints one JSON
line; the parent prints each worker's line and then one summary line with the ratios to one device. Each worker
also times a 1024^3 fp32 matmul before and after its steps: the host's speed drifts (shared machine), and this shows
by how much while that worker ran.

All-to-all traffic per train step and device, for meshes with an `expert` axis and the `all_to_all` transport:
  * analytic: per MoE layer, 2 (dispatch + combine) x 2 (forward + backward) buffers of ep x (E/ep) x C x D
    elements, C = capacity(local assignments, E, capacity_factor) (llama4_jax/ops/moe.py, as the transport uses
    it); (ep - 1) / ep of it leaves the device;
  * from the compiled HLO: the operand bytes of every `all-to-all` op, each counted as many times as its
    computation runs (while-loop bodies times their known trip count).
On simulated CPU devices that share the machine's cores, the mesh rows measure overhead and correctness (first loss,
dropped assignments), not speedup.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from absl import app, flags  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from benchmarks.timing import matmul_gflops, timed_steps  # noqa: E402
from llama4_jax import sharding  # noqa: E402
from llama4_jax.config import model_config  # noqa: E402
from llama4_jax.host_memory import retain_freed_host_memory  # noqa: E402
from llama4_jax.model import init_params  # noqa: E402
from llama4_jax.ops.moe import capacity  # noqa: E402  (the all_to_all transport's C)
from llama4_jax.train.loop import resolve_stages  # noqa: E402
from llama4_jax.train.optimizer import make_optimizer  # noqa: E402
from llama4_jax.train.step import LossConfig, init_state, synthetic_batch, train_step  # noqa: E402

CONFIG = config_flags.DEFINE_config_file("config", os.path.join(ROOT, "configs/default.py"),
                                         "experiment config file[:variant], as for llama4_jax.main")
STAGE = flags.DEFINE_string("stage", "pretrain", "stage whose model and data shapes are measured")
MODE = flags.DEFINE_enum("mode", "parent", ["parent", "worker"], "parent: run every configuration in a subprocess")
DEVICES = flags.DEFINE_integer("devices", 8, "simulated CPU devices for the mesh runs")
MESHES = flags.DEFINE_string("meshes", "data=8 expert=8 data=2,expert=4 fsdp=8",
                             "space-separated meshes (sharding.parse_mesh syntax) run on --devices devices")
MESH = flags.DEFINE_string("mesh", "", "worker: the mesh ('' = one device, no mesh)")
TRANSPORT = flags.DEFINE_string("transport", "all_to_all", "expert_parallel.transport of the mesh runs")
CAPACITY_FACTOR = flags.DEFINE_float("capacity_factor", 2.0, "expert_parallel.capacity_factor of the mesh runs")
STEPS = flags.DEFINE_integer("steps", 10, "timed train steps")
WARMUP = flags.DEFINE_integer("warmup", 3, "untimed steps after the compile")
TIMEOUT = flags.DEFINE_integer("timeout", 900, "seconds allowed per worker")
PEAK_REPEATS = flags.DEFINE_integer("peak_repeats", 10, "timed 1024^3 fp32 matmuls before and after each worker's "
                                    "steps (how fast the host was during that worker)")

WORKER_FLAGS = ("mode", "mesh", "devices", "meshes", "timeout")  # set by the parent for each worker
HLO_BYTES = {"f64": 8, "s64": 8, "u64": 8, "f32": 4, "s32": 4, "u32": 4, "bf16": 2, "f16": 2, "s16": 2, "u16": 2,
             "s8": 1, "u8": 1, "pred": 1}
COLLECTIVES = ("all-to-all", "all-gather", "all-reduce", "reduce-scatter", "collective-permute")


def _square_matmul_gflops() -> float:
  """fp32 GFLOP/s of a 1024^3 matmul on the first device."""
  return matmul_gflops([(1024, 1024, 1024)], PEAK_REPEATS.value)["1024x1024x1024"]


def stage_config(config, mesh_text: str):
  """The stage's fully overridden config with the worker's mesh and transport, validated as the loop does."""
  cfg = copy.deepcopy(config)
  cfg.stage_order = (STAGE.value,)
  if mesh_text:
    cfg.mesh.update(dict(data=1, fsdp=1, expert=1, tensor=1))
    cfg.mesh.update(dataclasses.asdict(sharding.parse_mesh(mesh_text)))
  else:
    cfg.mesh.update(dict(data=-1, fsdp=1, expert=1, tensor=1))
  cfg.expert_parallel.update(dict(transport=TRANSPORT.value, capacity_factor=CAPACITY_FACTOR.value))
  ((_, _, resolved),) = resolve_stages(cfg)
  return resolved


def build(cfg):
  """(model_cfg, mesh, parallel, state, batch sharding, jitted donated step) as llama4_jax.train.loop.run_stage."""
  model_cfg = model_config(cfg)
  mesh = sharding.make_mesh(sharding.MeshConfig.from_config(cfg.mesh))
  parallel = sharding.parallel_from_config(cfg, mesh) if mesh.size > 1 else None
  param_sh = sharding.named(mesh, sharding.param_specs(model_cfg, mesh))
  batch_sh = NamedSharding(mesh, sharding.batch_spec())
  params = jax.jit(functools.partial(init_params, model_cfg), out_shardings=param_sh)(jax.random.key(cfg.seed))
  tx, schedule = make_optimizer(cfg.optim, params, cfg.train.steps)
  abstract = jax.eval_shape(functools.partial(init_state, tx=tx), params)
  state_sh = sharding.state_shardings(model_cfg, mesh, abstract)
  state = jax.jit(functools.partial(init_state, tx=tx), out_shardings=state_sh)(params)
  step_fn = jax.jit(functools.partial(train_step, model_cfg=model_cfg, train_cfg=LossConfig.from_config(cfg.train),
                                      tx=tx, schedule=schedule, parallel=parallel),
                    in_shardings=(state_sh, batch_sh, None), out_shardings=(state_sh, None), donate_argnums=0)
  return model_cfg, mesh, parallel, state, batch_sh, step_fn


def analytic_all_to_all(model_cfg, mesh, parallel, cfg) -> dict | None:
  """Bytes per train step and device moved by the capacity all_to_all transport (None: no expert parallelism)."""
  if parallel is None or parallel.transport != "all_to_all" or mesh.shape["expert"] == 1:
    return None
  ep, e, k, d = mesh.shape["expert"], model_cfg.num_local_experts, model_cfg.num_experts_per_tok, model_cfg.hidden_size
  micro = int(cfg.train.micro_batches)
  local_rows = cfg.data.batch_size // micro // sharding.batch_parallelism(mesh)
  cap = capacity(local_rows * cfg.data.seq_len * k, e, parallel.capacity_factor)
  itemsize = np.dtype(model_cfg.dtype).itemsize
  moe_layers = sum(model_cfg.is_moe_layer(i) for i in range(model_cfg.num_hidden_layers))
  buffer_bytes = ep * (e // ep) * cap * d * itemsize
  total = 2 * 2 * buffer_bytes * moe_layers * micro
  return {"capacity": cap, "moe_layers": moe_layers, "buffer_bytes": buffer_bytes, "ops": 2 * 2 * moe_layers * micro,
          "bytes": total, "bytes_off_device": total * (ep - 1) // ep}


def _shape_bytes(text: str) -> int:
  """Sum of the array sizes written in an HLO type string, e.g. 'f32[4,64,256]{2,1,0}' or a tuple of them."""
  total = 0
  for dtype, dims in re.findall(r"\b([a-z]+[0-9]*)\[([0-9,]*)\]", text):
    if dtype in HLO_BYTES:
      total += HLO_BYTES[dtype] * math.prod(int(x) for x in dims.split(",") if x)
  return total


def _computations(hlo: str) -> tuple[dict[str, list[str]], str]:
  """{computation name: its instruction lines}, entry name."""
  comps, entry, name = {}, None, None
  for line in hlo.splitlines():
    head = re.match(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
    if head and not line.startswith(" "):
      name = head.group(2)
      comps[name] = []
      if head.group(1):
        entry = name
    elif line.startswith("}"):
      name = None
    elif name is not None:
      comps[name].append(line)
  return comps, entry


def _multiplicities(comps: dict[str, list[str]], entry: str) -> tuple[dict[str, int], bool]:
  """How many times each computation runs per call of the entry; False when a while loop's trip count is unknown."""
  mult, known = {entry: 1}, True
  order = [entry]
  for comp in order:  # breadth first over the call graph (HLO call graphs are acyclic)
    for line in comps.get(comp, ()):
      trips = 1
      if re.search(r"\bwhile\(", line):
        m = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
        known &= m is not None
        trips = int(m.group(1)) if m else 1
      callees = re.findall(r"\b(?:body|calls|to_apply)=%([\w.\-]+)", line)
      for branches in re.findall(r"branch_computations=\{([^}]*)\}", line):
        callees += re.findall(r"%([\w.\-]+)", branches)
      for callee in callees:
        if callee in comps:
          mult[callee] = mult.get(callee, 0) + mult[comp] * trips
          if callee not in order:
            order.append(callee)
  return mult, known


def hlo_collectives(hlo: str) -> dict:
  """Per collective kind: op count (static, in the program text), executions per step and operand bytes per step;
  ops over groups of one device are counted apart (`trivial_ops`) and add no bytes.

  Operand sizes come from the types written next to the operands or, where the text names them only (`%x`), from
  the instructions that define them."""
  comps, entry = _computations(hlo)
  mult, known = _multiplicities(comps, entry)
  types = {}
  for lines in comps.values():
    for line in lines:
      m = re.match(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.*?)\s+[a-z][\w\-]*\(", line)
      if m:
        types[m.group(1)] = m.group(2)
  out = {c: {"ops": 0, "executions": 0, "bytes": 0, "trivial_ops": 0} for c in COLLECTIVES}
  groups = set()
  for comp, lines in comps.items():
    for line in lines:
      m = re.search(r"=\s*.*?\s+(" + "|".join(COLLECTIVES) + r")(?:-start)?\((.*?)\)(?:,|$)", line)
      if not m:
        continue
      kind, operands = m.group(1), m.group(2)
      listed = re.search(r"replica_groups=\{\{([0-9,]*)\}", line)  # {{0,1,2,3},{4,5,6,7}}
      iota = re.search(r"replica_groups=\[\d+,(\d+)\]", line)  # [2,4]<=[8]
      group = len(listed.group(1).split(",")) if listed else int(iota.group(1)) if iota else None
      if group == 1:  # over a mesh axis of size 1 (e.g. the psum over `tensor`): moves nothing
        out[kind]["trivial_ops"] += 1
        continue
      n = mult.get(comp, 0)
      size = _shape_bytes(operands) or sum(_shape_bytes(types.get(name, "")) for name in
                                           re.findall(r"%([\w.\-]+)", operands))
      out[kind]["ops"] += 1
      out[kind]["executions"] += n
      out[kind]["bytes"] += n * size
      if kind == "all-to-all" and group is not None:
        groups.add(group)
  out["all-to-all"]["group_sizes"] = sorted(groups)
  out["trip_counts_known"] = known
  out["while_loops"] = sum(bool(re.search(r"\bwhile\(", line)) for lines in comps.values() for line in lines)
  return out


def worker() -> None:
  config = CONFIG.value
  cfg = stage_config(config, MESH.value)
  model_cfg, mesh, parallel, state, batch_sh, step_fn = build(cfg)
  batch_size, seq_len = int(cfg.data.batch_size), int(cfg.data.seq_len)
  batch = jax.device_put(synthetic_batch(model_cfg.vocab_size, batch_size, seq_len), batch_sh)
  key = jax.random.key(cfg.seed)
  t0 = time.perf_counter()
  compiled = step_fn.lower(state, batch, key).compile()
  compile_s = time.perf_counter() - t0
  collectives = hlo_collectives(compiled.as_text())
  peak_before = _square_matmul_gflops()
  t0 = time.perf_counter()
  state, metrics = jax.block_until_ready(compiled(state, batch, jax.random.fold_in(key, 0)))
  first_s = time.perf_counter() - t0
  first_loss, dropped = float(metrics["loss"]), int(metrics["moe_dropped"])
  state, metrics, times = timed_steps(compiled, state, batch, key, WARMUP.value, STEPS.value)
  peak_after = _square_matmul_gflops()
  step_s = statistics.median(times)
  analytic = analytic_all_to_all(model_cfg, mesh, parallel, cfg)
  a2a = collectives["all-to-all"]
  tokens = batch_size * seq_len
  print(json.dumps({
      "benchmark": "scale_out", "mesh": MESH.value or "1 device",
      "mesh_shape": {a: int(s) for a, s in mesh.shape.items()}, "device_count": jax.device_count(),
      "parallel": None if parallel is None else {"transport": parallel.transport,
                                                 "capacity_factor": parallel.capacity_factor},
      "moe_impl": model_cfg.moe_impl, "batch": batch_size, "seq": seq_len, "tokens_per_step": tokens,
      "steps": len(times), "warmup": WARMUP.value, "median_step_s": round(step_s, 4),
      "min_step_s": round(min(times), 4), "max_step_s": round(max(times), 4),
      "tokens_per_s": round(tokens / step_s, 1), "compile_s": round(compile_s, 2), "first_step_s": round(first_s, 3),
      "first_loss": round(first_loss, 5), "last_loss": round(float(metrics["loss"]), 5),
      "matmul_gflops_before": round(peak_before, 1), "matmul_gflops_after": round(peak_after, 1),
      "first_step_moe_dropped": dropped, "last_step_moe_dropped": int(metrics["moe_dropped"]),
      "all_to_all_analytic": analytic,
      "all_to_all_hlo": {k: a2a[k] for k in ("ops", "executions", "bytes", "trivial_ops", "group_sizes")},
      "all_to_all_agree": None if analytic is None else (analytic["bytes"] == a2a["bytes"]
                                                         and analytic["ops"] == a2a["executions"]),
      "hlo_collectives": {c: collectives[c] for c in COLLECTIVES if c != "all-to-all"},
      "hlo_while_loops": collectives["while_loops"], "hlo_trip_counts_known": collectives["trip_counts_known"],
      "jax": jax.__version__, "device": str(jax.devices()[0])}), flush=True)


def worker_argv(mesh_text: str) -> list[str]:
  """This invocation's flags (config overrides included) minus the parent's own, plus the worker's."""
  keep = [a for a in sys.argv[1:] if not any(re.match(rf"--{f}(=|$)", a) for f in WORKER_FLAGS)]
  return [sys.executable, os.path.abspath(__file__), *keep, "--mode=worker", f"--mesh={mesh_text}"]


def run_worker(mesh_text: str, devices: int) -> dict:
  env = dict(os.environ)
  xla = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", "")).strip()
  env["XLA_FLAGS"] = f"{xla} --xla_force_host_platform_device_count={devices}".strip()
  env["JAX_PLATFORMS"] = "cpu"
  t0 = time.perf_counter()
  try:
    proc = subprocess.run(worker_argv(mesh_text), env=env, capture_output=True, text=True, timeout=TIMEOUT.value)
  except subprocess.TimeoutExpired:
    return {"benchmark": "scale_out", "mesh": mesh_text or "1 device", "error": f"timeout after {TIMEOUT.value} s"}
  rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
  if proc.returncode or not rows:
    return {"benchmark": "scale_out", "mesh": mesh_text or "1 device", "error": f"exit {proc.returncode}",
            "stderr_tail": proc.stderr[-2000:]}
  return dict(rows[-1], worker_wall_s=round(time.perf_counter() - t0, 1))


def parent() -> None:
  rows = []
  for mesh_text, devices in [("", 1)] + [(m, DEVICES.value) for m in MESHES.value.split()]:
    row = run_worker(mesh_text, devices)
    print(json.dumps(row), flush=True)
    rows.append(row)
  base = rows[0].get("median_step_s")
  summary = []
  for row in rows:
    if "error" in row:
      summary.append({"mesh": row["mesh"], "error": row["error"]})
      continue
    hlo, analytic = row["all_to_all_hlo"], row["all_to_all_analytic"]
    summary.append({
        "mesh": row["mesh"], "devices": row["device_count"], "median_step_s": row["median_step_s"],
        "tokens_per_s": row["tokens_per_s"],
        "matmul_gflops": [row["matmul_gflops_before"], row["matmul_gflops_after"]],
        "throughput_vs_1_device": round(base / row["median_step_s"], 3) if base else None,
        "first_loss": row["first_loss"], "moe_dropped_first_step": row["first_step_moe_dropped"],
        "a2a_bytes_analytic": None if analytic is None else analytic["bytes"],
        "a2a_bytes_off_device_analytic": None if analytic is None else analytic["bytes_off_device"],
        "a2a_bytes_hlo": hlo["bytes"], "a2a_ops_hlo": hlo["ops"], "a2a_agree": row["all_to_all_agree"],
        "all_reduce_bytes_hlo": row["hlo_collectives"]["all-reduce"]["bytes"],
        "all_gather_bytes_hlo": row["hlo_collectives"]["all-gather"]["bytes"]})
  print(json.dumps({"benchmark": "scale_out_summary", "steps": STEPS.value, "warmup": WARMUP.value,
                    "rows": summary}), flush=True)


def main(argv):
  del argv
  if MODE.value == "worker":
    worker()
  else:
    parent()


if __name__ == "__main__":
  retain_freed_host_memory()  # before the CPU backend starts (llama4_jax/host_memory.py)
  app.run(main)
