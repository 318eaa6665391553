"""The text benchmarks Llama 4 reports (issue 12): MMLU, MMLU-Pro, MATH, MBPP, TyDiQA, LiveCodeBench, GPQA Diamond,
MGSM and MTOB, each read from its released files under `data_dir/<name>/` (never downloaded) into `Example`s.

Every family's `layout` names the files it expects; `read(data_dir, shots=None, seed=0)` checks them (a missing
file, a CSV row of the wrong width, a JSON record without a key: an error naming the path and the key) and formats
each prompt with the benchmark's usual template, few-shot exemplars from its own dev / validation / prompt split:

* mmlu: 5-shot from dev/, scored by log-likelihood of " A".." D", macro accuracy over the 57 subjects.
* mmlu_pro: 5-shot chain of thought from the validation split of the same category, as TIGER-Lab's evaluate
  script writes it (the exemplar answers are the release's cot_content); micro accuracy.
* math: 4-shot in the Minerva format ("Problem: ... Solution: ... Final Answer: The final answer is X. I hope it is
  correct."), with four exemplars of our own; `score` judges one sample, so maj@k is the runner's vote over samples.
* mbpp: 3-shot (task_ids 2, 3, 4) with the original paper's [BEGIN] / [DONE] prompt, test task_ids 11-510, pass@1.
* tydiqa: GoldP, 1-shot from the train file (same language) when it is there, token F1.
* livecodebench: the code_generation_lite release, the LiveCodeBench generation prompt, stdin/stdout tests and
  "functional" (LeetCode-style Solution().method) tests; private tests in their compressed form are decoded with
  an unpickler that admits no globals at all.
* gpqa: Diamond, 0-shot chain of thought, choices shuffled per question from `seed` and the Record ID.
* mgsm: 0-shot with the answer cue in the question's language ("Step-by-Step Answer:"); few-shot from an optional
  exemplar TSV; macro average over languages.
* mtob: sentence-level Kalamang <-> English, 0-shot, chrF. The grammar book (MTOB's long-context setting, the
  point of the benchmark) is out of scope here: without it scores are near the floor.

SAMPLE_DIR holds tiny invented data sets in these layouts for tests.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import random
import re
import warnings
from typing import Any, Sequence

from llama4_jax.eval import code_cases, extract, metrics, sandbox
from llama4_jax.eval.suite import Benchmark, Example, benchmark_dir, choice_letters, require_file

CODE_TIMEOUT_S = 10.0  # per sandbox run (MBPP program + asserts, one LiveCodeBench test input)
CODE_MEMORY_MB = 512
MMLU_PRO_MAX_NEW_TOKENS = 512
MATH_MAX_NEW_TOKENS = 512
MBPP_MAX_NEW_TOKENS = 512
LIVECODEBENCH_MAX_NEW_TOKENS = 1024
GPQA_MAX_NEW_TOKENS = 1024
MGSM_MAX_NEW_TOKENS = 512
MTOB_MAX_NEW_TOKENS = 128
MBPP_TEST_IDS = range(11, 511)
MBPP_SHOT_IDS = (2, 3, 4)


# ---- reading helpers ----------------------------------------------------------------------------------------------

def _shots(shots: int | None, default: int, most: int | None, name: str) -> int:
  shots = default if shots is None else shots
  if shots < 0 or (most is not None and shots > most):
    raise ValueError(f"benchmark {name!r}: shots={shots}, expected 0 to {'any number' if most is None else most}")
  return shots


def _read_csv_rows(path: str, columns: int, delimiter: str = ",") -> list[list[str]]:
  """Rows of a header-less CSV / TSV, each checked to have exactly `columns` fields."""
  quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL  # TSV releases use bare quote marks
  with open(path, newline="", encoding="utf-8") as f:
    rows = list(csv.reader(f, delimiter=delimiter, quoting=quoting))
  for i, row in enumerate(rows):
    if len(row) != columns:
      raise ValueError(f"{path}: row {i + 1} has {len(row)} columns, expected {columns}: {row!r:.200}")
  return rows


def _read_json(path: str) -> Any:
  with open(path, encoding="utf-8") as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not valid JSON ({e})") from None


def _read_jsonl(path: str) -> list[dict]:
  records = []
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, start=1):
      if line.strip():
        try:
          records.append(json.loads(line))
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}: line {n} is not valid JSON ({e})") from None
  return records


def _fields(record: Any, keys: Sequence[str], where: str) -> list[Any]:
  """record[key] for each key, or a ValueError naming the first missing key and where the record came from."""
  if not isinstance(record, dict):
    raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
  for key in keys:
    if key not in record:
      raise ValueError(f"{where}: missing key {key!r} (has {sorted(record)})")
  return [record[key] for key in keys]


def _letter_index(letter: str, n: int, where: str) -> int:
  if not 2 <= n <= 10:
    raise ValueError(f"{where}: {n} answer options, expected 2 to 10")
  letters = choice_letters(n)
  if letter not in letters:
    raise ValueError(f"{where}: answer {letter!r} is not one of {''.join(letters)}")
  return letters.index(letter)


def _first_line(generation: str, example: Example) -> str:
  return generation.strip().split("\n")[0].strip()


def _letter_answer(generation: str, example: Example) -> str | None:
  return extract.multiple_choice_letter(generation, max(2, len(example.choices)))


def _letter_score(answer: str | None, example: Example) -> float:
  return float(bool(answer) and answer == example.golds[0])


# ---- MMLU ---------------------------------------------------------------------------------------------------------

MMLU_LAYOUT = ("mmlu/dev/<subject>_dev.csv and mmlu/<split>/<subject>_<split>.csv, split test (default) or val "
               "(Hendrycks' data/ release: no header; question, A, B, C, D, answer letter)")


def _mmlu_question(row: Sequence[str]) -> str:
  return row[0] + "".join(f"\n{letter}. {text}" for letter, text in zip("ABCD", row[1:5])) + "\nAnswer:"


def read_mmlu(data_dir: str, shots: int | None = None, seed: int = 0, split: str = "test") -> list[Example]:
  root = benchmark_dir(data_dir, "mmlu", MMLU_LAYOUT)
  shots = _shots(shots, 5, 5, "mmlu")  # the dev split holds 5 questions per subject
  if split not in ("test", "val", "dev"):
    raise ValueError(f"benchmark 'mmlu': split {split!r} is not test, val or dev")
  paths = sorted(glob.glob(os.path.join(root, split, f"*_{split}.csv")))
  if not paths:
    raise FileNotFoundError(f"benchmark 'mmlu': no {split}/*_{split}.csv under {root}; expected {MMLU_LAYOUT}")
  examples = []
  for path in paths:
    subject = os.path.basename(path)[:-len(f"_{split}.csv")]
    context = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
    if shots:
      dev_path = require_file(os.path.join(root, "dev", f"{subject}_dev.csv"), "mmlu", MMLU_LAYOUT)
      dev = _read_csv_rows(dev_path, 6)
      if len(dev) < shots:
        raise ValueError(f"{dev_path}: {len(dev)} rows, fewer than shots={shots}")
      for i, row in enumerate(dev[:shots]):
        _letter_index(row[5], 4, f"{dev_path} row {i + 1}")
        context += f"{_mmlu_question(row)} {row[5]}\n\n"
    for i, row in enumerate(_read_csv_rows(path, 6)):
      index = _letter_index(row[5], 4, f"{path} row {i + 1}")
      examples.append(Example(id=f"{subject}/{i}", prompt=context + _mmlu_question(row), golds=(row[5],),
                              choices=(" A", " B", " C", " D"), answer_index=index, group=subject))
  return examples


# ---- MMLU-Pro -----------------------------------------------------------------------------------------------------

MMLU_PRO_LAYOUT = ("mmlu_pro/test.jsonl and mmlu_pro/validation.jsonl (TIGER-Lab/MMLU-Pro fields question_id, "
                   "question, options, answer, answer_index, cot_content, category, src), or the Hugging Face "
                   "parquet export mmlu_pro/data/test-*.parquet and validation-*.parquet")


def _mmlu_pro_split(root: str, split: str) -> list[dict]:
  path = os.path.join(root, f"{split}.jsonl")
  if os.path.isfile(path):
    records = [(r, f"{path} line {i + 1}") for i, r in enumerate(_read_jsonl(path))]
  else:
    parquets = sorted(glob.glob(os.path.join(root, "**", f"{split}-*.parquet"), recursive=True))
    if not parquets:
      raise FileNotFoundError(f"benchmark 'mmlu_pro': neither {path} nor {split}-*.parquet under {root}; "
                              f"expected {MMLU_PRO_LAYOUT}")
    import pyarrow.parquet as pq  # only for the parquet export
    records = [(r, f"{p} row {i + 1}") for p in parquets for i, r in enumerate(pq.read_table(p).to_pylist())]
  keys = ["question_id", "question", "options", "answer", "category"] + (["cot_content"] if split != "test" else [])
  out = []
  for record, where in records:
    qid, question, options, answer, category = _fields(record, keys, where)[:5]
    # the release pads short option lists with "N/A"; the official script drops them before lettering
    options = [o for o in options if o != "N/A"]
    _letter_index(answer, len(options), where)
    out.append({"id": str(qid), "question": question, "options": options, "answer": answer, "category": category,
                "cot": record.get("cot_content", "")})
  return out


def _mmlu_pro_question(record: dict) -> str:
  options = "".join(f"{letter}. {text}\n" for letter, text in zip(choice_letters(len(record["options"])),
                                                                   record["options"]))
  return f"Question:\n{record['question']}\nOptions:\n{options}"


def read_mmlu_pro(data_dir: str, shots: int | None = None, seed: int = 0) -> list[Example]:
  root = benchmark_dir(data_dir, "mmlu_pro", MMLU_PRO_LAYOUT)
  shots = _shots(shots, 5, None, "mmlu_pro")
  test = _mmlu_pro_split(root, "test")
  by_category: dict[str, list[dict]] = {}
  for record in (_mmlu_pro_split(root, "validation") if shots else []):
    by_category.setdefault(record["category"], []).append(record)
  examples = []
  for record in test:
    category = record["category"]
    exemplars = by_category.get(category, [])[:shots]
    if len(exemplars) < shots:
      raise ValueError(f"benchmark 'mmlu_pro': category {category!r} has {len(exemplars)} validation questions, "
                       f"fewer than shots={shots}")
    prompt = (f"The following are multiple choice questions (with answers) about {category}. Think step by step "
              "and then finish your answer with \"the answer is (X)\" where X is the correct letter choice.\n\n")
    for shot in exemplars:
      cot = shot["cot"].replace("A: Let's think step by step.", "Answer: Let's think step by step.")
      prompt += _mmlu_pro_question(shot) + cot + "\n\n"
    prompt += _mmlu_pro_question(record) + "Answer: Let's think step by step."
    letters = tuple(choice_letters(len(record["options"])))
    examples.append(Example(id=record["id"], prompt=prompt, golds=(record["answer"],), choices=letters,
                            answer_index=letters.index(record["answer"]), group=category))
  return examples


# ---- MATH ---------------------------------------------------------------------------------------------------------

MATH_LAYOUT = "math/test/<type>/<n>.json (Hendrycks MATH release: problem, level, type, solution with \\boxed{})"

# Four exemplars in the Minerva format, written for this repository (not Minerva's own problems)
MATH_EXEMPLARS = (
    ("What is the sum of all integers $x$ with $|x - 3| \\le 2$?",
     "The inequality means $1 \\le x \\le 5$, so the integers are $1, 2, 3, 4, 5$ and their sum is $15$.\n"
     "Final Answer: The final answer is $15$. I hope it is correct."),
    ("Write $\\frac{3}{4} + \\frac{5}{6}$ as a common fraction.",
     "Over the common denominator $12$ the sum is $\\frac{9}{12} + \\frac{10}{12} = \\frac{19}{12}$.\n"
     "Final Answer: The final answer is $\\frac{19}{12}$. I hope it is correct."),
    ("A bag holds 4 red and 6 blue marbles. Two are drawn without replacement. What is the probability that both "
     "are red? Express your answer as a common fraction.",
     "The first marble is red with probability $\\frac{4}{10}$, and then the second with probability $\\frac{3}{9}$."
     " Both happen with probability $\\frac{4}{10} \\cdot \\frac{3}{9} = \\frac{2}{15}$.\n"
     "Final Answer: The final answer is $\\frac{2}{15}$. I hope it is correct."),
    ("What is the remainder when $2^{10}$ is divided by $7$?",
     "Since $2^3 = 8 \\equiv 1 \\pmod 7$, we get $2^{10} = (2^3)^3 \\cdot 2 \\equiv 2 \\pmod 7$.\n"
     "Final Answer: The final answer is $2$. I hope it is correct."),
)


def _math_number(path: str) -> tuple[str, int, str]:
  stem = os.path.splitext(os.path.basename(path))[0]
  return (os.path.dirname(path), int(stem) if stem.isdigit() else -1, stem)  # 2.json before 10.json


def read_math(data_dir: str, shots: int | None = None, seed: int = 0) -> list[Example]:
  root = benchmark_dir(data_dir, "math", MATH_LAYOUT)
  shots = _shots(shots, 4, len(MATH_EXEMPLARS), "math")
  paths = sorted(glob.glob(os.path.join(root, "test", "*", "*.json")), key=_math_number)
  if not paths:
    raise FileNotFoundError(f"benchmark 'math': no test/*/*.json under {root}; expected {MATH_LAYOUT}")
  context = "".join(f"Problem:\n{p}\n\nSolution: {s}\n\n" for p, s in MATH_EXEMPLARS[:shots])
  examples = []
  for path in paths:
    problem, solution, kind = _fields(_read_json(path), ["problem", "solution", "type"], path)
    gold = extract.last_boxed(solution)
    if gold is None:
      raise ValueError(f"{path}: the solution has no \\boxed{{}} answer")
    name = os.path.relpath(path, os.path.join(root, "test"))
    examples.append(Example(id=os.path.splitext(name)[0], prompt=f"{context}Problem:\n{problem}\n\nSolution:",
                            golds=(gold,), group=kind))
  return examples


_FINAL_ANSWER = re.compile(r"final answer is", re.IGNORECASE)
_HOPE = re.compile(r"\.?\s*I hope it is correct", re.IGNORECASE)


def math_answer(generation: str, example: Example | None = None) -> str | None:
  """The Minerva "final answer is X" text, else the last \\boxed{}, else the last $...$; None when none."""
  found = list(_FINAL_ANSWER.finditer(generation))
  if found:
    answer = _HOPE.split(generation[found[-1].end():])[0].split("\n")[0].strip().rstrip(".").strip()
    if "\\boxed" in answer or "\\fbox" in answer:
      answer = extract.last_boxed(answer) or answer
    if len(answer) > 1 and answer[0] == answer[-1] == "$":
      answer = answer.strip("$").strip()
    if answer:
      return answer
  boxed = extract.last_boxed(generation)
  if boxed is not None:
    return boxed
  dollars = re.findall(r"\$([^$]+)\$", generation)
  return dollars[-1].strip() if dollars else None


def _math_score(answer: str | None, example: Example) -> float:
  return float(bool(answer) and extract.math_equal(answer, example.golds[0]))


# ---- MBPP ---------------------------------------------------------------------------------------------------------

MBPP_LAYOUT = ("mbpp/mbpp.jsonl (google-research release: text, code, task_id, test_list, test_setup_code, "
               "challenge_test_list; test = task_ids 11-510, shots = task_ids 2, 3, 4) or mbpp/sanitized-mbpp.json "
               "(prompt, code, task_id, test_list, test_imports)")


def _mbpp_tasks(root: str) -> dict[int, dict]:
  full, sanitized = os.path.join(root, "mbpp.jsonl"), os.path.join(root, "sanitized-mbpp.json")
  if os.path.isfile(full):
    records = [(r, f"{full} line {i + 1}") for i, r in enumerate(_read_jsonl(full))]
    keys = ["text", "test_setup_code"]
  elif os.path.isfile(sanitized):
    data = _read_json(sanitized)
    if not isinstance(data, list):
      raise ValueError(f"{sanitized}: expected a JSON list of tasks")
    records, keys = [(r, f"{sanitized} item {i}") for i, r in enumerate(data)], ["prompt", "test_imports"]
  else:
    raise FileNotFoundError(f"benchmark 'mbpp': neither {full} nor {sanitized} exists; expected {MBPP_LAYOUT}")
  tasks = {}
  for record, where in records:
    task_id, code, tests, text, setup = _fields(record, ["task_id", "code", "test_list", *keys], where)
    if isinstance(setup, list):
      setup = "\n".join(setup)  # sanitized: a list of import lines
    if not isinstance(tests, list) or not tests:
      raise ValueError(f"{where}: test_list must be a non-empty list of assert statements")
    tasks[int(task_id)] = {"text": text, "code": code, "tests": tuple(tests), "setup": setup}
  return tasks


def _mbpp_block(task: dict) -> str:
  tests = "\n".join(task["tests"])
  return (f"You are an expert Python programmer, and here is your task: {task['text']} Your code should pass "
          f"these tests:\n\n{tests}\n[BEGIN]\n")


def read_mbpp(data_dir: str, shots: int | None = None, seed: int = 0) -> list[Example]:
  root = benchmark_dir(data_dir, "mbpp", MBPP_LAYOUT)
  shots = _shots(shots, 3, len(MBPP_SHOT_IDS), "mbpp")
  tasks = _mbpp_tasks(root)
  missing = [t for t in MBPP_SHOT_IDS[:shots] if t not in tasks]
  if missing:
    raise ValueError(f"benchmark 'mbpp': prompt task_ids {missing} are missing from {root}")
  context = "".join(_mbpp_block(tasks[t]) + tasks[t]["code"] + "\n[DONE]\n" for t in MBPP_SHOT_IDS[:shots])
  return [Example(id=f"mbpp/{t}", prompt=context + _mbpp_block(task), golds=(task["code"],), tests=task["tests"],
                  setup=task["setup"])
          for t, task in sorted(tasks.items()) if t in MBPP_TEST_IDS]


def mbpp_program(generation: str, example: Example | None = None) -> str:
  """The code before [DONE]; a fenced block inside it (chat models) is taken out of its fence."""
  code = generation.split("[DONE]")[0]
  return extract.code_block(code) if "```" in code else code.strip("\n")


def _mbpp_score(program: str | None, example: Example) -> float:
  if not program or not program.strip():
    return 0.0
  source = (example.setup + "\n" + program) if example.setup else program  # setup code: imports the tests need
  return float(sandbox.check_program(source, example.tests, timeout_s=CODE_TIMEOUT_S, memory_mb=CODE_MEMORY_MB))


# ---- TyDiQA GoldP -------------------------------------------------------------------------------------------------

TYDIQA_LAYOUT = ("tydiqa/tydiqa-goldp-v1.1-dev.json (SQuAD format; language = the id's prefix before '-'), optional "
                 "tydiqa/tydiqa-goldp-v1.1-train.json for the few-shot exemplars (0-shot without it)")


def _squad_questions(path: str) -> list[tuple[str, str, str, tuple[str, ...]]]:
  """(id, context, question, answers) of a SQuAD-format file."""
  data = _read_json(path)
  out = []
  for a, article in enumerate(_fields(data, ["data"], path)[0]):
    for p, paragraph in enumerate(_fields(article, ["paragraphs"], f"{path} data[{a}]")[0]):
      where = f"{path} data[{a}].paragraphs[{p}]"
      context, qas = _fields(paragraph, ["context", "qas"], where)
      for q, qa in enumerate(qas):
        qid, question, answers = _fields(qa, ["id", "question", "answers"], f"{where}.qas[{q}]")
        golds = tuple(_fields(ans, ["text"], f"{where}.qas[{q}].answers")[0] for ans in answers)
        if not golds:
          raise ValueError(f"{where}.qas[{q}] (id {qid!r}): no answers")
        out.append((qid, context, question, golds))
  return out


def read_tydiqa(data_dir: str, shots: int | None = None, seed: int = 0) -> list[Example]:
  root = benchmark_dir(data_dir, "tydiqa", TYDIQA_LAYOUT)
  shots = _shots(shots, 1, None, "tydiqa")
  dev = _squad_questions(require_file(os.path.join(root, "tydiqa-goldp-v1.1-dev.json"), "tydiqa", TYDIQA_LAYOUT))
  train_path = os.path.join(root, "tydiqa-goldp-v1.1-train.json")
  pool: dict[str, list] = {}
  if shots and not os.path.isfile(train_path):
    warnings.warn(f"tydiqa: {train_path} not found, reading 0-shot instead of {shots}-shot")
    shots = 0
  for qid, context, question, golds in (_squad_questions(train_path) if shots else []):
    pool.setdefault(qid.split("-")[0], []).append((context, question, golds[0]))
  contexts: dict[str, str] = {}
  examples = []
  for qid, context, question, golds in dev:
    language = qid.split("-")[0]
    if language not in contexts:
      if len(pool.get(language, [])) < shots:
        raise ValueError(f"{train_path}: {len(pool.get(language, []))} {language} questions, fewer than {shots}")
      # one fixed exemplar set per language, drawn from `seed`
      picked = random.Random(f"{seed}/{language}").sample(pool.get(language, []), shots)
      contexts[language] = "".join(f"Context: {c}\nQuestion: {q}\nAnswer: {a}\n\n" for c, q, a in picked)
    prompt = f"{contexts[language]}Context: {context}\nQuestion: {question}\nAnswer:"
    examples.append(Example(id=qid, prompt=prompt, golds=golds, group=language))
  return examples


def _f1_score(answer: str | None, example: Example) -> float:
  return metrics.token_f1(answer or "", example.golds)


# ---- LiveCodeBench ------------------------------------------------------------------------------------------------

LIVECODEBENCH_LAYOUT = ("livecodebench/test*.jsonl (code_generation_lite release: question_title, question_content, "
                        "platform, question_id, contest_date, starter_code, difficulty, public_test_cases, "
                        "private_test_cases, metadata)")


def _livecodebench_prompt(content: str, starter: str) -> str:
  prompt = ("You are an expert Python programmer. You will be given a problem statement and will write a correct "
            f"Python program that meets the specification and passes all tests.\n\n### Question:\n{content}\n\n")
  if starter:
    prompt += ("### Format: Complete the following starter code to solve the problem, and put your code between "
               f"the delimiters.\n```python\n{starter}\n```\n\n")
  else:
    prompt += ("### Format: Read the input from stdin, solve the problem and write the answer to stdout (do not "
               "just test on the sample inputs). Put your code between the delimiters as follows, so that the "
               "Python program reads the input, runs the algorithm and writes the output when it runs.\n"
               "```python\n# YOUR CODE HERE\n```\n\n")
  return prompt + "### Answer: (use the provided format with backticks)\n\n"


def _livecodebench_example(record: dict, where: str) -> Example:
  keys = ["question_id", "question_content", "starter_code", "difficulty", "public_test_cases",
          "private_test_cases", "metadata"]
  qid, content, starter, difficulty, public, private, meta = _fields(record, keys, where)
  cases = code_cases.decode_test_cases(public, f"{where} public_test_cases") + (
      code_cases.decode_test_cases(private, f"{where} private_test_cases") if private else [])
  kinds = {c["testtype"] for c in cases}
  if not cases or len(kinds) != 1 or not kinds <= {"stdin", "functional"}:
    raise ValueError(f"{where}: question {qid!r} needs test cases of one type, stdin or functional; got {kinds}")
  pairs = tuple((c["input"], c["output"]) for c in cases)
  # the release has no reference solutions: the tests are the gold
  common = dict(id=str(qid), prompt=_livecodebench_prompt(content, starter), golds=("",), group=difficulty)
  if kinds == {"stdin"}:
    return Example(**common, io_cases=pairs)
  func = (json.loads(meta) if isinstance(meta, str) and meta else meta or {}).get("func_name")
  if not func:
    raise ValueError(f"{where}: functional question {qid!r} has no func_name in its metadata")
  return Example(**common, tests=(code_cases.functional_harness(pairs, func),))


def read_livecodebench(data_dir: str, shots: int | None = None, seed: int = 0, start_date: str | None = None,
                       end_date: str | None = None) -> list[Example]:
  """0-shot; `start_date` <= contest_date < `end_date` (ISO dates, e.g. "2024-10-01") selects a release window."""
  root = benchmark_dir(data_dir, "livecodebench", LIVECODEBENCH_LAYOUT)
  _shots(shots, 0, 0, "livecodebench")
  paths = sorted(glob.glob(os.path.join(root, "test*.jsonl")))
  if not paths:
    raise FileNotFoundError(f"benchmark 'livecodebench': no test*.jsonl under {root}; "
                            f"expected {LIVECODEBENCH_LAYOUT}")
  examples, seen = [], {}
  for path in paths:
    for i, record in enumerate(_read_jsonl(path)):
      where = f"{path} line {i + 1}"
      date = str(_fields(record, ["contest_date"], where)[0])[:10]
      if (start_date and date < start_date) or (end_date and date >= end_date):
        continue
      example = _livecodebench_example(record, where)
      if example.id in seen:
        raise ValueError(f"{where}: question_id {example.id!r} already read from {seen[example.id]}")
      seen[example.id] = where
      examples.append(example)
  return examples


def _code_score(program: str | None, example: Example) -> float:
  """Pass / fail of the program on the example's stdin cases, or on its functional harness."""
  if not program or not program.strip():
    return 0.0  # an empty program would pass a case whose expected output is empty
  source = code_cases.CODE_PRELUDE + program
  if example.io_cases:
    ok = sandbox.check_io(source, example.io_cases, timeout_s=CODE_TIMEOUT_S, memory_mb=CODE_MEMORY_MB)
  else:
    ok = sandbox.check_program(source, example.tests, timeout_s=CODE_TIMEOUT_S, memory_mb=CODE_MEMORY_MB)
  return float(ok)


def _code_answer(generation: str, example: Example) -> str:
  return extract.code_block(generation)


# ---- GPQA Diamond -------------------------------------------------------------------------------------------------

GPQA_LAYOUT = ("gpqa/gpqa_diamond.csv (the GPQA release, header row; columns Question, Correct Answer, Incorrect "
               "Answer 1..3, Record ID, High-level domain)")
_GPQA_COLUMNS = ("Record ID", "Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2",
                 "Incorrect Answer 3", "High-level domain")


def read_gpqa(data_dir: str, shots: int | None = None, seed: int = 0) -> list[Example]:
  root = benchmark_dir(data_dir, "gpqa", GPQA_LAYOUT)
  _shots(shots, 0, 0, "gpqa")
  path = require_file(os.path.join(root, "gpqa_diamond.csv"), "gpqa", GPQA_LAYOUT)
  with open(path, newline="", encoding="utf-8") as f:
    reader = csv.DictReader(f)
    missing = [c for c in _GPQA_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
      raise ValueError(f"{path}: missing columns {missing} (header: {reader.fieldnames})")
    rows = list(reader)
  examples = []
  for i, row in enumerate(rows):
    record_id, question, *answers, domain = (row[c] for c in _GPQA_COLUMNS)
    if any(v is None for v in row.values()) or None in row:
      raise ValueError(f"{path}: row {i + 1} (Record ID {record_id!r}) does not have the header's "
                       f"{len(reader.fieldnames)} columns")
    order = list(range(4))
    random.Random(f"{seed}/{record_id}").shuffle(order)  # string seeds hash the same in every process
    shuffled = [answers[j].strip() for j in order]
    choices = "".join(f"({letter}) {text}\n" for letter, text in zip("ABCD", shuffled))
    prompt = (f"What is the correct answer to this question: {question.strip()}\n\nChoices:\n{choices}\n"
              "Format your response as follows: \"The correct answer is (insert answer here)\"\n"
              "Let's think step by step:")
    gold = order.index(0)  # the correct answer is answers[0]
    examples.append(Example(id=record_id, prompt=prompt, golds=("ABCD"[gold],), choices=("A", "B", "C", "D"),
                            answer_index=gold, group=domain))
  return examples


# ---- MGSM ---------------------------------------------------------------------------------------------------------

MGSM_LAYOUT = ("mgsm/mgsm_<lang>.tsv (question<TAB>numeric answer, no header; lang in bn de en es fr ja ru sw te th "
               "zh), optional mgsm/mgsm_<lang>_exemplars.tsv (question<TAB>step-by-step answer) for few-shot")
# (question cue, answer cue) of MGSM's native chain-of-thought exemplars, as the release spells them (French's space
# before the colon; Russian's run-together "Пошаговоерешение" included)
MGSM_CUES = {
    "en": ("Question:", "Step-by-Step Answer:"), "es": ("Pregunta:", "Respuesta paso a paso:"),
    "fr": ("Question:", "Réponse étape par étape :"), "de": ("Frage:", "Schritt-für-Schritt-Antwort:"),
    "ru": ("Задача:", "Пошаговоерешение:"), "zh": ("问题:", "逐步解答:"), "ja": ("問題:", "ステップごとの答え:"),
    "th": ("โจทย์:", "คำตอบทีละขั้นตอน:"), "sw": ("Swali:", "Jibu la Hatua kwa Hatua:"),
    "bn": ("প্রশ্ন:", "ধাপে ধাপে উত্তর:"), "te": ("ప్రశ్న:", "దశలవారీగా సమాధానం:"),
}


def read_mgsm(data_dir: str, shots: int | None = None, seed: int = 0) -> list[Example]:
  root = benchmark_dir(data_dir, "mgsm", MGSM_LAYOUT)
  shots = _shots(shots, 0, None, "mgsm")
  paths = [p for p in sorted(glob.glob(os.path.join(root, "mgsm_*.tsv"))) if not p.endswith("_exemplars.tsv")]
  if not paths:
    raise FileNotFoundError(f"benchmark 'mgsm': no mgsm_<lang>.tsv under {root}; expected {MGSM_LAYOUT}")
  examples = []
  for path in paths:
    language = os.path.basename(path)[len("mgsm_"):-len(".tsv")]
    if language not in MGSM_CUES:
      raise ValueError(f"{path}: unknown MGSM language {language!r}; known: {sorted(MGSM_CUES)}")
    q_cue, a_cue = MGSM_CUES[language]
    context = ""
    if shots:
      shot_path = require_file(os.path.join(root, f"mgsm_{language}_exemplars.tsv"), "mgsm", MGSM_LAYOUT)
      exemplars = _read_csv_rows(shot_path, 2, "\t")
      if len(exemplars) < shots:
        raise ValueError(f"{shot_path}: {len(exemplars)} exemplars, fewer than shots={shots}")
      context = "".join(f"{q_cue} {q}\n{a_cue} {a}\n\n" for q, a in exemplars[:shots])
    for i, (question, answer) in enumerate(_read_csv_rows(path, 2, "\t")):
      gold = extract.normalize_number(answer)
      if not re.fullmatch(r"-?\d+(\.\d+)?", gold):
        raise ValueError(f"{path}: row {i + 1}: answer {answer!r} is not a number")
      examples.append(Example(id=f"{language}/{i}", prompt=f"{context}{q_cue} {question}\n{a_cue}",
                              golds=(gold,), group=language))
  return examples


def _number_answer(generation: str, example: Example) -> str | None:
  return extract.final_number(generation)


def _number_score(answer: str | None, example: Example) -> float:
  # the runner passes a failed extraction as "", which normalize_number would read as 0
  return float(bool(answer) and extract.number_equal(answer, example.golds[0]))


# ---- MTOB ---------------------------------------------------------------------------------------------------------

MTOB_LAYOUT = ("mtob/test_examples_ek.json and mtob/test_examples_ke.json (lukemelas/mtob splits/, decrypted: a "
               "JSON list, the BIG-bench canary entry first, then objects with 'original' (source sentence) and "
               "'ground_truth' (reference); 'source'/'target' or 'original'/'translation' are accepted too)")
MTOB_DIRECTIONS = {"ek": ("English", "Kalamang"), "ke": ("Kalamang", "English")}


def _mtob_pair(entry: Any, where: str) -> tuple[str, str] | None:
  """(source, reference) of one entry; None for the canary entry."""
  if not isinstance(entry, dict):
    raise ValueError(f"{where}: expected a JSON object, got {type(entry).__name__}")
  source = entry.get("original", entry.get("source"))
  if source is None:
    if any("canary" in key for key in entry):
      return None
    raise ValueError(f"{where}: missing key 'original' (or 'source'); has {sorted(entry)}")
  for key in ("ground_truth", "target", "translation"):
    # a test file's "translation" may be a placeholder of dashes standing for the hidden reference
    if isinstance(entry.get(key), str) and entry[key].strip("- "):
      return source, entry[key]
  raise ValueError(f"{where}: no reference under 'ground_truth', 'target' or 'translation'")


def read_mtob(data_dir: str, shots: int | None = None, seed: int = 0) -> list[Example]:
  root = benchmark_dir(data_dir, "mtob", MTOB_LAYOUT)
  _shots(shots, 0, 0, "mtob")
  paths = {d: require_file(os.path.join(root, f"test_examples_{d}.json"), "mtob", MTOB_LAYOUT)
           for d in MTOB_DIRECTIONS}
  examples = []
  for direction, path in paths.items():
    src, tgt = MTOB_DIRECTIONS[direction]
    entries = _read_json(path)
    if not isinstance(entries, list):
      raise ValueError(f"{path}: expected a JSON list of sentence pairs")
    for i, entry in enumerate(entries):
      pair = _mtob_pair(entry, f"{path} item {i}")
      if pair is not None:
        prompt = f"Translate the following sentence from {src} to {tgt}.\n{src}: {pair[0]}\n{tgt}:"
        examples.append(Example(id=f"{direction}/{i}", prompt=prompt, golds=(pair[1],), group=direction))
  return examples


def _chrf_score(answer: str | None, example: Example) -> float:
  return metrics.chrf(answer or "", example.golds)


# ---- the families -------------------------------------------------------------------------------------------------

BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("mmlu", "loglik", "macro_accuracy", read_mmlu, MMLU_LAYOUT, default_shots=5, aggregate="macro"),
    Benchmark("mmlu_pro", "generate", "accuracy", read_mmlu_pro, MMLU_PRO_LAYOUT, default_shots=5,
              max_new_tokens=MMLU_PRO_MAX_NEW_TOKENS, stop=("Question:",), extract=_letter_answer,
              score=_letter_score),
    Benchmark("math", "generate", "exact_match", read_math, MATH_LAYOUT, default_shots=4,
              max_new_tokens=MATH_MAX_NEW_TOKENS, stop=("Problem:",), extract=math_answer, score=_math_score),
    Benchmark("mbpp", "code", "pass@1", read_mbpp, MBPP_LAYOUT, default_shots=3, max_new_tokens=MBPP_MAX_NEW_TOKENS,
              stop=("[DONE]",), extract=mbpp_program, score=_mbpp_score),
    Benchmark("tydiqa", "generate", "f1", read_tydiqa, TYDIQA_LAYOUT, default_shots=1, stop=("\n",),
              extract=_first_line, score=_f1_score),
    Benchmark("livecodebench", "code", "pass@1", read_livecodebench, LIVECODEBENCH_LAYOUT,
              max_new_tokens=LIVECODEBENCH_MAX_NEW_TOKENS, stop=("### Question:",), extract=_code_answer,
              score=_code_score),
    Benchmark("gpqa", "generate", "accuracy", read_gpqa, GPQA_LAYOUT, max_new_tokens=GPQA_MAX_NEW_TOKENS,
              stop=("What is the correct answer to this question:",), extract=_letter_answer, score=_letter_score),
    Benchmark("mgsm", "generate", "exact_match", read_mgsm, MGSM_LAYOUT, max_new_tokens=MGSM_MAX_NEW_TOKENS,
              stop=tuple(f"\n{q}" for q in sorted({q for q, _ in MGSM_CUES.values()})), extract=_number_answer,
              score=_number_score, aggregate="macro"),
    Benchmark("mtob", "generate", "chrf", read_mtob, MTOB_LAYOUT, max_new_tokens=MTOB_MAX_NEW_TOKENS, stop=("\n",),
              extract=_first_line, score=_chrf_score, aggregate="corpus_chrf"),
)
