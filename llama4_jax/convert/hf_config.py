"""Hugging Face Llama 4 config.json <-> ModelConfig.

Reads both spellings of the rotary settings (transformers 4.51 `rope_theta` + `rope_scaling`, and v5
`rope_parameters`; rope types llama3, linear, dynamic, yarn), and HF's `no_rope_layers` whose 1 means the layer
*uses* RoPE.
"""

from __future__ import annotations

from typing import Any

from llama4_jax.config import ConfigError, ModelConfig, RopeScaling, VisionConfig
from llama4_jax.model.rope import ntk_exponent

TEXT_ARCHITECTURES = ("Llama4ForCausalLM",)
VISION_ARCHITECTURES = ("Llama4ForConditionalGeneration",)


def _pattern_interval(flags: list[int], name: str, num_layers: int) -> int:
  """Interval n such that flags[i] is set exactly when (i + 1) % n == 0; error if the list has another shape."""
  if len(flags) < num_layers:
    raise ConfigError(f"config.json: '{name}' has {len(flags)} entries for {num_layers} layers")
  flags = [bool(f) for f in flags[:num_layers]]
  if not any(flags):
    raise ConfigError(f"config.json: '{name}' selects no layer; llama4_jax needs a periodic pattern")
  interval = flags.index(True) + 1
  expected = [(i + 1) % interval == 0 for i in range(num_layers)]
  if flags != expected:
    raise ConfigError(f"config.json: '{name}' is not periodic ((i+1) % n == 0 for some n): {flags}")
  return interval


def _rope(hf: dict) -> tuple[float, RopeScaling | None]:
  params = hf.get("rope_parameters")
  if isinstance(params, dict) and "rope_type" in params and "full_attention" not in params:
    theta, scaling = params.get("rope_theta", hf.get("rope_theta", 500000.0)), params
  else:
    theta, scaling = hf.get("rope_theta", 500000.0), hf.get("rope_scaling")
  if not scaling or scaling.get("rope_type", scaling.get("type", "default")) == "default":
    return float(theta), None
  rope_type = scaling.get("rope_type", scaling.get("type"))
  try:
    if rope_type == "llama3":
      rs = RopeScaling("llama3", float(scaling["factor"]), float(scaling["low_freq_factor"]),
                       float(scaling["high_freq_factor"]), int(scaling["original_max_position_embeddings"]))
    elif rope_type == "linear":
      rs = RopeScaling("linear", float(scaling["factor"]))
    elif rope_type == "dynamic":  # transformers measures the growth against config.max_position_embeddings
      rs = RopeScaling("dynamic", float(scaling["factor"]),
                       original_max_position_embeddings=int(hf.get("max_position_embeddings", 131072)))
    elif rope_type == "yarn":
      if scaling.get("mscale") or scaling.get("mscale_all_dim") or scaling.get("partial_rotary_factor", 1.0) != 1.0:
        raise ConfigError("config.json: yarn rope scaling with mscale / mscale_all_dim / partial_rotary_factor is "
                          "not supported")
      factor = scaling.get("factor")
      original = int(scaling["original_max_position_embeddings"])
      if factor is None:
        factor = int(hf["max_position_embeddings"]) / original
      attn = scaling.get("attention_factor")
      rs = RopeScaling("yarn", float(factor), original_max_position_embeddings=original,
                       beta_fast=float(scaling.get("beta_fast") or 32), beta_slow=float(scaling.get("beta_slow") or 1),
                       attention_factor=None if attn is None else float(attn),
                       truncate=bool(scaling.get("truncate", True)))
    else:
      raise ConfigError(f"config.json: rope type {rope_type!r} is not supported "
                        "(llama3, linear, dynamic, yarn or none)")
  except KeyError as e:
    raise ConfigError(f"config.json: {rope_type} rope scaling lacks key {e}") from e
  return float(theta), rs


def _max_positions(hf: dict, scaling) -> int:
  """The longest context the imported model serves. transformers' dynamic NTK reads config.max_position_embeddings
  as the original length it grows from (not as a limit), so that model serves `factor` times it."""
  max_pos = int(hf.get("max_position_embeddings", 131072))
  if scaling is not None and scaling.rope_type == "dynamic":
    return int(round(scaling.original_max_position_embeddings * scaling.factor))
  return max_pos


def _rope_to_hf(cfg: ModelConfig) -> tuple[dict, int]:
  """(rope_parameters, max_position_embeddings) for transformers."""
  rs, max_pos = cfg.rope_scaling, cfg.max_position_embeddings
  if rs is None or rs.rope_type == "default":
    return {"rope_type": "default", "rope_theta": cfg.rope_theta}, max_pos
  if rs.rope_type == "ntk":  # static NTK is a larger base: transformers has no name for it
    return {"rope_type": "default", "rope_theta": cfg.rope_theta * rs.factor ** ntk_exponent(cfg.head_dim)}, max_pos
  rope = {"rope_type": rs.rope_type, "rope_theta": cfg.rope_theta, "factor": rs.factor}
  if rs.rope_type == "llama3":
    rope.update(low_freq_factor=rs.low_freq_factor, high_freq_factor=rs.high_freq_factor,
                original_max_position_embeddings=rs.original_max_position_embeddings)
  elif rs.rope_type == "dynamic":
    max_pos = rs.original_max_position_embeddings  # transformers' reference length for the dynamic base
  elif rs.rope_type == "yarn":
    rope.update(original_max_position_embeddings=rs.original_max_position_embeddings, beta_fast=rs.beta_fast,
                beta_slow=rs.beta_slow, truncate=rs.truncate)
    if rs.attention_factor is not None:
      rope["attention_factor"] = rs.attention_factor
  return rope, max_pos


_VISION_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "image_size",
                  "patch_size", "num_channels", "pixel_shuffle_ratio", "projector_input_dim", "projector_output_dim",
                  "vision_output_dim", "norm_eps")


def is_multimodal(hf: dict) -> bool:
  """True for a Llama4ForConditionalGeneration config.json (text_config + vision_config)."""
  return any(a in VISION_ARCHITECTURES for a in hf.get("architectures") or []) or hf.get("model_type") == "llama4"


def vision_from_hf(hf: dict, **overrides: Any) -> VisionConfig:
  """VisionConfig from a Llama4Config's `vision_config` (+ its top-level `image_token_index`)."""
  v = hf.get("vision_config")
  if not isinstance(v, dict):
    raise ConfigError("config.json: a Llama4ForConditionalGeneration config needs a 'vision_config' object")
  if v.get("hidden_act", "gelu") != "gelu":
    raise ConfigError(f"config.json: vision_config.hidden_act {v['hidden_act']!r} is not supported (Llama 4: gelu)")
  if v.get("multi_modal_projector_bias"):
    raise ConfigError("config.json: vision_config.multi_modal_projector_bias=true is not supported (Llama 4: false)")
  defaults = VisionConfig()
  values = {}
  for name in _VISION_FIELDS:
    value = v.get(name, getattr(defaults, name))
    if isinstance(value, (list, tuple)):  # HF allows [h, w] sizes; Llama 4 tiles and patches are square
      if len(set(value)) != 1:
        raise ConfigError(f"config.json: vision_config.{name}={value} is not square")
      value = value[0]
    values[name] = value
  rope = v.get("rope_parameters") or {}
  values["rope_theta"] = float(rope.get("rope_theta", v.get("rope_theta", defaults.rope_theta)))
  values["image_token_id"] = int(hf.get("image_token_index", hf.get("image_token_id", defaults.image_token_id)))
  values.update(overrides)
  return VisionConfig(**values)


def config_from_hf(hf: dict, **overrides: Any) -> ModelConfig:
  """ModelConfig from a parsed config.json: Llama4ForCausalLM (model_type 'llama4_text') or, with its vision
  tower, Llama4ForConditionalGeneration (model_type 'llama4', text_config + vision_config)."""
  archs = hf.get("architectures") or []
  if is_multimodal(hf):
    text = hf.get("text_config")
    if not isinstance(text, dict):
      raise ConfigError("config.json: a Llama4ForConditionalGeneration config needs a 'text_config' object")
    vision_overrides = overrides.pop("vision_overrides", {})
    cfg = config_from_hf({**text, "architectures": list(TEXT_ARCHITECTURES)}, **overrides)
    return cfg.replace(vision=vision_from_hf(hf, **vision_overrides))
  overrides.pop("vision_overrides", None)
  if archs and not any(a in TEXT_ARCHITECTURES for a in archs):
    raise ConfigError(f"config.json: unsupported architecture {archs}; expected one of "
                      f"{TEXT_ARCHITECTURES + VISION_ARCHITECTURES}")
  if hf.get("model_type", "llama4_text") != "llama4_text":
    raise ConfigError(f"config.json: model_type {hf.get('model_type')!r} is not 'llama4_text'")
  try:
    layers = int(hf["num_hidden_layers"])
    heads = int(hf["num_attention_heads"])
    hidden = int(hf["hidden_size"])
  except KeyError as e:
    raise ConfigError(f"config.json: missing required key {e}") from e
  if hf.get("no_rope_layers"):
    nope = [1 - int(f) for f in hf["no_rope_layers"]]  # HF: 1 = uses RoPE
    # all RoPE: interval 0 (no NoPE layer)
    nope_interval = _pattern_interval(nope, "no_rope_layers", layers) if any(nope[:layers]) else 0
  else:
    nope_interval = int(hf.get("no_rope_layer_interval", 4))
  if hf.get("moe_layers") is not None:
    moe = set(hf["moe_layers"])
    step = _pattern_interval([int(i in moe) for i in range(layers)], "moe_layers", layers)
  else:
    step = int(hf.get("interleave_moe_layer_step", 1))
  theta, scaling = _rope(hf)
  eos = hf.get("eos_token_id")
  kwargs = dict(
      vocab_size=int(hf["vocab_size"]), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
      num_key_value_heads=int(hf.get("num_key_value_heads") or heads),
      head_dim=int(hf.get("head_dim") or hidden // heads),
      intermediate_size=int(hf["intermediate_size"]), intermediate_size_mlp=int(hf["intermediate_size_mlp"]),
      num_local_experts=int(hf["num_local_experts"]), num_experts_per_tok=int(hf["num_experts_per_tok"]),
      interleave_moe_layer_step=step, no_rope_layer_interval=nope_interval,
      attention_chunk_size=hf.get("attention_chunk_size"), use_qk_norm=bool(hf.get("use_qk_norm", True)),
      attn_temperature_tuning=bool(hf.get("attn_temperature_tuning", True)),
      floor_scale=hf.get("floor_scale", 8192), attn_scale=float(hf.get("attn_scale", 0.1)),
      rope_theta=theta, rope_scaling=scaling, rms_norm_eps=float(hf.get("rms_norm_eps", 1e-5)),
      max_position_embeddings=_max_positions(hf, scaling),
      initializer_range=float(hf.get("initializer_range", 0.02)),
      bos_token_id=hf.get("bos_token_id"), eos_token_id=eos[0] if isinstance(eos, list) and eos else eos,
      pad_token_id=hf.get("pad_token_id"))
  if hf.get("hidden_act", "silu") != "silu":
    raise ConfigError(f"config.json: hidden_act {hf['hidden_act']!r} is not supported (Llama 4 uses 'silu')")
  if hf.get("attention_bias"):
    raise ConfigError("config.json: attention_bias=true is not supported (Llama 4 has no attention biases)")
  kwargs.update(overrides)
  return ModelConfig(**kwargs)


def config_to_hf(cfg: ModelConfig, torch_dtype: str = "float32") -> dict:
  """A transformers v5 config dict that `from_pretrained` reads back to the same model: Llama4TextConfig, or
  Llama4Config (text_config + vision_config) when the model has a vision tower."""
  text = _text_config_to_hf(cfg, torch_dtype)
  if cfg.vision is None:
    return text
  v = cfg.vision
  vision = {name: getattr(v, name) for name in _VISION_FIELDS}
  vision.update(model_type="llama4_vision_model", hidden_act="gelu", multi_modal_projector_bias=False,
                vision_feature_select_strategy="default", rope_parameters={"rope_type": "default",
                                                                            "rope_theta": v.rope_theta})
  text = {k: val for k, val in text.items() if k != "architectures"}
  specials = {k: text.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
  return {"architectures": list(VISION_ARCHITECTURES), "model_type": "llama4", "dtype": torch_dtype,
          "text_config": text, "vision_config": vision, "image_token_index": v.image_token_id,
          # <|image_start|> / <|image_end|> sit 12 and 11 slots before <|patch|> in Llama 4's special-token block.
          "boi_token_index": v.image_token_id - 12, "eoi_token_index": v.image_token_id - 11,
          "tie_word_embeddings": False, **specials}


def _text_config_to_hf(cfg: ModelConfig, torch_dtype: str) -> dict:
  layers = range(cfg.num_hidden_layers)
  rope, max_pos = _rope_to_hf(cfg)
  no_rope_layers = [int(cfg.is_rope_layer(i)) for i in layers]
  return {
      "architectures": ["Llama4ForCausalLM"], "model_type": "llama4_text", "dtype": torch_dtype,
      "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size, "num_hidden_layers": cfg.num_hidden_layers,
      "num_attention_heads": cfg.num_attention_heads, "num_key_value_heads": cfg.num_key_value_heads,
      "head_dim": cfg.head_dim, "intermediate_size": cfg.intermediate_size,
      "intermediate_size_mlp": cfg.intermediate_size_mlp, "num_local_experts": cfg.num_local_experts,
      "num_experts_per_tok": cfg.num_experts_per_tok, "interleave_moe_layer_step": cfg.interleave_moe_layer_step,
      "moe_layers": [i for i in layers if cfg.is_moe_layer(i)],
      # transformers divides by the interval even when no_rope_layers is given: 0 (no NoPE layer) goes out as L + 1
      "no_rope_layer_interval": cfg.no_rope_layer_interval or cfg.num_hidden_layers + 1,
      "no_rope_layers": no_rope_layers,
      "layer_types": ["chunked_attention" if r else "full_attention" for r in no_rope_layers],
      "attention_chunk_size": cfg.attention_chunk_size, "use_qk_norm": cfg.use_qk_norm,
      # transformers types floor_scale as int and rejects 64.0.
      "attn_temperature_tuning": cfg.attn_temperature_tuning,
      "floor_scale": int(cfg.floor_scale) if float(cfg.floor_scale).is_integer() else cfg.floor_scale,
      "attn_scale": cfg.attn_scale, "rope_parameters": rope, "rms_norm_eps": cfg.rms_norm_eps,
      "max_position_embeddings": max_pos, "initializer_range": cfg.initializer_range,
      "hidden_act": "silu", "attention_bias": False, "tie_word_embeddings": False,
      # transformers rejects special ids outside the vocabulary (its embedding asserts on padding_idx).
      **{name: (tid if tid is not None and 0 <= tid < cfg.vocab_size else None)
         for name, tid in (("bos_token_id", cfg.bos_token_id), ("eos_token_id", cfg.eos_token_id),
                           ("pad_token_id", cfg.pad_token_id))},
  }
