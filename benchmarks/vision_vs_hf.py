"""Vision-encoder images/s and vision-language train-step tokens/s against Hugging Face, side by side (issue 6).

    python benchmarks/vision_vs_hf.py --rounds=10                                  # both modes
    python benchmarks/vision_vs_hf.py --mode=encoder --tiles=64 --rounds=10        # vision tower only
    python benchmarks/vision_vs_hf.py --mode=train --image_fraction=0.5 --rounds=10

Model: `--config` (default configs/default_vl.py, preset `tiny_vl`: the tiny text model with a vision tower of 32 px
tiles, 4 px patches, 16 image tokens per tile). Same weights on both sides: our params are exported with
`llama4_jax.save_hf` and loaded by `transformers.Llama4ForConditionalGeneration.from_pretrained` (fp32, sdpa
attention, `torch.set_num_threads(2)`).

Encoder mode: our jitted vision tower (`VisionEncoder`: ViT, pixel shuffle, adapter, projector, i.e. the image
features in text space) on `--tiles` random tiles, against HF's `vision_model` + `multi_modal_projector` under
`torch.no_grad` in eval mode. Reported in images (tiles) per second; the features of both are compared once (printed,
never asserted). A call takes about 15 ms here, and torch's OpenMP threads keep spinning for some milliseconds after
each of its calls, which slowed an XLA call right after it by about a third on 2 cores. So in every round each side
first makes one untimed call of its own, then `--encoder_calls` timed calls back to back (the sample: their mean).
Train mode: one real batch of `MixedBatches` (configs/default_vl.py's data: 8 rows x 128 tokens, `--image_fraction`
of the rows packed image-text examples, 8 tile slots per row). Ours is the jitted, donated `train_step` (as in
benchmarks/train_vs_hf.py): it encodes every tile slot of the batch, zero padding tiles included (B x 8 tiles).
Hugging Face's step is forward on `input_ids` + flat `pixel_values` (only the real tiles, in the order of the
`<|patch|>` tokens), masked mean cross entropy over the same targets and loss mask, backward, gradient clipping at
`config.optim.clip_norm`, `torch.optim.AdamW` step, zero_grad. HF has no packing: it runs with attention_mask=None,
so its documents attend across the packed boundaries of a row and its positions do not restart per document (the
same FLOPs; its losses therefore differ slightly from ours). Tokens/s counts all B x L tokens of the batch. One step
per side and round (the spinning above costs milliseconds of a step of about a second).
After warm-up the two sides ALTERNATE for `--rounds` rounds (which goes first flips each round), so machine noise
hits both; medians are reported with ratio = HF time / our time. Prints one JSON line; asserts nothing.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from absl import app, flags  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
from ml_collections import config_flags  # noqa: E402

import train_vs_hf  # noqa: E402  (benchmarks/: the text-model benchmark whose helpers and timing flags we reuse)
from timing import matmul_gflops  # noqa: E402

import llama4_jax  # noqa: E402
from llama4_jax.config import model_config  # noqa: E402
from llama4_jax.host_memory import retain_freed_host_memory  # noqa: E402
from llama4_jax.model import images_for_rows, init_params  # noqa: E402
from llama4_jax.model.vision import VisionEncoder  # noqa: E402
from llama4_jax.train import data as train_data  # noqa: E402

# Importing train_vs_hf defined its flags; --rounds, --warmup and --torch_threads mean the same here, the others are
# replaced by this benchmark's own.
for _name in ("config", "mode", "batch", "seq"):
  delattr(flags.FLAGS, _name)
CONFIG = config_flags.DEFINE_config_file("config", os.path.join(ROOT, "configs/default_vl.py"),
                                         "experiment config file[:preset] of a vision model, as for llama4_jax.main")
MODE = flags.DEFINE_enum("mode", "both", ["encoder", "train", "both"], "what is timed on both sides")
TILES = flags.DEFINE_integer("tiles", 64, "encoder mode: tiles per call")
CALLS = flags.DEFINE_integer("encoder_calls", 5, "encoder mode: timed back-to-back calls per side and round")
IMAGE_FRACTION = flags.DEFINE_float("image_fraction", 0.5, "train mode: share of the batch's rows that are image-text")
ROUNDS, WARMUP, THREADS = train_vs_hf.ROUNDS, train_vs_hf.WARMUP, train_vs_hf.THREADS


def cpu_model() -> str:
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
  except (OSError, subprocess.SubprocessError):
    return platform.processor()
  names = [line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")]
  return names[0] if names else platform.processor()


def load_hf_vl_model(model_cfg, params, directory: str):
  import torch
  import transformers
  path = llama4_jax.save_hf(model_cfg, params, os.path.join(directory, "hf"))
  return transformers.Llama4ForConditionalGeneration.from_pretrained(path, dtype=torch.float32,
                                                                     attn_implementation="sdpa")


def alternate(ours, hf, rounds: int, calls: int = 1, settle: bool = False):
  """Seconds per call of both sides in each of `rounds` rounds, the side that goes first flipping each round: the
  mean of `calls` back-to-back calls, after one untimed call of the same side if `settle`."""
  our_times, hf_times = [], []

  def repeated(fn):
    for _ in range(calls):
      fn()
  for r in range(rounds):
    pair = [(ours, our_times), (hf, hf_times)]
    for fn, times in (pair if r % 2 == 0 else pair[::-1]):
      if settle:
        fn()
      times.append(train_vs_hf.timed(functools.partial(repeated, fn))[0] / calls)
  return our_times, hf_times


def warm_up(ours, hf, warmup: int) -> dict:
  """Compile + first call of ours, first call of HF, then the remaining untimed warm-up calls of both."""
  compile_s, our_first = train_vs_hf.timed(ours)
  hf_first_s, hf_first = train_vs_hf.timed(hf)
  for _ in range(max(warmup - 1, 0)):
    ours(), hf()
  return {"compile_s": compile_s, "our_first": our_first, "hf_first_s": hf_first_s, "hf_first": hf_first}


def summary(our_times, hf_times, units: float, unit: str) -> dict:
  our_s, hf_s = statistics.median(our_times), statistics.median(hf_times)
  return {"our_median_s": round(our_s, 4), "hf_median_s": round(hf_s, 4),
          f"our_{unit}_per_s": round(units / our_s, 1), f"hf_{unit}_per_s": round(units / hf_s, 1),
          "ratio_hf_over_ours": round(hf_s / our_s, 3), "our_s": [round(t, 4) for t in our_times],
          "hf_s": [round(t, 4) for t in hf_times]}


def encoder_benchmark(model_cfg, params, hf_model, n_tiles: int, calls: int, rounds: int, warmup: int) -> dict:
  """Images (tiles) per second of the vision tower + projector on both sides, no gradients."""
  import torch
  v = model_cfg.vision
  pixels = np.random.RandomState(0).uniform(-1, 1, (n_tiles, v.num_channels, v.image_size, v.image_size))
  pixels = pixels.astype(np.float32)
  encode = jax.jit(lambda p, x: VisionEncoder(model_cfg).apply({"params": p}, x))
  vision_params, device_pixels, torch_pixels = params["vision"], jax.device_put(pixels), torch.from_numpy(pixels)
  hf_model.eval()

  def ours():
    return encode(vision_params, device_pixels).block_until_ready()

  def hf():
    with torch.no_grad():
      return hf_model.multi_modal_projector(hf_model.vision_model(torch_pixels).last_hidden_state)

  first = warm_up(ours, hf, warmup)
  ours_feats, hf_feats = np.asarray(first["our_first"]), first["hf_first"].float().numpy()
  agreement = {"features_shape": list(ours_feats.shape), "hf_features_shape": list(hf_feats.shape)}
  if ours_feats.shape == hf_feats.shape:
    agreement.update(features_max_abs_diff=float(np.max(np.abs(ours_feats - hf_feats))),
                     features_max_abs=round(float(np.max(np.abs(hf_feats))), 4))
  our_times, hf_times = alternate(ours, hf, rounds, calls, settle=True)
  return {"tiles": n_tiles, "timed_calls_per_round": calls, **summary(our_times, hf_times, n_tiles, "images"),
          **agreement,
          "our_compile_and_first_s": round(first["compile_s"], 2), "hf_first_s": round(first["hf_first_s"], 4),
          "our_call": "jitted VisionEncoder (ViT, pixel shuffle, adapter, projector)",
          "hf_call": "vision_model + multi_modal_projector under no_grad, eval mode"}


def vl_batch(config, model_cfg, image_fraction: float) -> dict:
  """The first batch of the training loop's data for this config, with `image_fraction` of its rows image-text."""
  config.data.image_fraction = image_fraction
  docs = train_data.documents(config.data, model_cfg)
  return next(train_data.MixedBatches(config.data, model_cfg, docs["train"], config.seed))


def flat_tiles(model_cfg, batch) -> np.ndarray:
  """HF's flat pixel_values: each row's real tiles (as many as its <|patch|> tokens fill), rows in order."""
  v = model_cfg.vision
  counts = (batch["inputs"] == v.image_token_id).sum(axis=1) // v.tokens_per_tile
  shape = (0, v.num_channels, v.image_size, v.image_size)
  return np.concatenate([batch["pixels"][b, :n] for b, n in enumerate(counts)] + [np.zeros(shape, np.float32)])


def hf_vl_step(model, batch, pixel_values, optim_cfg):
  """One Hugging Face train step on the VL batch (returns the loss)."""
  import torch
  inputs = torch.from_numpy(batch["inputs"]).long()
  targets = torch.from_numpy(batch["targets"]).long().reshape(-1)
  mask = torch.from_numpy(batch["loss_mask"]).float().reshape(-1)
  pixels = torch.from_numpy(pixel_values)
  model.train()
  opt = train_vs_hf.hf_optimizer(model, optim_cfg)

  def train_step_hf():
    logits = model(input_ids=inputs, pixel_values=pixels, attention_mask=None).logits
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets, reduction="none")
    loss = (ce * mask).sum() / mask.sum().clamp(min=1.0)
    return train_vs_hf.hf_update(model, opt, loss, optim_cfg.clip_norm)
  return train_step_hf


def train_benchmark(config, model_cfg, params, hf_model, batch, rounds: int, warmup: int) -> dict:
  """Train-step tokens/s on both sides. Donates `params` (ours) and updates `hf_model`'s weights."""
  flat = flat_tiles(model_cfg, batch)
  tiles_per_row = batch["pixels"].shape[1]
  rows_match = bool(np.array_equal(images_for_rows(model_cfg, batch["inputs"], flat, tiles_per_row),
                                   batch["pixels"]))
  ours = train_vs_hf.our_steps(config, model_cfg, params, batch, "train")
  hf = hf_vl_step(hf_model, batch, flat, config.optim)
  first = warm_up(ours, hf, warmup)
  our_times, hf_times = alternate(ours, hf, rounds)
  b, l = batch["inputs"].shape
  image_rows = int(np.sum(np.any(batch["inputs"] == model_cfg.vision.image_token_id, axis=1)))
  return {"batch": b, "seq": l, "image_fraction": IMAGE_FRACTION.value, "image_rows": image_rows,
          "real_tiles": int(flat.shape[0]), "our_tile_slots_encoded": b * tiles_per_row,
          "loss_tokens": int(batch["loss_mask"].sum()), "tokens": b * l,
          **summary(our_times, hf_times, b * l, "tokens"),
          "flat_tiles_rebuild_rows": rows_match, "first_loss_ours": round(first["our_first"], 6),
          "first_loss_hf": round(first["hf_first"], 6), "our_compile_and_first_step_s": round(first["compile_s"], 2),
          "our_step": "jitted donated train_step: forward (vision tower on every tile slot), CE + z-loss + balance "
                      "loss, backward, clip, AdamW",
          "hf_step": "forward (real tiles only, attention_mask=None), masked mean CE, backward, clip_grad_norm_, "
                     "AdamW, zero_grad"}


def main(argv):
  del argv
  import torch
  import transformers
  torch.set_num_threads(THREADS.value)
  config = CONFIG.value
  model_cfg = model_config(config)
  if model_cfg.vision is None:
    raise ValueError("the config's model has no vision tower (model.vision.enabled is False)")
  gflops_before = matmul_gflops([(1024, 1024, 1024)], 5)["1024x1024x1024"]
  batch = vl_batch(config, model_cfg, IMAGE_FRACTION.value) if MODE.value in ("train", "both") else None
  params = init_params(model_cfg, jax.random.key(config.seed))
  with tempfile.TemporaryDirectory() as tmp:
    hf_model = load_hf_vl_model(model_cfg, params, tmp)
  out = {"benchmark": "vision_vs_hf", "mode": MODE.value, "preset": config.get("preset", "?"),
         "moe_impl": model_cfg.moe_impl, "rounds": ROUNDS.value, "warmup": WARMUP.value}
  if MODE.value in ("encoder", "both"):  # first: on the untrained weights, before our train step donates them
    out["encoder"] = encoder_benchmark(model_cfg, params, hf_model, TILES.value, CALLS.value, ROUNDS.value,
                                       WARMUP.value)
  if MODE.value in ("train", "both"):
    out["train"] = train_benchmark(config, model_cfg, params, hf_model, batch, ROUNDS.value, WARMUP.value)
  out.update({
      "matmul_gflops_1024_before": round(gflops_before, 1),
      "matmul_gflops_1024_after": round(matmul_gflops([(1024, 1024, 1024)], 5)["1024x1024x1024"], 1),
      "cpu_model": cpu_model(), "processor": platform.processor(), "machine": platform.machine(),
      "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
      "transformers": transformers.__version__, "jax": jax.__version__, "device": str(jax.devices()[0])})
  print(json.dumps(out))


if __name__ == "__main__":
  retain_freed_host_memory()  # before the CPU backend starts (llama4_jax/host_memory.py)
  app.run(main)
