"""BPE trainer: merge order and tie-breaking, agreement with tiktoken, the rank-file format and the shipped model."""

import base64

import pytest
import regex
import tiktoken
import tiktoken.load

from llama4_jax.data import bpe, corpus
from llama4_jax.data.tokenizer import O200K_PATTERN, TINY_TOKENIZER


def _encoding(ranks):
  return tiktoken.Encoding("test", pat_str=O200K_PATTERN, mergeable_ranks=ranks, special_tokens={})


def _encode_piece(enc, data: bytes):
  """tiktoken's BPE on one pre-token, without the regex split (public name in some versions, private in others)."""
  fn = getattr(enc, "encode_single_piece", None) or enc._encode_single_piece  # pylint: disable=protected-access
  return fn(data)


def _replay(word: bytes, merges):
  """Oracle: apply the learned merges to a word one after another, each left to right over the whole word."""
  parts = [bytes([b]) for b in word]
  for left, right in merges:
    out, i = [], 0
    while i < len(parts):
      if i + 1 < len(parts) and parts[i] == left and parts[i + 1] == right:
        out.append(left + right)
        i += 2
      else:
        out.append(parts[i])
        i += 1
    parts = out
  return parts


def test_count_words_uses_o200k_split():
  counts = bpe.count_words(["Hello world, hello world!"])
  assert counts == {b"Hello": 1, b" world": 2, b",": 1, b" hello": 1, b"!": 1}


def test_first_merges_and_tie_breaking():
  # Words "abab", " abab", " ab". (a,b) occurs 5 times; then (" ", "ab") and ("ab", "ab") tie at 2 and the smaller
  # left bytes b" " wins; then (" ab", "ab") and ("ab", "ab") tie at 1 and b" ab" < b"ab".
  merges = bpe.train_merges(["abab abab ab"], vocab_size=260)
  assert merges == [(b"a", b"b"), (b" ", b"ab"), (b" ab", b"ab"), (b"ab", b"ab")]


def test_training_stops_when_pairs_run_out():
  ranks = bpe.train_bpe(["abab abab ab"], vocab_size=1000)
  assert len(ranks) == 260
  assert ranks[b" abab"] == 258 and ranks[b"abab"] == 259


def test_ranks_are_bytes_then_merges():
  ranks = bpe.train_bpe(["the cat sat on the mat " * 5], vocab_size=266)
  assert [ranks[bytes([i])] for i in range(256)] == list(range(256))
  assert sorted(ranks.values()) == list(range(266))
  # "at" occurs three times per repeat (cat, sat, mat), more than any other pair.
  assert ranks[b"at"] == 256 and ranks[b"he"] == 257
  with pytest.raises(ValueError, match="at least 256"):
    bpe.train_bpe(["x"], vocab_size=100)


@pytest.fixture(scope="module")
def sample_texts():
  return [d["text"] for d in corpus.load_corpus()[:12]]


def test_tiktoken_reproduces_training_segmentation(sample_texts):
  merges = bpe.train_merges(sample_texts, vocab_size=500)
  assert len(merges) == 244
  ranks = bpe.train_bpe(sample_texts, vocab_size=500)
  enc = _encoding(ranks)
  words = bpe.count_words(sample_texts)
  for word in words:
    got = [enc.decode_single_token_bytes(t) for t in _encode_piece(enc, word)]
    assert got == _replay(word, merges), word
  # The same holds for whole texts, where tiktoken also does the regex split.
  text = sample_texts[3]
  expected = [p for w in regex.findall(O200K_PATTERN, text) for p in _replay(w.encode(), merges)]
  assert [enc.decode_single_token_bytes(t) for t in enc.encode_ordinary(text)] == expected


def test_save_and_load_round_trip(tmp_path, monkeypatch):
  ranks = bpe.train_bpe(["abab abab ab"], vocab_size=260)
  path = tmp_path / "t.model"
  bpe.save_ranks(ranks, path)
  lines = path.read_text().splitlines()
  assert lines[0] == "AA== 0" and lines[-1] == f"{base64.b64encode(b'abab').decode()} 259"
  assert bpe.load_ranks(path) == ranks
  # tiktoken's own loader reads the file identically (caching disabled: it caches by path).
  monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
  assert tiktoken.load.load_tiktoken_bpe(str(path)) == ranks
  with pytest.raises(ValueError, match="0..n-1"):
    bpe.save_ranks({b"a": 0, b"b": 2}, tmp_path / "gap.model")
  assert not (tmp_path / "gap.model").exists()


@pytest.mark.parametrize("bad_line", ["QQ==", "QQ== one", "!!!! 1", "QQ== 1 extra"])
def test_load_ranks_error_names_file_and_line(tmp_path, bad_line):
  path = tmp_path / "broken.model"
  path.write_text(f"AA== 0\n\nAQ== 1\n{bad_line}\n")
  with pytest.raises(ValueError, match=r"broken\.model:4: malformed line"):
    bpe.load_ranks(path)


def test_load_ranks_rejects_duplicates_and_missing_file(tmp_path):
  path = tmp_path / "dup.model"
  path.write_text("AA== 0\nAA== 1\n")
  with pytest.raises(ValueError, match=r"dup\.model:2"):
    bpe.load_ranks(path)
  with pytest.raises(FileNotFoundError, match="absent.model"):
    bpe.load_ranks(tmp_path / "absent.model")


def test_every_shipped_token_is_reachable_by_merges():
  ranks = bpe.load_ranks(TINY_TOKENIZER)
  assert len(ranks) == 3840
  assert all(ranks[bytes([i])] == i for i in range(256))
  enc = _encoding(ranks)
  unreachable = [t for t, r in ranks.items() if len(t) > 1 and _encode_piece(enc, t) != [r]]
  assert unreachable == []
