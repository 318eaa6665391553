"""Image benchmarks of the evaluation suite (issue 12): ChartQA, DocVQA, MMMU, MMMU-Pro, MathVista, 0-shot.

Each family reads its released files from `data_dir/<name>/` (no downloads); `layout` of each `Benchmark` says
which. Every prompt names its images by `<|image|>` placeholders, one per entry of `Example.images`, in order.

* chartqa: relaxed accuracy, the mean of the human and augmented splits (the number ChartQA papers report).
* docvqa: ANLS against every gold answer (the SP task's validation split; the test split has no answers).
* mmmu: validation accuracy over all questions; multiple choice by letter, open answers by `mmmu_open_match`.
* mmmu_pro: accuracy of the standard (10 options) and vision settings, averaged over the two settings as Llama 4
  reports it (with one setting present, its accuracy).
* mathvista: testmini accuracy with MathVista's normalisation (`mathvista_correct`).

Pictures stored as bytes in parquet (MMMU, MMMU-Pro, MathVista's HF export; read with pyarrow) are written once,
named by their hash, to `data_dir/<name>/.images/` (if that is read-only or the package's samples, to
`<system temp>/llama4_jax_eval_images/<name>/`). Multiple-choice examples keep their option texts in `choices`.
"""

from __future__ import annotations

import ast
import dataclasses
import glob
import hashlib
import json
import os
import re
import tempfile
from typing import Any, Iterator, Sequence

from llama4_jax.eval import extract as E
from llama4_jax.eval import metrics as M
from llama4_jax.eval.suite import SAMPLE_DIR, Benchmark, Example, benchmark_dir, choice_letters, require_file

IMAGE = "<|image|>"
SHORT_ANSWER = "Answer the question with a single word or number."
DOC_ANSWER = "Answer the question using a single word or phrase from the document."
MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
OPEN_INSTRUCTION = "Answer the question using a single word or phrase."
# MMMU-Pro's "vision" setting shows question and options only in the picture
PRO_VISION_INSTRUCTION = ("Answer with the option letter from the given choices directly. The last line of your "
                          "response should be of the following format: 'Answer: $LETTER' (without quotes) where "
                          "LETTER is one of options.")
_IMAGE_REF = re.compile(r"<image (\d+)>")
_ANSWER_LABEL = re.compile(r"^(?:final\s+)?answer\s*[:：]\s*", re.IGNORECASE)


# ---- shared helpers ---------------------------------------------------------------------------------------------

def _zero_shot(name: str, shots: int | None) -> None:
  if shots:
    raise ValueError(f"benchmark {name!r} is evaluated 0-shot (as Llama 4 reports it); got shots={shots}")


def _load_json(path: str, name: str, layout: str, expect: type) -> Any:
  require_file(path, name, layout)
  with open(path, encoding="utf-8") as f:
    try:
      data = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"benchmark {name!r}: {path} is not valid JSON ({e})") from e
  if not isinstance(data, expect):
    raise ValueError(f"benchmark {name!r}: {path} should hold a JSON {'list' if expect is list else 'object'}, got "
                     f"{type(data).__name__}; expected {layout}")
  return data


def _require_keys(record: Any, keys: Sequence[str], where: str) -> None:
  if not isinstance(record, dict):
    raise ValueError(f"{where}: expected an object with keys {list(keys)}, got {type(record).__name__}")
  missing = [k for k in keys if k not in record]
  if missing:
    raise ValueError(f"{where}: missing key(s) {missing}; it has {sorted(record)}")


def _text(value: Any, where: str) -> str:
  """A string field; numbers are accepted and written as JSON would ("4", "0.5")."""
  if isinstance(value, bool) or not isinstance(value, (str, int, float)):
    raise ValueError(f"{where}: expected a string, got {value!r}")
  return value if isinstance(value, str) else json.dumps(value)


def _existing_image(path: str, where: str) -> str:
  if os.path.isfile(path):
    return path
  raise FileNotFoundError(f"{where}: image {path} does not exist")


def short_answer(generation: str, example: Example | None = None) -> str:
  """The first non-empty line, stripped, without an "Answer:" label, markdown bold or a trailing full stop."""
  line = next((l for l in generation.strip().splitlines() if l.strip()), "")
  line = _ANSWER_LABEL.sub("", line.strip().strip("*").strip()).strip("*").strip()
  return line[:-1].rstrip() if line.endswith(".") else line


# ---- images stored in parquet -----------------------------------------------------------------------------------

def _parquet_columns(path: str, name: str) -> list[str]:
  import pyarrow.parquet as pq  # only the parquet releases need pyarrow
  try:
    return pq.read_schema(path).names
  except Exception as e:  # pyarrow raises several types for a damaged file
    raise ValueError(f"benchmark {name!r}: cannot read the parquet schema of {path} ({e})") from e


def _parquet_rows(files: Sequence[tuple[str, Sequence[str]]], name: str) -> Iterator[list[dict]]:
  """The rows of each (parquet file, required columns), one file at a time (a file's pictures can run to hundreds
  of MB); every file's columns are checked before any data is read, and a ValueError names the file and what it
  lacks."""
  import pyarrow.parquet as pq
  for path, required in files:
    columns = _parquet_columns(path, name)
    missing = [c for c in required if c not in columns]
    if missing:
      raise ValueError(f"benchmark {name!r}: {path} lacks column(s) {missing}; it has {columns}")
  for path, _ in files:
    yield pq.read_table(path).to_pylist()


def image_cache_dir(bench_dir: str, name: str) -> str:
  """Where the parquet images of `bench_dir` go: `bench_dir/.images`, else (read-only data, or the package's own
  samples, which must not grow files in the source tree) a directory under the system temp dir."""
  real, samples = os.path.realpath(bench_dir), os.path.realpath(SAMPLE_DIR)
  if os.path.commonpath([real, samples]) != samples:
    cache = os.path.join(bench_dir, ".images")
    try:
      os.makedirs(cache, exist_ok=True)
      if os.access(cache, os.W_OK):
        return cache
    except OSError:
      pass  # read-only data
  cache = os.path.join(tempfile.gettempdir(), "llama4_jax_eval_images", name)
  os.makedirs(cache, exist_ok=True)
  return cache


def _suffix(data: bytes) -> str:
  magic = ((b"\x89PNG", ".png"), (b"\xff\xd8\xff", ".jpg"), (b"GIF8", ".gif"), (b"BM", ".bmp"), (b"RIFF", ".webp"))
  return next((suffix for m, suffix in magic if data.startswith(m)), ".img")


def _write_once(cache: str, data: bytes) -> str:
  """`data` as a file named by its hash: written once, through a temporary name then a rename, so a reader never
  sees half a file and a second read (or a second process) leaves the first copy alone."""
  path = os.path.join(cache, hashlib.sha1(data).hexdigest()[:20] + _suffix(data))
  if os.path.isfile(path) and os.path.getsize(path) == len(data):
    return path
  fd, tmp = tempfile.mkstemp(dir=cache, prefix=".tmp-")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.chmod(tmp, 0o644)  # mkstemp makes the file private; the cache is read by whoever reads the data
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  return path


def _stored_image(value: Any, cache: str, base_dir: str, where: str) -> str:
  """The path of a parquet image cell ({"bytes", "path"} as the HF `Image` feature stores it)."""
  if isinstance(value, dict) and value.get("bytes"):
    return _write_once(cache, value["bytes"])
  if isinstance(value, dict) and value.get("path"):
    return _existing_image(os.path.join(base_dir, value["path"]), where)  # an image stored beside the file
  raise ValueError(f"{where}: expected an image {{bytes, path}}, got {str(value)[:80]!r}")


# ---- ChartQA ----------------------------------------------------------------------------------------------------

CHARTQA_LAYOUT = ("chartqa/test/test_human.json and chartqa/test/test_augmented.json (lists of {imgname, query, "
                  "label}), images in chartqa/test/png/<imgname>")


def read_chartqa(data_dir: str, shots: int | None = 0, seed: int = 0) -> list[Example]:
  _zero_shot("chartqa", shots)
  split_dir = os.path.join(benchmark_dir(data_dir, "chartqa", CHARTQA_LAYOUT), "test")
  out = []
  for group in ("human", "augmented"):
    path = os.path.join(split_dir, f"test_{group}.json")
    for i, r in enumerate(_load_json(path, "chartqa", CHARTQA_LAYOUT, list)):
      where = f"{path} record {i}"
      _require_keys(r, ("imgname", "query", "label"), where)
      image = _existing_image(os.path.join(split_dir, "png", _text(r["imgname"], where)), where)
      prompt = f"{IMAGE}{SHORT_ANSWER}\nQuestion: {_text(r['query'], where)}\nAnswer:"
      out.append(Example(id=f"{group}/{i}", prompt=prompt, golds=(_text(r["label"], where),), group=group,
                         images=(image,)))
  return out


def score_chartqa(answer: str, example: Example) -> float:
  return max(M.relaxed_accuracy(answer, gold) for gold in example.golds)  # ChartQA has one gold


# ---- DocVQA -----------------------------------------------------------------------------------------------------

DOCVQA_LAYOUT = ("docvqa/val/val_v1.0.json (or val_v1.0_withQT.json): {dataset_name, dataset_split, data: "
                 "[{questionId, question, image: 'documents/<file>.png', answers}]}, images under docvqa/val/")


def _docvqa_file(root: str) -> str:
  val, test = ([os.path.join(root, split, f"{split}_v1.0{qt}.json") for qt in ("", "_withQT")]
               for split in ("val", "test"))
  found = [path for path in val + test if os.path.isfile(path)]
  if found and found[0] in test:
    raise ValueError(f"benchmark 'docvqa': only {found[0]} was found; the test split has no answers (it is scored "
                     f"on the RRC server); expected {DOCVQA_LAYOUT}")
  return found[0] if found else require_file(val[0], "docvqa", DOCVQA_LAYOUT)


def read_docvqa(data_dir: str, shots: int | None = 0, seed: int = 0) -> list[Example]:
  _zero_shot("docvqa", shots)
  path = _docvqa_file(benchmark_dir(data_dir, "docvqa", DOCVQA_LAYOUT))
  release = _load_json(path, "docvqa", DOCVQA_LAYOUT, dict)
  _require_keys(release, ("data",), path)
  out = []
  for i, r in enumerate(release["data"]):
    where = f"{path} data[{i}]"
    _require_keys(r, ("questionId", "question", "image"), where)
    if not r.get("answers"):
      raise ValueError(f"{where} (questionId {r['questionId']}) has no answers: a test-split file cannot be scored")
    golds = tuple(_text(a, where) for a in r["answers"])
    image = _existing_image(os.path.join(os.path.dirname(path), _text(r["image"], where)), where)
    prompt = f"{IMAGE}{DOC_ANSWER}\nQuestion: {_text(r['question'], where)}\nAnswer:"
    out.append(Example(id=str(r["questionId"]), prompt=prompt, golds=golds, images=(image,)))
  return out


def score_docvqa(answer: str, example: Example) -> float:
  return M.anls(answer, example.golds)


# ---- MMMU and MMMU-Pro ------------------------------------------------------------------------------------------

MMMU_LAYOUT = ("mmmu/<Subject>/validation-*.parquet (the HF MMMU/MMMU release: columns id, question, options, "
               "answer, question_type, image_1..image_7 as {bytes, path})")
MMMU_PRO_LAYOUT = ("mmmu_pro/standard (10 options)/test-*.parquet (columns id, question, options, answer, "
                   "image_1..image_7) and/or mmmu_pro/vision/test-*.parquet (columns id, image, options, answer); "
                   "without those two directories, every *.parquet under mmmu_pro/ (setting told by its columns)")
_PRO_SETTINGS = {"standard (10 options)": "standard", "vision": "vision"}


def _options(value: Any, where: str) -> list[str]:
  """MMMU's options: a Python list literal in a string, parsed without evaluating code."""
  try:
    options = value if isinstance(value, list) else ast.literal_eval(value)
  except (ValueError, SyntaxError, TypeError) as e:
    raise ValueError(f"{where}: options {str(value)[:80]!r} is not a Python list literal") from e
  if not isinstance(options, (list, tuple)):
    raise ValueError(f"{where}: options {str(value)[:80]!r} is not a list")
  return [str(o) for o in options]


def _mc_golds(answer: Any, options: Sequence[str], where: str) -> tuple[str, ...]:
  if len(options) < 2:
    raise ValueError(f"{where}: a multiple-choice question needs 2 or more options, got {list(options)!r}")
  letters = choice_letters(len(options))
  # a question with several right options (if any) writes them as a list literal, each one a gold
  golds = _open_golds(answer, where) if isinstance(answer, str) and answer.startswith("[") else (answer,)
  if not all(g in letters for g in golds):
    raise ValueError(f"{where}: answer {answer!r} is not one of the option letters {''.join(letters)}")
  return golds


def _open_golds(answer: Any, where: str) -> tuple[str, ...]:
  """An open answer; a list literal ("['24/7', '3.429']") gives every element as a gold."""
  text = _text(answer, where).strip()
  try:
    parsed = ast.literal_eval(text) if text.startswith("[") else None
  except (ValueError, SyntaxError):
    parsed = None  # a bracketed answer that is not a literal is one gold
  return tuple(str(p) for p in parsed) if isinstance(parsed, list) and parsed else (text,)


def _mc_prompt(question: str, options: Sequence[str]) -> str:
  lines = "".join(f"{letter}. {option}\n" for letter, option in zip(choice_letters(len(options)), options))
  return f"{question}\n{lines}{MC_INSTRUCTION}"


def _inline_images(text: str, row: dict, where: str) -> tuple[str, list[Any]]:
  """`<image k>` -> `<|image|>` in order of appearance, with the image cells in that order (a picture referenced
  twice is given twice). A question that references none gets its images in front, in column order."""
  cells = []
  for m in _IMAGE_REF.finditer(text):
    column = f"image_{m.group(1)}"
    if row.get(column) is None:
      raise ValueError(f"{where}: the text references <image {m.group(1)}> but column {column} is empty")
    cells.append(row[column])
  if cells:
    return _IMAGE_REF.sub(IMAGE, text), cells
  cells = [row[c] for c in sorted((c for c in row if re.fullmatch(r"image_\d+", c)), key=lambda c: int(c[6:]))
           if row[c] is not None]
  return IMAGE * len(cells) + text, cells


def _mmmu_example(row: dict, subject: str, mc: bool, where: str) -> tuple[Example, list[Any]]:
  """The example of one MMMU / MMMU-Pro standard row, its images still parquet cells."""
  question = _text(row["question"], where)
  options = _options(row["options"], where) if mc else []
  golds = _mc_golds(row["answer"], options, where) if mc else _open_golds(row["answer"], where)
  text = _mc_prompt(question, options) if mc else f"{question}\n{OPEN_INSTRUCTION}"
  prompt, cells = _inline_images(text, row, where)
  return Example(id=str(row["id"]), prompt=prompt, golds=golds, choices=tuple(options), group=subject), cells


def _with_images(pending: list[tuple[Example, list[Any], str]], cache: str) -> list[Example]:
  """Writes the images of already-validated examples to the cache and attaches their paths."""
  return [dataclasses.replace(example, images=tuple(_stored_image(c, cache, base_dir, f"{base_dir}: {example.id}")
                                                    for c in cells)) for example, cells, base_dir in pending]


def read_mmmu(data_dir: str, shots: int | None = 0, seed: int = 0) -> list[Example]:
  _zero_shot("mmmu", shots)
  root = benchmark_dir(data_dir, "mmmu", MMMU_LAYOUT)
  files = sorted(glob.glob(os.path.join(glob.escape(root), "*", "validation-*.parquet")))
  if not files:
    raise FileNotFoundError(f"benchmark 'mmmu': no validation-*.parquet in any subject directory of {root}; "
                            f"expected {MMMU_LAYOUT}")
  required = ("id", "question", "options", "answer", "question_type")
  out, cache = [], image_cache_dir(root, "mmmu")
  for path, rows in zip(files, _parquet_rows([(path, required) for path in files], "mmmu")):
    subject, pending = os.path.basename(os.path.dirname(path)), []
    for i, row in enumerate(rows):
      where = f"{path} row {i} (id {row['id']})"
      if row["question_type"] not in ("multiple-choice", "open"):
        raise ValueError(f"{where}: question_type {row['question_type']!r} is not 'multiple-choice' or 'open'")
      example, cells = _mmmu_example(row, subject, row["question_type"] == "multiple-choice", where)
      pending.append((example, cells, os.path.dirname(path)))
    out += _with_images(pending, cache)  # a file's rows are all checked before its pictures are written
  return out


def _pro_files(root: str) -> list[tuple[str, str]]:
  """(parquet file, setting): the release's setting directories, else every parquet file under `root`."""
  named = [(path, setting) for directory, setting in _PRO_SETTINGS.items()
           for path in sorted(glob.glob(os.path.join(glob.escape(root), directory, "*.parquet")))]
  if named:
    return named
  found = sorted(glob.glob(os.path.join(glob.escape(root), "**", "*.parquet"), recursive=True))
  # outside the setting directories, a file with a screenshot and no question text is a vision file
  return [(path, "vision" if "image" in (c := _parquet_columns(path, "mmmu_pro")) and "question" not in c
           else "standard") for path in found]


def read_mmmu_pro(data_dir: str, shots: int | None = 0, seed: int = 0) -> list[Example]:
  _zero_shot("mmmu_pro", shots)
  root = benchmark_dir(data_dir, "mmmu_pro", MMMU_PRO_LAYOUT)
  files = _pro_files(root)
  if not files:
    raise FileNotFoundError(f"benchmark 'mmmu_pro': no *.parquet under {root}; expected {MMMU_PRO_LAYOUT}")
  required = {"vision": ("id", "image", "options", "answer"), "standard": ("id", "question", "options", "answer")}
  out, cache = [], image_cache_dir(root, "mmmu_pro")
  for (path, setting), rows in zip(files, _parquet_rows([(p, required[s]) for p, s in files], "mmmu_pro")):
    pending = []
    for i, row in enumerate(rows):
      where = f"{path} row {i} (id {row['id']})"
      if setting == "vision":
        options = _options(row["options"], where)
        example, cells = Example(id="", prompt=IMAGE + PRO_VISION_INSTRUCTION, choices=tuple(options),
                                 golds=_mc_golds(row["answer"], options, where)), [row["image"]]
      else:
        example, cells = _mmmu_example(row, setting, True, where)
      # the two settings share question ids
      example = dataclasses.replace(example, id=f"{setting}/{row['id']}", group=setting)
      pending.append((example, cells, os.path.dirname(path)))
    out += _with_images(pending, cache)
  return out


def choice_letter(generation: str, example: Example) -> str:
  """The chosen letter; without one, MMMU's fallback: the option whose text the generation mentions last (options
  that are pictures cannot be quoted). "" when neither is found."""
  letter = E.multiple_choice_letter(generation, len(example.choices))
  if letter is not None:
    return letter
  text, best, best_end = generation.lower(), "", (0, 0)
  for letter, option in zip(choice_letters(len(example.choices)), example.choices):
    option = option.strip().lower()
    at = text.rfind(option) if option and not _IMAGE_REF.search(option) else -1
    # the mention ending last wins, the longer option at one end: "10" is not read as the option "0"
    if at >= 0 and (at + len(option), len(option)) > best_end:
      best, best_end = letter, (at + len(option), len(option))
  return best


def extract_mmmu(generation: str, example: Example) -> str:
  return choice_letter(generation, example) if example.choices else short_answer(generation)


_INDICATORS = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ")
_NUMBERS = (re.compile(r"-?\b\d{1,3}(?:,\d{3})+\b"), re.compile(r"-?\d+(?:\.\d+)?[eE][+-]?\d+"),
            re.compile(r"-?(?:\d+\.\d+|\.\d+|\d+)(?![eE][+-]?\d+)(?![,\d])"))


def _mmmu_normalize(text: str) -> list[str | float]:
  """A number as a float rounded to 2 places; otherwise lowercase text, and a single character padded with a space
  on either side (so "a" does not match inside any word)."""
  text = text.strip()
  try:
    return [round(float(text.replace(",", "")), 2)]
  except ValueError:
    text = text.lower()
    return [" " + text, text + " "] if len(text) == 1 else [text]


def _mmmu_key_phrases(response: str) -> list[str]:
  """Per line, the shortest tail after an answer indicator ("is ", "so ", ...; "=" too on the last line); the
  whole response when no line has one. MMMU's sentence split runs after lowercasing, so only newlines split."""
  lines = response.strip().strip(".").lower().split("\n")
  found = []
  for k, line in enumerate(lines):
    indicators = _INDICATORS + (("=",) if k == len(lines) - 1 else ())
    tails = [line.split(ind)[-1].strip() for ind in indicators if ind in line]
    tail = min(tails, key=len) if tails else ""
    if tail and tail not in (":", ",", ".", "!", "?", ";", "'"):
      found.append(tail)
  return found or [response.strip().strip(".").lower()]


def mmmu_open_match(prediction: str, golds: Sequence[str]) -> bool:
  """MMMU's open-answer rule: the prediction's key phrases and the numbers in them, normalised; correct when a
  numeric one equals a numeric gold (2 decimals) or a textual gold occurs inside a textual one."""
  phrases = _mmmu_key_phrases(prediction)
  candidates = list(phrases) + [n for p in phrases for pattern in _NUMBERS for n in pattern.findall(p)]
  preds = {v for c in candidates for v in _mmmu_normalize(c)}
  norm_golds = [v for g in golds for v in _mmmu_normalize(g)]
  for pred in preds:
    if isinstance(pred, str):
      if any(isinstance(g, str) and g in pred for g in norm_golds):
        return True
    elif pred in norm_golds:
      return True
  return False


def score_mmmu(answer: str, example: Example) -> float:
  if example.choices:
    return float(answer.strip().upper() in example.golds)
  return float(mmmu_open_match(answer, example.golds))


# ---- MathVista --------------------------------------------------------------------------------------------------

MATHVISTA_LAYOUT = ("mathvista/testmini.json (the GitHub release's data/testmini.json: {pid: {question, image: "
                    "'images/<pid>.jpg', choices, unit, precision, answer, question_type, answer_type, query, "
                    "metadata}}, images under mathvista/) or the HF export mathvista/**/testmini-*.parquet "
                    "(decoded_image bytes)")
_MV_KEYS = ("question", "answer", "question_type", "answer_type")
# the hints of MathVista's query field by answer type: (what is required, what to give, the examples)
_MV_HINTS = {"integer": ("an integer answer", "value", "1, 2, 3"),
             "float1": ("a floating-point number with one decimal place", "value", "1.2, 1.3, 1.4"),
             "float2": ("a floating-point number with two decimal places", "value", "1.23, 1.34, 1.45"),
             "list": ("a Python list as an answer", "list", "[1, 2, 3], [1.2, 1.3, 1.4]")}
_INT = re.compile(r"^-?\d+$")
_FLOAT = re.compile(r"^-?\d*\.(\d+)$")
_LIST = re.compile(r"\[[^\[\]]*\]")


def mathvista_query(r: dict) -> str:
  """MathVista's zero-shot query, built the way the release's `query` field is, for records without one."""
  kind = "float1" if int(r.get("precision") or 1) == 1 else "float2"
  required, give, examples = _MV_HINTS.get(kind if r["answer_type"] == "float" else r["answer_type"],
                                           ("an answer", "answer", "1, 2, 3"))
  hint = f"Please answer the question requiring {required} and provide the final {give}, e.g., {examples}, at the end."
  if r["question_type"] == "multi_choice":
    hint = "Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end."
  question = r["question"] + (f" (Unit: {r['unit']})" if r.get("unit") else "")
  query = f"Hint: {hint}\nQuestion: {question}"
  if r.get("choices"):
    query += "\nChoices:" + "".join(f"\n({l}) {c}" for l, c in zip(choice_letters(len(r["choices"])), r["choices"]))
  return query


def _mathvista_gold(r: dict, where: str) -> str:
  """The answer written so its shape tells `score` how to compare: integers bare, floats with exactly `precision`
  decimals (what MathVista rounds predictions to), lists and text as given."""
  answer, kind = _text(r["answer"], where).strip(), r["answer_type"] if r["question_type"] == "free_form" else "text"
  if kind not in ("integer", "float"):
    return answer
  if kind == "float" and r.get("precision") is None:
    raise ValueError(f"{where}: a float answer needs a precision, got None")
  try:
    value = float(E.normalize_number(answer))
  except ValueError:
    raise ValueError(f"{where}: answer {answer!r} of answer_type {kind!r} is not a number") from None
  if kind == "integer" and not value.is_integer():
    raise ValueError(f"{where}: answer {answer!r} of answer_type 'integer' is not a whole number")
  return str(int(value)) if kind == "integer" else f"{value:.{int(r['precision'])}f}"


def _mathvista_example(pid: str, r: dict, where: str) -> Example:
  _require_keys(r, _MV_KEYS, where)
  if r["question_type"] not in ("multi_choice", "free_form"):
    raise ValueError(f"{where}: question_type {r['question_type']!r} is not 'multi_choice' or 'free_form'")
  choices = tuple(_text(c, where) for c in (r.get("choices") or ()))
  if r["question_type"] == "multi_choice" and len(choices) < 2:
    raise ValueError(f"{where}: a multi_choice question needs 2 or more choices, got {list(choices)!r}")
  gold = _mathvista_gold(r, where)
  if choices and gold not in choices:
    raise ValueError(f"{where}: answer {gold!r} is not one of the choices {list(choices)!r}")
  task = (r.get("metadata") or {}).get("task") or r["question_type"]
  prompt = IMAGE + (r.get("query") or mathvista_query(r))
  return Example(id=str(pid), prompt=prompt, golds=(gold,), choices=choices, group=task)


def _mathvista_json(path: str) -> list[Example]:
  out = []
  for pid, r in _load_json(path, "mathvista", MATHVISTA_LAYOUT, dict).items():
    where = f"{path} pid {pid}"
    example = _mathvista_example(pid, r, where)
    _require_keys(r, ("image",), where)
    image = _existing_image(os.path.join(os.path.dirname(path), _text(r["image"], where)), where)
    out.append(dataclasses.replace(example, images=(image,)))
  return out


def read_mathvista(data_dir: str, shots: int | None = 0, seed: int = 0) -> list[Example]:
  _zero_shot("mathvista", shots)
  root = benchmark_dir(data_dir, "mathvista", MATHVISTA_LAYOUT)
  if os.path.isfile(os.path.join(root, "testmini.json")):
    return _mathvista_json(os.path.join(root, "testmini.json"))
  files = sorted(glob.glob(os.path.join(glob.escape(root), "**", "testmini-*.parquet"), recursive=True))
  if not files:
    raise FileNotFoundError(f"benchmark 'mathvista': neither {os.path.join(root, 'testmini.json')} nor any "
                            f"testmini-*.parquet under {root}; expected {MATHVISTA_LAYOUT}")
  out, cache = [], image_cache_dir(root, "mathvista")
  for path, rows in zip(files, _parquet_rows([(path, ("pid", "decoded_image") + _MV_KEYS) for path in files],
                                             "mathvista")):
    out += _with_images([(_mathvista_example(row["pid"], row, f"{path} row {i} (pid {row['pid']})"),
                          [row["decoded_image"]], os.path.dirname(path)) for i, row in enumerate(rows)], cache)
  return out


def extract_mathvista(generation: str, example: Example) -> str:
  """Multiple choice: the chosen option's text (a letter, else the option quoted last, else, as MathVista does,
  the option closest in edit distance to the answer line). Free form: by the gold's shape, the final number,
  the last [...] list, or the answer line."""
  gold = example.golds[0]
  if example.choices:
    letter = choice_letter(generation, example)
    if letter:
      return example.choices[ord(letter) - ord("A")]
    line = short_answer(generation)
    # min keeps the first of equally close options
    return min(example.choices, key=lambda o: M.levenshtein(line, o)) if line else ""
  if _INT.match(gold) or _FLOAT.match(gold):
    return E.final_number(generation) or ""
  lists = _LIST.findall(generation) if gold.startswith("[") else []
  return lists[-1] if lists else short_answer(generation)


def _list_items(text: str) -> list[str]:
  items = [i.strip().strip("'\"") for i in text.strip().strip("[]").split(",") if i.strip()]
  return [E.normalize_number(i) if _INT.match(i) or _FLOAT.match(i) else i.lower() for i in items]


def mathvista_correct(answer: str, gold: str, choices: Sequence[str] = ()) -> bool:
  """MathVista's comparison after its normalisation: the option text for multiple choice; integers as numbers;
  floats rounded to the gold's decimals (its `precision`); lists item by item; text up to case, punctuation and
  articles."""
  if not answer.strip():
    return False  # a failed extraction; normalize_number would read "" as "0"
  if choices:
    return answer.strip() == gold
  if _INT.match(gold):
    return E.number_equal(answer, gold)
  m = _FLOAT.match(gold)
  if m:
    try:
      return round(float(E.normalize_number(answer)), len(m.group(1))) == round(float(gold), len(m.group(1)))
    except ValueError:
      return False
  if gold.startswith("["):
    return _list_items(answer) == _list_items(gold)
  return bool(M.exact_match(answer, gold))


def score_mathvista(answer: str, example: Example) -> float:
  return float(mathvista_correct(answer, example.golds[0], example.choices))


# ---- the families -----------------------------------------------------------------------------------------------

BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark(name="chartqa", mode="generate", metric="relaxed_accuracy", read=read_chartqa, layout=CHARTQA_LAYOUT,
              extract=short_answer, score=score_chartqa, aggregate="macro", multimodal=True),
    Benchmark(name="docvqa", mode="generate", metric="anls", read=read_docvqa, layout=DOCVQA_LAYOUT,
              extract=short_answer, score=score_docvqa, multimodal=True),
    Benchmark(name="mmmu", mode="generate", metric="accuracy", read=read_mmmu, layout=MMMU_LAYOUT,
              extract=extract_mmmu, score=score_mmmu, multimodal=True),
    # macro over the two settings: Llama 4 reports the mean of the standard and vision accuracies
    Benchmark(name="mmmu_pro", mode="generate", metric="accuracy", read=read_mmmu_pro, layout=MMMU_PRO_LAYOUT,
              max_new_tokens=64, extract=extract_mmmu, score=score_mmmu, aggregate="macro", multimodal=True),
    # the query asks for the final value "at the end", so the model may reason first: no blank-line stop
    Benchmark(name="mathvista", mode="generate", metric="accuracy", read=read_mathvista, layout=MATHVISTA_LAYOUT,
              max_new_tokens=256, stop=(), extract=extract_mathvista, score=score_mathvista, multimodal=True),
)
