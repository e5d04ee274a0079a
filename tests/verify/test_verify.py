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
