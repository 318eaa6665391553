"""Answer extraction for the evaluation suite (issue 12): the final answer out of a free-form generation.

* `multiple_choice_letter`: MMLU, MMLU-Pro, GPQA, MMMU / MathVista multiple choice ("The answer is (C)").
* `last_boxed`, `strip_math`, `math_equal`: MATH's \\boxed{} answers and Hendrycks et al.'s string normalisation.
* `final_number`, `number_equal`: GSM / MGSM numeric answers, with the MGSM answer phrases of its ten languages.
* `code_block`: the program out of a fenced block (MBPP, LiveCodeBench).

Each extractor returns None when the generation holds no answer of the expected form, so a failed extraction
scores as wrong rather than raising.
"""

from __future__ import annotations

import re
import unicodedata

LETTERS = "ABCDEFGHIJ"

# "answer is (C)", "Answer: C", "correct option is **C**": the letter may be lowercase only inside brackets
_EXPLICIT = re.compile(
    r"(?i:\banswer\b(?:\s+is)?|\b(?:correct|right|best)\s+(?:option|choice)(?:\s+is)?)\s*[:：]?\s*(?:\*\*)?\s*"
    r"(?:[\(\[]\s*([A-Ja-j])\s*[\)\]]|([A-J])(?![A-Za-z0-9]))")
_LEADING_BRACKETED = re.compile(r"^\s*(?:\*\*)?\s*[\(\[]([A-Ja-j])[\)\]]")
_LEADING_BARE = re.compile(r"^\s*(?:\*\*)?([A-J])(?:\*\*)?\s*(?:$|[.:,)\n])")
_MARKED = re.compile(r"\*\*\s*[\(\[]?([A-J])[\)\]]?\s*\*\*|\\boxed\{\s*(?:\\text\{)?\s*\(?([A-J])\)?\s*\}?\s*\}")


def multiple_choice_letter(text: str, num_choices: int) -> str | None:
  """The chosen option letter among the first `num_choices` of A..J: the last explicit "answer is X" / "Answer: X"
  wins; else a letter the generation opens with ("C", "(C)", "C."); else the last **C** or \\boxed{C}."""
  if not 2 <= num_choices <= len(LETTERS):
    raise ValueError(f"num_choices must be in 2..{len(LETTERS)}, got {num_choices}")
  valid = LETTERS[:num_choices]

  def pick(matches) -> str | None:
    for m in reversed(list(matches)):
      letter = next(g for g in m.groups() if g).upper()
      if letter in valid:
        return letter
    return None

  for found in (pick(_EXPLICIT.finditer(text)),
                pick(m for m in (_LEADING_BRACKETED.match(text), _LEADING_BARE.match(text)) if m),
                pick(_MARKED.finditer(text))):
    if found is not None:
      return found
  return None


# ---- MATH -------------------------------------------------------------------------------------------------------

def last_boxed(text: str) -> str | None:
  """The content of the last \\boxed{...} or \\fbox{...} (nested braces matched), or of "\\boxed 5" up to the next
  "$" or end; None when there is none or its brace never closes."""
  start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
  if start < 0:
    return None
  rest = text[start:].split("\\", 1)[1]
  rest = rest[len("boxed"):] if rest.startswith("boxed") else rest[len("fbox"):]
  if rest.startswith(" ") and not rest.lstrip().startswith("{"):
    return rest.strip().split("$")[0].strip() or None
  rest = rest.lstrip()
  if not rest.startswith("{"):
    return None
  depth = 0
  for i, ch in enumerate(rest):
    depth += {"{": 1, "}": -1}.get(ch, 0)
    if depth == 0:
      return rest[1:i]
  return None


def _braced_arguments(s: str, command: str, count: int) -> str:
  """Wrap the single-character arguments of `command` in braces: \\frac12 -> \\frac{1}{2}, \\frac1{b} too."""
  out, i = [], 0
  while True:
    j = s.find(command, i)
    if j < 0:
      return "".join(out) + s[i:]
    out.append(s[i:j + len(command)])
    i = j + len(command)
    for _ in range(count):
      if i >= len(s):
        break
      if s[i] == "{":  # keep a braced argument whole, nested braces included
        depth, k = 0, i
        while k < len(s):
          depth += {"{": 1, "}": -1}.get(s[k], 0)
          k += 1
          if depth == 0:
            break
        out.append(s[i:k])
        i = k
      elif s[i] != "\\":
        out.append("{" + s[i] + "}")
        i += 1
      else:
        break  # a command argument (\frac\pi2): left as written


_UNIT_TAIL = re.compile(r"^(.*\S)\s*\\(?:text|mbox)\{[^{}]*\}$")
_TEXT = re.compile(r"\\(?:text|textbf|mbox|mathrm)\{([^{}]*)\}")
_INT = re.compile(r"^-?\d+$")


def strip_math(s: str) -> str:
  """MATH's answer normalisation (Hendrycks et al. 2021, is_equiv's strip_string) plus a few common cases:
  spacing commands, \\left/\\right, degrees, percent, dollar signs, a trailing unit or full stop, "x = " prefixes,
  tfrac/dfrac, \\frac12 and \\sqrt2 braced, "a/b" of integers as \\frac{a}{b}, ".5" as "0.5", "0.5" as 1/2."""
  s = s.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
  s = s.replace("tfrac", "frac").replace("dfrac", "frac").replace("\\left", "").replace("\\right", "")
  for spacing in ("\\,", "\\;", "\\:", "\\ "):
    s = s.replace(spacing, " ")
  s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\%", "").replace("%", "")
  s = s.replace("\\$", "").replace("$", "").strip().rstrip(".").strip()
  m = _UNIT_TAIL.match(s)
  if m:
    s = m.group(1)  # "10 \text{ cm}" -> "10": a trailing unit
  s = _TEXT.sub(r"\1", s).strip()
  s = s.replace(" .", " 0.").replace("{.", "{0.")
  if s.startswith("."):
    s = "0" + s
  if s.count("=") == 1 and len(s.split("=")[0].strip()) <= 2:
    s = s.split("=")[1]  # "x = 5" -> "5"; a longer left side is part of the answer
  s = re.sub(r"\\sqrt\s*([^\s{\[\\])", r"\\sqrt{\1}", s)
  s = s.replace(" ", "")
  s = _braced_arguments(s, "\\frac", 2)
  if s == "0.5":
    s = "\\frac{1}{2}"
  a, slash, b = s.partition("/")
  if slash and _INT.match(a) and _INT.match(b):
    s = f"\\frac{{{a}}}{{{b}}}"
  return s


def math_equal(prediction: str | None, gold: str) -> bool:
  """MATH exact match: equal after `strip_math` on both sides (no symbolic equivalence)."""
  return prediction is not None and strip_math(prediction) == strip_math(gold)


# ---- GSM / MGSM numbers -----------------------------------------------------------------------------------------

# The answer phrases of MGSM's chain-of-thought exemplars and of "<Answer>:" formats, in its ten languages + English
ANSWER_PHRASES = (
    "the answer is", "answer:", "final answer:",
    "la respuesta es", "respuesta:",  # es
    "die antwort lautet", "die antwort ist", "antwort:",  # de
    "la réponse est", "réponse :", "réponse:",  # fr
    "答えは", "答え:", "答え：",  # ja
    "答案是", "答案为", "答案:", "答案：",  # zh
    "ответ —", "ответ -", "ответ:",  # ru
    "jibu ni", "jibu:",  # sw
    "উত্তর হল", "উত্তর হলো", "উত্তর:",  # bn
    "సమాధానం",  # te
    "คำตอบคือ", "คำตอบ:",  # th
)
_PHRASE = re.compile("|".join(re.escape(p) for p in ANSWER_PHRASES), re.IGNORECASE)
_NUMBER = re.compile(r"[-−+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-−]?\.\d+")


def normalize_number(s: str) -> str:
  """Canonical text of a number: any script's digits as ASCII, no thousands commas, $ or leading +, no trailing
  fractional zeros ("1,200.50" -> "1200.5", "18.0" -> "18")."""
  s = "".join(str(unicodedata.decimal(ch)) if ch.isdecimal() else ch for ch in s.strip())
  s = s.replace("−", "-").replace(",", "").replace("$", "").lstrip("+")
  if "." in s:
    s = s.rstrip("0").rstrip(".")
  return s if s not in ("", "-", "-0") else "0"


def final_number(text: str) -> str | None:
  """The first number after the last answer phrase ("The answer is 18", "La respuesta es 18", "答案是18"), else
  the last number in the text, normalised by `normalize_number`; None when the text holds no number."""
  phrases = list(_PHRASE.finditer(text))
  if phrases:
    m = _NUMBER.search(text, phrases[-1].end())
    if m:
      return normalize_number(m.group())
  numbers = _NUMBER.findall(text)
  return normalize_number(numbers[-1]) if numbers else None


def number_equal(prediction: str | None, gold: str) -> bool:
  """Numeric equality of two answers after `normalize_number` (as floats where both parse, else as text)."""
  if prediction is None:
    return False
  p, g = normalize_number(prediction), normalize_number(gold)
  try:
    return abs(float(p) - float(g)) <= 1e-9 * max(1.0, abs(float(g)))
  except ValueError:
    return p == g


# ---- code -------------------------------------------------------------------------------------------------------

_PY_FENCE = re.compile(r"```[ \t]*(?:python3?|py)[ \t]*\r?\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)
_ANY_FENCE = re.compile(r"```[^\n`]*\r?\n(.*?)(?:```|\Z)", re.DOTALL)


def code_block(text: str) -> str:
  """The code of the first ```python fenced block, else of the first fenced block of any language, else the whole
  text. A block cut off before its closing fence (a truncated generation) runs to the end."""
  m = _PY_FENCE.search(text) or _ANY_FENCE.search(text)
  return m.group(1).strip("\n") if m else text
