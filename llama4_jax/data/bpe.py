"""Byte-level BPE training that writes tiktoken-format rank files (the format of Llama 4's `tokenizer.model`).

Text is first split into words with the o200k pre-tokenisation regex that the tokenizer uses at encode time, so a
merge never crosses a word boundary the tokenizer would cut. Ranks 0..255 are the single bytes in byte order; each
learned merge `(a, b)` then gets the next rank for the bytes `a + b`. tiktoken encodes by repeatedly joining the
adjacent pair whose concatenation has the lowest rank, which replays these merges in training order.

Training keeps, for every adjacent pair, its weighted count and the words it occurs in, and after each merge updates
only the words that contained the merged pair (Sennrich et al. 2016's incremental scheme); a lazy max-heap picks the
next pair. Ties go to the pair with the lexicographically smallest (left bytes, right bytes), so training is
deterministic. The shipped tiny tokenizer was built with:

  python -m llama4_jax.data.bpe --vocab_size=3840 --out=llama4_jax/data/assets/tiny_tokenizer.model
"""

from __future__ import annotations

import base64
import collections
import heapq
import os
import time
from typing import Iterable

import regex
from absl import app, flags

from llama4_jax.data import corpus as corpus_lib
from llama4_jax.data.tokenizer import O200K_PATTERN, TINY_TOKENIZER, load_ranks

__all__ = ["count_words", "train_merges", "train_bpe", "save_ranks", "load_ranks"]

Pair = tuple[int, int]


def count_words(texts: Iterable[str], pattern: str = O200K_PATTERN) -> collections.Counter[bytes]:
  """UTF-8 bytes of every pre-tokenised word, with its number of occurrences."""
  splitter = regex.compile(pattern)
  counts: collections.Counter[str] = collections.Counter()
  for text in texts:
    counts.update(splitter.findall(text))
  return collections.Counter({word.encode("utf-8"): n for word, n in counts.items()})


def _merge_word(word: list[int], a: int, b: int, new: int) -> list[int]:
  """Replaces each non-overlapping (a, b), scanning left to right as tiktoken does, with `new`."""
  out, i = [], 0
  while i < len(word):
    if i + 1 < len(word) and word[i] == a and word[i + 1] == b:
      out.append(new)
      i += 2
    else:
      out.append(word[i])
      i += 1
  return out


class _PairIndex:
  """Weighted counts of adjacent token pairs, the words holding each pair, and a lazy heap over the counts."""

  def __init__(self, words: list[list[int]], freqs: list[int], token_bytes: list[bytes]):
    self.token_bytes = token_bytes
    self.counts: dict[Pair, int] = collections.defaultdict(int)
    self.where: dict[Pair, set[int]] = collections.defaultdict(set)
    for i, word in enumerate(words):
      for pair in zip(word, word[1:]):
        self.counts[pair] += freqs[i]
        self.where[pair].add(i)
    self.heap = [self._entry(pair, n) for pair, n in self.counts.items()]
    heapq.heapify(self.heap)

  def _entry(self, pair: Pair, count: int):
    # heapq is a min-heap: negate the count; equal counts fall back to the smaller byte strings.
    return (-count, self.token_bytes[pair[0]], self.token_bytes[pair[1]], pair)

  def pop_best(self) -> Pair | None:
    """The most frequent pair, or None when no pair is left. Entries whose count has since changed are stale."""
    while self.heap:
      neg_count, _, _, pair = heapq.heappop(self.heap)
      if -neg_count > 0 and self.counts.get(pair) == -neg_count:
        return pair
    return None

  def apply(self, deltas: dict[Pair, int]) -> None:
    for pair, delta in deltas.items():
      if delta == 0:
        continue
      count = self.counts[pair] + delta
      if count > 0:
        self.counts[pair] = count
        heapq.heappush(self.heap, self._entry(pair, count))
      else:
        del self.counts[pair]


def train_merges(texts: Iterable[str], vocab_size: int, pattern: str = O200K_PATTERN) -> list[tuple[bytes, bytes]]:
  """Learns up to `vocab_size - 256` merges, most frequent pair first; returns them as (left, right) bytes.

  A pair whose concatenation is already a token (reached earlier by another merge order) is merged into that token
  without taking a new rank, so every rank names distinct bytes. Stops early if the text runs out of pairs.
  """
  if vocab_size < 256:
    raise ValueError(f"vocab_size must be at least 256 (the single bytes), got {vocab_size}")
  word_counts = count_words(texts, pattern)
  words = [list(w) for w in word_counts]
  freqs = list(word_counts.values())
  token_bytes = [bytes([i]) for i in range(256)]
  token_ids = {t: i for i, t in enumerate(token_bytes)}
  index = _PairIndex(words, freqs, token_bytes)
  merges = []
  while len(token_bytes) < vocab_size:
    pair = index.pop_best()
    if pair is None:
      break
    a, b = pair
    merged = token_bytes[a] + token_bytes[b]
    new = token_ids.get(merged)
    if new is None:
      new = token_ids[merged] = len(token_bytes)
      token_bytes.append(merged)
      merges.append((token_bytes[a], token_bytes[b]))
    deltas: dict[Pair, int] = collections.defaultdict(int)
    for i in sorted(index.where.pop(pair)):
      old = words[i]
      words[i] = _merge_word(old, a, b, new)
      if len(words[i]) == len(old):
        continue  # The pair left this word through an earlier merge; the index entry was stale.
      for p in zip(old, old[1:]):
        deltas[p] -= freqs[i]
      for p in zip(words[i], words[i][1:]):
        deltas[p] += freqs[i]
        index.where[p].add(i)
    index.apply(deltas)
  return merges


def train_bpe(texts: Iterable[str], vocab_size: int, pattern: str = O200K_PATTERN) -> dict[bytes, int]:
  """Trains a byte-level BPE and returns tiktoken mergeable ranks: bytes 0..255, then one rank per merge."""
  ranks = {bytes([i]): i for i in range(256)}
  for left, right in train_merges(texts, vocab_size, pattern):
    ranks[left + right] = len(ranks)
  return ranks


def save_ranks(ranks: dict[bytes, int], path: str | os.PathLike) -> None:
  """Writes `base64(token) rank` lines sorted by rank, atomically (a crash never leaves a half-written file)."""
  ordered = sorted(ranks.items(), key=lambda kv: kv[1])
  if [r for _, r in ordered] != list(range(len(ordered))):
    raise ValueError("ranks must be exactly 0..n-1")
  with corpus_lib.atomic_writer(path, "wb") as f:
    for token, rank in ordered:
      f.write(base64.b64encode(token) + b" " + str(rank).encode("ascii") + b"\n")


def main(argv):
  del argv
  cfg = flags.FLAGS
  start = time.perf_counter()
  texts = [doc["text"] for doc in corpus_lib.load_corpus(cfg.corpus)]
  ranks = train_bpe(texts, cfg.vocab_size)
  save_ranks(ranks, cfg.out)
  print(f"wrote {cfg.out}: {len(ranks)} ranks from {len(texts)} documents in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
  # Flags are defined only when run as a program, so importing this module never touches the global flag registry.
  flags.DEFINE_string("corpus", corpus_lib.DEFAULT_CORPUS, "Gzipped JSON-lines corpus with a 'text' field.")
  flags.DEFINE_integer("vocab_size", 3840, "Number of mergeable ranks, the 256 single bytes included.")
  flags.DEFINE_string("out", TINY_TOKENIZER, "Destination tiktoken rank file.")
  app.run(main)
