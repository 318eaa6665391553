"""The embedded vision-language experiment: the tiny model with a small vision tower (preset `tiny_vl`) trained on
the embedded text corpus mixed with the embedded image-text set (rendered shapes, dots, digits and bar charts with
captions and questions, llama4_jax/data/synthetic_vl.py).

    python -m llama4_jax.main --config=configs/default_vl.py --workdir=/tmp/llama4_default_vl

Modality curriculum: stage 1 (`pretrain`) fills a quarter of every batch with image-text rows; stage 2
(`vl_focus`) fills three quarters of every batch with image-text rows (the text quarter keeps the language
model from being forgotten), at a lower peak learning rate, for 500 steps. At the end of each stage the summary prints
the answer loss on held-out image questions with the real image and with a blank image of the same size (the
gap is the evidence that the model reads the image). Variants: `:smoke` shrinks everything to seconds (tests).
"""

from configs import base


def get_config(arg: str = ""):
  config = base.get_config("tiny_vl")
  config.data.update(seq_len=128, batch_size=8, image_fraction=0.25, tiles_per_row=8)
  config.train.update(steps=200, log_every=10, eval_every=100, checkpoint_every=50)
  config.optim.update(learning_rate=3e-3, warmup_steps=20)
  config.stages = {
      "pretrain": base.stage("lm"),
      "vl_focus": base.stage("lm", data=dict(image_fraction=0.75), train=dict(steps=500, eval_every=100,
                                                                              checkpoint_every=50),
                             optim=dict(learning_rate=2e-3, warmup_steps=10)),
  }
  config.stage_order = ("pretrain", "vl_focus")
  if arg == "smoke":
    config.model.update(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                        head_dim=16, intermediate_size=64, intermediate_size_mlp=128, num_local_experts=4,
                        attention_chunk_size=16)
    config.model.vision.update(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128,
                               projector_input_dim=32, projector_output_dim=32, vision_output_dim=32)
    config.data.update(seq_len=128, batch_size=4, eval_batches=2, max_documents=400, image_fraction=0.5,
                       tiles_per_row=6, image_train_examples=64, image_eval_examples=8)
    config.train.update(steps=6, log_every=1, eval_every=3, checkpoint_every=2, tensorboard=False)
    config.stages.vl_focus.overrides.train.update(steps=4, eval_every=2, checkpoint_every=2)
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of configs/default_vl.py (known: smoke)")
  return config
