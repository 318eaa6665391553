"""Image benchmarks (llama4_jax/eval/vision_benchmarks.py) on the sample files in the released formats: prompts,
image placeholders, extraction and scoring per family, the parquet image cache, and errors that name the file,
key or value at fault."""

import dataclasses
import json
import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llama4_jax.eval import vision_benchmarks as V
from llama4_jax.eval.suite import SAMPLE_DIR

BENCH = {b.name: b for b in V.BENCHMARKS}
COUNTS = {"chartqa": 4, "docvqa": 3, "mmmu": 4, "mmmu_pro": 3, "mathvista": 4}


def _read(name, data_dir=SAMPLE_DIR):
  return BENCH[name].read(str(data_dir), shots=0, seed=0)


def _by_id(name, data_dir=SAMPLE_DIR):
  return {e.id: e for e in _read(name, data_dir)}


def _copy(name, tmp_path):
  shutil.copytree(os.path.join(SAMPLE_DIR, name), tmp_path / name)
  return tmp_path


def _run(name, example, generation):
  bench = BENCH[name]
  return bench.score(bench.extract(generation, example), example)


def test_the_five_families():
  assert [b.name for b in V.BENCHMARKS] == ["chartqa", "docvqa", "mmmu", "mmmu_pro", "mathvista"]
  assert all(b.multimodal and b.mode == "generate" for b in V.BENCHMARKS)
  assert {b.name: b.metric for b in V.BENCHMARKS} == {"chartqa": "relaxed_accuracy", "docvqa": "anls",
                                                      "mmmu": "accuracy", "mmmu_pro": "accuracy",
                                                      "mathvista": "accuracy"}
  assert BENCH["chartqa"].aggregate == "macro" and BENCH["mmmu"].aggregate == "mean"


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_samples_read_with_one_existing_image_per_placeholder(name):
  examples = _read(name)
  assert len(examples) == COUNTS[name]
  assert len({e.id for e in examples}) == len(examples)
  for e in examples:
    assert e.golds and e.images and len(e.images) == e.prompt.count(V.IMAGE)
    assert all(os.path.isfile(p) for p in e.images)
    assert "<image " not in e.prompt


def test_chartqa_prompt_groups_and_relaxed_accuracy():
  ex = _by_id("chartqa")
  assert ex["human/1"].prompt == ("<|image|>Answer the question with a single word or number.\n"
                                  "Question: How many millimetres of rain fell in the wettest month?\nAnswer:")
  assert ex["human/1"].images[0].endswith(os.path.join("chartqa", "test", "png", "rain_line.png"))
  assert [e.group for e in ex.values()] == ["human", "human", "augmented", "augmented"]
  assert _run("chartqa", ex["human/1"], " 41.\nbecause the peak is in March") == 1.0  # within 5% of 40
  assert _run("chartqa", ex["human/1"], " 43") == 0.0
  assert _run("chartqa", ex["human/0"], " pears.") == 1.0
  assert _run("chartqa", ex["human/0"], "Answer: Plums") == 0.0


def test_docvqa_prompt_and_anls():
  ex = _by_id("docvqa")
  assert ex["90003"].prompt == ("<|image|>Answer the question using a single word or phrase from the document.\n"
                                "Question: What is the total amount on the receipt?\nAnswer:")
  assert ex["90003"].golds == ("12.50", "$12.50")
  assert ex["90003"].images[0].endswith(os.path.join("docvqa", "val", "documents", "smpl0002_1.png"))
  assert _run("docvqa", ex["90003"], " $12.50") == 1.0
  assert _run("docvqa", ex["90003"], " 12.5") == pytest.approx(0.8)  # one edit in five characters
  assert _run("docvqa", ex["90001"], " Bob") == 0.0  # below the 0.5 threshold


def test_mmmu_prompts_inline_images_in_order():
  ex = _by_id("mmmu")
  math = ex["validation_Math_1"]
  assert math.prompt == ("<|image|> shows a triangle. What is the sum of the interior angles of the shape in "
                         "<|image|>?\nA. 90 degrees\nB. 180 degrees\nC. 270 degrees\nD. 360 degrees\n"
                         "Answer with the option's letter from the given choices directly.")
  assert len(math.images) == 2 and math.images[0] == math.images[1]  # referenced twice, given twice
  physics = ex["validation_Physics_1"]  # images in the options too, in order of appearance
  assert physics.prompt.endswith("<|image|>\nA. <|image|>\nB. <|image|>\nC. Neither\n"
                                 "Answer with the option's letter from the given choices directly.")
  assert len(set(physics.images)) == 3
  assert ex["validation_Math_2"].prompt.endswith("?\nAnswer the question using a single word or phrase.")
  assert ex["validation_Math_2"].golds == ("3/4", "0.75")  # the list literal gold
  assert {e.group for e in ex.values()} == {"Math", "Physics"}


def test_mmmu_extract_and_score():
  ex = _by_id("mmmu")
  assert _run("mmmu", ex["validation_Math_1"], "B") == 1.0
  assert _run("mmmu", ex["validation_Math_1"], "The answer is (C).") == 0.0
  assert _run("mmmu", ex["validation_Math_1"], "It is 180 degrees") == 1.0  # the option quoted by its text
  assert _run("mmmu", ex["validation_Physics_1"], "Neither") == 0.0
  assert _run("mmmu", ex["validation_Math_2"], "0.75") == 1.0
  assert _run("mmmu", ex["validation_Math_2"], "The tangent is 3/4.") == 1.0
  assert _run("mmmu", ex["validation_Math_2"], "4/3") == 0.0
  assert _run("mmmu", ex["validation_Physics_2"], "It falls 20 m") == 1.0
  assert _run("mmmu", ex["validation_Physics_2"], "200") == 0.0


def test_mmmu_open_rule():
  assert V.mmmu_open_match("so the result is 3.4291", ["3.429"])  # numbers compared at 2 decimals
  assert not V.mmmu_open_match("3.44", ["3.429"])
  assert V.mmmu_open_match("1,200", ["1200"])
  assert V.mmmu_open_match("the answer is b", ["B"])
  assert not V.mmmu_open_match("above", ["b"])  # a one-letter gold does not match inside a word
  assert V.mmmu_open_match("x = 7\n", ["7"])  # "=" counts on the last line


def test_mmmu_pro_settings_and_ten_options():
  ex = _by_id("mmmu_pro")
  std = ex["standard/test_Economics_1"]
  assert std.group == "standard" and len(std.choices) == 10
  assert std.prompt == ("How many bars does the chart in <|image|> have?\n"
                        + "".join(f"{l}. {i + 1}\n" for i, l in enumerate("ABCDEFGHIJ"))
                        + "Answer with the option's letter from the given choices directly.")
  vision = ex["vision/test_Economics_1"]
  assert vision.group == "vision" and vision.prompt == V.IMAGE + V.PRO_VISION_INSTRUCTION
  assert _run("mmmu_pro", vision, "The question asks for bars.\nAnswer: C") == 1.0
  assert _run("mmmu_pro", std, "J") == 0.0
  assert _run("mmmu_pro", ex["standard/test_Geography_1"], "(B) circle") == 1.0
  assert BENCH["mmmu_pro"].aggregate == "macro"  # the mean of the two settings


def test_mathvista_prompt_groups_and_scores():
  ex = _by_id("mathvista")
  assert ex["2"].prompt == ("<|image|>Hint: Please answer the question requiring an integer answer and provide the "
                            "final value, e.g., 1, 2, 3, at the end.\nQuestion: What is the sum of the three bars?")
  assert ex["2"].group == "figure question answering" and ex["1"].group == "geometry problem solving"
  mc, integer, flt = ex["1"], ex["2"], ex["3"]
  assert _run("mathvista", mc, "Each angle is 60 degrees, so the answer is (C).") == 1.0
  assert _run("mathvista", mc, "B") == 0.0
  assert _run("mathvista", mc, "60°") == 1.0  # the option text, no letter
  assert _run("mathvista", integer, "3 + 5 + 2 = 10. The answer is 10") == 1.0
  assert _run("mathvista", integer, "10.5") == 0.0
  assert flt.golds == ("22.50",)  # written with its precision (2 decimals)
  for generation, correct in (("22.5", 1.0), ("The mean is 22.504", 1.0), ("22.496", 1.0), ("22.51", 0.0),
                              ("23", 0.0), ("no idea", 0.0)):
    assert _run("mathvista", flt, generation) == correct, generation


def test_mathvista_query_rebuilt_when_missing(tmp_path):
  _copy("mathvista", tmp_path)
  path = tmp_path / "mathvista" / "testmini.json"
  records = json.loads(path.read_text())
  for r in records.values():
    del r["query"]
  path.write_text(json.dumps(records))
  assert [e.prompt for e in _read("mathvista", tmp_path)] == [e.prompt for e in _read("mathvista")]


def test_mathvista_parquet_export(tmp_path):
  records = json.loads(open(os.path.join(SAMPLE_DIR, "mathvista", "testmini.json")).read())
  rows = []
  for r in records.values():
    data = open(os.path.join(SAMPLE_DIR, "mathvista", r["image"]), "rb").read()
    rows.append({**r, "decoded_image": {"bytes": data, "path": r["image"]}})
  (tmp_path / "mathvista" / "data").mkdir(parents=True)
  pq.write_table(pa.Table.from_pylist(rows), tmp_path / "mathvista" / "data" / "testmini-00000-of-00001.parquet")
  got, want = _read("mathvista", tmp_path), _read("mathvista")
  assert [(e.id, e.prompt, e.golds, e.choices, e.group) for e in got] == \
      [(e.id, e.prompt, e.golds, e.choices, e.group) for e in want]
  for g, w in zip(got, want):
    assert os.path.dirname(g.images[0]) == str(tmp_path / "mathvista" / ".images")
    assert open(g.images[0], "rb").read() == open(w.images[0], "rb").read()


def test_parquet_images_are_written_once_and_atomically(tmp_path, monkeypatch):
  _copy("mmmu", tmp_path)
  cache = tmp_path / "mmmu" / ".images"
  first = _read("mmmu", tmp_path)
  files = sorted(os.listdir(cache))
  assert len(files) == 5 and not any(f.startswith(".tmp-") for f in files)  # the triangle is stored once
  assert all(os.path.dirname(p) == str(cache) for e in first for p in e.images)
  for f in files:
    os.utime(cache / f, (1_000_000, 1_000_000))
  replaced = []
  monkeypatch.setattr(V.os, "replace", lambda a, b: replaced.append((a, b)))
  second = _read("mmmu", tmp_path)
  assert replaced == [] and [e.images for e in second] == [e.images for e in first]
  assert all(os.path.getmtime(cache / f) == 1_000_000 for f in files)
  # a write that fails before its rename leaves neither a partial image nor its temporary file
  for f in files:
    os.remove(cache / f)

  def broken(a, b):
    raise OSError("disk full")
  monkeypatch.setattr(V.os, "replace", broken)
  with pytest.raises(OSError, match="disk full"):
    _read("mmmu", tmp_path)
  assert os.listdir(cache) == []


def test_cache_falls_back_to_temp_dir(tmp_path, monkeypatch):
  assert not any(p.startswith(SAMPLE_DIR) for e in _read("mmmu") for p in e.images)  # never in the source tree
  _copy("mmmu_pro", tmp_path)
  monkeypatch.setattr(V.tempfile, "tempdir", str(tmp_path / "tmp"))
  monkeypatch.setattr(V.os, "access", lambda path, mode: False)  # a read-only data directory
  for e in _read("mmmu_pro", tmp_path):
    assert all(p.startswith(str(tmp_path / "tmp" / "llama4_jax_eval_images" / "mmmu_pro")) for p in e.images)


def test_missing_directories_and_files_are_named(tmp_path):
  for name in COUNTS:
    with pytest.raises(FileNotFoundError, match=str(tmp_path / name)):
      _read(name, tmp_path)
  _copy("chartqa", tmp_path)
  os.remove(tmp_path / "chartqa" / "test" / "test_augmented.json")
  with pytest.raises(FileNotFoundError, match="test_augmented.json"):
    _read("chartqa", tmp_path)
  _copy("mathvista", tmp_path)
  os.remove(tmp_path / "mathvista" / "images" / "3.png")
  with pytest.raises(FileNotFoundError, match=r"pid 3: image .*3\.png"):
    _read("mathvista", tmp_path)
  with pytest.raises(ValueError, match="0-shot"):
    BENCH["mmmu"].read(SAMPLE_DIR, shots=5, seed=0)


def test_bad_records_are_named(tmp_path):
  _copy("chartqa", tmp_path)
  path = tmp_path / "chartqa" / "test" / "test_human.json"
  path.write_text(json.dumps([{"imgname": "fruit_bars.png", "query": "q?"}]))
  with pytest.raises(ValueError, match=r"test_human.json record 0: missing key\(s\) \['label'\]"):
    _read("chartqa", tmp_path)
  _copy("docvqa", tmp_path)
  (tmp_path / "docvqa" / "test").mkdir()
  os.rename(tmp_path / "docvqa" / "val" / "val_v1.0.json", tmp_path / "docvqa" / "test" / "test_v1.0.json")
  with pytest.raises(ValueError, match=r"test_v1.0.json.*no answers"):
    _read("docvqa", tmp_path)


def _rewrite_parquet(path, column, value):
  table = pq.read_table(path)
  pq.write_table(table.set_column(table.schema.get_field_index(column), column,
                                  pa.array([value] * table.num_rows, table.schema.field(column).type)), path)


def test_bad_parquet_columns_and_values_are_named(tmp_path):
  _copy("mmmu", tmp_path)
  math = tmp_path / "mmmu" / "Math" / "validation-00000-of-00001.parquet"
  _rewrite_parquet(math, "options", "__import__('os').getcwd()")  # parsed as a literal, never evaluated
  with pytest.raises(ValueError, match=r"validation_Math_1\): options .* is not a Python list literal"):
    _read("mmmu", tmp_path)
  pq.write_table(pq.read_table(math).drop_columns(["question_type"]), math)
  with pytest.raises(ValueError, match=r"Math/validation-00000-of-00001.parquet lacks column\(s\) \['question_type'\]"):
    _read("mmmu", tmp_path)
  assert not (tmp_path / "mmmu" / ".images").exists() or os.listdir(tmp_path / "mmmu" / ".images") == []
  _copy("mmmu_pro", tmp_path)
  _rewrite_parquet(tmp_path / "mmmu_pro" / "vision" / "test-00000-of-00001.parquet", "answer", "K")
  with pytest.raises(ValueError, match=r"answer 'K' is not one of the option letters ABCDEFGHIJ"):
    _read("mmmu_pro", tmp_path)


def test_answer_rules_edge_cases():
  ex = V.Example(id="x", prompt="", golds=("B",), choices=("0", "10", "5"))
  assert V.choice_letter("I think 10", ex) == "B"  # the option "0" inside "10" is not the answer
  assert V.choice_letter("none of these", ex) == ""
  assert not V.mathvista_correct("", "0")  # a failed extraction is wrong, even against a gold of 0
  assert V.mathvista_correct("[1, 2.50, 'a']", "[1, 2.5, 'A']")  # lists item by item
  assert not V.mathvista_correct("[1, 2]", "[2, 1]")
  assert V.short_answer("**Answer: Forty.**\nmore") == "Forty"


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_scoring_needs_only_the_example_fields(name):
  """The seqio Task carries examples as JSON: everything extract/score need survives the round trip."""
  for e in _read(name):
    d = json.loads(json.dumps(dataclasses.asdict(e)))
    back = V.Example(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
    assert back == e
    assert _run(name, back, e.golds[0]) == _run(name, e, e.golds[0]) > 0  # the gold itself scores
