"""Every caller that scores model text is time-bounded: products of powers are refused by the size
guard, and the RL reward, eval's per-sample fallback and ``verify_many(workers=0)`` go through a
per-comparison deadline (issue 12)."""

from __future__ import annotations

import threading
import time

import pytest

from tracewise.verify import pool as verify_pool
from tracewise.verify import VerifyResult, verify
from tracewise.verify.pool import VerifyPool, verify_many

LIMIT_S = 5.0

# (completion, gold, expected reason). Before the guard bounded products, the first took 11 s on an
# idle machine and the three-factor ones never finished.
PRODUCTS = [
    (r"\boxed{(x+1)^{199}(x+2)^{199}}", "(x+1)^{199}", "wrong"),
    (r"\boxed{(x+1)^{199}(x+2)^{199}(x+3)^{199}}", "(x+1)^{199}", "wrong"),
    (r"\boxed{(x-1)^{150}(x+2)^{150}(x+3)^{150}}", "x^2+1", "wrong"),
    (r"\boxed{(x+1)^{199}}", "(x+1)^{199}(x+2)^{199}(x+3)^{199}", "unparseable_gold"),
    (r"\boxed{(a+b)^{120}(a-b)^{120}}", "(a^2-b^2)^{40}", "wrong"),
]


def _timed(fn, *args):
    """``fn(*args)`` in a thread; fails (instead of hanging pytest) when it takes over LIMIT_S."""
    box: dict = {}
    t0 = time.monotonic()
    worker = threading.Thread(target=lambda: box.update(out=fn(*args)), daemon=True)
    worker.start()
    worker.join(LIMIT_S)
    assert not worker.is_alive(), f"took over {LIMIT_S} s"
    return box["out"], time.monotonic() - t0


@pytest.mark.parametrize("text,gold,reason", PRODUCTS)
def test_products_of_powers_are_refused_quickly(text: str, gold: str, reason: str) -> None:
    result, _ = _timed(verify, text, gold)
    assert not result.correct and result.reason == reason


@pytest.mark.parametrize("text,gold", [
    (r"\boxed{(x+1)^{2}(x+2)^{2}}", "x^4+6x^3+13x^2+12x+4"),
    (r"\boxed{(x+1)(x+2)(x+3)(x+4)}", "x^4+10x^3+35x^2+50x+24"),
    (r"\boxed{2(x+1)^{10}}", "2(x+1)^{10}"),
    (r"\boxed{(x+1)^{200}}", "(x+1)^{200}"),
])
def test_small_products_still_compare(text: str, gold: str) -> None:
    result, _ = _timed(verify, text, gold)
    assert result.correct


def test_verify_many_in_process_is_bounded_for_products() -> None:
    t0 = time.monotonic()
    results = verify_many([(t, g, False) for t, g, _ in PRODUCTS], workers=0)
    assert time.monotonic() - t0 < LIMIT_S * len(PRODUCTS)
    assert [r.reason for r in results] == [reason for _, _, reason in PRODUCTS]


def _hang(gold: str, pred: str | None, status: str, parts: tuple = ()) -> VerifyResult:
    """Stands in for a sympy simplification that never ends."""
    while True:
        time.sleep(0.05)


def test_verify_many_in_process_has_a_deadline(monkeypatch) -> None:
    # workers=0 used to call verify() with no deadline at all; now the main thread gets a SIGALRM one.
    monkeypatch.setattr(verify_pool, "judge_prepared", _hang)
    t0 = time.monotonic()
    res = verify_many([("Answer: 1", "1", False)], workers=0, timeout_s=0.5)
    assert res == [VerifyResult(False, "wrong", "1", timed_out=True)]
    assert time.monotonic() - t0 < LIMIT_S
    # The alarm is disarmed afterwards: nothing fires later in this process.
    time.sleep(0.7)


def test_verify_many_in_process_keeps_a_callers_alarm() -> None:
    import signal

    fired: list[int] = []
    previous = signal.signal(signal.SIGALRM, lambda *a: fired.append(1))
    try:
        signal.setitimer(signal.ITIMER_REAL, 30.0)
        assert verify_many([("Answer: 1", "1", False)], workers=0, timeout_s=5)[0].correct
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 0 < remaining <= 30.0 and not fired
        assert signal.getsignal(signal.SIGALRM) is not None and signal.getsignal(signal.SIGALRM) != previous
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def _stall_pool():
    from test_verify_fuzz import stall  # hangs on pred "stall"

    # 3 s: long enough that a real comparison on a loaded machine is not cut off with the stalled one
    with VerifyPool(workers=1, timeout_s=3.0, judge_fn=stall) as pool:
        yield pool


@pytest.fixture
def stalling_pool(_stall_pool, monkeypatch):
    """The shared pool replaced by one whose judge hangs on pred "stall"; its cache and counts start afresh."""
    monkeypatch.setattr(verify_pool, "shared_pool", lambda workers=None, timeout_s=None: _stall_pool)
    _stall_pool._cache.clear()
    _stall_pool.pool.stats = verify_pool.PoolStats()
    return _stall_pool


def test_verify_many_in_process_from_a_thread_uses_the_pool(stalling_pool) -> None:
    box: dict = {}
    t = threading.Thread(target=lambda: box.update(out=verify_many([("Answer: stall", "1", False)], workers=0)))
    t.start()
    t.join(30)
    assert not t.is_alive()
    assert box["out"][0].timed_out and stalling_pool.stats.timeouts == 1


def test_rl_reward_goes_through_the_deadline_pool(stalling_pool) -> None:
    from tracewise.train import rewards as R

    R.clear_verdict_cache()
    corr = R.Correctness(eos_token_id=2)
    t0 = time.monotonic()
    out = corr(prompts=["q", "q", "q"], completions=["Answer: stall", "Answer: 4", "Answer: 5"],
               completion_ids=[[7, 2]] * 3, answer=["4"] * 3)
    assert out == [0.0, 1.0, 0.0]
    assert stalling_pool.stats.timeouts == 1  # the stuck comparison was cut off by the pool's deadline
    assert time.monotonic() - t0 < 30
    R.clear_verdict_cache()


def test_rl_reward_on_a_product_of_powers_is_quick() -> None:
    from tracewise.train import rewards as R

    R.clear_verdict_cache()
    verify_many([("Answer: 1", "1", False)])  # start the shared pool's workers outside the timed call
    corr = R.Correctness(eos_token_id=2)
    texts = [r"\boxed{(x+1)^{199}(x+2)^{199}}", r"\boxed{(x+1)^{199}(x+2)^{199}(x+3)^{199}}", r"\boxed{(1+x)^{199}}"]
    out, _ = _timed(lambda: corr(prompts=["q"] * 3, completions=texts, completion_ids=[[7, 2]] * 3,
                                 answer=["(x+1)^{199}"] * 3))
    assert out == [0.0, 0.0, 1.0]
    R.clear_verdict_cache()


def test_eval_fallback_verdict_goes_through_the_deadline_pool(stalling_pool) -> None:
    from tracewise.backends.base import Completion
    from tracewise.evaluate.stage import completion_to_sample
    from tracewise.core.records import Problem

    c = Completion(request_id="p", sample_idx=0, text="Answer: stall", n_tokens=3, finish_reason="stop")
    problem = Problem(id="p", question="q", answer="1")
    sample = completion_to_sample(c, problem, "e", "b", tokenizer=None)
    assert sample.reason == "wrong" and not sample.correct
    assert stalling_pool.stats.timeouts == 1
