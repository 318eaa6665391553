"""Base experiment config: every default in one place. Usage: --config=configs/base.py:<preset>.

Sections: model (configs/models.py presets), kernels, mesh, expert_parallel, data, optim, parameterization +
param_scaling (μP-style per-group rules), train, tasks, sft, rl, dpo and distill (post-training), and the stage list (`stages` + `stage_order`; kinds lm, sft, rl, dpo, distill: train/loop.py).
A stage's `overrides` is a nested dict applied on top of these sections for that stage only.
"""

import ml_collections

from configs import models


def data_config():
  return ml_collections.ConfigDict(dict(
      task="llama4_jax.python_docs",  # seqio task or mixture (llama4_jax/data/tasks.py)
      train_split="train", eval_split="validation",
      tfds_name="", tfds_data_dir="", tfds_text_key="text",  # a prepared local TFDS text dataset instead
      tokenizer_path="",  # '' = the embedded tiny tokenizer; or a Llama 4 tokenizer.model
      num_reserved_special_tokens=256,  # 2048 for the real Llama 4 tokenizer
      seq_len=128, batch_size=8, eval_batches=8, max_documents=0,
      # Vision models: rows of each batch taken from the embedded image-text set (the modality mix; override it per
      # stage for a curriculum), image tile slots per packed row, and the set's size.
      image_fraction=0.0, tiles_per_row=8, image_train_examples=4000, image_eval_examples=96))


def optim_config():
  return ml_collections.ConfigDict(dict(
      learning_rate=3e-3, warmup_steps=20, schedule="cosine", min_lr_ratio=0.1, decay_fraction=0.2,
      b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, weight_decay_exclude=("norm",), clip_norm=1.0,
      lr_multipliers=(),  # ((regex on parameter path, factor), ...), e.g. (("moe/(gate_up|down)$", 0.5),)
      weight_decay_multipliers=(),  # the same form, on the weight-decay coefficient (the decay step is lr x wd)
  ))


def _rule(init=1.0, init_width=0.0, forward=1.0, forward_width=0.0, lr=1.0, lr_width=0.0, lr_depth=0.0,
          lr_experts=0.0, wd_width=0.0):
  return dict(init=init, init_width=init_width, forward=forward, forward_width=forward_width, lr=lr,
              lr_width=lr_width, lr_depth=lr_depth, lr_experts=lr_experts, wd_width=wd_width)


def param_scaling_config():
  """Base shape and rules of `config.parameterization` ('standard' | 'mup' | 'completep' | 'metap';
  llama4_jax/parameterization.py). A base value of 0 = the model's own. `metap.<group>`: init std x
  init * m_w^init_width, forward x forward * m_w^forward_width, Adam LR x lr * m_w^lr_width * m_L^lr_depth *
  m_E^lr_experts, AdamW weight decay x m_w^wd_width; residual branches x m_L^-depth_alpha; every LR x
  (B/B_base)^batch_exponent (T/T_base)^token_exponent. The metap defaults are CompleteP's values (mup / completep
  ignore them): hidden matrices' decay x m_w, so that the decay step lr x wd does not change with width (MuAdamW)."""
  # a new dict each call: ConfigDict would alias one
  hidden = lambda: _rule(init_width=-0.5, lr_width=-1.0, wd_width=1.0)  # noqa: E731
  return ml_collections.ConfigDict(dict(
      base=dict(hidden_size=0, num_attention_heads=0, head_dim=0, intermediate_size=0, intermediate_size_mlp=0,
                num_local_experts=0, num_hidden_layers=0, batch_size=0, tokens=0),
      depth_alpha=1.0, batch_exponent=0.0, token_exponent=0.0,
      metap=dict(embedding=_rule(), attn_q=hidden(), attn_k=hidden(), attn_v=hidden(), attn_o=hidden(),
                 dense_ffn=hidden(), shared_expert=hidden(), routed_experts=hidden(),
                 router=_rule(forward_width=-1.0), norms=_rule(), readout=_rule(forward_width=-1.0))))


def tasks_config():
  """Verifiable problems for the post-training stages (llama4_jax/data/verifiable.py): which, how many, how long.
  Image families (verifiable.IMAGE_FAMILIES, e.g. 'image_count') are for `sft` and `rl` stages of a vision model."""
  return ml_collections.ConfigDict(dict(
      families=("add", "sub", "sort", "reverse", "lookup"), levels=(1,), train_problems=2000, eval_problems=64,
      seed=0, max_new_tokens=16))


def sft_config():
  """The `sft` stage (llama4_jax/train/sft.py): the difficulty filter over the candidate problems."""
  return ml_collections.ConfigDict(dict(
      drop_easiest=0.5,  # fraction of candidates dropped as easiest (Llama 4 dropped more than half)
      filter_metric="loss",  # 'loss' (mean reply loss, lowest = easiest) or 'pass_rate' (sampled, highest = easiest)
      filter_per_family=True,  # drop the fraction within each task family and level, not over the whole mix
      pass_rate_samples=4, score_batch_size=64))


def rl_config():
  """The `rl` stage (llama4_jax/train/rl_stage.py): online RL with hard-prompt filtering on `tasks` problems."""
  return ml_collections.ConfigDict(dict(
      prompts_per_step=8, group_size=8, advantage="grpo",  # 'grpo' | 'rloo' | 'dr_grpo'
      clip_low=0.2, clip_high=0.28, kl_coef=0.0, aggregation="token_mean", temperature=1.0, load_balance_coef=0.0,
      max_rounds=4,  # sampling rounds per step to replace zero-advantage groups
      pool_low=0.0, pool_high=0.9, pool_decay=0.5,  # pass-rate band preferred by the prompt pool; EMA decay
      refresh_every=20, refresh_prompts=64,  # re-measure pass rates with the current policy
      pass_k=4))  # held-out pass@k


def dpo_config():
  """The `dpo` stage (llama4_jax/train/dpo_stage.py): preference pairs from `tasks` problems, built at stage start."""
  return ml_collections.ConfigDict(dict(
      pair_source="on_policy",  # 'on_policy' (accepted vs rejected sample) | 'reference' (answer vs rejected sample)
      prompts=256, samples=4,  # train problems sampled, replies per problem (temperature 1) to find pairs
      kind="sigmoid", beta=0.1, label_smoothing=0.0,  # 'sigmoid' (DPO; smoothing = cDPO) | 'ipo'
      pairs_per_step=8))


def distill_config():
  """The `distill` stage (llama4_jax/train/distill.py): codistillation from a teacher checkpoint on `data`."""
  return ml_collections.ConfigDict(dict(
      teacher="",  # a training workdir or a Hugging Face directory; same vocabulary, any size
      alpha_start=0.9, alpha_end=0.1, schedule="linear",  # weight of the soft (teacher) part over the stage
      temperature=1.0))


def train_config():
  return ml_collections.ConfigDict(dict(
      steps=200, micro_batches=1, z_loss=1e-4, load_balance_coef=1e-3, log_every=10, eval_every=100,
      checkpoint_every=50, keep_checkpoints=3, keep_period=0, async_checkpoint=True, max_nonfinite_in_a_row=5,
      reset_optimizer=True, tensorboard=True, progress=True))


# Kernel choice per preset: the tiny model targets CPUs (block-padded expert matmuls); the rest accelerators.
CPU_PRESETS = ("tiny", "tiny_vl")


def kernels_config(preset: str):
  """How the model computes; plugs the Pallas kernels in (pallas_kernels/) without touching the model section.

  moe: 'ragged_dot' | 'blocked' | 'dense' | 'pallas' (dropless) or 'capacity' (fixed capacity per expert, the
  excess dropped and counted; `capacity_factor`);  attention: 'xla' | 'dense' | 'pallas';
  interpret: run Pallas kernels in interpret mode (CPU tests).
  """
  return ml_collections.ConfigDict(dict(
      moe="blocked" if preset in CPU_PRESETS else "ragged_dot", attention="xla", interpret=False,
      capacity_factor=1.25))


def stage(kind="lm", **overrides):
  return ml_collections.ConfigDict(dict(kind=kind, overrides=ml_collections.ConfigDict(overrides)))


def get_config(preset: str = "tiny"):
  if preset not in models.PRESETS:
    raise ValueError(f"unknown model preset {preset!r}; choose one of {sorted(models.PRESETS)}")
  config = ml_collections.ConfigDict()
  config.preset = preset
  config.seed = 0
  config.model = models.PRESETS[preset]()
  config.kernels = kernels_config(preset)
  # Device mesh (product = device count; -1 = the rest) and expert-parallel transport (llama4_jax/sharding.py).
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, expert=1, tensor=1))
  config.expert_parallel = ml_collections.ConfigDict(dict(transport="all_to_all", capacity_factor=2.0))
  config.data = data_config()
  config.optim = optim_config()
  config.parameterization = "standard"  # | 'mup' | 'completep' | 'metap' (llama4_jax/parameterization.py)
  config.param_scaling = param_scaling_config()
  config.train = train_config()
  config.tasks = tasks_config()
  config.sft = sft_config()
  config.rl = rl_config()
  config.dpo = dpo_config()
  config.distill = distill_config()
  config.stages = ml_collections.ConfigDict({"pretrain": stage()})
  config.stage_order = ("pretrain",)
  return config
