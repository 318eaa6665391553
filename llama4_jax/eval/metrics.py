"""Benchmark metrics of the evaluation suite (issue 12), pure Python: the scores Llama 4 reports.

* `exact_match`, `token_f1`: SQuAD-style answer normalisation, max over the gold answers (TyDiQA GoldP F1, MGSM).
* `relaxed_accuracy`: ChartQA (numbers within 5% of the gold, other answers exact up to case).
* `anls`: DocVQA's Average Normalized Levenshtein Similarity, per question (threshold 0.5).
* `chrf`, `corpus_chrf`: chrF as sacrebleu computes it (MTOB), 0-100.
* `pass_at_k`: the unbiased pass@k estimator of Chen et al. 2021 (MBPP, LiveCodeBench).
* `majority_vote`, `maj_at_k_correct`: maj@k over sampled answers (MATH maj@1).
* `macro_accuracy`, `micro_accuracy`: MMLU reports the mean of per-subject accuracies.

Every per-example function returns a float in [0, 1] (chrF: [0, 100]); averaging over a data set is the caller's.
"""

from __future__ import annotations

import collections
import re
import string
from typing import Callable, Mapping, Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = frozenset(string.punctuation)


def _as_list(golds: str | Sequence[str], what: str = "golds") -> list[str]:
  golds = [golds] if isinstance(golds, str) else list(golds)
  if not golds:
    raise ValueError(f"{what} must hold at least one answer, got {golds!r}")
  return golds


# ---- extractive QA ----------------------------------------------------------------------------------------------

def normalize_answer(s: str) -> str:
  """SQuAD's normalisation: lowercase, drop punctuation, drop the articles a/an/the, collapse whitespace."""
  s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
  return " ".join(_ARTICLES.sub(" ", s).split())


def exact_match(prediction: str, golds: str | Sequence[str]) -> float:
  """1.0 when the normalised prediction equals any normalised gold answer, else 0.0."""
  pred = normalize_answer(prediction)
  return float(any(pred == normalize_answer(g) for g in _as_list(golds)))


def _f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
  if not pred_tokens or not gold_tokens:
    # SQuAD v2 convention: two empty answers agree, one empty answer scores nothing
    return float(pred_tokens == gold_tokens)
  same = sum((collections.Counter(pred_tokens) & collections.Counter(gold_tokens)).values())
  if same == 0:
    return 0.0
  precision, recall = same / len(pred_tokens), same / len(gold_tokens)
  return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, golds: str | Sequence[str]) -> float:
  """SQuAD / TyDiQA token F1 of the normalised bag of words, max over the gold answers."""
  pred = normalize_answer(prediction).split()
  return max(_f1(pred, normalize_answer(g).split()) for g in _as_list(golds))


# ---- ChartQA and DocVQA -----------------------------------------------------------------------------------------

def _to_number(text: str, percent_as_fraction: bool) -> float | None:
  t = text.strip().replace(",", "").replace("$", "")
  percent = t.endswith("%")
  t = t.rstrip("%").strip()
  try:
    value = float(t)
  except ValueError:
    return None
  return value / 100.0 if percent and percent_as_fraction else value


def relaxed_accuracy(prediction: str, gold: str, max_relative_change: float = 0.05,
                     percent_as_fraction: bool = True) -> float:
  """ChartQA relaxed accuracy: numbers (after dropping $ and thousands commas) count as correct within
  `max_relative_change` of the gold (a gold of 0 needs an exact 0); anything else needs a case-insensitive exact
  match. A trailing % reads as a fraction ("12%" is 0.12), as in pix2struct's `relaxed_correctness`, the scorer
  ChartQA numbers are usually reported with; `percent_as_fraction=False` drops the sign instead ("12%" is 12)."""
  pred_num = _to_number(prediction, percent_as_fraction)
  gold_num = _to_number(gold, percent_as_fraction)
  if pred_num is not None and gold_num is not None:
    if gold_num == 0:
      return float(pred_num == 0)
    return float(abs(pred_num - gold_num) / abs(gold_num) <= max_relative_change)
  return float(prediction.strip().lower() == gold.strip().lower())


def levenshtein(a: str, b: str) -> int:
  """Edit distance (insertions, deletions, substitutions, each cost 1), two rows of the DP table."""
  if len(a) < len(b):
    a, b = b, a
  prev = list(range(len(b) + 1))
  for i, ca in enumerate(a, start=1):
    cur = [i]
    for j, cb in enumerate(b, start=1):
      cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
    prev = cur
  return prev[-1]


def anls(prediction: str, golds: str | Sequence[str], threshold: float = 0.5) -> float:
  """DocVQA's per-question ANLS as the official (RRC) scorer computes it: for each gold, NL = lev(p, g) / max(|p|,
  |g|), the distance between the lowercased, stripped, whitespace-collapsed strings and the lengths of the strings
  as given; the question scores 1 - min NL over golds, or 0 when that is below `threshold` (so NL = 0.5 still scores
  0.5; Biten et al. 2019 write the cut as NL < 0.5). Two empty strings score 1."""
  pred = " ".join(prediction.strip().lower().split())
  distances = []
  for gold in _as_list(golds):
    g = " ".join(gold.strip().lower().split())
    length = max(len(prediction), len(gold))
    distances.append(levenshtein(pred, g) / length if length else 0.0)
  score = 1.0 - min(distances)
  return score if score >= threshold else 0.0


# ---- chrF (MTOB) ------------------------------------------------------------------------------------------------

def _char_ngrams(text: str, order: int) -> list[collections.Counter]:
  chars = "".join(text.split())  # sacrebleu's default: whitespace is not part of character n-grams
  return [collections.Counter(chars[i:i + n] for i in range(len(chars) - n + 1)) for n in range(1, order + 1)]


def _words(text: str) -> list[str]:
  """sacrebleu's chrF++ tokenisation: one punctuation mark split off the end (else the start) of each word."""
  out = []
  for w in text.split():
    if len(w) > 1 and w[-1] in _PUNCT:
      out += [w[:-1], w[-1]]
    elif len(w) > 1 and w[0] in _PUNCT:
      out += [w[0], w[1:]]
    else:
      out.append(w)
  return out


def _word_ngrams(text: str, order: int) -> list[collections.Counter]:
  words = _words(text)
  return [collections.Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1)) for n in range(1, order + 1)]


def _ngrams(text: str, char_order: int, word_order: int) -> list[collections.Counter]:
  return _char_ngrams(text, char_order) + (_word_ngrams(text, word_order) if word_order else [])


def _match_stats(hyp: list[collections.Counter], ref: list[collections.Counter]) -> list[int]:
  """Flattened [hyp count, ref count, matches] per order (character orders first, then word orders)."""
  stats = []
  for h, r in zip(hyp, ref):
    stats += [sum(h.values()), sum(r.values()), sum(min(c, r[g]) for g, c in h.items())]
  return stats


def _chrf_from_stats(stats: Sequence[int], beta: float) -> float:
  """sacrebleu's F-score: precision and recall averaged over the orders where both sides have n-grams, then
  F-beta of the averages, times 100."""
  precisions, recalls = [], []
  for i in range(0, len(stats), 3):
    n_hyp, n_ref, n_match = stats[i:i + 3]
    if n_hyp > 0 and n_ref > 0:
      precisions.append(n_match / n_hyp)
      recalls.append(n_match / n_ref)
  if not precisions:
    return 0.0
  p, r = sum(precisions) / len(precisions), sum(recalls) / len(recalls)
  if p + r == 0:
    return 0.0
  return 100.0 * (1 + beta ** 2) * p * r / (beta ** 2 * p + r)


def _best_stats(hypothesis: str, references: str | Sequence[str], char_order: int, word_order: int,
                beta: float) -> list[int]:
  """The statistics against the reference with the highest sentence chrF (the first one on ties)."""
  hyp = _ngrams(hypothesis, char_order, word_order)
  best, best_score = None, -1.0
  for ref in _as_list(references, "references"):
    stats = _match_stats(hyp, _ngrams(ref, char_order, word_order))
    score = _chrf_from_stats(stats, beta)
    if score > best_score:
      best, best_score = stats, score
  return best


def chrf(hypothesis: str, references: str | Sequence[str], char_order: int = 6, word_order: int = 0,
         beta: float = 2.0) -> float:
  """Sentence chrF (chrF++ with word_order=2), 0-100, against the best of the references."""
  if char_order < 1 or word_order < 0:
    raise ValueError(f"need char_order >= 1 and word_order >= 0, got {char_order} and {word_order}")
  return _chrf_from_stats(_best_stats(hypothesis, references, char_order, word_order, beta), beta)


def corpus_chrf(hypotheses: Sequence[str], references: Sequence[str | Sequence[str]], char_order: int = 6,
                word_order: int = 0, beta: float = 2.0) -> float:
  """Corpus chrF as sacrebleu reports it: each sentence's statistics (against its best reference) are summed over
  the corpus before the one F-score. `references[i]` is the reference (or list of references) of hypotheses[i]."""
  if len(hypotheses) != len(references):
    raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
  total = [0] * (3 * (char_order + word_order))
  for hyp, refs in zip(hypotheses, references):
    total = [a + b for a, b in zip(total, _best_stats(hyp, refs, char_order, word_order, beta))]
  return _chrf_from_stats(total, beta)


# ---- sampling-based scores --------------------------------------------------------------------------------------

def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased pass@k from n samples of which c pass: 1 - C(n-c, k) / C(n, k), as the product
  1 - prod_{i=n-c+1..n} (1 - k/i), which stays finite where the binomials overflow a float."""
  if min(n, c, k) < 0 or k < 1 or c > n or k > n:
    raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
  if n - c < k:
    return 1.0  # every k-subset holds a passing sample
  failing = 1.0
  for i in range(n - c + 1, n + 1):
    failing *= 1.0 - k / i
  return 1.0 - failing


def _light_normalize(answer: str) -> str:
  return " ".join(answer.split())


def majority_vote(answers: Sequence[str | None],
                  normalize: Callable[[str], str] = _light_normalize) -> str | None:
  """The most common answer by `normalize` (default: whitespace collapsed), returned as its first occurrence was
  written; ties go to the answer seen first. Failed extractions (None) do not vote; None when nobody voted."""
  counts: collections.Counter = collections.Counter()
  first: dict[str, str] = {}
  for a in answers:
    if a is None:
      continue
    key = normalize(a)
    counts[key] += 1
    first.setdefault(key, a)
  if not counts:
    return None
  # Counter.most_common keeps insertion order among equal counts, so the first-seen answer wins ties
  return first[counts.most_common(1)[0][0]]


def maj_at_k_correct(samples: Sequence[str | None], gold: str, k: int,
                     equal: Callable[[str, str], bool] = lambda a, b: _light_normalize(a) == _light_normalize(b),
                     normalize: Callable[[str], str] = _light_normalize) -> bool:
  """maj@k: the majority answer of the first k samples, compared with `equal(vote, gold)` (maj@1 is the first
  sample's correctness)."""
  if not 1 <= k <= len(samples):
    raise ValueError(f"maj@k needs 1 <= k <= number of samples ({len(samples)}), got k={k}")
  vote = majority_vote(samples[:k], normalize)
  return vote is not None and bool(equal(vote, gold))


# ---- aggregates -------------------------------------------------------------------------------------------------

def macro_accuracy(correct_by_subject: Mapping[str, Sequence[bool]]) -> float:
  """Mean over subjects of each subject's accuracy (MMLU's reported number)."""
  if not correct_by_subject:
    raise ValueError("macro_accuracy needs at least one subject, got none")
  accs = []
  for subject, correct in correct_by_subject.items():
    if len(correct) == 0:
      raise ValueError(f"subject {subject!r} has no examples")
    accs.append(sum(map(bool, correct)) / len(correct))
  return sum(accs) / len(accs)


def micro_accuracy(correct_by_subject: Mapping[str, Sequence[bool]]) -> float:
  """Accuracy over all examples pooled, whatever their subject."""
  total = sum(len(c) for c in correct_by_subject.values())
  if total == 0:
    raise ValueError(f"micro_accuracy needs at least one example, got {dict(correct_by_subject)!r}")
  return sum(sum(map(bool, c)) for c in correct_by_subject.values()) / total
