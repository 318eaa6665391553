"""Parameterizations: per-parameter-group init scales, forward multipliers and Adam learning rates as powers of the
width and depth multipliers, plus learning-rate rules for batch size and token budget (issue 10).

`config.parameterization` selects one:
  * 'standard': nothing changes (Hugging Face's init, no multipliers, one learning rate),
  * 'mup': μP for Adam (Tensor Programs V; microsoft/mup's MuAdam + MuReadout form): hidden matrices (attention,
    dense FFN, shared and routed experts) init std x m^-1/2, Adam LR x m^-1 and weight decay x m (coupled, so that
    the decay step lr x wd is the same at every width), readout and router logits x m^-1, embedding and norms
    unchanged; m = the parameter's width multiplier,
  * 'completep': μP plus depth scaling of the residual branches x L^-alpha with alpha = 1 (CompleteP, Dey et al.
    2025), under which the hidden learning rates need no depth factor (x L^(alpha - 1) = 1),
  * 'metap': every per-group constant and exponent from `config.param_scaling.metap.<group>` and alpha from
    `config.param_scaling.depth_alpha`, so that sweeps can tune them at small scale and carry them up.
Groups (`GROUPS`): embedding, attn_q, attn_k, attn_v, attn_o, dense_ffn, shared_expert, routed_experts, router,
norms, readout; the vision tower's parameters belong to none and never change.

For a parameter of group g, with its width multiplier m_w (growth of its fan-in over the base shape in
`config.param_scaling.base`: the hidden size for q/k/v, gate_up, router and readout, heads x head_dim for the
attention output, the dense FFN width and the expert width for their down projections; embedding and norms use the
hidden size, their only width dimension), the depth multiplier m_L (num_hidden_layers over the base) and the
expert-count multiplier m_E:
    init std   x  init * m_w^init_width
    forward    x  forward * m_w^forward_width, and x m_L^-alpha on each residual branch's output matrix
                  (attention o, the FFN and expert down projections)
    Adam LR    x  lr * m_w^lr_width * m_L^lr_depth * m_E^lr_experts
    AdamW weight decay  x  m_w^wd_width   (the decay step is LR x weight decay: wd_width = -lr_width keeps it fixed)
    every LR   x  (B / B_base)^batch_exponent * (T / T_base)^token_exponent   (B = data.batch_size,
                  T = train.steps x B x data.seq_len tokens; mup / completep / metap)
A base value of 0 means "the model's own" (multiplier 1). At the base shape every factor is exactly 1 and nothing is
added, so the model and the optimizer are bit-identical to 'standard' (tests/unit/test_parameterization.py).

The factors reach training only as `model.init_multipliers` / `model.forward_multipliers` (the model's init and
forward pass, llama4_jax/model/multipliers.py) and as per-group entries of `optim.lr_multipliers` and
`optim.weight_decay_multipliers` plus a scaled `optim.learning_rate` (the optimizer): `apply` writes them into a
stage's resolved config (train/loop.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from llama4_jax.config import ConfigError

KINDS = ("standard", "mup", "completep", "metap")
GROUPS = ("embedding", "attn_q", "attn_k", "attn_v", "attn_o", "dense_ffn", "shared_expert", "routed_experts",
          "router", "norms", "readout")
RULE_KEYS = ("init", "init_width", "forward", "forward_width", "lr", "lr_width", "lr_depth", "lr_experts",
             "wd_width")
BASE_KEYS = ("hidden_size", "num_attention_heads", "head_dim", "intermediate_size", "intermediate_size_mlp",
             "num_local_experts", "num_hidden_layers", "batch_size", "tokens")

_BLOCK = r"^(blocks|block_\d+)/layer_\d+/"  # stacked ('blocks/...') and unstacked ('block_3/...') layouts
# (group, path regex, which width its fan-in follows, output matrix of a residual branch)
LEAVES = (
    ("embedding", r"^embed$", "hidden", False),
    ("attn_q", _BLOCK + r"attn/q$", "hidden", False),
    ("attn_k", _BLOCK + r"attn/k$", "hidden", False),
    ("attn_v", _BLOCK + r"attn/v$", "hidden", False),
    ("attn_o", _BLOCK + r"attn/o$", "attention", True),
    ("dense_ffn", _BLOCK + r"mlp/gate_up$", "hidden", False),
    ("dense_ffn", _BLOCK + r"mlp/down$", "ffn", True),
    ("shared_expert", _BLOCK + r"moe/shared/gate_up$", "hidden", False),
    ("shared_expert", _BLOCK + r"moe/shared/down$", "expert_ffn", True),
    ("routed_experts", _BLOCK + r"moe/gate_up$", "hidden", False),
    ("routed_experts", _BLOCK + r"moe/down$", "expert_ffn", True),
    ("router", _BLOCK + r"moe/router$", "hidden", False),
    ("norms", r"^((blocks|block_\d+)/layer_\d+/(attn|ffn)_norm|final_norm)/scale$", "hidden", False),
    ("readout", r"^lm_head$", "hidden", False),
)


@dataclasses.dataclass(frozen=True)
class Rule:
  """One group's constants and exponents (see the module docstring)."""
  init: float = 1.0
  init_width: float = 0.0
  forward: float = 1.0
  forward_width: float = 0.0
  lr: float = 1.0
  lr_width: float = 0.0
  lr_depth: float = 0.0
  lr_experts: float = 0.0
  wd_width: float = 0.0


_HIDDEN = Rule(init_width=-0.5, lr_width=-1.0, wd_width=1.0)
_MUP = {"embedding": Rule(), "attn_q": _HIDDEN, "attn_k": _HIDDEN, "attn_v": _HIDDEN, "attn_o": _HIDDEN,
        "dense_ffn": _HIDDEN, "shared_expert": _HIDDEN, "routed_experts": _HIDDEN,
        "router": Rule(forward_width=-1.0), "norms": Rule(), "readout": Rule(forward_width=-1.0)}
PRESETS = {"standard": ({g: Rule() for g in GROUPS}, 0.0), "mup": (_MUP, 0.0), "completep": (_MUP, 1.0)}


@dataclasses.dataclass(frozen=True)
class Resolved:
  """What a parameterization adds to a stage: (regex, factor) pairs and the global learning-rate factor."""
  init: tuple = ()
  forward: tuple = ()
  lr: tuple = ()
  wd: tuple = ()
  lr_scale: float = 1.0
  table: tuple = ()  # (group, regex, init, forward, lr, weight-decay factor) for every text parameter kind


def _rules(config) -> tuple[dict[str, Rule], float]:
  kind = config.get("parameterization", "standard")
  if kind not in KINDS:
    raise ConfigError(f"parameterization={kind!r} is not one of {KINDS}")
  if kind != "metap":
    return PRESETS[kind]
  metap = _section(config, "metap")
  rules = {}
  for group in GROUPS:
    if group not in metap:
      raise ConfigError(f"param_scaling.metap.{group} is missing (groups: {', '.join(GROUPS)})")
    values = dict(metap[group])
    unknown = sorted(set(values) - set(RULE_KEYS))
    if unknown:
      raise ConfigError(f"param_scaling.metap.{group}: unknown key(s) {unknown}; known: {list(RULE_KEYS)}")
    for key, value in values.items():
      if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ConfigError(f"param_scaling.metap.{group}.{key} must be a number, got {value!r}")
    rules[group] = Rule(**{k: float(v) for k, v in values.items()})
  extra = sorted(set(metap) - set(GROUPS))
  if extra:
    raise ConfigError(f"param_scaling.metap: unknown group(s) {extra}; groups: {', '.join(GROUPS)}")
  return rules, float(_section(config)["depth_alpha"])


def _section(config, sub: str | None = None):
  if "param_scaling" not in config:
    raise ConfigError(f"parameterization={config.parameterization!r} needs a `param_scaling` section "
                      "(configs/base.py: param_scaling_config)")
  section = config.param_scaling
  if sub is None:
    return section
  if sub not in section:
    raise ConfigError(f"param_scaling.{sub} is missing")
  return section[sub]


def _ratio(value: float, base: Any, key: str) -> float:
  if not isinstance(base, (int, float)) or isinstance(base, bool) or base < 0:
    raise ConfigError(f"param_scaling.base.{key} must be a number >= 0 (0 = the model's own), got {base!r}")
  return 1.0 if base == 0 else float(value) / float(base)


def multipliers(config) -> dict[str, float]:
  """The width, depth, expert-count, batch and token multipliers of `config` against `param_scaling.base`."""
  m, d, t = config.model, config.data, config.train
  base = dict(_section(config)["base"])
  unknown = sorted(set(base) - set(BASE_KEYS))
  if unknown:
    raise ConfigError(f"param_scaling.base: unknown key(s) {unknown}; known: {list(BASE_KEYS)}")
  get = lambda key: base.get(key, 0)  # noqa: E731
  heads = _ratio(m.num_attention_heads, get("num_attention_heads"), "num_attention_heads")
  head_dim = _ratio(m.head_dim, get("head_dim"), "head_dim")
  tokens = t.steps * d.batch_size * d.seq_len
  return {"hidden": _ratio(m.hidden_size, get("hidden_size"), "hidden_size"), "attention": heads * head_dim,
          "ffn": _ratio(m.intermediate_size_mlp, get("intermediate_size_mlp"), "intermediate_size_mlp"),
          "expert_ffn": _ratio(m.intermediate_size, get("intermediate_size"), "intermediate_size"),
          "experts": _ratio(m.num_local_experts, get("num_local_experts"), "num_local_experts"),
          "depth": _ratio(m.num_hidden_layers, get("num_hidden_layers"), "num_hidden_layers"),
          "batch": _ratio(d.batch_size, get("batch_size"), "batch_size"),
          "tokens": _ratio(tokens, get("tokens"), "tokens")}


def resolve(config) -> Resolved:
  """The factors of `config`'s parameterization (empty for 'standard' and at the base shape)."""
  rules, alpha = _rules(config)
  if config.get("parameterization", "standard") == "standard":
    return Resolved()
  mult = multipliers(config)
  section = _section(config)
  init, forward, lr, wd, table = [], [], [], [], []
  for group, pattern, width, residual in LEAVES:
    r, m_w = rules[group], mult[width]
    f_init = r.init * m_w ** r.init_width
    f_forward = r.forward * m_w ** r.forward_width * (mult["depth"] ** -alpha if residual else 1.0)
    f_lr = r.lr * m_w ** r.lr_width * mult["depth"] ** r.lr_depth * mult["experts"] ** r.lr_experts
    f_wd = m_w ** r.wd_width
    for out, factor in ((init, f_init), (forward, f_forward), (lr, f_lr), (wd, f_wd)):
      if factor != 1.0:
        out.append((pattern, factor))
    table.append((group, pattern, f_init, f_forward, f_lr, f_wd))
  lr_scale = mult["batch"] ** float(section["batch_exponent"]) * mult["tokens"] ** float(section["token_exponent"])
  return Resolved(tuple(init), tuple(forward), tuple(lr), tuple(wd), lr_scale, tuple(table))


def apply(config) -> Resolved:
  """Writes `config`'s parameterization into it (a stage's own resolved copy): model init / forward multipliers,
  per-group learning-rate and weight-decay multipliers ahead of the user's own, the scaled peak learning rate."""
  r = resolve(config)
  if r.init or r.forward:
    model = config.model
    init = tuple(map(tuple, model.get("init_multipliers", ()))) + r.init
    forward = tuple(map(tuple, model.get("forward_multipliers", ()))) + r.forward
    with model.unlocked():  # main.py locks the config; these keys are not in the presets
      model.init_multipliers, model.forward_multipliers = init, forward
  if r.lr:
    config.optim.lr_multipliers = r.lr + tuple(tuple(m) for m in config.optim.lr_multipliers)
  if r.wd:
    with config.optim.unlocked():  # an optim section written before the key existed lacks it
      config.optim.weight_decay_multipliers = r.wd + tuple(
          tuple(m) for m in config.optim.get("weight_decay_multipliers", ()))
  if r.lr_scale != 1.0:
    config.optim.learning_rate = config.optim.learning_rate * r.lr_scale
  return r
