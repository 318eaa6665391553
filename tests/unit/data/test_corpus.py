"""The embedded corpus: the shipped file's shape, the builder's determinism, atomicity and docstring selection."""

import gzip
import json
import os

import pytest

from llama4_jax.data import corpus


@pytest.fixture(scope="module")
def shipped():
  return corpus.load_corpus()


def test_shipped_corpus_is_large_with_sequential_ids(shipped):
  assert len(shipped) > 1000
  assert sum(len(d["text"].encode("utf-8")) for d in shipped) > 1_000_000
  assert [d["id"] for d in shipped] == list(range(len(shipped)))
  sources = [d["source"] for d in shipped]
  assert len(set(sources)) == len(sources)
  # Reference topics come first, then docstrings; both kinds are present.
  assert sources[0].startswith("pydoc:")
  kinds = [s.split(":")[0] for s in sources]
  assert kinds == sorted(kinds, key=lambda k: k != "pydoc")
  assert sum(k == "pydoc" for k in kinds) >= 70 and sum(k == "doc" for k in kinds) > 1000
  assert all(len(d["text"]) >= corpus.MIN_DOC_CHARS for d in shipped if d["source"].startswith("doc:"))


def test_shipped_asset_fits_the_size_budget():
  assert os.path.getsize(corpus.DEFAULT_CORPUS) <= 2_100_000


def test_build_is_deterministic_capped_and_matches_document_order(tmp_path):
  a, b = tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl.gz"
  stats = corpus.build_corpus(a, max_bytes=60_000)
  corpus.build_corpus(b, max_bytes=60_000)
  assert a.read_bytes() == b.read_bytes()
  docs = corpus.load_corpus(a)
  assert stats == {"documents": len(docs), "text_bytes": sum(len(d["text"].encode()) for d in docs)}
  assert 0 < stats["text_bytes"] <= 60_000
  expected = [s for s, _ in zip(corpus.iter_documents(), range(len(docs)))]
  assert [(d["id"], d["source"], d["text"]) for d in docs] == [(i, s, t) for i, (s, t) in enumerate(expected)]


def _write(path, text):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text, encoding="utf-8")


def test_docstring_selection_order_and_skips(tmp_path):
  long = " ".join(["Word"] * 70)  # 349 characters, above the 300-character floor.
  _write(tmp_path / "pkg" / "mod.py", f'''"""{long}"""
class Box:
  """{long}"""
  def open(self):
    """too short"""
if True:
  def helper():
    """
    {long}
    """
    def inner():
      """{long}inner"""
''')
  _write(tmp_path / "a.py", f'def first():\n  """{long}first"""\n')
  _write(tmp_path / "broken.py", f'"""{long}"""\ndef (:\n')
  for skipped in ("test", "idlelib", "lib2to3", "site-packages"):
    _write(tmp_path / skipped / "x.py", f'"""{long}"""\n')
  got = list(corpus.docstring_documents(str(tmp_path)))
  assert [s for s, _ in got] == ["doc:a.py:first", "doc:pkg/mod.py", "doc:pkg/mod.py:Box", "doc:pkg/mod.py:helper",
                                 "doc:pkg/mod.py:helper.inner"]
  # inspect.cleandoc strips the indentation and the blank first and last lines.
  assert dict(got)["doc:pkg/mod.py:helper"] == long


def _failing_documents():
  yield "pydoc:one", "x" * 400
  yield "pydoc:two", "y" * 400
  raise RuntimeError("disk full")


@pytest.mark.parametrize("existing", [None, b"previous contents"])
def test_build_corpus_is_atomic(tmp_path, monkeypatch, existing):
  dest = tmp_path / "corpus.jsonl.gz"
  if existing is not None:
    dest.write_bytes(existing)
  monkeypatch.setattr(corpus, "iter_documents", _failing_documents)
  with pytest.raises(RuntimeError, match="disk full"):
    corpus.build_corpus(dest)
  # Neither a partial destination nor a leftover temporary file.
  assert sorted(os.listdir(tmp_path)) == ([] if existing is None else ["corpus.jsonl.gz"])
  if existing is not None:
    assert dest.read_bytes() == existing


def test_load_corpus_missing_file_names_it(tmp_path):
  missing = tmp_path / "nope.jsonl.gz"
  with pytest.raises(FileNotFoundError, match="nope.jsonl.gz"):
    corpus.load_corpus(missing)


def test_load_corpus_corrupt_file_names_it_and_line(tmp_path):
  not_gzip = tmp_path / "plain.jsonl.gz"
  not_gzip.write_bytes(b'{"id": 0}\n')
  with pytest.raises(ValueError, match="plain.jsonl.gz"):
    corpus.load_corpus(not_gzip)
  bad_line = tmp_path / "bad.jsonl.gz"
  good = json.dumps({"id": 0, "source": "s", "text": "t"})
  with gzip.open(bad_line, "wt", encoding="utf-8") as f:
    f.write(good + "\n{not json\n")
  with pytest.raises(ValueError, match=r"bad\.jsonl\.gz \(line 2\)"):
    corpus.load_corpus(bad_line)
  missing_field = tmp_path / "field.jsonl.gz"
  with gzip.open(missing_field, "wt", encoding="utf-8") as f:
    f.write(json.dumps({"id": 0, "source": "s"}) + "\n")
  with pytest.raises(ValueError, match="line 1"):
    corpus.load_corpus(missing_field)
