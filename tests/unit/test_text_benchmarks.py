"""The text benchmark families (llama4_jax/eval/text_benchmarks.py) on the invented sample data sets of
llama4_jax/eval/samples/: examples read, full prompts (few-shot included), golds and groups, extraction and scoring
of right and wrong generations (code through the sandbox), the safe unpickler, and errors that name the culprit."""

import base64
import json
import os
import pickle
import shutil
import zlib

import pytest

from llama4_jax.eval import code_cases
from llama4_jax.eval import text_benchmarks as T
from llama4_jax.eval.suite import SAMPLE_DIR, Example

BENCH = {b.name: b for b in T.BENCHMARKS}


def read(name, shots=None, seed=0, data_dir=SAMPLE_DIR, **kwargs):
  return BENCH[name].read(data_dir, shots=shots, seed=seed, **kwargs)


def answer_and_score(name, generation, example):
  bench = BENCH[name]
  return bench.score(bench.extract(generation, example), example)


@pytest.fixture
def copy_of(tmp_path):
  """A writable copy of one family's sample directory: copy_of(name) -> the data_dir holding it."""
  def copy(name):
    shutil.copytree(os.path.join(SAMPLE_DIR, name), tmp_path / name)
    return str(tmp_path)
  return copy


def test_families_and_their_settings():
  assert list(BENCH) == ["mmlu", "mmlu_pro", "math", "mbpp", "tydiqa", "livecodebench", "gpqa", "mgsm", "mtob"]
  assert {n: (b.mode, b.metric, b.aggregate) for n, b in BENCH.items()} == {
      "mmlu": ("loglik", "macro_accuracy", "macro"), "mmlu_pro": ("generate", "accuracy", "mean"),
      "math": ("generate", "exact_match", "mean"), "mbpp": ("code", "pass@1", "mean"),
      "tydiqa": ("generate", "f1", "mean"), "livecodebench": ("code", "pass@1", "mean"),
      "gpqa": ("generate", "accuracy", "mean"), "mgsm": ("generate", "exact_match", "macro"),
      "mtob": ("generate", "chrf", "corpus_chrf")}
  assert {n: b.default_shots for n, b in BENCH.items() if b.default_shots} == {
      "mmlu": 5, "mmlu_pro": 5, "math": 4, "mbpp": 3, "tydiqa": 1}


# ---- MMLU / MMLU-Pro ----------------------------------------------------------------------------------------------

def test_mmlu_reads_subjects_with_dev_shots():
  examples = read("mmlu")
  assert [e.group for e in examples] == ["elementary_mathematics"] * 3 + ["high_school_physics"] * 3
  assert examples[0].prompt.count("\nAnswer:") == 6  # five dev exemplars and the question
  phys = read("mmlu", shots=2)[5]
  assert phys.prompt == (
      "The following are multiple choice questions (with answers) about high school physics.\n\n"
      "What is the SI unit of force?\nA. joule\nB. newton\nC. watt\nD. pascal\nAnswer: B\n\n"
      "A car moves 100 m in 5 s at constant speed. Its speed is\nA. 5 m/s\nB. 20 m/s\nC. 50 m/s\nD. 500 m/s\n"
      "Answer: B\n\n"
      "A 2 kg mass accelerates at 3 m/s^2. The net force is\nA. 6 N\nB. 1.5 N\nC. 5 N\nD. 9 N\nAnswer:")
  assert (phys.golds, phys.choices, phys.answer_index, phys.id) == (("A",), (" A", " B", " C", " D"), 0,
                                                                     "high_school_physics/2")
  assert read("mmlu", shots=0)[0].prompt.endswith("elementary mathematics.\n\nWhat is 9 - 4?\nA. 3\nB. 4\nC. 5\nD. 6"
                                                  "\nAnswer:")


def test_mmlu_pro_cot_prompt_from_validation_of_the_category():
  examples = read("mmlu_pro")
  assert [e.group for e in examples] == ["math", "math", "math", "physics"]
  assert examples[3].prompt.count("Question:\n") == 6
  first = read("mmlu_pro", shots=1)[0]
  assert first.prompt == (
      "The following are multiple choice questions (with answers) about math. Think step by step and then finish "
      "your answer with \"the answer is (X)\" where X is the correct letter choice.\n\n"
      "Question:\nWhat is 2 + 2?\nOptions:\nA. 3\nB. 4\nC. 5\nD. 6\n"
      "Answer: Let's think step by step. Two plus two is four. The answer is (B).\n\n"
      "Question:\nWhat is 6 * 7?\nOptions:\nA. 36\nB. 42\nC. 48\nD. 49\nE. 54\nF. 56\n"  # the N/A padding dropped
      "Answer: Let's think step by step.")
  assert (first.id, first.golds, first.choices, first.answer_index) == ("101", ("B",), tuple("ABCDEF"), 1)
  assert answer_and_score("mmlu_pro", "6 * 7 = 42. The answer is (B).", first) == 1.0
  assert answer_and_score("mmlu_pro", "6 * 7 = 48. The answer is (C).", first) == 0.0
  assert answer_and_score("mmlu_pro", "I am not sure.", first) == 0.0


def test_mmlu_pro_reads_the_parquet_export(tmp_path):
  pa = pytest.importorskip("pyarrow")
  pq = pytest.importorskip("pyarrow.parquet")
  (tmp_path / "mmlu_pro" / "data").mkdir(parents=True)
  for split in ("test", "validation"):
    with open(os.path.join(SAMPLE_DIR, "mmlu_pro", f"{split}.jsonl")) as f:
      rows = [json.loads(line) for line in f]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "mmlu_pro" / "data" / f"{split}-00000-of-00001.parquet")
  assert [e.prompt for e in read("mmlu_pro", data_dir=str(tmp_path))] == [e.prompt for e in read("mmlu_pro")]


# ---- MATH ---------------------------------------------------------------------------------------------------------

def test_math_minerva_prompt_golds_and_types():
  examples = read("math")
  assert [(e.id, e.golds[0], e.group) for e in examples] == [
      ("algebra/1", "6", "Algebra"), ("algebra/12", "3", "Algebra"), ("number_theory/3", "6", "Number Theory"),
      ("number_theory/7", "\\frac{1}{3}", "Number Theory")]
  assert examples[0].prompt.count("Problem:\n") == 5
  assert read("math", shots=1)[3].prompt == (
      "Problem:\nWhat is the sum of all integers $x$ with $|x - 3| \\le 2$?\n\n"
      "Solution: The inequality means $1 \\le x \\le 5$, so the integers are $1, 2, 3, 4, 5$ and their sum is $15$.\n"
      "Final Answer: The final answer is $15$. I hope it is correct.\n\n"
      "Problem:\nExpress $0.\\overline{3}$ as a common fraction.\n\nSolution:")


def test_math_extract_and_score():
  third = read("math", shots=0)[3]
  right = "Let x = 0.333..., so 9x = 3.\nFinal Answer: The final answer is $\\frac13$. I hope it is correct."
  assert T.math_answer(right) == "\\frac13"
  assert answer_and_score("math", right, third) == 1.0
  assert answer_and_score("math", "Final Answer: The final answer is $\\frac{1}{9}$. I hope it is correct.",
                          third) == 0.0
  assert T.math_answer("so $x = \\boxed{1/3}$ then") == "1/3"  # no "final answer": the last \boxed{}
  assert answer_and_score("math", "so the answer is $1/3$", third) == 1.0  # else the last $...$
  assert T.math_answer("The final answer is 12.") == "12"
  assert T.math_answer("no answer here") is None
  assert answer_and_score("math", "no answer here", third) == 0.0


# ---- MBPP ---------------------------------------------------------------------------------------------------------

def test_mbpp_prompt_split_and_reference_programs_pass():
  examples = read("mbpp")
  assert [e.id for e in examples] == ["mbpp/11", "mbpp/12", "mbpp/13"]  # 2-4 are shots, 520 is validation
  assert examples[0].prompt.count("[BEGIN]") == 4
  first = read("mbpp", shots=1)[0]
  assert first.prompt == (
      "You are an expert Python programmer, and here is your task: Write a function to return the larger of two "
      "numbers. Your code should pass these tests:\n\n"
      "assert larger(3, 5) == 5\nassert larger(7, 2) == 7\nassert larger(4, 4) == 4\n[BEGIN]\n"
      "def larger(a, b):\n    return a if a >= b else b\n[DONE]\n"
      "You are an expert Python programmer, and here is your task: Write a function to sum the digits of a "
      "non-negative integer. Your code should pass these tests:\n\n"
      "assert digit_sum(123) == 6\nassert digit_sum(0) == 0\nassert digit_sum(9999) == 36\n[BEGIN]\n")
  assert examples[2].setup == "import math" and len(examples[2].tests) == 3
  for example in examples:  # the reference code, written as the model would continue, passes its tests
    assert answer_and_score("mbpp", example.golds[0] + "\n[DONE]\nYou are", example) == 1.0
  assert answer_and_score("mbpp", "def digit_sum(n):\n    return n % 10\n[DONE]", examples[0]) == 0.0
  fenced = "```python\ndef digit_sum(n):\n    return sum(map(int, str(n)))\n```\n[DONE]"
  assert T.mbpp_program(fenced) == "def digit_sum(n):\n    return sum(map(int, str(n)))"
  assert answer_and_score("mbpp", fenced, examples[0]) == 1.0


# ---- TyDiQA -------------------------------------------------------------------------------------------------------

def test_tydiqa_one_shot_in_the_same_language(copy_of):
  examples = read("tydiqa")
  assert [e.group for e in examples] == ["english", "english", "swahili", "swahili"]
  assert examples[2].prompt == (
      "Context: Soko la Jumamosi hufunguliwa saa mbili asubuhi.\nQuestion: Soko hufunguliwa saa ngapi?\n"
      "Answer: saa mbili asubuhi\n\n"
      "Context: Mto Baraka una urefu wa kilomita 120 na unapita katika kijiji cha Mawe.\n"
      "Question: Mto Baraka una urefu gani?\nAnswer:")
  assert examples[1].golds == ("green", "painted green")
  assert answer_and_score("tydiqa", " Painted green.\nQuestion: next", examples[1]) == 1.0
  assert answer_and_score("tydiqa", "blue", examples[1]) == 0.0
  assert answer_and_score("tydiqa", "kilomita 80", examples[2]) == pytest.approx(0.5)
  data_dir = copy_of("tydiqa")
  os.remove(os.path.join(data_dir, "tydiqa", "tydiqa-goldp-v1.1-train.json"))
  with pytest.warns(UserWarning, match="train.json not found"):
    zero = read("tydiqa", data_dir=data_dir)
  assert zero[0].prompt.startswith("Context: Port Ellery")


# ---- LiveCodeBench ------------------------------------------------------------------------------------------------

SOLUTIONS = {
    "s001": "a, b = map(int, input().split())\nprint(a + b)",
    "s002": "n = int(input())\nprint(sum(1 for x in map(int, input().split()) if x % 2 == 0))",
    "l003": "class Solution:\n    def maxPairSum(self, nums: List[int]) -> int:\n        s = sorted(nums)\n"
            "        return s[-1] + s[-2]",
}


def test_livecodebench_prompts_and_decoded_cases():
  examples = {e.id: e for e in read("livecodebench")}
  assert list(examples) == ["s001", "s002", "l003"]
  assert [e.group for e in examples.values()] == ["easy", "medium", "easy"]
  assert examples["s001"].prompt == (
      "You are an expert Python programmer. You will be given a problem statement and will write a correct Python "
      "program that meets the specification and passes all tests.\n\n"
      "### Question:\nRead two integers A and B on one line and print A + B.\n\n"
      "### Format: Read the input from stdin, solve the problem and write the answer to stdout (do not just test on "
      "the sample inputs). Put your code between the delimiters as follows, so that the Python program reads the "
      "input, runs the algorithm and writes the output when it runs.\n```python\n# YOUR CODE HERE\n```\n\n"
      "### Answer: (use the provided format with backticks)\n\n")
  assert examples["s001"].io_cases == (("1 2\n", "3\n"), ("10 -4\n", "6\n"))
  assert examples["s002"].io_cases == (("3\n1 2 4\n", "2\n"), ("5\n1 3 5 7 9\n", "0\n"), ("1\n8\n", "1\n"))
  l003 = examples["l003"]
  assert not l003.io_cases and len(l003.tests) == 1
  assert "```python\nclass Solution:\n    def maxPairSum(self, nums: List[int]) -> int:\n        \n```" in l003.prompt
  assert [e.id for e in read("livecodebench", start_date="2024-10-01", end_date="2025-01-01")] == ["s002"]


def test_livecodebench_reference_solutions_pass_and_wrong_ones_fail():
  for example in read("livecodebench"):
    generation = f"Here is my solution.\n```python\n{SOLUTIONS[example.id]}\n```\nDone."
    assert answer_and_score("livecodebench", generation, example) == 1.0, example.id
  s002, l003 = read("livecodebench")[1:]
  # right on the public case, wrong on a private one (odd numbers counted)
  wrong = "```python\nn = int(input())\nxs = list(map(int, input().split()))\nprint(min(2, len(xs)))\n```"
  assert answer_and_score("livecodebench", wrong, s002) == 0.0
  doubled = SOLUTIONS["l003"].replace("s[-1] + s[-2]", "2 * s[-1]")
  assert answer_and_score("livecodebench", f"```python\n{doubled}\n```", l003) == 0.0
  assert answer_and_score("livecodebench", "```python\nclass Solution: pass\n```", l003) == 0.0
  assert BENCH["livecodebench"].score("", s002) == 0.0 and BENCH["mbpp"].score("  \n", read("mbpp")[0]) == 0.0


class _Exploit:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


def test_test_case_unpickler_refuses_code(tmp_path):
  marker = tmp_path / "pwned"
  evil = base64.b64encode(zlib.compress(pickle.dumps(_Exploit(str(marker))))).decode()
  with pytest.raises(ValueError, match=r"private_test_cases: unsafe or broken pickle: refusing to load "
                                       r"(posix|os|nt)\.system"):
    code_cases.decode_test_cases(evil, "x.jsonl line 3 private_test_cases")
  assert not marker.exists()
  # a set or a tuple needs no global (opcodes build them) but is not plain JSON data either
  set_pickle = base64.b64encode(zlib.compress(pickle.dumps({1, 2}))).decode()
  with pytest.raises(ValueError, match="here: the pickle holds set data"):
    code_cases.decode_test_cases(set_pickle, "here")
  plain = base64.b64encode(zlib.compress(pickle.dumps('[{"input": "1", "output": "2", "testtype": "stdin"}]')))
  assert code_cases.decode_test_cases(plain.decode(), "here") == [{"input": "1", "output": "2", "testtype": "stdin"}]
  with pytest.raises(ValueError, match="here: neither JSON nor base64"):
    code_cases.decode_test_cases("not base64 at all!", "here")
  with pytest.raises(ValueError, match=r"here: test case 0 lacks \['testtype'\]"):
    code_cases.decode_test_cases('[{"input": "1", "output": "2"}]', "here")


# ---- GPQA ---------------------------------------------------------------------------------------------------------

def test_gpqa_shuffled_choices_and_cot_prompt():
  examples = read("gpqa")
  assert [(e.id, e.group) for e in examples] == [("recA1", "Chemistry"), ("recB2", "Physics"), ("recC3", "Biology")]
  first = examples[0]
  assert first.prompt == (
      "What is the correct answer to this question: Which gas makes up most of Earth's atmosphere by volume?\n\n"
      "Choices:\n(A) Oxygen\n(B) Nitrogen\n(C) Carbon dioxide\n(D) Argon\n\n"
      "Format your response as follows: \"The correct answer is (insert answer here)\"\nLet's think step by step:")
  assert (first.golds, first.answer_index, first.choices) == (("B",), 1, ("A", "B", "C", "D"))
  for example in examples:  # the gold letter always marks the correct answer's text
    line = f"({example.golds[0]}) "
    correct = example.prompt.split(line)[1].split("\n")[0]
    assert correct in ("Nitrogen", "3x^2", "Mitochondrion")
  # answers are stripped of the stray spaces and newlines of the CSV
  assert ") Golgi apparatus\n" in examples[2].prompt and "\n\n(" not in examples[2].prompt
  assert [e.prompt for e in read("gpqa", seed=0)] == [e.prompt for e in examples]  # deterministic
  assert [e.prompt for e in read("gpqa", seed=1)] != [e.prompt for e in examples]
  assert answer_and_score("gpqa", "Air is 78% nitrogen.\nThe correct answer is (B)", first) == 1.0
  assert answer_and_score("gpqa", "The correct answer is (A)", first) == 0.0


# ---- MGSM ---------------------------------------------------------------------------------------------------------

def test_mgsm_native_cues_few_shot_and_numbers():
  examples = read("mgsm")
  assert [(e.group, e.golds[0]) for e in examples] == [("en", "7"), ("en", "180"), ("en", "26"), ("es", "8"),
                                                       ("es", "60"), ("es", "1000")]
  assert examples[4].prompt == "Pregunta: Un libro cuesta 15 euros. ¿Cuánto cuestan 4 libros en euros?\n" \
                               "Respuesta paso a paso:"
  two_shot = read("mgsm", shots=2)[0]
  assert two_shot.prompt == (
      "Question: Sam has 5 apples and buys 3 more. How many apples does he have?\n"
      "Step-by-Step Answer: Sam starts with 5 apples. He buys 3 more, so 5 + 3 = 8. The answer is 8.\n\n"
      "Question: A box holds 6 eggs. How many eggs are in 4 boxes?\n"
      "Step-by-Step Answer: Each box holds 6 eggs, and 4 boxes hold 4 * 6 = 24 eggs. The answer is 24.\n\n"
      "Question: Mia has 3 boxes with 4 pencils each. She gives away 5 pencils. How many pencils does she have "
      "left?\nStep-by-Step Answer:")
  assert answer_and_score("mgsm", "Quedan 1200 - 200 personas. La respuesta es 1,000.", examples[5]) == 1.0
  assert answer_and_score("mgsm", "3 * 4 = 12 pencils, 12 - 5 = 7. The answer is 7.", examples[0]) == 1.0
  assert answer_and_score("mgsm", "3 * 4 = 12. The answer is 12.", examples[0]) == 0.0
  zero = Example(id="x", prompt="p", golds=("0",), group="en")
  assert BENCH["mgsm"].score("", zero) == 0.0 and BENCH["mgsm"].score("0", zero) == 1.0  # "" is no answer, not 0
  with pytest.raises(ValueError, match=r"mgsm_en_exemplars.tsv: 2 exemplars, fewer than shots=3"):
    read("mgsm", shots=3)


# ---- MTOB ---------------------------------------------------------------------------------------------------------

def test_mtob_directions_prompts_and_chrf():
  examples = read("mtob")
  assert [e.group for e in examples] == ["ek"] * 3 + ["ke"] * 3  # the canary entries are skipped
  ke = examples[3]
  assert ke.prompt == ("Translate the following sentence from Kalamang to English.\nKalamang: mira kuna tema pasak\n"
                       "English:")
  assert ke.golds == ("The boy sees the dog.",)
  assert answer_and_score("mtob", " The boy sees the dog.\nKalamang: ...", ke) == pytest.approx(100.0)
  assert answer_and_score("mtob", "A cat sleeps.", ke) < 30.0


# ---- errors -------------------------------------------------------------------------------------------------------

def test_missing_directory_and_files_are_named(tmp_path, copy_of):
  for name in BENCH:
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / name} is not a directory; expected"):
      read(name, data_dir=str(tmp_path))
  data_dir = copy_of("mmlu")
  os.remove(os.path.join(data_dir, "mmlu", "dev", "high_school_physics_dev.csv"))
  with pytest.raises(FileNotFoundError, match="dev/high_school_physics_dev.csv does not exist"):
    read("mmlu", data_dir=data_dir)
  assert len(read("mmlu", shots=0, data_dir=data_dir)) == 6  # 0-shot needs no dev file
  data_dir = copy_of("mbpp")
  os.remove(os.path.join(data_dir, "mbpp", "mbpp.jsonl"))
  with pytest.raises(FileNotFoundError, match="neither .*mbpp.jsonl nor .*sanitized-mbpp.json exists"):
    read("mbpp", data_dir=data_dir)


def _append(path, text):
  with open(path, "a", encoding="utf-8") as f:
    f.write(text)


def test_malformed_rows_and_missing_keys_are_named(copy_of):
  data_dir = copy_of("mmlu")
  _append(os.path.join(data_dir, "mmlu", "test", "high_school_physics_test.csv"), "Too few,1,2,3,B\n")
  with pytest.raises(ValueError, match=r"high_school_physics_test.csv: row 4 has 5 columns, expected 6"):
    read("mmlu", data_dir=data_dir)
  data_dir = copy_of("mmlu_pro")
  _append(os.path.join(data_dir, "mmlu_pro", "test.jsonl"), '{"question_id": 9, "question": "q", "options": []}\n')
  with pytest.raises(ValueError, match=r"test.jsonl line 5: missing key 'answer'"):
    read("mmlu_pro", data_dir=data_dir)
  data_dir = copy_of("math")
  with open(os.path.join(data_dir, "math", "test", "algebra", "1.json"), "w") as f:
    json.dump({"problem": "p", "type": "Algebra", "level": "Level 1"}, f)
  with pytest.raises(ValueError, match=r"algebra/1.json: missing key 'solution'"):
    read("math", data_dir=data_dir)
  data_dir = copy_of("gpqa")
  _append(os.path.join(data_dir, "gpqa", "gpqa_diamond.csv"), "recD4,Short row,x\n")
  with pytest.raises(ValueError, match=r"gpqa_diamond.csv: row 4 \(Record ID 'recD4'\) does not have"):
    read("gpqa", data_dir=data_dir)
  data_dir = copy_of("mgsm")
  _append(os.path.join(data_dir, "mgsm", "mgsm_es.tsv"), "¿Cuántos?\tmuchos\n")
  with pytest.raises(ValueError, match=r"mgsm_es.tsv: row 4: answer 'muchos' is not a number"):
    read("mgsm", data_dir=data_dir)
  data_dir = copy_of("livecodebench")
  with open(os.path.join(data_dir, "livecodebench", "test2.jsonl")) as f:
    record = json.loads(f.readline())
  record["metadata"] = "{}"
  with open(os.path.join(data_dir, "livecodebench", "test2.jsonl"), "w") as f:
    f.write(json.dumps(record) + "\n")
  with pytest.raises(ValueError, match=r"test2.jsonl line 1: functional question 'l003' has no func_name"):
    read("livecodebench", data_dir=data_dir)


def test_mtob_and_tydiqa_structure_errors(copy_of):
  data_dir = copy_of("mtob")
  with open(os.path.join(data_dir, "mtob", "test_examples_ke.json"), "w") as f:
    json.dump([{"big-bench-canary": "x"}, {"sentence": "a"}], f)
  with pytest.raises(ValueError, match=r"test_examples_ke.json item 1: missing key 'original'"):
    read("mtob", data_dir=data_dir)
  data_dir = copy_of("tydiqa")
  with open(os.path.join(data_dir, "tydiqa", "tydiqa-goldp-v1.1-dev.json"), "w") as f:
    json.dump({"data": [{"paragraphs": [{"context": "c", "qas": [{"id": "english-1", "question": "q"}]}]}]}, f)
  with pytest.raises(ValueError, match=r"dev.json data\[0\].paragraphs\[0\].qas\[0\]: missing key 'answers'"):
    read("tydiqa", data_dir=data_dir)
