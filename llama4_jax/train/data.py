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


def train_batches(data_cfg, docs, seed: int):
  """This process's slice of every global batch, reshuffled per epoch from the seed."""
  local = data_cfg.batch_size // jax.process_count()
  return pipeline.packed_dataset(docs, data_cfg.seq_len, local, seed=seed, shard_index=jax.process_index(),
                                 shard_count=jax.process_count())


def eval_batches(data_cfg, docs):
  local = data_cfg.batch_size // jax.process_count()
  return pipeline.eval_batches(docs, data_cfg.seq_len, local, data_cfg.eval_batches or None,
                               shard_index=jax.process_index(), shard_count=jax.process_count())
