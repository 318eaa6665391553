"""Which layer pattern and which RoPE-extension method generalizes past the training length? (issue 11)

Tiny MoE models pretrained on 256-token rows of the embedded corpus with a pass-key document after every 10th
document (`llama4_jax.python_docs_passkey`), evaluated to 4,096 tokens (16x) with `python -m llama4_jax.eval.length`.

Variant = an arm, optionally `,smoke` (a few steps of a smaller model, for tests):
  * layer patterns, pretraining only:
      `rope`   every layer RoPE with global attention (no_rope_layer_interval=0, no chunk)
      `irope`  Llama 4's iRoPE: NoPE every 4th layer with global attention, RoPE layers chunked to 64 tokens (the
               chunk is a quarter of the training length, as Scout's 8K chunk is of its 256K context); trained
               without temperature tuning, which the evaluation switches on or off (`--set`), floor_scale 64
      `nope`   every layer NoPE (no_rope_layer_interval=1)
  * context extension, `rope` pretraining then a mid-training stage on 1,024-token rows, 100 steps of 4 x 1,024 =
    the same tokens per step as pretraining (4,096), the same budget for every method:
      `rope,none` (no rescaling: the control), `rope,pi` (linear, factor 4), `rope,ntk` (static NTK, factor 4),
      `rope,dynamic` (dynamic NTK, factor 4 over 256), `rope,yarn` (factor 4 over 256; with Llama 4's qk-norm
      after the rotation its attention factor cancels, so this is YaRN's frequencies alone), `rope,llama3`
      (factor 4, low 1, high 4, over 256), `rope,abf` (base 10,000 -> 160,000).
Every arm is its own workdir; the `rope,*` arms repeat the identical, deterministic `rope` pretraining.

    python -m llama4_jax.main --config=experiments/2026_11_28_length_generalization/config.py:irope \\
        --workdir=runs/len_irope
    python -m llama4_jax.eval.length --checkpoint=runs/len_irope --lengths=256,512,1024,2048,4096 \\
        --train_length=256 --out=runs/len_irope/eval
    python -m llama4_jax.eval.length --checkpoint=runs/len_irope --lengths=256,512,1024,2048,4096 \\
        --train_length=256 --set=model.attn_temperature_tuning=true --out=runs/len_irope/eval_temp

Results and the full command list: NOTES.md beside this file.
"""

from configs import base

PATTERNS = ("rope", "irope", "nope")
EXTENSIONS = ("none", "pi", "ntk", "dynamic", "yarn", "llama3", "abf")
TRAIN_LEN, MID_LEN, CHUNK, FACTOR = 256, 1024, 64, 4.0
THETA, ABF_THETA = 10000.0, 160000.0


def _parse(arg: str):
  tokens = [t for t in (arg or "").split(",") if t]
  unknown = [t for t in tokens if t not in PATTERNS + EXTENSIONS + ("smoke",)]
  if unknown:
    raise ValueError(f"unknown variant token(s) {unknown}: a pattern {PATTERNS}, optionally a context-extension "
                     f"method {EXTENSIONS} (after `rope`), and `smoke`")
  pattern = next((t for t in tokens if t in PATTERNS), "irope")
  method = next((t for t in tokens if t in EXTENSIONS), None)
  if method is not None and pattern != "rope":
    raise ValueError(f"context-extension method {method!r} applies to the `rope` pattern, not {pattern!r}")
  return pattern, method, "smoke" in tokens


def extension_overrides(method: str, train_len: int = TRAIN_LEN) -> dict:
  """`model` overrides of the mid-training stage for one method (rope_scaling fields, or the base for ABF)."""
  scaling = dict(factor=FACTOR, original_max_position_embeddings=train_len)
  return {
      "none": {},
      "pi": {"rope_scaling": dict(rope_type="linear", factor=FACTOR)},
      "ntk": {"rope_scaling": dict(rope_type="ntk", factor=FACTOR)},
      "dynamic": {"rope_scaling": dict(rope_type="dynamic", **scaling)},
      "yarn": {"rope_scaling": dict(rope_type="yarn", **scaling)},
      "llama3": {"rope_scaling": dict(rope_type="llama3", low_freq_factor=1.0, high_freq_factor=4.0, **scaling)},
      "abf": {"rope_theta": ABF_THETA},
  }[method]


def get_config(arg: str = ""):
  pattern, method, smoke = _parse(arg)
  config = base.get_config("tiny")
  config.model.update(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                      intermediate_size=256, intermediate_size_mlp=512, num_local_experts=8, scan_unroll=1,
                      rope_theta=THETA, max_position_embeddings=8192, floor_scale=float(CHUNK),
                      attn_temperature_tuning=False)
  config.model.rope_scaling.rope_type = "default"
  if pattern == "rope":
    config.model.update(no_rope_layer_interval=0, attention_chunk_size=None)
  elif pattern == "irope":
    config.model.update(no_rope_layer_interval=4, attention_chunk_size=CHUNK)
  else:
    config.model.update(no_rope_layer_interval=1, attention_chunk_size=None)
  config.data.update(task="llama4_jax.python_docs_passkey", seq_len=TRAIN_LEN, batch_size=16, eval_batches=8)
  config.optim.update(learning_rate=3e-3, warmup_steps=50, schedule="cosine", min_lr_ratio=0.1)
  config.train.update(steps=800, log_every=50, eval_every=200, checkpoint_every=200, tensorboard=False,
                      progress=False)
  stages = {"pretrain": base.stage()}
  if method is not None:
    stages["midtrain"] = base.stage(
        "lm", data=dict(seq_len=MID_LEN, batch_size=4), model=extension_overrides(method),
        optim=dict(learning_rate=1e-3, warmup_steps=10), train=dict(steps=100, eval_every=50, checkpoint_every=50))
  config.stages = stages
  config.stage_order = tuple(stages)
  if smoke:
    config.model.update(hidden_size=32, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                        intermediate_size=32, intermediate_size_mlp=64, num_local_experts=4)
    if pattern == "irope":
      config.model.attention_chunk_size = 16
    config.data.update(seq_len=64, batch_size=4, eval_batches=1, max_documents=100)
    config.train.update(steps=3, log_every=1, eval_every=3, checkpoint_every=3)
    config.optim.update(warmup_steps=1)
    if method is not None:
      stages["midtrain"].overrides.data.update(seq_len=128, batch_size=2)
      stages["midtrain"].overrides.train.update(steps=2, eval_every=2, checkpoint_every=2)
      stages["midtrain"].overrides.model = extension_overrides(method, 64)
  return config
