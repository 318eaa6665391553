"""The embedded default experiment: the tiny model on the embedded corpus, pretraining then context extension.

    python -m llama4_jax.main --config=configs/default.py --workdir=/tmp/llama4_default

Stage 1 (pretrain): 128-token rows. Stage 2 (midtrain): 4x longer rows (512) with a larger RoPE base (5e5 -> 2e6),
fewer rows per batch (same tokens per step) and a lower peak learning rate. Runs in a few minutes on 2 CPU cores.
Variants: `:smoke` shrinks everything to seconds (used by tests).
"""

from configs import base


def get_config(arg: str = ""):
  config = base.get_config("tiny")
  config.data.seq_len, config.data.batch_size = 128, 8
  config.train.update(steps=200, log_every=10, eval_every=100, checkpoint_every=50)
  config.optim.update(learning_rate=3e-3, warmup_steps=20)
  config.stages = {
      "pretrain": base.stage("lm"),
      "midtrain": base.stage(
          "lm", data=dict(seq_len=512, batch_size=2), train=dict(steps=40, eval_every=20, checkpoint_every=20),
          optim=dict(learning_rate=1e-3, warmup_steps=5), model=dict(rope_theta=2e6)),
  }
  config.stage_order = ("pretrain", "midtrain")
  if arg == "smoke":
    config.model.update(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                        head_dim=16, intermediate_size=64, intermediate_size_mlp=128, num_local_experts=4,
                        attention_chunk_size=16)
    config.data.update(seq_len=32, batch_size=4, eval_batches=2, max_documents=400)
    config.train.update(steps=12, log_every=1, eval_every=6, checkpoint_every=4, tensorboard=False)
    config.stages.midtrain.overrides.data.update(seq_len=128, batch_size=1)
    config.stages.midtrain.overrides.train.update(steps=4, eval_every=2, checkpoint_every=2)
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of configs/default.py (known: smoke)")
  return config
