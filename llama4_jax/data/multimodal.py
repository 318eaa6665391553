"""Image-text examples -> token rows with their image tiles, packed without ever splitting an image.

An example (`synthetic_vl.Example`: text and images in reading order, then the answer) becomes one document
`<|begin_of_text|> ... <|end_of_text|>` in which every image is its full token block (spec 5.7) and its tiles are
kept beside the tokens in order. Loss is on text only: a target that is an image token is masked. `answer_mask`
marks the answer's tokens (the held-out "is the image used?" evaluation scores only those).

Rows are packed greedily from a grain stream of examples (shuffled per epoch from the seed): whole examples are
added until the next one would overflow the row's tokens or its `tiles_per_row` tile slots. The iterator's state is
the grain state before the first example not yet in a row, so a restored run continues with the same rows.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import grain
import numpy as np

from llama4_jax.config import ConfigError, VisionConfig
from llama4_jax.data import image as image_lib
from llama4_jax.data.synthetic_vl import Example, blank_like

IMAGE_TOKEN_NAMES = ("<|image_start|>", "<|image_end|>", "<|image|>", "<|patch|>", "<|tile_x_separator|>",
                     "<|tile_y_separator|>")


@dataclasses.dataclass(frozen=True)
class Encoded:
  """One document: inputs/targets/loss_mask/answer_mask int32 [n] and its tiles float32 [T, C, S, S]."""

  inputs: np.ndarray
  targets: np.ndarray
  loss_mask: np.ndarray
  answer_mask: np.ndarray
  tiles: np.ndarray


def encode_example(example: Example, tokenizer, vision: VisionConfig) -> Encoded:
  ids, answer, tiles = [tokenizer.bos_id], [0], []
  per_tile = vision.tokens_per_tile
  for item in example.segments:
    if isinstance(item, str):
      piece = tokenizer.encode(item)
    else:
      pixels, grid = image_lib.preprocess_image(item, vision.image_size, vision.max_num_tiles)
      tiles.append(pixels)
      piece = image_lib.image_token_ids(grid, per_tile, tokenizer)
    ids += piece
    answer += [0] * len(piece)
  piece = tokenizer.encode(example.answer)
  ids += piece + [tokenizer.eos_id]
  answer += [1] * len(piece) + [0]
  doc = np.asarray(ids, np.int32)
  image_ids = np.asarray([tokenizer.token_to_id(n) for n in IMAGE_TOKEN_NAMES], np.int32)
  targets = doc[1:]
  shape = (0, vision.num_channels, vision.image_size, vision.image_size)
  return Encoded(inputs=doc[:-1], targets=targets, loss_mask=(~np.isin(targets, image_ids)).astype(np.int32),
                 answer_mask=np.asarray(answer[1:], np.int32),
                 tiles=np.concatenate(tiles).astype(np.float32) if tiles else np.zeros(shape, np.float32))


def with_blank_images(example: Example) -> Example:
  """The same example with every image replaced by a blank one of the same size (so the same token layout)."""
  segments = tuple(s if isinstance(s, str) else blank_like(s) for s in example.segments)
  return Example(kind=example.kind, segments=segments, answer=example.answer)


def check_fits(encoded: Encoded, seq_len: int, tiles_per_row: int, what: str) -> None:
  if len(encoded.inputs) > seq_len:
    raise ConfigError(f"data.seq_len={seq_len} is shorter than {what} ({len(encoded.inputs)} tokens with its "
                      "image blocks); raise data.seq_len")
  if encoded.tiles.shape[0] > tiles_per_row:
    raise ConfigError(f"data.tiles_per_row={tiles_per_row} is fewer than the {encoded.tiles.shape[0]} tiles of "
                      f"{what}; raise data.tiles_per_row")


def _row(docs: Sequence[Encoded], seq_len: int, tiles_per_row: int, vision: VisionConfig, answer_only: bool):
  row = {k: np.zeros(seq_len, np.int32) for k in ("inputs", "targets", "positions", "segment_ids", "loss_mask")}
  pixels = np.zeros((tiles_per_row, vision.num_channels, vision.image_size, vision.image_size), np.float32)
  at = tile = 0
  for seg, d in enumerate(docs, start=1):
    n, t = len(d.inputs), d.tiles.shape[0]
    row["inputs"][at:at + n], row["targets"][at:at + n] = d.inputs, d.targets
    row["positions"][at:at + n], row["segment_ids"][at:at + n] = np.arange(n), seg
    row["loss_mask"][at:at + n] = d.answer_mask if answer_only else d.loss_mask
    pixels[tile:tile + t] = d.tiles
    at, tile = at + n, tile + t
  row["pixels"] = pixels
  return row


def stack_rows(rows: Sequence[dict]) -> dict:
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


class PackedRows:
  """Endless packed rows (dicts of numpy arrays, `pixels` [N, C, S, S]) from a grain stream of examples."""

  def __init__(self, examples: Sequence[Example], tokenizer, vision: VisionConfig, seq_len: int,
               tiles_per_row: int, seed: int):
    self._encode = lambda i: encode_example(examples[i], tokenizer, vision)  # noqa: E731
    ds = grain.MapDataset.range(len(examples)).shuffle(seed=seed).repeat(None)
    self._it = iter(ds.to_iter_dataset())
    self._args = (seq_len, tiles_per_row, vision)
    self._pending = None  # (grain state before it, encoded example) that did not fit the previous row

  def _next_example(self):
    if self._pending is not None:
      pending, self._pending = self._pending, None
      return pending
    state = self._it.get_state()
    encoded = self._encode(int(next(self._it)))
    check_fits(encoded, self._args[0], self._args[1], "an image-text example")
    return state, encoded

  def __next__(self) -> dict:
    seq_len, tiles_per_row, vision = self._args
    docs, used, tiles = [], 0, 0
    while True:
      state, enc = self._next_example()
      if docs and (used + len(enc.inputs) > seq_len or tiles + enc.tiles.shape[0] > tiles_per_row):
        self._pending = (state, enc)
        return _row(docs, seq_len, tiles_per_row, vision, answer_only=False)
      docs.append(enc)
      used, tiles = used + len(enc.inputs), tiles + enc.tiles.shape[0]

  def get_state(self) -> dict:
    return self._pending[0] if self._pending is not None else self._it.get_state()

  def set_state(self, state: dict) -> None:
    self._pending = None
    self._it.set_state(state)


def eval_rows(examples: Sequence[Example], tokenizer, vision: VisionConfig, seq_len: int, tiles_per_row: int,
              blank: bool = False) -> list[dict]:
  """Held-out rows, one example per row, scoring only the answer tokens (with blank images if `blank`)."""
  rows = []
  for ex in examples:
    enc = encode_example(with_blank_images(ex) if blank else ex, tokenizer, vision)
    check_fits(enc, seq_len, tiles_per_row, "a held-out image-text example")
    rows.append(_row([enc], seq_len, tiles_per_row, vision, answer_only=True))
  return rows
