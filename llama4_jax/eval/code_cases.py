"""LiveCodeBench test cases (issue 12): decoding the release's test-case fields safely, and the harness that runs
"functional" (LeetCode-style) tests.

The code_generation_lite release stores `private_test_cases` either as a JSON string or, for the large ones, as
base64(zlib(pickle(JSON string))). `pickle.loads` on downloaded data runs whatever the pickle asks for, so
`decode_test_cases` uses an unpickler that resolves no class or function at all: a plain str / list / dict pickle
loads, anything that references a global (how a pickle calls code, e.g. os.system) is refused.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import pickle
import zlib
from typing import Any, Sequence

# Imports the LiveCodeBench harness makes available to every solution (LeetCode starter code uses List, Optional)
CODE_PRELUDE = ("import sys, math, heapq, bisect, itertools, functools, collections, string, re\n"
                "from typing import *\nfrom collections import *\nfrom itertools import *\nfrom functools import *\n"
                "from heapq import *\nfrom bisect import *\nfrom math import *\nsys.setrecursionlimit(10 ** 6)\n")

# Runs after a "functional" solution: each input line is one JSON argument, the output one JSON value
_FUNCTIONAL_HARNESS = """
import json as _json
for _index, (_input, _expected) in enumerate(_json.loads({cases!r})):
  _args = [_json.loads(_line) for _line in _input.split("\\n") if _line.strip()]
  _got = getattr(Solution(), {func!r})(*_args)
  if _json.loads(_json.dumps(_got)) != _json.loads(_expected):  # tuples compare as the lists the JSON holds
    raise SystemExit(f"test {{_index}} failed: got {{_got!r:.200}}")
"""


class _NoGlobalsUnpickler(pickle.Unpickler):
  """Unpickles plain containers only: any class or function reference (how a pickle runs code) is refused."""

  def find_class(self, module: str, name: str):
    raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only plain str / list / dict data is allowed")


def _plain(value: Any) -> bool:
  if isinstance(value, str):
    return True
  if isinstance(value, list):
    return all(_plain(v) for v in value)
  return isinstance(value, dict) and all(isinstance(k, str) and _plain(v) for k, v in value.items())


def safe_unpickle(blob: bytes, where: str) -> str | list | dict:
  """A pickle of plain str / list / dict data; ValueError naming `where` for anything else."""
  try:
    value = _NoGlobalsUnpickler(io.BytesIO(blob)).load()
  except (pickle.UnpicklingError, EOFError, ValueError) as e:
    raise ValueError(f"{where}: unsafe or broken pickle: {e}") from None
  if not _plain(value):
    raise ValueError(f"{where}: the pickle holds {type(value).__name__} data, not plain str / list / dict")
  return value


def decode_test_cases(raw: str, where: str) -> list[dict[str, str]]:
  """A test-case field as a list of {input, output, testtype}: a JSON list, or base64(zlib(pickle(JSON)))."""
  text = raw.strip()
  if not text.startswith("["):
    try:
      blob = zlib.decompress(base64.b64decode(text, validate=True))
    except (binascii.Error, zlib.error, ValueError) as e:
      raise ValueError(f"{where}: neither JSON nor base64(zlib(pickle)) test cases: {e}") from None
    text = safe_unpickle(blob, where)
  try:
    cases = json.loads(text) if isinstance(text, str) else text
  except json.JSONDecodeError as e:
    raise ValueError(f"{where}: test cases are not valid JSON ({e})") from None
  if not isinstance(cases, list):
    raise ValueError(f"{where}: test cases must be a list, got {type(cases).__name__}")
  out = []
  for i, case in enumerate(cases):
    missing = [k for k in ("input", "output", "testtype") if not isinstance(case, dict) or k not in case]
    if missing:
      raise ValueError(f"{where}: test case {i} lacks {missing}")
    out.append({k: case[k] for k in ("input", "output", "testtype")})
  return out


def functional_harness(cases: Sequence[tuple[str, str]], func_name: str) -> str:
  """Python that, run after a solution defining `Solution`, calls Solution().func_name on each case's JSON
  arguments (one per input line) and exits non-zero at the first result unequal to the case's JSON output."""
  return _FUNCTIONAL_HARNESS.format(cases=json.dumps([list(c) for c in cases]), func=func_name)
