"""verify(): answer extraction, math equivalence, and the never-raise / bounded-time contract."""

from __future__ import annotations

import random
import threading
import time

import pytest

from tracewise.verify import answer as verify_module
from tracewise.core.records import VERDICT_REASONS
from tracewise.verify.answer import VerifyResult, extract_answer, parse_gold_ok, verify

HARMONY = (
    "<|channel|>analysis<|message|>3+4=7. 7-2=5. Maybe \\boxed{7}?<|end|>"
    "<|start|>assistant<|channel|>final<|message|>Answer: 5<|return|>"
)

EXTRACT_CASES = [
    ("So the answer is \\boxed{5}.", "5"),
    ("first \\boxed{3}, then \\boxed{4}", "4"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\boxed{\\frac{\\sqrt{2}}{\\sqrt{3}}} and text", "\\frac{\\sqrt{2}}{\\sqrt{3}}"),
    ("\\fbox{42}", "42"),
    ("\\boxed{5", None),  # unbalanced: no complete box
    ("\\boxed{}} \\boxed {7}", "7"),
    ("Work.\nAnswer: 5", "5"),
    ("**Final Answer:** $\\frac{3}{4}$.", "\\frac{3}{4}"),
    ("Final Answer: The final answer is $0.5$. I hope it is correct.", "0.5"),
    ("Answer: 1\nAnswer: 2", "2"),
    ("The answer is 12.", "12"),
    ("so the final answer is $3.14$.", "3.14"),
    (HARMONY, "5"),  # the final channel wins over boxes drafted in the analysis
    ("<|channel|>final<|message|>\\boxed{8}<|return|>", "8"),
    ("<|channel|>final<|message|>9", "9"),
    ("I have no idea.", None),
    ("", None),
]


@pytest.mark.parametrize("text,expected", EXTRACT_CASES)
def test_extract_answer(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


# (completion, gold, correct, reason, pred)
VERIFY_CASES = [
    ("<think>3+4=7. 7-2=5.</think>5<|end|>", "5", True, "correct", "5"),
    ("<think>hmm</think>So the answer is \\boxed{5}.", "5", True, "correct", "5"),
    ("<think>x</think>\\boxed{{5}}", "5", True, "correct", "{5}"),
    ("\\fbox{42}", "42", True, "correct", "42"),
    ("Answer: 5", "5", True, "correct", "5"),
    (HARMONY, "5", True, "correct", "5"),
    ("analysis3+4=7.assistantfinalThe answer is 7.", "7", True, "correct", "7"),
    ("The answer is 12.", "12", True, "correct", "12"),
    ("\\boxed{1/2}", "0.5", True, "correct", "1/2"),
    ("\\boxed{0.5}", "\\frac{1}{2}", True, "correct", "0.5"),
    ("\\boxed{\\frac{1}{2}}", "1/2", True, "correct", "\\frac{1}{2}"),
    ("\\boxed{\\dfrac12}", "$0.5$", True, "correct", "\\dfrac12"),
    ("\\boxed{x = 5}", "5", True, "correct", "x = 5"),
    ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{1}{\\sqrt{2}}", True, "correct", "\\frac{\\sqrt{2}}{2}"),
    ("\\boxed{(x+1)^{2}}", "x^2+2x+1", True, "correct", "(x+1)^{2}"),
    ("\\boxed{\\{1,2\\}}", "\\{2, 1\\}", True, "correct", "\\{1,2\\}"),
    ("\\boxed{18446744073709551616}", "2^{64}", True, "correct", "18446744073709551616"),
    ("\\boxed{2^{100000}}", "2^{100000}", True, "correct", "2^{100000}"),
    ("\\boxed{6}", "5", False, "wrong", "6"),
    ("\\boxed{0.51}", "1/2", False, "wrong", "0.51"),
    ("<think>x</think>no idea", "5", False, "wrong", "no idea"),
    ("I have no idea.", "5", False, "no_answer", None),
    ("<think>5 is it</think>", "5", False, "no_answer", None),
    ("<think>still going, 5 maybe", "5", False, "truncated", None),
    ("<|channel|>analysis<|message|>still going", "5", False, "truncated", None),
    ("\\boxed{5}", "\\text{", False, "unparseable_gold", None),
    ("\\boxed{5}", "", False, "unparseable_gold", None),
    ("\\boxed{5}", "10^{10^{10}}", False, "unparseable_gold", None),
]


@pytest.mark.parametrize("text,gold,correct,reason,pred", VERIFY_CASES)
def test_verify_table(text: str, gold: str, correct: bool, reason: str, pred: str | None) -> None:
    assert verify(text, gold) == VerifyResult(correct, reason, pred)


def test_caller_truncation_overrides_a_correct_answer() -> None:
    assert verify("\\boxed{5}", "5", truncated=True) == VerifyResult(False, "truncated", "5")


def test_falls_back_to_full_text_when_answer_span_has_no_answer() -> None:
    # The box is inside the thinking and the answer span is empty.
    assert verify("<think>so \\boxed{5}</think>", "5") == VerifyResult(True, "correct", "5")


@pytest.mark.parametrize("gold,ok", [("5", True), ("1/2", True), ("\\frac{1}{2}", True), ("0.5", True),
                                     ("\\boxed{3}", True), ("", False), ("\\frac{", False), ("x" * 3000, False)])
def test_parse_gold_ok(gold: str, ok: bool) -> None:
    assert parse_gold_ok(gold) is ok


def test_reasons_are_the_record_vocabulary() -> None:
    reasons = {verify(text, gold).reason for text, gold, *_ in VERIFY_CASES}
    assert reasons == set(VERDICT_REASONS)


def test_comparison_is_cached() -> None:
    verify("\\boxed{13/26}", "0.5")
    hits = verify_module._compare.cache_info().hits
    assert verify("Answer: 13/26", "0.5") == VerifyResult(True, "correct", "13/26")
    assert verify_module._compare.cache_info().hits == hits + 1


def test_works_off_the_main_thread() -> None:
    # math-verify's default signal-based timeouts raise in non-main threads.
    results: list[VerifyResult] = []
    workers = [threading.Thread(target=lambda: results.append(verify("\\boxed{\\frac{2}{4}}", "0.5"))) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    assert results == [VerifyResult(True, "correct", "\\frac{2}{4}")] * 4


# Inputs that, before the guards in verify.py, hung math-verify for minutes or exhausted memory.
BLOWUPS = [
    "10^{10^{10}}", "9^{9^{9}}", "(10^{10})!", "10000000000!", "\\binom{100000000}{50000000}",
    "\\binom{10^8}{5\\cdot 10^7}", "\\Gamma(10^9)", "\\frac{10^{10^{10}}}{3}", "10^{10^{10}} + 1",
    "\\sqrt{10^{10^{10}}}", "\\cosh(10^{10})", "e^{e^{e^{e^{e}}}}", "\\prod_{k=1}^{10^{9}} k",
    "\\sum_{k=1}^{100000} \\sin(k)", "\\gcd(10^{10^{10}}, 3)", "\\operatorname{zeros}(100000,100000)",
    "(x+1)^{1000}", "x^{10^{10}} - x^{10^{10}}", "\\begin{pmatrix} 10^{10^{10}} & 1 \\end{pmatrix}",
]
HUGE = [
    "\\boxed{" * 100_000, "{" * 100_000 + "}" * 100_000, "a" * 1_000_000, "\\boxed{" + "1" * 5000 + "}",
    "the answer is" + " " * 100_000 + "x", "Answer:" * 50_000, "\n" * 200_000 + "Answer: 6",
    "<think>" + "z" * 1_000_000, "<|channel|>final<|message|>" * 20_000, "$" * 100_000,
    "\\boxed{" + "{" * 60 + "5" + "}" * 60 + "}", "\\boxed{" + "-" * 1900 + "5}", "\\boxed{" + "(" * 45 + ")" * 45 + "}",
]
TOKENS = ["9", "99", "999999", "^{", "^", "}", "{", "!", "\\binom{", "}{", "\\Gamma(", ")", "(", "\\cosh(",
          "e^{", "\\frac{", "\\sqrt[", "]{", "\\sum_{k=1}^{", "\\prod_{k=1}^{", "k", "x", "+", "\\cdot", "-",
          "=", ".5", "\\infty", "\\pi", "\\left(", "\\right)", "\\\\", "&", "\\begin{pmatrix}", "\\end{pmatrix}",
          "\\operatorname{lcm}(", ",", "$", "</think>", "Answer: ", "\\text{", " "]


def _adversarial_cases(n: int) -> list[tuple[str, str]]:
    rng = random.Random(1234)
    cases = [(f"\\boxed{{{b}}}", "5") for b in BLOWUPS] + [(h, "6") for h in HUGE]
    for _ in range(n):
        body = "".join(rng.choice(TOKENS) for _ in range(rng.randint(1, 30)))
        cases.append((f"\\boxed{{{body}}}", rng.choice(["5", "1/2", "x^2", "\\infty"])))
    return cases


def test_adversarial_inputs_return_quickly_without_raising() -> None:
    cases = _adversarial_cases(300)
    results: list[VerifyResult] = []
    slowest = [0.0]

    def run_all() -> None:  # in a worker thread, so that a hang fails the test instead of pytest
        for text, gold in cases:
            start = time.perf_counter()
            results.append(verify(text, gold))
            slowest[0] = max(slowest[0], time.perf_counter() - start)

    worker = threading.Thread(target=run_all, daemon=True)
    worker.start()
    worker.join(timeout=90)
    assert not worker.is_alive(), f"verify hung after {len(results)} of {len(cases)} cases"
    assert len(results) == len(cases)
    assert slowest[0] < 10.0
    assert all(r.reason in VERDICT_REASONS for r in results)
    assert not any(r.correct for r in results[: len(BLOWUPS)])
    assert results[len(BLOWUPS) + HUGE.index("\n" * 200_000 + "Answer: 6")].correct
    assert all(r.pred is None or len(r.pred) <= verify_module.MAX_ANSWER_CHARS for r in results)


@pytest.mark.parametrize("text,gold", [(None, "5"), ("\\boxed{5}", None), (b"\\boxed{5}", "5"), (5, 5)])
def test_wrong_types_never_raise(text: object, gold: object) -> None:
    result = verify(text, gold)  # type: ignore[arg-type]
    assert not result.correct and result.reason in VERDICT_REASONS


# ---------------------------------------------------------------- decisions where tracewise and math-verify differ
# Each documented in tracewise.verify's module docstring; the regression table is test_verify_regression.py.


def test_self_correction_the_last_box_is_the_answer() -> None:
    text = "So $x = \\boxed{5}$. That is wrong; recomputing, $x = \\boxed{7}$."
    assert verify(text, "7") == VerifyResult(True, "correct", "7")
    assert verify(text, "5") == VerifyResult(False, "wrong", "7")


@pytest.mark.parametrize("text,gold,correct,pred", [
    ("$\\boxed{(2, 2)} \\quad and \\quad \\boxed{(6, 2)}$", "(2, 2), (6, 2)", True, "(2, 2), (6, 2)"),
    ("$\\boxed{1},\\boxed{2},\\boxed{3}$", "\\{1,2,3\\}", True, "1, 2, 3"),
    ("$\\boxed{1},\\boxed{2},\\boxed{3}$", "{1,2,3}", True, "1, 2, 3"),
    ("So $x = \\boxed{2}$ or $x = \\boxed{-2}$.", "\\pm 2", True, "2, -2"),
    ("$\\boxed{3},\\boxed{1},\\boxed{2}$", "1, 2, 3", True, "3, 1, 2"),  # a set: order is free
    ("$\\boxed{1}$ and $\\boxed{2}$", "1, 2, 3", False, "1, 2"),  # a part missing
    ("$\\boxed{(2, 2)}$ and $\\boxed{(6, 3)}$", "(2, 2), (6, 2)", False, "(2, 2), (6, 3)"),
    # a box before prose is not part of the final run
    ("$\\boxed{1}$. Checking again, the roots are $\\boxed{2}$ and $\\boxed{3}$.", "2, 3", True, "2, 3"),
    ("$\\boxed{1}$. Checking again, the roots are $\\boxed{2}$ and $\\boxed{3}$.", "1, 2, 3", False, "2, 3"),
    # a box that is itself a list is not combined with others: the last box is the answer
    ("$\\boxed{4}$ and $\\boxed{1, 2, 3}$", "1, 2, 3", True, "1, 2, 3"),
])
def test_multi_part_gold_compares_the_set_of_boxes(text: str, gold: str, correct: bool, pred: str) -> None:
    result = verify(text, gold)
    assert (result.correct, result.pred) == (correct, pred)


@pytest.mark.parametrize("gold,correct", [("3", False), ("4", True)])
def test_hedge_gets_no_credit_for_a_gold_that_is_not_the_last_box(gold: str, correct: bool) -> None:
    assert verify("The answer is $\\boxed{3}$ or $\\boxed{4}$.", gold) == \
        VerifyResult(correct, "correct" if correct else "wrong", "4")


@pytest.mark.parametrize("text,gold,correct", [
    ("The clocks agree at $\\boxed{12:00}$.", "12:00", True),
    ("Answer: 12 : 00", "12:00", True),  # whitespace does not matter
    ("The clocks agree at $\\boxed{1:00}$.", "12:00", False),
])
def test_identical_text_is_the_same_answer(text: str, gold: str, correct: bool) -> None:
    assert verify(text, gold).correct is correct


@pytest.mark.parametrize("pred,correct", [
    ("F_n = \\sum_{k=0}^{n-1} F_k F_{n-k-1}", True),
    ("F_n = \\sum_{k=0}^{n-1} F_{n-k-1} F_k", True),
    ("F_n = \\sum_{k=0}^{n-2} F_k F_{n-k-2}", False),
])
def test_gold_with_a_sum_and_subscripts_is_usable(pred: str, correct: bool) -> None:
    gold = "F_n = \\sum_{k=0}^{n-1} F_k F_{n-k-1}"
    assert parse_gold_ok(gold)
    assert verify(f"$\\boxed{{{pred}}}$", gold).correct is correct


def test_small_numeric_sums_are_compared_and_huge_ones_refused() -> None:
    assert verify("\\boxed{385}", "\\sum_{k=1}^{10} k^2").correct
    assert not parse_gold_ok("\\sum_{k=1}^{100000} \\sin(k)")
    assert not parse_gold_ok("\\prod_{k=1}^{10^{9}} k")


@pytest.mark.parametrize("text,gold,correct", [
    ("$\\boxed{21,16 \\text{ or } 11}$", "21,16,11", True),
    ("$\\boxed{21, 16, 11}$", "21,16 or 11", True),
    ("$\\boxed{19, 46, \\text{ and } 82}$", "19, 46, and 82", True),
    ("$\\boxed{21, 36, \\text{ and } 82}$", "19, 46, and 82", False),
    ("$\\boxed{2 \\text{ and } 3}$", "2, 3", True),
    ("The ages are $\\boxed{21}, \\boxed{16}$ or $\\boxed{11}$.", "21,16 or 11", True),  # one box per part
    ("The ages are $\\boxed{21}, \\boxed{16}$ or $\\boxed{12}$.", "21,16 or 11", False),
])
def test_answer_sets_written_with_or_and(text: str, gold: str, correct: bool) -> None:
    assert verify(text, gold).correct is correct


@pytest.mark.parametrize("gold", ["\\$32,\\!348", "\\$18.90", "\\$36"])
def test_currency_golds_are_usable(gold: str) -> None:
    # Three MATH-500 golds; they were unparseable_gold, so every answer to them counted wrong.
    assert parse_gold_ok(gold)
    assert verify(f"The total is $\\boxed{{{gold}}}$.", gold).correct
    assert verify("\\boxed{" + gold.replace("\\$", "") + "}", gold).correct
