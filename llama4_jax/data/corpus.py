"""The embedded default corpus: English prose that exists on every machine without a network.

Python 3.11 ships its own reference documentation (`pydoc_data.topics.topics`, the text behind `help('if')`) and
documents its standard library in docstrings. Both are real, edited English with code mixed in, which is what a tiny
tokenizer and a smoke-test language model need. `build_corpus` collects them into gzipped JSON lines
`{"id": int, "source": str, "text": str}`; the result is shipped at `DEFAULT_CORPUS` so tests and examples never
depend on a download.

Rebuild the shipped file with:

  python -m llama4_jax.data.corpus --out=llama4_jax/data/assets/python_docs.jsonl.gz

Docstrings are read with `ast` from the source files, never by importing the modules: importing the whole standard
library is slow, platform dependent and has side effects (`antigravity` opens a browser).
"""

from __future__ import annotations

import ast
import contextlib
import gzip
import inspect
import io
import itertools
import json
import os
import pathlib
import sysconfig
import tempfile
import time
from typing import IO, Iterator

from absl import app, flags

DEFAULT_CORPUS = str(pathlib.Path(__file__).resolve().parent / "assets" / "python_docs.jsonl.gz")

# About 6 MB of text keeps the compressed asset near 2 MB (documentation compresses about 3:1).
DEFAULT_MAX_BYTES = 6_000_000
MIN_DOC_CHARS = 300
# Test suites, the IDLE application and the deprecated 2to3 tool are mostly code, not prose; third-party packages
# differ per machine and would make the corpus non-reproducible.
SKIPPED_DIRS = frozenset({"test", "tests", "idlelib", "lib2to3", "site-packages", "__pycache__"})

_DEF_NODES = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
  """Opens a temporary file next to `path`; it replaces `path` only if the block finishes without an exception.

  The temporary file lives in the destination directory so that `os.replace` is a same-filesystem rename, which is
  atomic: readers see either the old file or the complete new one, never a partial write.
  """
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp_path = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
  try:
    with os.fdopen(fd, mode) as f:
      # mkstemp creates the file owner-only (0600); give the result the permissions a plain open() would.
      umask = os.umask(0)
      os.umask(umask)
      os.chmod(tmp_path, 0o666 & ~umask)
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp_path, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp_path)
    raise


def pydoc_documents() -> Iterator[tuple[str, str]]:
  """Yields (source, text) for each reference topic of the running Python, sorted by topic name."""
  # Imported on use: the module is a 0.5 MB dict literal that only corpus building needs.
  from pydoc_data.topics import topics  # pylint: disable=import-outside-toplevel

  for name in sorted(topics):
    text = topics[name].strip()
    if text:
      yield f"pydoc:{name}", text


def stdlib_source_files(root: str | None = None) -> list[str]:
  """Sorted POSIX-style paths, relative to `root` (default: this interpreter's stdlib), of the .py files to read."""
  root = root or sysconfig.get_paths()["stdlib"]
  found = []
  for directory, subdirs, files in os.walk(root):
    # Pruning in place stops os.walk from descending into skipped directories at all.
    subdirs[:] = [d for d in subdirs if d not in SKIPPED_DIRS]
    for name in files:
      if name.endswith(".py"):
        found.append(pathlib.Path(os.path.relpath(os.path.join(directory, name), root)).as_posix())
  return sorted(found)


def _docstrings(node: ast.AST, prefix: str) -> Iterator[tuple[str, str]]:
  """Depth-first, in source order: (qualified name, raw docstring) of every class and function under `node`."""
  for child in ast.iter_child_nodes(node):
    if isinstance(child, _DEF_NODES):
      name = f"{prefix}.{child.name}" if prefix else child.name
      doc = ast.get_docstring(child, clean=False)
      if doc:
        yield name, doc
      yield from _docstrings(child, name)
    else:
      # Definitions inside `if`/`try`/`with` blocks (platform-specific variants) still belong to the same scope.
      yield from _docstrings(child, prefix)


def docstring_documents(root: str | None = None) -> Iterator[tuple[str, str]]:
  """Yields (source, text) for module, class and function docstrings of at least MIN_DOC_CHARS characters."""
  root = root or sysconfig.get_paths()["stdlib"]
  for rel_path in stdlib_source_files(root):
    try:
      with open(os.path.join(root, rel_path), "rb") as f:
        # Parsing bytes lets `ast` honour each file's own encoding declaration.
        tree = ast.parse(f.read(), filename=rel_path)
    except (SyntaxError, ValueError, UnicodeDecodeError, OSError):
      continue
    module_doc = ast.get_docstring(tree, clean=False)
    entries = [("", module_doc)] if module_doc else []
    for qualname, doc in entries + list(_docstrings(tree, "")):
      text = inspect.cleandoc(doc)
      if len(text) >= MIN_DOC_CHARS:
        yield (f"doc:{rel_path}:{qualname}" if qualname else f"doc:{rel_path}"), text


def iter_documents(root: str | None = None) -> Iterator[tuple[str, str]]:
  """All candidate documents in their fixed order: reference topics first, then docstrings; exact repeats dropped."""
  seen = set()
  for source, text in itertools.chain(pydoc_documents(), docstring_documents(root)):
    # About ten texts repeat verbatim (a method documented twice, `pydoc:else` = `pydoc:if`); keep the first only.
    if text not in seen:
      seen.add(text)
      yield source, text


def build_corpus(out_path: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, int]:
  """Writes the corpus as gzipped JSON lines, atomically; stops before the UTF-8 text would exceed `max_bytes`.

  Returns {"documents": n, "text_bytes": total} for logging. The gzip header carries no timestamp or file name, so
  the same interpreter always produces byte-identical output.
  """
  if max_bytes <= 0:
    raise ValueError(f"max_bytes must be positive, got {max_bytes}")
  count, total = 0, 0
  with atomic_writer(out_path, "wb") as raw:
    with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz:
      writer = io.TextIOWrapper(gz, encoding="utf-8", newline="\n")
      for source, text in iter_documents():
        size = len(text.encode("utf-8"))
        if total + size > max_bytes:
          break
        writer.write(json.dumps({"id": count, "source": source, "text": text}, ensure_ascii=False) + "\n")
        count, total = count + 1, total + size
      writer.flush()
      writer.detach()  # Leave closing the gzip stream to its own context manager.
  return {"documents": count, "text_bytes": total}


def load_corpus(path: str | os.PathLike = DEFAULT_CORPUS) -> list[dict]:
  """Reads a corpus written by `build_corpus`; a missing or damaged file raises an error that names it."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"corpus file not found: {path} (build it with python -m llama4_jax.data.corpus)")
  docs = []
  try:
    with gzip.open(path, "rt", encoding="utf-8") as f:
      for line in f:
        doc = json.loads(line)
        if not (isinstance(doc, dict) and isinstance(doc.get("id"), int) and isinstance(doc.get("source"), str)
                and isinstance(doc.get("text"), str)):
          raise ValueError("expected an object with int 'id' and str 'source' and 'text'")
        docs.append(doc)
  except (OSError, EOFError, UnicodeDecodeError, ValueError) as e:  # BadGzipFile is an OSError.
    # The failing line is the one after the last good document, whether reading or parsing failed.
    raise ValueError(f"corrupt corpus file {path} (line {len(docs) + 1}): {e}") from e
  return docs


def main(argv):
  del argv
  out = flags.FLAGS.out
  start = time.perf_counter()
  stats = build_corpus(out, max_bytes=flags.FLAGS.max_bytes)
  print(f"wrote {out}: {stats['documents']} documents, {stats['text_bytes']} text bytes, "
        f"{os.path.getsize(out)} bytes on disk, {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
  # Flags are defined only when run as a program, so importing this module never touches the global flag registry.
  flags.DEFINE_string("out", DEFAULT_CORPUS, "Destination .jsonl.gz file.")
  flags.DEFINE_integer("max_bytes", DEFAULT_MAX_BYTES, "Cap on the total UTF-8 text size.")
  app.run(main)
