"""Device meshes and logical sharding: one rules table from the model's logical axis names to four mesh axes.

Mesh axes (`config.mesh`): `data` (pure data parallel), `fsdp` (data parallel with parameters and optimizer state
sharded), `expert` (experts split across devices; data parallel everywhere else), `tensor` (attention heads and FFN
width split across devices). The batch is split over data x fsdp x expert.

No ambient mesh: every function takes the mesh (or the `Parallel` value that carries it) as an argument.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from llama4_jax.config import ConfigError, ModelConfig

MESH_AXES = ("data", "fsdp", "expert", "tensor")
BATCH_AXES = ("data", "fsdp", "expert")
ACTIVATION_SPEC = P(BATCH_AXES, None, None)  # [B, L, D] between blocks
EMBED_TABLE_SPEC = P("tensor", None)  # [V, D] as the token lookup reads it
TRANSPORTS = ("all_to_all", "ragged_all_to_all", "ragged_all_gather")

# Logical axis name (as declared next to each parameter) -> mesh axes (in order), or None for replicated. `embed`
# is split over fsdp and, for every weight that is not a routed expert's, over expert too: outside the MoE shard_map
# the expert axis is data parallel, so it shares the parameter and optimizer-state storage like fsdp does.
PARAM_RULES: Mapping[str, str | tuple[str, ...] | None] = {
    "vocab": "tensor",
    "embed": ("fsdp", "expert"),
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "expert_mlp": "tensor",
    "experts": "expert",
    "layers": None,
    "norm": None,
}


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Sizes of the four mesh axes; one of them may be -1 ("all remaining devices")."""

  data: int = -1
  fsdp: int = 1
  expert: int = 1
  tensor: int = 1

  @classmethod
  def from_config(cls, cd: Any) -> "MeshConfig":
    values = dict(cd.to_dict() if hasattr(cd, "to_dict") else cd)
    unknown = sorted(set(values) - set(MESH_AXES))
    if unknown:
      raise ConfigError(f"unknown key(s) {', '.join('mesh.' + k for k in unknown)}; known keys: {list(MESH_AXES)}")
    for name, value in values.items():
      if isinstance(value, bool) or not isinstance(value, int) or (value < 1 and value != -1):
        raise ConfigError(f"mesh.{name} must be a positive integer or -1, got {value!r}")
    return cls(**values)

  def sizes(self, num_devices: int) -> dict[str, int]:
    """Axis sizes with -1 resolved; raises ConfigError naming the fields when they do not fit the devices."""
    sizes = {a: getattr(self, a) for a in MESH_AXES}
    free = [a for a, s in sizes.items() if s == -1]
    if len(free) > 1:
      raise ConfigError(f"only one mesh axis may be -1, got {', '.join('mesh.' + a for a in free)}")
    fixed = math.prod(s for s in sizes.values() if s != -1)
    if free:
      if num_devices % fixed:
        raise ConfigError(f"{_describe(sizes)} cannot fill {num_devices} devices (mesh.{free[0]}=-1 would "
                          f"be {num_devices}/{fixed})")
      sizes[free[0]] = num_devices // fixed
    if math.prod(sizes.values()) != num_devices:
      raise ConfigError(f"{_describe(sizes)} has {math.prod(sizes.values())} devices but "
                        f"{num_devices} are available; the product of mesh.data, mesh.fsdp, mesh.expert and "
                        "mesh.tensor must equal the device count")
    return sizes


def _describe(sizes: Mapping[str, int]) -> str:
  return " x ".join(f"mesh.{a}={s}" for a, s in sizes.items())


def parse_mesh(text: str) -> MeshConfig:
  """'data=2,expert=4' -> MeshConfig (unnamed axes are 1, or -1 for `data` when nothing else fills the devices)."""
  values = {}
  for part in filter(None, (p.strip() for p in text.split(","))):
    m = re.fullmatch(r"(\w+)=(-?\d+)", part)
    if not m:
      raise ConfigError(f"mesh {text!r}: {part!r} is not of the form axis=size")
    values[m.group(1)] = int(m.group(2))
  values.setdefault("data", 1)
  return MeshConfig.from_config(values)


def make_mesh(mesh_cfg: MeshConfig, devices=None) -> Mesh:
  """A Mesh over `devices` (default: all of them) with axes (data, fsdp, expert, tensor)."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = mesh_cfg.sizes(len(devices))
  shape = tuple(sizes[a] for a in MESH_AXES)
  try:
    arr = mesh_utils.create_device_mesh(shape, devices)
  except Exception:  # noqa: BLE001  (CPU / odd topologies: plain order is fine)
    arr = np.asarray(devices, dtype=object).reshape(shape)
  return Mesh(arr, MESH_AXES)


def axis_size(mesh: Mesh, axis: str | tuple[str, ...] | None) -> int:
  if axis is None:
    return 1
  axes = (axis,) if isinstance(axis, str) else axis
  return math.prod(mesh.shape[a] for a in axes)


def batch_parallelism(mesh: Mesh) -> int:
  return axis_size(mesh, BATCH_AXES)


def check_model_fits(model_cfg: ModelConfig, mesh: Mesh) -> None:
  """ConfigError naming the model and mesh fields that a sharded run cannot split evenly."""
  checks = (
      ("num_local_experts", model_cfg.num_local_experts, "expert"),
      ("num_attention_heads", model_cfg.num_attention_heads, "tensor"),
      ("num_key_value_heads", model_cfg.num_key_value_heads, "tensor"),
      ("intermediate_size", model_cfg.intermediate_size, "tensor"),
      ("intermediate_size_mlp", model_cfg.intermediate_size_mlp, "tensor"),
  )
  for field, value, axis in checks:
    if value % mesh.shape[axis]:
      raise ConfigError(f"model.{field}={value} is not divisible by mesh.{axis}={mesh.shape[axis]}")


def check_batch_fits(batch_size: int, mesh: Mesh, what: str = "data.batch_size") -> None:
  n = batch_parallelism(mesh)
  if batch_size % n:
    raise ConfigError(f"{what}={batch_size} is not divisible by mesh.data x mesh.fsdp x mesh.expert = "
                      f"{mesh.shape['data']} x {mesh.shape['fsdp']} x {mesh.shape['expert']} = {n}")


def logical_to_mesh(logical: P, shape: tuple[int, ...], mesh: Mesh) -> P:
  """Mesh PartitionSpec for a parameter with logical axis names. Each dimension takes the mesh axes of its rule, in
  order, skipping axes of size 1, axes an earlier dimension already uses, and axes that would not divide it evenly
  (so, for example, a norm of odd width stays replicated)."""
  out, used = [], set()
  for name, dim in zip(tuple(logical) + (None,) * (len(shape) - len(logical)), shape):
    if name is not None and name not in PARAM_RULES:
      raise ConfigError(f"logical axis {name!r} has no sharding rule (known: {sorted(PARAM_RULES)})")
    rule = PARAM_RULES.get(name) if name is not None else None
    axes, size = [], 1
    for axis in (rule,) if isinstance(rule, str) else (rule or ()):
      if axis in used or mesh.shape[axis] == 1 or dim % (size * mesh.shape[axis]):
        continue
      axes.append(axis)
      size *= mesh.shape[axis]
    used.update(axes)
    out.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
  return P(*out)


def param_specs(model_cfg: ModelConfig, mesh: Mesh):
  """PartitionSpec pytree (mesh axes) of the model parameters."""
  from llama4_jax.model import param_logical_axes, param_shapes  # the model imports this module's users
  logical = param_logical_axes(model_cfg)
  shapes = param_shapes(model_cfg)
  return jax.tree_util.tree_map(lambda spec, s: logical_to_mesh(spec, s.shape, mesh), logical, shapes,
                                is_leaf=lambda x: isinstance(x, P))


def named(mesh: Mesh, specs):
  return jax.tree_util.tree_map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def _path_key(path) -> tuple:
  return tuple(getattr(k, "key", getattr(k, "name", getattr(k, "idx", None))) for k in path)


def state_specs(abstract_state, params_spec_tree, abstract_params):
  """Specs for any pytree holding parameter-shaped leaves (optimizer moments, the TrainState): a leaf whose path
  ends with a parameter's path and has its shape gets that parameter's spec; everything else is replicated."""
  by_path = {}
  for (path, spec), (_, shp) in zip(
      jax.tree_util.tree_flatten_with_path(params_spec_tree, is_leaf=lambda x: isinstance(x, P))[0],
      jax.tree_util.tree_flatten_with_path(abstract_params)[0]):
    by_path[_path_key(path)] = (spec, tuple(shp.shape))

  def pick(path, leaf):
    key = _path_key(path)
    shape = tuple(getattr(leaf, "shape", ()))
    for start in range(len(key)):
      hit = by_path.get(key[start:])
      if hit is not None and hit[1] == shape:
        return hit[0]
    return P()

  return jax.tree_util.tree_map_with_path(pick, abstract_state)


def state_shardings(model_cfg: ModelConfig, mesh: Mesh, abstract_state):
  """NamedSharding pytree for a TrainState-like pytree (`.params` plus optimizer state) on `mesh`."""
  return named(mesh, state_specs(abstract_state, param_specs(model_cfg, mesh), abstract_state.params))


def with_shardings(abstract, shardings):
  """ShapeDtypeStructs carrying shardings: a restore target, or the inputs of an ahead-of-time compile."""
  return jax.tree_util.tree_map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), abstract,
                                shardings)


def batch_spec() -> P:
  return P(BATCH_AXES)


@dataclasses.dataclass(frozen=True)
class Parallel:
  """How a sharded model runs: the mesh and the expert-parallel transport. Hashable (a static jit argument)."""

  mesh: Mesh
  transport: str = "all_to_all"
  capacity_factor: float = 2.0

  def __post_init__(self):
    if self.transport not in TRANSPORTS:
      raise ConfigError(f"expert_parallel.transport={self.transport!r} is not one of {TRANSPORTS}")
    if not self.capacity_factor > 0:
      raise ConfigError(f"expert_parallel.capacity_factor must be positive, got {self.capacity_factor!r}")
    if (self.transport == "ragged_all_to_all" and self.mesh.shape["expert"] > 1
        and self.mesh.devices.flat[0].platform == "cpu"):
      raise ConfigError(
          "expert_parallel.transport='ragged_all_to_all' needs a GPU or TPU: XLA:CPU has no ragged all-to-all. "
          "Use 'all_to_all' (capacity-based) or 'ragged_all_gather' (dropless, all-gather based) on CPU")

  @property
  def expert_size(self) -> int:
    return self.mesh.shape["expert"]

  def constrain(self, x, spec: P):
    return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, spec))


def parallel_from_config(config, mesh: Mesh) -> Parallel:
  ep = config.get("expert_parallel", None) if hasattr(config, "get") else None
  ep = dict(ep.to_dict() if hasattr(ep, "to_dict") else (ep or {}))
  unknown = sorted(set(ep) - {"transport", "capacity_factor"})
  if unknown:
    raise ConfigError(f"unknown key(s) {', '.join('expert_parallel.' + k for k in unknown)}; "
                      "known keys: ['capacity_factor', 'transport']")
  return Parallel(mesh, **ep)
