"""Frozen, typed model configuration.

The ml-collections ConfigDict in `configs/` is converted once, by `from_config_dict`, into a `ModelConfig`; the model
code only ever sees the dataclass. Field names follow Hugging Face's `Llama4TextConfig` where one exists so that
checkpoint conversion stays one-to-one. Every impossible combination is rejected here, naming the field, before any
array is allocated or any function compiled.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping

DTYPES = ("float32", "bfloat16", "float16")
REMAT_POLICIES = ("none", "full", "dots", "dots_with_no_batch_dims")
MOE_IMPLS = ("ragged_dot", "blocked", "dense", "pallas", "capacity", "gathered")
ATTENTION_IMPLS = ("xla", "dense", "pallas")
# The experiment config's `kernels` section (the only place experiments choose kernels) -> ModelConfig fields.
KERNEL_KEYS = {"moe": "moe_impl", "attention": "attention_impl", "interpret": "kernel_interpret",
               "capacity_factor": "moe_capacity_factor"}
ROPE_TYPES = ("default", "llama3", "linear", "ntk", "dynamic", "yarn")
FULL_UNROLL_MAX_BLOCKS = 4  # `scan_unroll = 0` (auto) unrolls stacks of at most this many super-blocks


class ConfigError(ValueError):
  """A configuration value is missing, misspelled or inconsistent; the message names the field."""


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """How the rotary frequencies are rescaled for longer contexts (llama4_jax/model/rope.py has the formulas).

  rope_type: 'llama3' (Llama 3.1 / Llama 4 Scout band scaling: factor, low/high_freq_factor, original length),
  'linear' (position interpolation: every frequency / factor), 'ntk' (static NTK-aware: base x factor^(d/(d-2))),
  'dynamic' (dynamic NTK: the NTK base computed from the current length when it exceeds the original length),
  'yarn' (per-dimension ramp between interpolation and extrapolation from beta_fast / beta_slow rotations over the
  original length, cos/sin x attention_factor, default 0.1 ln(factor) + 1), or 'default' (none). A larger base
  (ABF) is `model.rope_theta` itself.
  """

  rope_type: str = "llama3"
  factor: float = 16.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 1.0
  original_max_position_embeddings: int = 8192
  beta_fast: float = 32.0
  beta_slow: float = 1.0
  attention_factor: float | None = None
  truncate: bool = True  # yarn: round the ramp's ends to whole dimensions (as the reference implementations do)


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  """Llama 4 vision tower + projector (HF `Llama4VisionConfig` names, plus the image token id and tile limit)."""

  hidden_size: int = 1408
  num_hidden_layers: int = 34
  num_attention_heads: int = 16
  intermediate_size: int = 5632
  image_size: int = 336
  patch_size: int = 14
  num_channels: int = 3
  pixel_shuffle_ratio: float = 0.5
  projector_input_dim: int = 4096
  projector_output_dim: int = 4096
  vision_output_dim: int = 4096
  rope_theta: float = 10000.0
  norm_eps: float = 1e-5
  image_token_id: int = 200092  # `<|patch|>`: the positions that receive image features (HF image_token_index)
  max_num_tiles: int = 16  # preprocessing: tile grids up to this many tiles (+ a global tile), HF `max_patches`

  @property
  def tokens_per_tile(self) -> int:
    return int(round((self.image_size // self.patch_size) ** 2 * self.pixel_shuffle_ratio ** 2))


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Llama 4 text decoder (plus optional vision tower shapes). See `validate` for the rules."""

  vocab_size: int = 202048
  hidden_size: int = 5120
  num_hidden_layers: int = 48
  num_attention_heads: int = 40
  num_key_value_heads: int = 8
  head_dim: int = 128
  intermediate_size: int = 8192  # routed and shared expert width
  intermediate_size_mlp: int = 16384  # dense SwiGLU width
  num_local_experts: int = 16
  num_experts_per_tok: int = 1
  interleave_moe_layer_step: int = 1
  no_rope_layer_interval: int = 4
  attention_chunk_size: int | None = 8192
  use_qk_norm: bool = True
  attn_temperature_tuning: bool = True
  floor_scale: float = 8192
  attn_scale: float = 0.1
  rope_theta: float = 500000.0
  rope_scaling: RopeScaling | None = None
  rms_norm_eps: float = 1e-5
  max_position_embeddings: int = 262144
  initializer_range: float = 0.02
  bos_token_id: int | None = 200000
  eos_token_id: int | None = 200001
  pad_token_id: int | None = 200018
  # Not in Hugging Face's config: how the JAX model computes.
  dtype: str = "float32"  # activation / matmul dtype
  param_dtype: str = "float32"  # storage dtype of the parameters
  remat_policy: str = "none"
  # Super-blocks per scan iteration; > 1 trades compile time for less loop overhead. 0 = auto (`unroll`): the whole
  # stack when it has at most FULL_UNROLL_MAX_BLOCKS super-blocks (no loop at all), else one per iteration.
  scan_unroll: int = 1
  # Set from the experiment's `kernels.moe`: 'ragged_dot' (jax.lax.ragged_dot over expert-sorted rows, the
  # accelerator path), 'blocked' (a per-expert capacity as batched matmuls plus looped overflow blocks, dropless:
  # the fast CPU path), 'dense' (one-hot oracle), 'pallas' (pallas_kernels/grouped_matmul), 'capacity' (fixed
  # capacity per expert, drops the excess),
  # 'gathered' (each token's expert weights gathered per token: few-token decode steps).
  moe_impl: str = "ragged_dot"
  moe_capacity_factor: float = 1.25  # `kernels.capacity_factor`, for moe_impl='capacity' only
  # Set from `kernels.attention`: 'xla': chunked layers attend over 2 * chunk keys per block of queries (banded),
  # global layers use the masked XLA softmax; on rows past 2 * ops.attention.QUERY_BLOCK tokens both run one chunk /
  # query block at a time, rematerialised, so memory stays linear in the row length; 'dense': full masked
  # reference on every layer;
  # 'pallas': the flash-attention kernel (pallas_kernels/flash_attention) on every layer.
  attention_impl: str = "xla"
  kernel_interpret: bool = False  # run Pallas kernels in interpret mode (CPU tests)
  # Per-parameter factors ((regex on the parameter path, factor), ...; llama4_jax/model/multipliers.py), set by the
  # experiment's `parameterization` (llama4_jax/parameterization.py): init std x factor, and W -> factor * W wherever
  # the forward pass uses W. Empty (the default): Hugging Face's model exactly.
  init_multipliers: tuple = ()
  forward_multipliers: tuple = ()
  vision: VisionConfig | None = None

  def __post_init__(self):
    validate(self)

  # ---- derived layer pattern -------------------------------------------------------------------------------------
  def is_moe_layer(self, i: int) -> bool:
    return (i + 1) % self.interleave_moe_layer_step == 0

  def is_rope_layer(self, i: int) -> bool:
    """Layer i uses RoPE unless (i + 1) is a multiple of no_rope_layer_interval (1: every layer NoPE; 0: none)."""
    return self.no_rope_layer_interval == 0 or (i + 1) % self.no_rope_layer_interval != 0

  @property
  def block_size(self) -> int:
    """Length of the repeating super-block of layer kinds; depth is a scan over `num_blocks` of them."""
    return math.lcm(max(self.no_rope_layer_interval, 1), self.interleave_moe_layer_step)

  @property
  def num_blocks(self) -> int:
    return self.num_hidden_layers // self.block_size

  @property
  def unroll(self) -> int:
    """Super-blocks per scan iteration after resolving `scan_unroll = 0` (auto). Unrolling the whole of a short stack
    removes the loop (faster steps on CPU, and a short program compiles quickly); a deep stack keeps one super-block
    per iteration so that its compile time does not grow with depth (benchmarks/train_compile.py)."""
    if self.scan_unroll:
      return self.scan_unroll
    return self.num_blocks if self.num_blocks <= FULL_UNROLL_MAX_BLOCKS else 1

  @property
  def num_query_groups(self) -> int:
    return self.num_attention_heads // self.num_key_value_heads

  def replace(self, **changes: Any) -> "ModelConfig":
    return dataclasses.replace(self, **changes)


def _positive(cfg, *names, prefix="model."):
  for name in names:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
      raise ConfigError(f"{prefix}{name} must be a positive number, got {value!r}")


def validate(cfg: ModelConfig) -> None:
  """Raises ConfigError naming the first offending field."""
  _positive(cfg, "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "head_dim", "intermediate_size", "intermediate_size_mlp", "num_local_experts", "num_experts_per_tok",
            "interleave_moe_layer_step", "floor_scale", "rope_theta", "rms_norm_eps",
            "max_position_embeddings")
  for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
               "head_dim", "intermediate_size", "intermediate_size_mlp", "num_local_experts", "num_experts_per_tok",
               "interleave_moe_layer_step", "no_rope_layer_interval"):
    if not isinstance(getattr(cfg, name), int) or isinstance(getattr(cfg, name), bool):
      raise ConfigError(f"model.{name} must be an integer, got {getattr(cfg, name)!r}")
  if cfg.no_rope_layer_interval < 0:
    raise ConfigError(f"model.no_rope_layer_interval must be >= 0 (0: no NoPE layers), "
                      f"got {cfg.no_rope_layer_interval}")
  if cfg.num_attention_heads % cfg.num_key_value_heads:
    raise ConfigError(f"model.num_attention_heads={cfg.num_attention_heads} is not divisible by "
                      f"model.num_key_value_heads={cfg.num_key_value_heads}")
  if cfg.head_dim % 2:
    raise ConfigError(f"model.head_dim={cfg.head_dim} must be even for rotary embeddings")
  if cfg.num_experts_per_tok > cfg.num_local_experts:
    raise ConfigError(f"model.num_experts_per_tok={cfg.num_experts_per_tok} exceeds "
                      f"model.num_local_experts={cfg.num_local_experts}")
  if cfg.num_hidden_layers % cfg.block_size:
    raise ConfigError(
        f"model.num_hidden_layers={cfg.num_hidden_layers} is not a multiple of the layer pattern length "
        f"lcm(no_rope_layer_interval={cfg.no_rope_layer_interval}, "
        f"interleave_moe_layer_step={cfg.interleave_moe_layer_step})={cfg.block_size}")
  if cfg.attention_chunk_size is not None and (
      not isinstance(cfg.attention_chunk_size, int) or cfg.attention_chunk_size <= 0):
    raise ConfigError(f"model.attention_chunk_size must be a positive integer or None, got {cfg.attention_chunk_size!r}")
  if not isinstance(cfg.scan_unroll, int) or isinstance(cfg.scan_unroll, bool) or cfg.scan_unroll < 0:
    raise ConfigError(f"model.scan_unroll must be a positive integer or 0 (auto), got {cfg.scan_unroll!r}")
  if cfg.attn_scale < 0:
    raise ConfigError(f"model.attn_scale must be >= 0, got {cfg.attn_scale!r}")
  for name, allowed in (("dtype", DTYPES), ("param_dtype", DTYPES), ("remat_policy", REMAT_POLICIES),
                        ("moe_impl", MOE_IMPLS), ("attention_impl", ATTENTION_IMPLS)):
    if getattr(cfg, name) not in allowed:
      where = {v: f"kernels.{k}" for k, v in KERNEL_KEYS.items()}.get(name, f"model.{name}")
      raise ConfigError(f"{where}={getattr(cfg, name)!r} is not one of {allowed}")
  rs = cfg.rope_scaling
  if rs is not None:
    if rs.rope_type not in ROPE_TYPES:
      raise ConfigError(f"model.rope_scaling.rope_type={rs.rope_type!r} is not one of {ROPE_TYPES}")
    if rs.rope_type != "default" and not (isinstance(rs.factor, (int, float)) and rs.factor >= 1):
      raise ConfigError(f"model.rope_scaling.factor={rs.factor!r} must be a number >= 1")
    if rs.rope_type != "default" and rs.original_max_position_embeddings <= 0:
      raise ConfigError("model.rope_scaling.original_max_position_embeddings must be positive")
    if rs.rope_type in ("ntk", "dynamic") and cfg.head_dim <= 2:
      raise ConfigError(f"model.rope_scaling.rope_type={rs.rope_type!r} needs head_dim > 2, got {cfg.head_dim}")
    if rs.rope_type == "yarn":
      if not rs.beta_fast > rs.beta_slow > 0:
        raise ConfigError(f"model.rope_scaling.beta_fast={rs.beta_fast} must exceed beta_slow={rs.beta_slow} > 0")
      if rs.attention_factor is not None and rs.attention_factor <= 0:
        raise ConfigError(f"model.rope_scaling.attention_factor={rs.attention_factor} must be positive (or None)")
    if rs.rope_type == "llama3":
      if rs.low_freq_factor <= 0 or rs.high_freq_factor < rs.low_freq_factor:
        raise ConfigError(f"model.rope_scaling.high_freq_factor={rs.high_freq_factor} must be >= "
                          f"low_freq_factor={rs.low_freq_factor} > 0")
  for name in ("init_multipliers", "forward_multipliers"):
    _check_multipliers(name, getattr(cfg, name))
  if cfg.vision is not None:
    validate_vision(cfg.vision, cfg.vocab_size)


def _check_multipliers(name: str, pairs) -> None:
  if not isinstance(pairs, tuple):
    raise ConfigError(f"model.{name} must be a tuple of (regex, factor) pairs, got {pairs!r}")
  for pair in pairs:
    if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], str)
            and isinstance(pair[1], (int, float)) and not isinstance(pair[1], bool) and math.isfinite(pair[1])):
      raise ConfigError(f"model.{name}: {pair!r} is not a (regex, finite factor) pair")
    try:
      re.compile(pair[0])
    except re.error as e:
      raise ConfigError(f"model.{name}: {pair[0]!r} is not a regular expression ({e})") from e


def validate_vision(v: VisionConfig, vocab_size: int) -> None:
  """The vision tower's shape rules; Hugging Face's modules tie some widths together, so they are checked here."""
  _positive(v, "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "image_size",
            "patch_size", "num_channels", "projector_input_dim", "projector_output_dim", "vision_output_dim",
            "rope_theta", "norm_eps", "max_num_tiles", prefix="model.vision.")
  if v.hidden_size % v.num_attention_heads or (v.hidden_size // v.num_attention_heads) % 4:
    raise ConfigError(f"model.vision.hidden_size={v.hidden_size} / num_attention_heads={v.num_attention_heads} "
                      "must be a whole head size divisible by 4 (2D RoPE rotates x and y in half the pairs each)")
  if v.image_size % v.patch_size:
    raise ConfigError(f"model.vision.image_size={v.image_size} is not a multiple of patch_size={v.patch_size}")
  shuffle = 1 / v.pixel_shuffle_ratio if v.pixel_shuffle_ratio > 0 else 0
  grid = v.image_size // v.patch_size
  if abs(shuffle - round(shuffle)) > 1e-9 or round(shuffle) < 1 or grid % round(shuffle):
    raise ConfigError(f"model.vision.pixel_shuffle_ratio={v.pixel_shuffle_ratio} must be 1/s for an integer s "
                      f"dividing the {grid}x{grid} patch grid")
  if v.intermediate_size != v.hidden_size * round(shuffle) ** 2:
    raise ConfigError(f"model.vision.intermediate_size={v.intermediate_size} must equal hidden_size / "
                      f"pixel_shuffle_ratio**2 = {v.hidden_size * round(shuffle) ** 2} (Hugging Face feeds the "
                      "pixel-shuffled features to an adapter layer of input width intermediate_size)")
  if v.vision_output_dim != v.projector_output_dim:
    raise ConfigError(f"model.vision.vision_output_dim={v.vision_output_dim} must equal "
                      f"projector_output_dim={v.projector_output_dim} (the projector reads the adapter's output)")
  if not 0 <= v.image_token_id < vocab_size:
    raise ConfigError(f"model.vision.image_token_id={v.image_token_id} is outside the vocabulary "
                      f"(vocab_size={vocab_size})")


def _build(cls, values: Mapping[str, Any], prefix: str):
  known = {f.name: f for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - set(known))
  if unknown:
    raise ConfigError(f"unknown key(s) {', '.join(prefix + k for k in unknown)}; known keys: {sorted(known)}")
  return {k: v for k, v in values.items()}


def from_config_dict(cd: Any, kernels: Any = None) -> ModelConfig:
  """ConfigDict (or plain mapping) for `config.model` (+ optional `config.kernels`) -> validated frozen ModelConfig.

  `kernels` is a mapping with keys among `moe`, `attention`, `interpret` (see KERNEL_KEYS); unknown keys are errors.
  `rope_scaling` may be None, a mapping with `rope_type='default'` (no scaling) or a llama3 mapping; `vision` may be
  None or a mapping with `enabled=False`.
  """
  values = dict(cd.to_dict() if hasattr(cd, "to_dict") else cd)
  for name in ("init_multipliers", "forward_multipliers"):  # JSON and ConfigDicts hold them as lists
    if isinstance(values.get(name), (list, tuple)):
      values[name] = tuple(tuple(p) if isinstance(p, (list, tuple)) else p for p in values[name])
  rope = values.pop("rope_scaling", None)
  vision = values.pop("vision", None)
  kwargs = _build(ModelConfig, values, "model.")
  if kernels is not None:
    kernels = dict(kernels.to_dict() if hasattr(kernels, "to_dict") else kernels)
    unknown = sorted(set(kernels) - set(KERNEL_KEYS))
    if unknown:
      raise ConfigError(f"unknown key(s) {', '.join('kernels.' + k for k in unknown)}; known keys: {sorted(KERNEL_KEYS)}")
    for key, value in kernels.items():
      kwargs[KERNEL_KEYS[key]] = value
  if rope is not None:
    rope = dict(rope)
    if rope.get("rope_type", "llama3") == "default":
      rope = None
    else:
      rope = RopeScaling(**_build(RopeScaling, rope, "model.rope_scaling."))
  if vision is not None:
    vision = dict(vision)
    enabled = vision.pop("enabled", True)
    vision = VisionConfig(**_build(VisionConfig, vision, "model.vision.")) if enabled else None
  return ModelConfig(**kwargs, rope_scaling=rope, vision=vision)


def model_config(config: Any) -> ModelConfig:
  """The ModelConfig of a whole experiment config: its `model` section with its `kernels` section (if any)."""
  return from_config_dict(config.model, config.get("kernels") if hasattr(config, "get") else None)


def to_dict(cfg: ModelConfig) -> dict[str, Any]:
  """Plain nested dict (JSON-safe) of a ModelConfig; inverse of `from_config_dict`."""
  return dataclasses.asdict(cfg)
