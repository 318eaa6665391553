"""Ahead-of-time dry run: compile one training step for a named mesh on abstract shapes, report per-device memory.

    python -m llama4_jax.dry_run --config=configs/base.py:scout --devices=256 --device_kind=tpu-v5p \\
        --mesh=fsdp=64,expert=4 --seq_len=4096 --per_device_batch=1 [--recommend] [--config.<key>=...]

No accelerator and no parameter memory are needed: the step is lowered with ShapeDtypeStructs carrying the mesh
shardings and compiled by XLA for `--devices` simulated CPU devices (the SPMD partitioner produces the per-device
program a pod would run). Parameters and optimizer state per device follow exactly from the shardings; activations
and temporaries come from the compiled program's memory analysis. Two stand-ins keep the CPU compile honest about
sizes: without expert parallelism the routed experts use the fixed-capacity dispatch (`kernels.moe=capacity`,
factor `kernels.capacity_factor`, 1.25 by default: XLA:CPU would expand `ragged_dot` to every expert) and attention
is the XLA implementation (the Pallas kernels cannot be compiled for an accelerator here). Both overestimate an
accelerator run slightly rather than underestimate it.

`--recommend` compiles candidate meshes (tensor 1, then 2, 4, 8; for each, the fewest expert shards that divide
the experts; the rest FSDP) until one fits `--headroom` of the device memory, and prints it.
"""

from __future__ import annotations

import os
import sys


def _set_device_count() -> None:
  """The simulated device count must be fixed before JAX starts."""
  for arg in sys.argv:
    if arg.startswith("--devices="):
      flags_env = [f for f in os.environ.get("XLA_FLAGS", "").split()
                   if not f.startswith("--xla_force_host_platform_device_count")]
      os.environ["XLA_FLAGS"] = " ".join(flags_env + [f"--xla_force_host_platform_device_count={arg.split('=')[1]}"])
      os.environ["JAX_PLATFORMS"] = "cpu"
      if "jax" in sys.modules:  # imported by the package already; backends start lazily, so this still applies
        sys.modules["jax"].config.update("jax_platforms", "cpu")


if __name__ == "__main__":
  _set_device_count()

import dataclasses  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import app, flags  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402

from llama4_jax import sharding  # noqa: E402
from llama4_jax.config import ConfigError, ModelConfig, model_config  # noqa: E402
from llama4_jax.model import param_shapes  # noqa: E402
from llama4_jax.train.optimizer import make_optimizer  # noqa: E402
from llama4_jax.train.step import LossConfig, init_state, train_step  # noqa: E402

GIB = 1024 ** 3
# Memory per device (GiB) of common accelerators.
DEVICE_MEMORY_GIB = {"tpu-v4": 32, "tpu-v5e": 16, "tpu-v5p": 95, "tpu-v6e": 32, "a100-40gb": 40, "a100-80gb": 80,
                     "h100": 80, "h200": 141, "b200": 180}


@dataclasses.dataclass
class Report:
  mesh: dict
  devices: int
  params_gib: float
  optimizer_gib: float
  activations_gib: float  # compiled temporaries (activations, gradients in flight, collectives' buffers)
  arguments_gib: float  # compiled argument size (state + batch), for cross-checking params + optimizer
  total_gib: float
  compile_s: float

  def fits(self, capacity_gib: float, headroom: float) -> bool:
    return self.total_gib <= capacity_gib * headroom


def _per_device_bytes(abstract, shardings) -> int:
  total = 0
  for a, sh in zip(jax.tree_util.tree_leaves(abstract), jax.tree_util.tree_leaves(shardings)):
    total += math.prod(sh.shard_shape(a.shape)) * jnp.dtype(a.dtype).itemsize
  return total


def compile_step(config, model_cfg: ModelConfig, mesh_cfg: sharding.MeshConfig, seq_len: int,
                 per_device_batch: int, devices=None) -> Report:
  """Lowers and compiles the sharded train step for `mesh_cfg` on abstract inputs; returns per-device memory."""
  import time
  mesh = sharding.make_mesh(mesh_cfg, devices)
  sharding.check_model_fits(model_cfg, mesh)
  batch = per_device_batch * sharding.batch_parallelism(mesh)
  parallel = sharding.parallel_from_config(config, mesh) if mesh.size > 1 else None
  params_abs = param_shapes(model_cfg)
  tx, schedule = make_optimizer(config.optim, params_abs, config.train.steps)
  state_abs = jax.eval_shape(functools.partial(init_state, tx=tx), params_abs)
  state_sh = sharding.state_shardings(model_cfg, mesh, state_abs)
  batch_sh = NamedSharding(mesh, sharding.batch_spec())
  batch_abs = {k: jax.ShapeDtypeStruct((batch, seq_len), jnp.int32, sharding=batch_sh)
               for k in ("inputs", "targets", "positions", "segment_ids", "loss_mask")}
  step = jax.jit(functools.partial(train_step, model_cfg=model_cfg, train_cfg=LossConfig.from_config(config.train),
                                   tx=tx, schedule=schedule, parallel=parallel),
                 in_shardings=(state_sh, batch_sh, None), out_shardings=(state_sh, None), donate_argnums=0)
  t0 = time.perf_counter()
  compiled = step.lower(sharding.with_shardings(state_abs, state_sh), batch_abs, jax.random.key(0)).compile()
  seconds = time.perf_counter() - t0
  memory = compiled.memory_analysis()
  params = _per_device_bytes(state_abs.params, state_sh.params)
  optimizer = _per_device_bytes(state_abs.opt_state, state_sh.opt_state)
  temp = memory.temp_size_in_bytes
  arguments = memory.argument_size_in_bytes
  # Outputs alias the donated state; the batch is part of the arguments.
  total = arguments + temp + max(0, memory.output_size_in_bytes - memory.alias_size_in_bytes)
  return Report(mesh=dict(mesh.shape), devices=mesh.size, params_gib=params / GIB, optimizer_gib=optimizer / GIB,
                activations_gib=temp / GIB, arguments_gib=arguments / GIB, total_gib=total / GIB,
                compile_s=round(seconds, 1))


def candidate_meshes(model_cfg: ModelConfig, devices: int):
  """Meshes in order of preference: the least tensor parallelism first; for each, experts split as far as the device
  count allows (expert parallelism keeps each MoE layer's weights from being gathered whole), FSDP for the rest."""
  for tensor in (1, 2, 4, 8):
    if devices % tensor or model_cfg.num_key_value_heads % tensor or model_cfg.num_attention_heads % tensor:
      continue
    expert = max(d for d in range(1, model_cfg.num_local_experts + 1)
                 if model_cfg.num_local_experts % d == 0 and (devices // tensor) % d == 0)
    yield sharding.MeshConfig(data=1, fsdp=devices // tensor // expert, expert=expert, tensor=tensor)


def _line(name: str, r: Report, capacity: float) -> str:
  mesh = " ".join(f"{k}={v}" for k, v in r.mesh.items())
  return (f"{name:<12} {mesh:<36} params {r.params_gib:7.2f}  optimizer {r.optimizer_gib:7.2f}  activations "
          f"{r.activations_gib:7.2f}  total {r.total_gib:7.2f} GiB / {capacity:g} GiB "
          f"({100 * r.total_gib / capacity:.0f}%)  compile {r.compile_s}s")


_CONFIG = None  # defined under __main__ (config_flags needs the flag registry of the running program)
_DEVICES = flags.DEFINE_integer("devices", 8, "number of devices of the target (simulated on CPU)")
_KIND = flags.DEFINE_enum("device_kind", "tpu-v5p", sorted(DEVICE_MEMORY_GIB), "target device (memory per device)")
_MESH = flags.DEFINE_string("mesh", "", "e.g. 'fsdp=64,expert=4' (default: the config's mesh section)")
_SEQ = flags.DEFINE_integer("seq_len", 4096, "training sequence length")
_BATCH = flags.DEFINE_integer("per_device_batch", 1, "rows per data-parallel shard (data x fsdp x expert)")
_RECOMMEND = flags.DEFINE_bool("recommend", False, "also search candidate meshes for one that fits")
_HEADROOM = flags.DEFINE_float("headroom", 0.9, "fraction of device memory a mesh may use to count as fitting")
_JSON = flags.DEFINE_bool("json", False, "print JSON lines instead of the table")


def run(config, devices: int, kind: str, mesh_text: str, seq_len: int, per_device_batch: int, recommend: bool,
        headroom: float, as_json: bool = False) -> dict:
  if len(jax.devices()) != devices:
    raise ConfigError(f"--devices={devices} but JAX sees {len(jax.devices())} devices; run this module as a "
                      "program (python -m llama4_jax.dry_run) so it can set the simulated device count first")
  config = config.copy_and_resolve_references() if hasattr(config, "copy_and_resolve_references") else config
  with config.unlocked():
    config.kernels.moe = "capacity"  # see the module docstring
    config.kernels.attention = "xla"
  model_cfg = model_config(config)
  mesh_cfg = sharding.parse_mesh(mesh_text) if mesh_text else sharding.MeshConfig.from_config(config.mesh)
  capacity = DEVICE_MEMORY_GIB[kind]
  out = {"preset": config.get("preset", ""), "devices": devices, "device_kind": kind, "seq_len": seq_len,
         "per_device_batch": per_device_batch, "dtype": model_cfg.dtype, "param_dtype": model_cfg.param_dtype,
         "remat_policy": model_cfg.remat_policy}
  named = compile_step(config, model_cfg, mesh_cfg, seq_len, per_device_batch)
  out["named"] = dataclasses.asdict(named) | {"fits": named.fits(capacity, headroom)}
  if not as_json:
    print(f"dry run: {out['preset']} on {devices} x {kind} ({capacity} GiB), seq {seq_len} x "
          f"{per_device_batch} row(s) per data shard, compute {model_cfg.dtype}, params {model_cfg.param_dtype}, "
          f"remat {model_cfg.remat_policy}")
    print(_line("named mesh", named, capacity) + ("  fits" if out["named"]["fits"] else "  DOES NOT FIT"))
  if recommend:
    out["recommended"] = None
    for candidate in candidate_meshes(model_cfg, devices):
      r = named if dict(named.mesh) == {a: getattr(candidate, a) for a in sharding.MESH_AXES} else compile_step(
          config, model_cfg, candidate, seq_len, per_device_batch)
      if not as_json:
        print(_line("candidate", r, capacity) + ("  fits" if r.fits(capacity, headroom) else ""))
      if r.fits(capacity, headroom):
        out["recommended"] = dataclasses.asdict(r)
        break
    if not as_json:
      best = out["recommended"]
      advice = "add devices or shorten rows"
      if model_cfg.param_dtype == "float32":
        advice += ", or keep parameters in bfloat16 (--config.model.param_dtype=bfloat16)"
      print("recommended: " + (" ".join(f"--config.mesh.{k}={v}" for k, v in best["mesh"].items()) if best else
                               f"nothing fits in {headroom:.0%} of {capacity} GiB: {advice}"))
  if as_json:
    print(json.dumps(out))
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  run(_CONFIG.value, _DEVICES.value, _KIND.value, _MESH.value, _SEQ.value, _BATCH.value, _RECOMMEND.value,
      _HEADROOM.value, _JSON.value)


if __name__ == "__main__":
  from ml_collections import config_flags
  sys.path.insert(0, os.getcwd())
  _CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file[:preset]", lock_config=False)
  flags.mark_flags_as_required(["config"])
  app.run(main)
