"""Benchmark metrics and answer extraction (llama4_jax/eval/metrics.py, extract.py) against hand-computed values,
edge cases included: ANLS at its threshold, percentages in relaxed accuracy, chrF by hand, pass@k against the
binomial formula."""

import fractions
import math

import pytest

from llama4_jax.eval import extract as E
from llama4_jax.eval import metrics as M

# ---- extractive QA ----------------------------------------------------------------------------------------------


def test_normalize_answer_drops_case_punctuation_articles_and_extra_space():
  assert M.normalize_answer("  The  Cat's  hat, a red one! ") == "cats hat red one"
  assert M.normalize_answer("Theatre an") == "theatre"  # articles only as whole words


def test_exact_match_takes_the_best_gold():
  assert M.exact_match("The Cat.", ["a dog", "a cat"]) == 1.0
  assert M.exact_match("cats", "cat") == 0.0
  with pytest.raises(ValueError, match=r"at least one"):
    M.exact_match("x", [])


def test_token_f1_by_hand():
  # pred "the cat sat on the mat" -> [cat, sat, on, mat]; gold -> [cat, sat, on, red, mat, today]
  # 4 tokens in common: P = 4/4, R = 4/6, F1 = 2 * 1 * 2/3 / (1 + 2/3) = 0.8
  assert M.token_f1("the cat sat on the mat", "a cat sat on a red mat today") == pytest.approx(0.8)
  # counts are clipped: "cat cat" against "cat": P = 1/2, R = 1, F1 = 2/3; the max over golds is taken
  assert M.token_f1("cat cat", ["dog", "cat"]) == pytest.approx(2 / 3)
  assert M.token_f1("dog", "cat") == 0.0


def test_token_f1_empty_answers():
  assert M.token_f1("", "") == 1.0
  assert M.token_f1("the", "") == 1.0  # "the" normalises to nothing
  assert M.token_f1("", "cat") == 0.0
  assert M.token_f1("cat", "a") == 0.0


# ---- ChartQA ----------------------------------------------------------------------------------------------------


def test_relaxed_accuracy_numbers_within_five_percent():
  assert M.relaxed_accuracy("12%", "12.5%") == 1.0  # |0.12 - 0.125| / 0.125 = 0.04
  assert M.relaxed_accuracy("12%", "13%") == 0.0  # 1/13 = 0.077
  assert M.relaxed_accuracy("95", "100") == 1.0  # exactly 5%
  assert M.relaxed_accuracy("94.9", "100") == 0.0
  assert M.relaxed_accuracy("$1,234", "1234") == 1.0
  assert M.relaxed_accuracy("-10.4", "-10") == 1.0
  assert M.relaxed_accuracy("-9", "10") == 0.0


def test_relaxed_accuracy_gold_zero_and_strings():
  assert M.relaxed_accuracy("0.0", "0") == 1.0
  assert M.relaxed_accuracy("0.01", "0") == 0.0
  assert M.relaxed_accuracy(" Yes ", "yes") == 1.0
  assert M.relaxed_accuracy("yes.", "yes") == 0.0
  assert M.relaxed_accuracy("twelve", "12") == 0.0


def test_relaxed_accuracy_reads_percentages_as_fractions_like_pix2struct():
  assert M.relaxed_accuracy("12%", "12.5") == 0.0  # 0.12 against 12.5
  assert M.relaxed_accuracy("12%", "0.12") == 1.0
  assert M.relaxed_accuracy("12%", "12.5", percent_as_fraction=False) == 1.0  # 12 against 12.5: 4%
  assert M.relaxed_accuracy("12%", "0.12", percent_as_fraction=False) == 0.0


# ---- DocVQA -----------------------------------------------------------------------------------------------------


def test_levenshtein():
  assert M.levenshtein("kitten", "sitting") == 3
  assert M.levenshtein("flaw", "lawn") == 2
  assert M.levenshtein("", "abc") == 3 and M.levenshtein("abc", "") == 3
  assert M.levenshtein("same", "same") == 0


def test_anls_around_the_threshold():
  gold = "abcdefghij"  # 10 characters
  assert M.anls("abcdefXXXX", gold) == pytest.approx(0.6)  # NL = 4/10 = 0.4
  assert M.anls("abcdeXXXXX", gold) == pytest.approx(0.5)  # NL = 5/10 = 0.5: the official scorer keeps 0.5
  assert M.anls("abcdXXXXXX", gold) == 0.0  # NL = 0.6: similarity 0.4, below the threshold
  assert M.anls("abcdefghijXXXXXXXXX", gold) == pytest.approx(1 - 9 / 19)  # NL = 9/19 = 0.47, longer prediction
  assert M.anls("abcdeXXXXX", gold, threshold=0.6) == 0.0
  assert M.anls(" abcdefghij  ", "abcdefghiX") == pytest.approx(1 - 1 / 13)  # lengths of the strings as given


def test_anls_case_space_best_gold_and_empty():
  assert M.anls("  ABCDEFGHIJ ", "abcdefghij") == 1.0
  assert M.anls("new  york", "New York") == 1.0
  assert M.anls("abcd", ["zzzz", "abce"]) == pytest.approx(0.75)
  assert M.anls("", "") == 1.0
  assert M.anls("", "abc") == 0.0


# ---- chrF -------------------------------------------------------------------------------------------------------


def test_chrf_identical_and_empty():
  assert M.chrf("Hello there, world.", "Hello there, world.") == pytest.approx(100.0)
  assert M.chrf("a", "a") == pytest.approx(100.0)
  assert M.chrf("", "hello") == 0.0
  assert M.chrf("hello", "") == 0.0
  assert M.chrf("", "") == 0.0
  assert M.chrf("abc", "xyz") == 0.0


def test_chrf_by_hand():
  # hyp "ab", ref "abc" (char_order 6, beta 2):
  #   1-grams: hyp {a, b}, ref {a, b, c}, 2 matches -> P = 1, R = 2/3
  #   2-grams: hyp {ab}, ref {ab, bc}, 1 match -> P = 1, R = 1/2
  #   3..6-grams: the hypothesis has none, so those orders are left out of the averages
  #   P = 1, R = (2/3 + 1/2) / 2 = 7/12; F2 = 5 P R / (4 P + R) = (35/12) / (55/12) = 7/11
  assert M.chrf("ab", "abc") == pytest.approx(700 / 11)
  assert M.chrf("ab", "ab c") == pytest.approx(700 / 11)  # whitespace is not part of the character n-grams
  assert M.chrf("ab", "abc", beta=1) == pytest.approx(100 * 14 / 19)  # F1 = 2 * 7/12 / (1 + 7/12)
  assert M.chrf("ab", ["xyz", "abc"]) == pytest.approx(700 / 11)  # the best reference


def test_chrf_plus_plus_word_ngrams_by_hand():
  # char_order 1: "abcd" against "abce", P = R = 3/4; word 1-grams [ab, cd] against [ab, ce], P = R = 1/2
  # averages P = R = 5/8, so F = 5/8
  assert M.chrf("ab cd", "ab ce", char_order=1, word_order=1) == pytest.approx(62.5)
  # chrF++ splits a trailing punctuation mark off a word: [hi, !] against [hi, !]
  assert M.chrf("hi!", "hi !", char_order=1, word_order=1) == pytest.approx(100.0)
  with pytest.raises(ValueError, match=r"char_order >= 1"):
    M.chrf("a", "a", char_order=0)


def test_corpus_chrf_sums_statistics_before_the_f_score():
  # sentence 1 ("ab" vs "abc"): 1-grams (hyp 2, ref 3, match 2), 2-grams (1, 2, 1)
  # sentence 2 ("ab" vs "ab"):  1-grams (2, 2, 2), 2-grams (1, 1, 1)
  # summed: 1-grams (4, 5, 4) -> P = 1, R = 4/5; 2-grams (2, 3, 2) -> P = 1, R = 2/3
  # P = 1, R = 11/15; F2 = 5 R / (4 + R) = 55/71
  got = M.corpus_chrf(["ab", "ab"], ["abc", ["zz", "ab"]])
  assert got == pytest.approx(5500 / 71)
  assert got != pytest.approx((M.chrf("ab", "abc") + M.chrf("ab", "ab")) / 2)  # not the mean of sentences
  with pytest.raises(ValueError, match=r"2 hypotheses but 1 references"):
    M.corpus_chrf(["a", "b"], ["a"])


# ---- pass@k, maj@k, aggregates ----------------------------------------------------------------------------------


def test_pass_at_k_matches_the_binomial_formula():
  for n in range(1, 13):
    for c in range(n + 1):
      assert M.pass_at_k(n, c, 1) == pytest.approx(c / n)
      for k in range(1, n + 1):
        assert M.pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)


def test_pass_at_k_large_n_is_stable():
  # C(5000, 1000) ~ 1e1000 overflows a float; the exact rational value is ~ 1 - 0.8^5
  exact = 1 - fractions.Fraction(math.comb(4995, 1000), math.comb(5000, 1000))
  assert M.pass_at_k(5000, 5, 1000) == pytest.approx(float(exact), rel=1e-12)
  assert 0.6 < float(exact) < 0.7
  assert M.pass_at_k(2000, 3, 1) == pytest.approx(3 / 2000)


@pytest.mark.parametrize("n,c,k", [(5, 2, 6), (5, 6, 1), (-1, 0, 1), (5, -1, 1), (5, 2, 0)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
  with pytest.raises(ValueError, match=rf"n={n}, c={c}, k={k}"):
    M.pass_at_k(n, c, k)


def test_majority_vote():
  assert M.majority_vote(["3", "4", " 4 ", "5"]) == "4"
  assert M.majority_vote(["7", "3", "3", "7"]) == "7"  # a tie goes to the first seen
  assert M.majority_vote([None, "2", None]) == "2"
  assert M.majority_vote([None, None]) is None
  assert M.majority_vote([]) is None


def test_maj_at_k():
  samples = ["3", "4", "4", "5", "5", "5"]
  assert not M.maj_at_k_correct(samples, "4", k=1)  # maj@1: the first sample alone
  assert M.maj_at_k_correct(samples, "4", k=3)
  assert not M.maj_at_k_correct(samples, "4", k=6)  # "5" wins with all six
  assert M.maj_at_k_correct([None, "4", None], "4", k=3)
  assert not M.maj_at_k_correct([None], "4", k=1)
  with pytest.raises(ValueError, match=r"k=7"):
    M.maj_at_k_correct(samples, "4", k=7)


def test_maj_at_k_with_math_normalisation():
  samples = ["\\frac12", "1/3", "0.5", "1/3", "\\dfrac{1}{2}"]
  assert M.majority_vote(samples, normalize=E.strip_math) == "\\frac12"  # three votes for 1/2
  assert M.maj_at_k_correct(samples, "\\frac{1}{2}", k=5, equal=E.math_equal, normalize=E.strip_math)
  assert not M.maj_at_k_correct(samples, "\\frac{1}{2}", k=4, equal=E.math_equal)  # raw strings: 1/3 wins


def test_macro_and_micro_accuracy():
  results = {"anatomy": [True], "law": [True, False, False, False]}
  assert M.macro_accuracy(results) == pytest.approx((1.0 + 0.25) / 2)
  assert M.micro_accuracy(results) == pytest.approx(2 / 5)
  with pytest.raises(ValueError, match=r"'law' has no examples"):
    M.macro_accuracy({"anatomy": [True], "law": []})
  with pytest.raises(ValueError):
    M.micro_accuracy({})


# ---- extraction: multiple choice --------------------------------------------------------------------------------


@pytest.mark.parametrize("text,expected", [
    ("Let's think step by step. Water boils at 100 C. The answer is (C).", "C"),
    ("Answer: B", "B"),
    ("so the answer is D.", "D"),
    ("The correct option is **A**", "A"),
    ("the answer is (d)", "D"),
    ("The answer is A. Wait, no: the answer is (B).", "B"),  # the last explicit statement wins
    ("(B) is right: the answer is C", "C"),  # an explicit statement beats a leading letter
    ("C", "C"),
    ("(C) because ice floats", "C"),
    ("B. Paris", "B"),
    ("I would pick **D** here.", "D"),
    ("The final result: $\\boxed{A}$", "A"),
])
def test_multiple_choice_letter(text, expected):
  assert E.multiple_choice_letter(text, 4) == expected


@pytest.mark.parametrize("text", [
    "", "I am not sure.", "A cat is an animal.", "The answer is Carbon.", "The answer is (E).", "answer is d.",
])
def test_multiple_choice_letter_none(text):
  assert E.multiple_choice_letter(text, 4) is None


def test_multiple_choice_letter_ten_choices():
  assert E.multiple_choice_letter("The answer is (J)", 10) == "J"
  assert E.multiple_choice_letter("The answer is (J)", 4) is None
  with pytest.raises(ValueError, match=r"got 11"):
    E.multiple_choice_letter("A", 11)


# ---- extraction: MATH -------------------------------------------------------------------------------------------


def test_last_boxed():
  assert E.last_boxed("so $\\boxed{\\frac{1}{2}}$.") == "\\frac{1}{2}"
  assert E.last_boxed("\\boxed{1} then \\boxed{a^{2}+b_{1}}") == "a^{2}+b_{1}"
  assert E.last_boxed("\\fbox{3}") == "3"
  assert E.last_boxed("$\\boxed 5$ apples") == "5"
  assert E.last_boxed("no box here") is None
  assert E.last_boxed("\\boxed{3") is None


@pytest.mark.parametrize("raw,expected", [
    ("\\left( 1, 2 \\right)", "(1,2)"),
    ("\\dfrac{1}{3}", "\\frac{1}{3}"),
    ("\\frac12", "\\frac{1}{2}"),
    ("\\frac1{72}", "\\frac{1}{72}"),
    ("\\tfrac{3}4", "\\frac{3}{4}"),
    ("\\sqrt2", "\\sqrt{2}"),
    ("3/4", "\\frac{3}{4}"),
    (".5", "\\frac{1}{2}"),
    (".25", "0.25"),
    ("x = 5", "5"),
    ("f(x) = 2", "f(x)=2"),
    ("10\\text{ cm}", "10"),
    ("\\text{(A)}", "(A)"),
    ("90^\\circ", "90"),
    ("90^{\\circ}", "90"),
    ("50\\%", "50"),
    ("\\$5.", "5"),
    ("1\\,000", "1000"),
])
def test_strip_math(raw, expected):
  assert E.strip_math(raw) == expected


def test_math_equal():
  assert E.math_equal("\\dfrac12", "1/2")
  assert E.math_equal("0.5", "\\frac{1}{2}")
  assert E.math_equal("$x = 3$", "3")
  assert not E.math_equal("3", "4")
  assert not E.math_equal("\\frac{2}{4}", "\\frac{1}{2}")  # no symbolic simplification
  assert not E.math_equal(None, "3")


# ---- extraction: numbers ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("text,expected", [
    ("She has 3 + 4 = 7 apples. The answer is 1,234.", "1234"),
    ("The answer is 7 apples and 2 pears.", "7"),
    ("The answer is 5. Double check: the answer is 6.", "6"),
    ("The answer is $18.50.", "18.5"),
    ("so the total is 18.0", "18"),
    ("It drops to -3 degrees.", "-3"),
    ("first 5 and then 6", "6"),  # no answer phrase: the last number
    ("La respuesta es 18.", "18"),
    ("Die Antwort lautet 42.", "42"),
    ("La réponse est 9.", "9"),
    ("答案是 5。", "5"),
    ("答えは12です。", "12"),
    ("Ответ: 12", "12"),
    ("Jibu ni 7.", "7"),
    ("উত্তর হল ১২", "12"),  # Bengali digits
    ("คำตอบคือ 30", "30"),
])
def test_final_number(text, expected):
  assert E.final_number(text) == expected


def test_final_number_none_and_equality():
  assert E.final_number("no numbers at all") is None
  assert E.number_equal("18", "18.00")
  assert E.number_equal("1,000", "1000")
  assert E.number_equal("$5", "5")
  assert not E.number_equal("17", "18")
  assert not E.number_equal(None, "1")


# ---- extraction: code -------------------------------------------------------------------------------------------


def test_code_block():
  assert E.code_block("Here:\n```python\ndef f():\n  return 1\n```\nDone") == "def f():\n  return 1"
  assert E.code_block("```\nx = 1\n```") == "x = 1"
  assert E.code_block("```text\nnot code\n```\n```Python\ny = 2\n```") == "y = 2"  # a python block first
  assert E.code_block("```python\nx = 1\nprint(x") == "x = 1\nprint(x"  # cut off before the closing fence
  assert E.code_block("print(1)") == "print(1)"
