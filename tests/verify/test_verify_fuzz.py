"""Safe, bounded verification: fuzzing, deadlines that work off the main thread, cache, no code execution."""

from __future__ import annotations

import ast
import random
import threading
import time
from pathlib import Path

import pytest

import tracewise
from tracewise.core.records import VERDICT_REASONS
from tracewise.verify.answer import VerifyResult, judge_prepared, prepare, verify
from tracewise.verify.pool import VerifyPool, verify_many

TIMEOUT_S = 2.0
SLACK_S = 1.0  # scheduling on a loaded 2-core machine: the parent notices a deadline a little late
MAX_PREPARE_S = 0.5  # extraction runs in the caller, unbounded by the pool: it must stay linear
DEFAULT_N = 500  # ~10 s on a loaded 2-core machine; the slow test runs 10,000

_ATOMS = ["0", "1", "7", "42", "-", "+", "*", "/", "^", "!", ".", ",", "=", "x", "y", "\\pi", "e", "i",
          "{", "}", "(", ")", "[", "]", "\\frac{", "\\sqrt{", "\\boxed{", "\\left(", "\\right)", "\\cdot",
          "\\infty", "\\binom{", "\\sum_{k=1}^{", "\\int", "\\text{", "\\begin{pmatrix}", "&", "\\\\",
          "\\end{pmatrix}", "$", "\\(", "\\)", " ", "\n", "é", "√", "∞", "½", "٣", "\u202e", "\ud800", "🙂",
          "10^{10^{10}}", "9^9^9^9", "(10^{10})!", "\\Gamma(10^9)", "\\operatorname{zeros}(", "%", "\\%",
          "\\dfrac", "\\mathbf{", "\\overline{", "answer is", "Answer:", "<think>", "</think>", "<|channel|>"]


def _adversarial(rng: random.Random) -> str:
    kind = rng.randrange(12)
    depth = rng.choice([3, 11, 13, 49, 200, 5000])
    if kind == 0:
        return "{" * depth + "1" + "}" * depth
    if kind == 1:
        return "\\frac{" * depth + "1" + "}{2}" * depth
    if kind == 2:
        return "^".join(["9"] * rng.randint(2, 8))
    if kind == 3:
        return "^{".join(["10"] * rng.randint(2, 6)) + "}" * 5
    if kind == 4:
        return str(rng.randint(1, 9)) * rng.choice([20, 4301, 10_000, 100_000])
    if kind == 5:
        return "(" * depth + "x+1" + ")" * depth + f"^{{{rng.choice([2, 200, 1000, 10**6])}}}"
    if kind == 6:
        return "".join(chr(rng.randrange(0x20, 0x2FFFF)) for _ in range(rng.randint(1, 300)))
    if kind == 7:
        return f"\\binom{{{10**rng.randint(3, 9)}}}{{{10**rng.randint(2, 8)}}}"
    if kind == 8:
        return "\\sqrt{" * depth + "2" + "}" * depth
    if kind == 9:
        return "1" + "+1" * rng.choice([10, 1000, 50_000])
    if kind == 10:
        return "[" * depth + "(" * depth
    return "\\begin{pmatrix}" + "&".join(["10^{10^{10}}"] * rng.randint(1, 50)) + "\\end{pmatrix}"


def fuzz_cases(n: int, seed: int = 0) -> list[tuple[str, str, bool]]:
    """``n`` (completion, gold, truncated) triples: random token soup, adversarial shapes, and both as gold."""
    rng = random.Random(seed)
    golds = ["1", "\\frac{1}{2}", "x^2+1", "\\sqrt{2}", "(1, 2)", "3.14", "\\pi"]
    out = []
    for i in range(n):
        s = _adversarial(rng) if i % 3 == 0 else "".join(rng.choice(_ATOMS) for _ in range(rng.randint(1, 40)))
        wrap = rng.randrange(4)
        text = [f"<think>work</think>\\boxed{{{s}}}", f"Answer: {s}", s, f"<think>{s}"][wrap]
        gold = s if i % 7 == 0 else rng.choice(golds)
        out.append((text, gold, rng.random() < 0.05))
    return out


def _check(cases: list[tuple[str, str, bool]], workers: int = 2) -> VerifyPool:
    slowest = 0.0
    for text, gold, trunc in cases:
        t0 = time.perf_counter()
        prepare(text, gold, truncated=trunc)
        slowest = max(slowest, time.perf_counter() - t0)
    assert slowest < MAX_PREPARE_S, f"in-process extraction took {slowest:.2f} s on one input"
    pool = VerifyPool(workers=workers, timeout_s=TIMEOUT_S)
    try:
        results = pool.verify_many(cases)
        assert len(results) == len(cases)
        for r in results:
            assert isinstance(r, VerifyResult) and r.reason in VERDICT_REASONS
            assert r.correct is False or r.reason == "correct"
        # Every comparison that ran was bounded by its deadline (timed-out ones were killed at it).
        assert pool.stats.max_elapsed_s <= TIMEOUT_S + SLACK_S, pool.stats
        assert pool.stats.errors == 0, pool.stats  # judge_prepared never raises, even in a worker
    except BaseException:
        pool.close()
        raise
    return pool


def test_fuzz_default(tmp_path: Path) -> None:
    """DEFAULT_N random/adversarial inputs (10,000 in the slow test): no exception, every call within its bound."""
    cases = fuzz_cases(DEFAULT_N)
    pool = _check(cases)
    with pool:
        tasks = pool.stats.tasks
        assert tasks < len(cases) + 50  # distinct pairs only (plus one gold check per distinct gold)
        again = pool.verify_many(cases)  # all cached: not one task goes to a worker
        assert pool.stats.tasks == tasks and pool.hits > 0
        assert [r.correct for r in again] == [r.correct for r in pool.verify_many(cases)]


@pytest.mark.slow
def test_fuzz_10k() -> None:
    _check(fuzz_cases(10_000, seed=1), workers=2).close()


def test_pool_agrees_with_in_process_verify() -> None:
    cases = [("<think>a</think>\\boxed{\\frac{1}{2}}", "0.5", False), ("Answer: 3", "4", False),
             ("<think>unfinished", "1", False), ("no answer here", "1", False), ("Answer: 2", "\\frac{", False),
             ("Answer: 7", "7", True), ("<think>x</think>Answer: " + "1" * 3000, "1", False)]
    with VerifyPool(workers=1, timeout_s=TIMEOUT_S) as pool:
        assert pool.verify_many(cases) == [verify(t, g, truncated=tr) for t, g, tr in cases]
    assert [r.reason for r in verify_many(cases, workers=0)] == \
        ["correct", "wrong", "truncated", "no_answer", "unparseable_gold", "truncated", "wrong"]


def stall(gold: str, pred: str | None, status: str, parts: tuple = ()) -> VerifyResult:
    """A judge that never returns on one input (a stand-in for a sympy simplification that never ends)."""
    if pred == "stall":
        while True:
            time.sleep(0.1)
    return judge_prepared(gold, pred, status, parts)


def _stalling_batch(pool: VerifyPool) -> tuple[list[VerifyResult], float]:
    t0 = time.monotonic()
    res = pool.verify_many([("Answer: 1", "1", False), ("Answer: stall", "1", False), ("Answer: 2", "1", False)])
    return res, time.monotonic() - t0


def test_deadline_kills_a_stuck_comparison_from_a_thread() -> None:
    """The bound holds off the main thread (math-verify's signal.alarm cannot) and the pool recovers."""
    box: dict = {}
    with VerifyPool(workers=1, timeout_s=1.0, judge_fn=stall) as pool:
        t = threading.Thread(target=lambda: box.update(out=_stalling_batch(pool)))
        t.start()
        t.join(30)
        assert not t.is_alive(), "verify_many hung past its deadline"
        (ok, stuck, wrong), elapsed = box["out"]
        assert ok.correct and not ok.timed_out
        assert stuck == VerifyResult(False, "wrong", "stall", timed_out=True)
        assert wrong.reason == "wrong" and not wrong.timed_out  # served by the replacement worker
        assert pool.stats.timeouts == 1 and elapsed < 1.0 + 5 * SLACK_S + 3  # + one worker restart
        # The timeout is cached like any verdict: the same pair does not stall the pool again.
        t0 = time.monotonic()
        assert pool.verify_many([("Answer: stall", "1", False)])[0].timed_out
        assert time.monotonic() - t0 < 0.5


def _in_child(q) -> None:  # runs in a daemonic multiprocessing child, where multiprocessing pools refuse to start
    with VerifyPool(workers=1, timeout_s=1.0, judge_fn=stall) as pool:
        res, _ = _stalling_batch(pool)
    q.put([r.timed_out for r in res])


def test_deadline_works_inside_a_daemonic_worker_process() -> None:
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_in_child, args=(q,), daemon=True)
    p.start()
    try:
        assert q.get(timeout=60) == [False, True, False]
    finally:
        p.join(10)
        if p.is_alive():
            p.kill()


def _dangerous_calls(path: Path) -> set[str]:
    """Calls that would run a string as code: builtins by bare name, sympy's eval-based parsers by any name."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name) and f.id in {"eval", "exec", "compile", "__import__", "sympify", "parse_expr", "S"}:
                found.add(f.id)
            if isinstance(f, ast.Attribute) and f.attr in {"sympify", "parse_expr", "S", "eval", "exec"}:
                found.add(f.attr)
    return found


def test_no_code_execution_of_model_text(tmp_path: Path) -> None:
    """verify never evals model text: no eval/exec/sympify/parse_expr in our code; math-verify parses."""
    root = Path(tracewise.__file__).parent
    for name in ("verify/answer.py", "core/text.py", "verify/pool.py"):
        assert not _dangerous_calls(root / name), name
    marker = tmp_path / "pwned"
    payloads = [f"__import__('os').system('touch {marker}')", f"open('{marker}','w')",
                f"(lambda: __import__('pathlib').Path('{marker}').touch())()"]
    cases = [(f"<think>x</think>\\boxed{{{p}}}", g, False) for p in payloads for g in ("1", p)]
    cases += [(f"Answer: {p}", "1", False) for p in payloads]
    for t, g, tr in cases:
        verify(t, g, truncated=tr)
    verify_many(cases, workers=1)
    assert not marker.exists()
