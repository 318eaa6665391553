"""The training loop's view of the data: tokenizer, seqio texts, grain batches, with input checks up front."""

from __future__ import annotations

import functools
import os

import jax

from llama4_jax.config import ConfigError, ModelConfig
from llama4_jax.data import pipeline, tasks
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


def train_batches(data_cfg, docs, seed: int):
  """This process's rows of every global batch, reshuffled per epoch from the seed.

  Every process packs the same global stream and keeps its own rows, so the data a run sees does not depend on
  how many processes share it (a 2 x 4-device run trains on exactly the batches of a 1 x 8-device run).
  """
  return pipeline.packed_dataset(docs, data_cfg.seq_len, data_cfg.batch_size, seed=seed).map(
      functools.partial(_process_rows, batch_size=data_cfg.batch_size))


def eval_batches(data_cfg, docs):
  """This process's rows of the fixed held-out batches."""
  return [_process_rows(b, data_cfg.batch_size) for b in
          pipeline.eval_batches(docs, data_cfg.seq_len, data_cfg.batch_size, data_cfg.eval_batches or None)]
