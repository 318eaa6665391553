"""The training loop's view of the data: tokenizer, seqio texts, grain batches, with input checks up front."""

from __future__ import annotations

import functools
import os

import jax

import numpy as np

from llama4_jax.config import ConfigError, ModelConfig
from llama4_jax.data import multimodal, pipeline, synthetic_vl, tasks
from llama4_jax.data.tokenizer import Tokenizer


@functools.lru_cache(maxsize=8)
def tokenizer_for(path: str, reserved: int) -> Tokenizer:
  return Tokenizer(path, num_reserved_special_tokens=reserved) if path else Tokenizer.default()


def check_data_config(data_cfg, model_cfg: ModelConfig) -> None:
  """Raises ConfigError naming the key for data settings that cannot work, before anything is compiled."""
  if data_cfg.tokenizer_path and not os.path.isfile(data_cfg.tokenizer_path):
    raise ConfigError(f"data.tokenizer_path={data_cfg.tokenizer_path!r}: no such file")
  for key in ("seq_len", "batch_size"):
    if data_cfg[key] <= 0:
      raise ConfigError(f"data.{key} must be positive, got {data_cfg[key]}")
  tok = tokenizer_for(data_cfg.tokenizer_path, data_cfg.num_reserved_special_tokens)
  if tok.vocab_size > model_cfg.vocab_size:
    raise ConfigError(f"the tokenizer ({data_cfg.tokenizer_path or 'embedded tiny tokenizer'}) has "
                      f"{tok.vocab_size} tokens but model.vocab_size={model_cfg.vocab_size}")
  if data_cfg.tfds_name and not os.path.isdir(data_cfg.tfds_data_dir):
    raise ConfigError(f"data.tfds_data_dir={data_cfg.tfds_data_dir!r} is not a directory (needed by "
                      f"data.tfds_name={data_cfg.tfds_name!r})")
  _check_image_config(data_cfg, model_cfg, tok)


def _check_image_config(data_cfg, model_cfg: ModelConfig, tok) -> None:
  fraction = data_cfg.get("image_fraction", 0.0)
  if not 0.0 <= fraction <= 1.0:
    raise ConfigError(f"data.image_fraction must lie in [0, 1], got {fraction}")
  if fraction and model_cfg.vision is None:
    raise ConfigError(f"data.image_fraction={fraction} needs a model with a vision tower (model.vision.enabled)")
  if model_cfg.vision is None:
    return
  if data_cfg.get("tiles_per_row", 0) < 1:
    raise ConfigError(f"data.tiles_per_row must be >= 1 for a vision model, got {data_cfg.get('tiles_per_row')}")
  patch = tok.special_tokens.get("<|patch|>")
  if patch != model_cfg.vision.image_token_id:
    raise ConfigError(f"model.vision.image_token_id={model_cfg.vision.image_token_id} is not the tokenizer's "
                      f"<|patch|> id ({patch})")
  for key in ("image_train_examples", "image_eval_examples"):
    if data_cfg.get(key, 0) < 1:
      raise ConfigError(f"data.{key} must be positive for a vision model, got {data_cfg.get(key)}")
  # The longest rendering of the set (two 64 px images, or one 2 x 2-tile image) must fit a row: checked on the
  # held-out examples now (cheap); training rows check every example as they pack it.
  for ex in image_examples(data_cfg.image_train_examples, data_cfg.image_eval_examples)["validation"]:
    multimodal.check_fits(multimodal.encode_example(ex, tok, model_cfg.vision), data_cfg.seq_len,
                          data_cfg.tiles_per_row, "a held-out image-text example")


@functools.lru_cache(maxsize=4)
def _documents(task: str, tfds_name: str, tfds_dir: str, text_key: str, train_split: str, eval_split: str,
               tok_path: str, reserved: int, max_documents: int):
  if tfds_name:
    task = tasks.register_tfds(tfds_name, tfds_dir, text_key)
  tok = tokenizer_for(tok_path, reserved)
  limit = max_documents or None
  return {"train": pipeline.tokenize_documents(tasks.task_texts(task, train_split, limit), tok),
          "eval": pipeline.tokenize_documents(tasks.task_texts(task, eval_split, limit), tok)}


def documents(data_cfg, model_cfg: ModelConfig) -> dict:
  """{'train': [...], 'eval': [...]} token arrays of the configured seqio task (or TFDS dataset)."""
  check_data_config(data_cfg, model_cfg)
  return _documents(data_cfg.task, data_cfg.tfds_name, data_cfg.tfds_data_dir, data_cfg.tfds_text_key,
                    data_cfg.train_split, data_cfg.eval_split, data_cfg.tokenizer_path,
                    data_cfg.num_reserved_special_tokens, data_cfg.max_documents)


def _process_rows(batch: dict, batch_size: int) -> dict:
  local = batch_size // jax.process_count()
  start = jax.process_index() * local
  return {k: v[start:start + local] for k, v in batch.items()}


@functools.lru_cache(maxsize=2)
def image_examples(num_train: int, num_eval: int) -> dict:
  """The embedded image-text set (rendered shapes, dots, digits and bar charts; llama4_jax/data/synthetic_vl.py)."""
  return synthetic_vl.splits(seed=0, num_train=num_train, num_eval=num_eval)


def _image_rows(data_cfg) -> int:
  return int(round(data_cfg.get("image_fraction", 0.0) * data_cfg.batch_size))


def _with_pixels(batch: dict, model_cfg: ModelConfig, tiles_per_row: int) -> dict:
  """Text rows of a vision model carry zero tiles, so every batch of a run has the same structure."""
  v = model_cfg.vision
  if v is None or "pixels" in batch:
    return batch
  b = batch["inputs"].shape[0]
  return {**batch, "pixels": np.zeros((b, tiles_per_row, v.num_channels, v.image_size, v.image_size), np.float32)}


class MixedBatches:
  """Every batch: `image_fraction` of its rows packed image-text examples, the rest packed text (the modality mix
  is a per-stage data setting). State: both streams' states, saved in checkpoints."""

  def __init__(self, data_cfg, model_cfg: ModelConfig, docs, seed: int):
    self.n_images = _image_rows(data_cfg)
    self.batch_size, self.model_cfg, self.tiles = data_cfg.batch_size, model_cfg, data_cfg.tiles_per_row
    n_text = self.batch_size - self.n_images
    self.text = iter(pipeline.packed_dataset(docs, data_cfg.seq_len, n_text, seed=seed)) if n_text else None
    self.images = None
    if self.n_images:
      tok = tokenizer_for(data_cfg.tokenizer_path, data_cfg.num_reserved_special_tokens)
      examples = image_examples(data_cfg.image_train_examples, data_cfg.image_eval_examples)["train"]
      self.images = multimodal.PackedRows(examples, tok, model_cfg.vision, data_cfg.seq_len, self.tiles, seed)

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    parts = []
    if self.images is not None:
      parts.append(multimodal.stack_rows([next(self.images) for _ in range(self.n_images)]))
    if self.text is not None:
      parts.append(_with_pixels(next(self.text), self.model_cfg, self.tiles))
    batch = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return _process_rows(batch, self.batch_size)

  def get_state(self) -> dict:
    return {"text": self.text.get_state() if self.text else None,
            "images": self.images.get_state() if self.images else None}

  def set_state(self, state: dict) -> None:
    if self.text is not None:
      self.text.set_state(state["text"])
    if self.images is not None:
      self.images.set_state(state["images"])


def train_batches(data_cfg, docs, seed: int, model_cfg: ModelConfig | None = None):
  """This process's rows of every global batch, reshuffled per epoch from the seed.

  Every process packs the same global stream and keeps its own rows, so the data a run sees does not depend on
  how many processes share it (a 2 x 4-device run trains on exactly the batches of a 1 x 8-device run).
  A vision model's batches also carry `pixels` [B, tiles_per_row, C, S, S] and mix in image-text rows.
  """
  if model_cfg is not None and model_cfg.vision is not None:
    return MixedBatches(data_cfg, model_cfg, docs, seed)
  return pipeline.packed_dataset(docs, data_cfg.seq_len, data_cfg.batch_size, seed=seed).map(
      functools.partial(_process_rows, batch_size=data_cfg.batch_size))


def eval_batches(data_cfg, docs, model_cfg: ModelConfig | None = None):
  """This process's rows of the fixed held-out batches."""
  batches = pipeline.eval_batches(docs, data_cfg.seq_len, data_cfg.batch_size, data_cfg.eval_batches or None)
  if model_cfg is not None and model_cfg.vision is not None:
    batches = [_with_pixels(b, model_cfg, data_cfg.tiles_per_row) for b in batches]
  return [_process_rows(b, data_cfg.batch_size) for b in batches]


def image_eval_batches(data_cfg, model_cfg: ModelConfig, blank: bool = False) -> list[dict]:
  """Held-out image questions (one per row, loss on the answer only), with their images or with blank ones."""
  tok = tokenizer_for(data_cfg.tokenizer_path, data_cfg.num_reserved_special_tokens)
  examples = image_examples(data_cfg.image_train_examples, data_cfg.image_eval_examples)["validation"]
  rows = multimodal.eval_rows(examples, tok, model_cfg.vision, data_cfg.seq_len, data_cfg.tiles_per_row, blank)
  b = data_cfg.batch_size
  rows += [{k: np.zeros_like(v) for k, v in rows[0].items()}] * (-len(rows) % b)  # pad rows: no loss
  return [_process_rows(multimodal.stack_rows(rows[i:i + b]), b) for i in range(0, len(rows), b)]
