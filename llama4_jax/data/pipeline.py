"""grain input pipeline: documents -> shuffled (per epoch, from the seed) -> packed fixed-length rows -> batches.

Each document [bos, t1, ..., tn, eos] becomes an (inputs, targets) pair shifted inside the document, so packing
never asks a token to predict the next document. grain's concat-then-split packer adds per-row segment ids (0 for
padding) and positions that restart for every document piece. Documents are sharded per process before shuffling,
so each host yields its own slice of the global batch. The iterator's state is a small dict stored in checkpoints.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import grain
import numpy as np

_FEATURES = ("inputs", "targets", "loss_mask")


def tokenize_documents(texts: Iterable[str], tokenizer, min_tokens: int = 3) -> list[np.ndarray]:
  """[bos] + tokens + [eos] per text, int32; texts under `min_tokens` in all (empty ones) are dropped."""
  docs = []
  for text in texts:
    ids = tokenizer.encode(text, bos=True, eos=True)
    if len(ids) >= min_tokens:
      docs.append(np.asarray(ids, np.int32))
  return docs


def _example(doc: np.ndarray) -> dict[str, np.ndarray]:
  return {"inputs": doc[:-1], "targets": doc[1:], "loss_mask": np.ones(len(doc) - 1, np.int32)}


def _to_batch(packed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {"inputs": packed["inputs"].astype(np.int32), "targets": packed["targets"].astype(np.int32),
          "positions": packed["inputs_positions"].astype(np.int32),
          "segment_ids": packed["inputs_segment_ids"].astype(np.int32),
          "loss_mask": (packed["loss_mask"] * (packed["inputs_segment_ids"] != 0)).astype(np.int32)}


def packed_dataset(docs: Sequence[np.ndarray], seq_len: int, batch_size: int, *, seed: int, shard_index: int = 0,
                   shard_count: int = 1, repeat: bool = True) -> grain.IterDataset:
  """Batches of packed rows: dict of int32 [batch_size, seq_len] arrays (see `_to_batch`).

  `batch_size` is the per-process batch. With `repeat` the documents are reshuffled every epoch; without it the
  order is fixed and the last batch is padded (segment id 0, loss mask 0) so evaluation sees every token once.
  """
  if not docs:
    raise ValueError("no documents to train on (empty data source after tokenisation)")
  ds = grain.MapDataset.source(list(docs))[shard_index::shard_count]
  if repeat:
    ds = ds.shuffle(seed=seed).repeat(None)
  ds = ds.map(_example).to_iter_dataset()
  ds = grain.experimental.ConcatThenSplitIterDataset(ds, length_struct={k: seq_len for k in _FEATURES})
  return ds.batch(batch_size, drop_remainder=False).map(lambda b: _pad_rows(_to_batch(b), batch_size))


def _pad_rows(batch: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
  missing = batch_size - batch["inputs"].shape[0]
  if missing <= 0:
    return batch
  return {k: np.concatenate([v, np.zeros((missing, v.shape[1]), v.dtype)]) for k, v in batch.items()}


def eval_batches(docs: Sequence[np.ndarray], seq_len: int, batch_size: int, max_batches: int | None = None,
                 shard_index: int = 0, shard_count: int = 1) -> list[dict[str, np.ndarray]]:
  """The held-out split as a fixed list of padded batches (same every call)."""
  out = []
  for batch in packed_dataset(docs, seq_len, batch_size, seed=0, shard_index=shard_index, shard_count=shard_count,
                              repeat=False):
    out.append(batch)
    if max_batches and len(out) >= max_batches:
      break
  return out
