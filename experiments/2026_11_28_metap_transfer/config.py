"""Does the optimal learning rate transfer across width, depth and batch size under MetaP, and drift under standard
parameterization? (issue 10)

    # one sweep per (parameterization, axis); rerunning a command skips the runs that finished
    python -m llama4_jax.sweep --config=experiments/2026_11_28_metap_transfer/config.py:metap,width \\
        --workdir=runs/metap_width_metap --parallel=1
    python -m llama4_jax.sweep --config=experiments/2026_11_28_metap_transfer/config.py:standard,width \\
        --workdir=runs/metap_width_standard
    # depth: --group=model.num_hidden_layers; batch size: --group=data.batch_size
    python -m llama4_jax.sweep --config=experiments/2026_11_28_metap_transfer/config.py:metap,depth \\
        --workdir=runs/metap_depth_metap --group=model.num_hidden_layers
    python -m llama4_jax.sweep --config=experiments/2026_11_28_metap_transfer/config.py:metap,batch \\
        --workdir=runs/metap_batch_metap --group=data.batch_size

Tiny MoE models on the embedded corpus (128-token rows, the embedded tokenizer), 4 layers of the Llama 4 pattern
(dense / MoE alternating, 8 experts, top-1, a NoPE layer every 4th), head_dim 16. The base shape is the smallest
model of each axis: width 32, depth 4, batch 8.
  * width: hidden 32, 64, 128, 256 (8x); heads = hidden / 16 (two per key/value head), expert width 2 x hidden,
    dense FFN width 4 x hidden; 8 learning rates 2^-12 .. 2^-5; 200 steps of 8 x 128 tokens. (Widths 64-512 with
    head_dim 32 were the first plan: the 512-wide runs take 5-8 minutes each on the 2-core machine, 8x the cost.)
  * depth: 4, 8, 16 layers (4x) at width 64, the same learning rates and steps.
  * batch: 8, 16, 32 rows (4x) at width 64 and a fixed token budget (steps x batch = 1,600 rows); metap scales
    every learning rate by sqrt(batch / 8) (`param_scaling.batch_exponent=0.5`).
  * long (with width): the width axis at 1,000 steps (5x), learning rates 2^-10 .. 2^-6 around the 200-step optima,
    seeds 0 and 1 (seed 0's runs first, so a sweep cut short has one whole seed; the seed sets init and data order).
  * long with batch: the batch axis at 5x the tokens (1,000 steps of 8 rows, 250 of 32), the warm-up fixed in
    tokens (20 steps of 8 rows, 5 of 32) rather than in steps, the same learning rates and seeds as long.
`metap` uses the CompleteP table of configs/base.py (hidden matrices init x m^-1/2, Adam LR x m^-1 and weight
decay x m, readout and router logits x m^-1, residual branches x L^-1); `standard` uses one learning rate and init std
0.02 everywhere. The decay coupling (lr x wd the same at every width) came in on 2026-12-06; the sweeps before it ran
with every hidden matrix's decay step shrinking as 1/m: the token `uncoupled` restores that.
Variant tokens (comma-separated): a parameterization (standard | mup | completep | metap, default metap), an axis
(width | depth | batch, default width), `long` (width or batch; see above), `uncoupled` (metap without the decay
coupling), `smoke` (two tiny runs of a few steps, for tests), and `<group>.<key>=<number>` to set one of metap's
per-group constants or exponents (e.g. `norms.lr_width=-1`; groups and keys of configs/base.py's param_scaling.metap;
the group `hidden` stands for all seven hidden-matrix groups, attention q/k/v/o, dense FFN, shared and routed
experts). Three tokens pick part of a sweep (the runs keep the names they have in the whole one): `lr=<a>:<b>` the
learning rates 2^a..2^b (integers, both included) in place of the axis's grid, `seed=<n>` one seed (`long`; on the
other axes n > 0 adds it to each run, which otherwise trains with the config's seed 0), `width=<w>` the runs of one
hidden size. Results: NOTES.md.
"""

from configs import base

KINDS = ("standard", "mup", "completep", "metap")
AXES = ("width", "depth", "batch")
# 2^-12 .. 2^-5, run from the middle outwards so that a sweep cut short still brackets the optima
LEARNING_RATES = tuple(2.0 ** e for e in (-8, -7, -9, -6, -10, -5, -11, -12))
WIDTHS = (32, 64, 128, 256)
HEAD_DIM = 16
DEPTHS = (4, 8, 16)
BATCHES = (8, 16, 32)
BASE_STEPS, BASE_BATCH, BASE_WARMUP = 200, 8, 20
LONG_STEPS, LONG_LEARNING_RATES, LONG_SEEDS = 1000, tuple(2.0 ** e for e in (-7, -8, -6, -9, -10)), (0, 1)


HIDDEN_GROUPS = ("attn_q", "attn_k", "attn_v", "attn_o", "dense_ffn", "shared_expert", "routed_experts")


SELECTORS = ("lr", "seed", "width")


def _selection(arg: str) -> dict:
  """{'lr': (a, b), 'seed': n, 'width': w} from the variant's `lr=a:b`, `seed=n`, `width=w` tokens."""
  out = {}
  for token in (arg or "").split(","):
    name, sep, value = token.partition("=")
    if not sep or name not in SELECTORS:
      continue
    try:
      parts = tuple(int(v) for v in value.split(":"))
    except ValueError:
      raise ValueError(f"variant token {token!r}: {value!r} is not {'a:b (integers)' if name == 'lr' else 'an integer'}"
                       ) from None
    if len(parts) != (2 if name == "lr" else 1) or (name == "lr" and parts[0] > parts[1]):
      raise ValueError(f"variant token {token!r}: want {'lr=a:b with a <= b' if name == 'lr' else name + '=<integer>'}")
    out[name] = parts if name == "lr" else parts[0]
  return out


def _rule_settings(arg: str) -> dict:
  """{(group, key): value} from the `<group>.<key>=<number>` tokens of `arg` ('hidden': every hidden group)."""
  settings, rules = {}, base.param_scaling_config().metap
  for token in (arg or "").split(","):
    if "=" not in token or token.partition("=")[0] in SELECTORS:
      continue
    name, _, value = token.partition("=")
    group, _, key = name.partition(".")
    if not (group in rules or group == "hidden") or key not in rules.embedding:
      raise ValueError(f"variant token {token!r}: no param_scaling.metap.{name} (groups {sorted(rules)}, keys "
                       f"{sorted(rules.embedding)})")
    try:
      number = float(value)
    except ValueError:
      raise ValueError(f"variant token {token!r}: {value!r} is not a number") from None
    settings.update({(g, key): number for g in (HIDDEN_GROUPS if group == "hidden" else (group,))})
  return settings


def _parse(arg: str):
  _rule_settings(arg)
  _selection(arg)
  tokens = [t for t in (arg or "").split(",") if t and "=" not in t]
  unknown = [t for t in tokens if t not in KINDS + AXES + ("long", "smoke", "uncoupled")]
  if unknown:
    raise ValueError(f"unknown variant token(s) {unknown} (parameterizations {KINDS}, axes {AXES}, long, uncoupled, "
                     "smoke)")
  kind = next((t for t in tokens if t in KINDS), "metap")
  axis = next((t for t in tokens if t in AXES), "width")
  if "long" in tokens and axis == "depth":
    raise ValueError(f"variant 'long' is defined for the width and batch axes only, got axis {axis!r}")
  return kind, axis, "smoke" in tokens, "long" in tokens


def width_overrides(width: int) -> dict:
  heads = width // HEAD_DIM
  return {"model.hidden_size": width, "model.num_attention_heads": heads, "model.num_key_value_heads": heads // 2,
          "model.intermediate_size": 2 * width, "model.intermediate_size_mlp": 4 * width}


def get_config(arg: str = ""):
  kind, _, smoke, long = _parse(arg)
  config = base.get_config("tiny")
  config.model.update(num_hidden_layers=4, head_dim=HEAD_DIM, num_local_experts=8, scan_unroll=1)
  for key, value in width_overrides(WIDTHS[0]).items():
    config.model[key.split(".")[1]] = value
  config.data.update(seq_len=128, batch_size=BASE_BATCH, eval_batches=4)
  config.optim.update(learning_rate=2.0 ** -8, warmup_steps=BASE_WARMUP, schedule="cosine", min_lr_ratio=0.1)
  config.train.update(steps=BASE_STEPS, log_every=10, eval_every=BASE_STEPS, checkpoint_every=BASE_STEPS,
                      tensorboard=False, progress=False)
  config.parameterization = kind
  shape = width_overrides(WIDTHS[0])
  config.param_scaling.base.update(hidden_size=WIDTHS[0], num_attention_heads=shape["model.num_attention_heads"],
                                   head_dim=HEAD_DIM, intermediate_size=shape["model.intermediate_size"],
                                   intermediate_size_mlp=shape["model.intermediate_size_mlp"], num_local_experts=8,
                                   num_hidden_layers=4,
                                   batch_size=BASE_BATCH)
  if kind == "metap":
    config.param_scaling.batch_exponent = 0.5  # Adam: learning rate ~ sqrt(batch) below the critical batch
    if "uncoupled" in (arg or "").split(","):  # the weight-decay rule of the sweeps before 2026-12-06
      for rule in config.param_scaling.metap.values():
        rule.wd_width = 0.0
  settings = _rule_settings(arg)
  if settings and kind != "metap":
    raise ValueError(f"variant tokens {sorted('.'.join(k) for k in settings)} set metap rules; the parameterization "
                     f"is {kind!r}")
  for (group, key), value in settings.items():
    config.param_scaling.metap[group][key] = value
  if long:
    config.train.update(steps=LONG_STEPS, eval_every=LONG_STEPS, checkpoint_every=LONG_STEPS // 4)
  if smoke:
    config.data.update(seq_len=32, batch_size=8, eval_batches=1, max_documents=60)
    config.train.update(steps=3, log_every=1, eval_every=3, checkpoint_every=3)
    config.optim.update(warmup_steps=1)
  return config


def get_sweep(arg: str = ""):
  _, axis, smoke, long = _parse(arg)
  select = _selection(arg)
  runs = _whole_sweep(axis, smoke, long, select)
  if "width" in select:
    runs = [r for r in runs if r.get("model.hidden_size") == select["width"]]
  if not runs:
    raise ValueError(f"variant {arg!r} selects no run of the sweep")
  return runs


def _whole_sweep(axis: str, smoke: bool, long: bool, select: dict) -> list[dict]:
  lo_hi = select.get("lr")
  if lo_hi:  # middle out, as the grids below
    mid = (lo_hi[0] + lo_hi[1]) / 2
    rates = tuple(2.0 ** e for e in sorted(range(lo_hi[0], lo_hi[1] + 1), key=lambda e: (abs(e - mid), e)))
  if long:  # the schedule's horizon is the run's steps: the same cosine, stretched
    seeds = (select["seed"],) if "seed" in select else LONG_SEEDS
    if axis == "width":
      return [{"seed": seed, "optim.learning_rate": lr, **width_overrides(w)}
              for seed in seeds for lr in (rates if lo_hi else LONG_LEARNING_RATES) for w in WIDTHS]
    return [{"seed": seed, "optim.learning_rate": lr, **width_overrides(64), **batch_overrides(b, LONG_STEPS)}
            for seed in seeds for lr in (rates if lo_hi else LONG_LEARNING_RATES) for b in BATCHES]
  if smoke:
    return [{"optim.learning_rate": 2.0 ** -7, **width_overrides(64)},
            {"optim.learning_rate": 2.0 ** -6, **width_overrides(128)}]
  runs = []
  seed = {"seed": select["seed"]} if select.get("seed") else {}
  for lr in (rates if lo_hi else LEARNING_RATES):
    if axis == "width":
      runs += [{"optim.learning_rate": lr, **width_overrides(w), **seed} for w in WIDTHS]
    elif axis == "depth":
      runs += [{"optim.learning_rate": lr, **width_overrides(64), "model.num_hidden_layers": d, **seed} for d in DEPTHS]
    else:
      runs += [{"optim.learning_rate": lr, **width_overrides(64), "data.batch_size": b, **seed,
                "train.steps": BASE_STEPS * BASE_BATCH // b, "train.eval_every": BASE_STEPS * BASE_BATCH // b,
                "train.checkpoint_every": BASE_STEPS * BASE_BATCH // b} for b in BATCHES]
  return runs


def batch_overrides(batch: int, base_steps: int) -> dict:
  """`batch` rows a step for the tokens of `base_steps` steps of BASE_BATCH rows, with the warm-up fixed in tokens
  (BASE_WARMUP steps of BASE_BATCH rows): every batch size sees the same learning-rate schedule per token."""
  steps = base_steps * BASE_BATCH // batch
  return {"data.batch_size": batch, "train.steps": steps, "train.eval_every": steps,
          "train.checkpoint_every": steps // 4, "optim.warmup_steps": BASE_WARMUP * BASE_BATCH // batch}
