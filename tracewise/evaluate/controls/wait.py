"""``wait_extend`` (s1 extension): a sample that closes its thinking too early continues from its
thinking plus "Wait"; ``wait_sweep`` shares the first generation across ``min_thinking`` values."""

from __future__ import annotations

from tracewise.backends.base import Backend, Completion, Request, SamplingParams
from tracewise.core.tokens import THINK_CLOSE, THINK_OPEN, n_tokens
from tracewise.evaluate.controls.continuation import (Key, _check_backend, _check_budgets, _check_requests,
                                                      _check_text, _continue, _finish, _generate, _keys,
                                                      _non_negative_int, _positive_int, _Trace)


def wait_extend(
    backend: Backend,
    requests: list[Request],
    sampling: SamplingParams,
    min_thinking: int,
    max_waits: int,
    *,
    wait: str = "Wait",
) -> list[Completion]:
    """s1 extension: when a sample closes its thinking after fewer than ``min_thinking`` generated
    thinking tokens, drop the ``</think>`` (and the answer written after it) and continue from the
    thinking plus ``wait``, at most ``max_waits`` times per sample.

    A single space goes before ``wait`` unless the text so far is empty or ends in whitespace or
    ``<think>``. ``sampling.max_tokens`` caps the generated tokens kept in the final text (thinking
    + answer); dropped tokens are ``meta["n_discarded_tokens"]`` and ``meta["waits"]`` counts the
    insertions. ``max_waits=0`` returns the uncontrolled samples.
    """
    tokenizer = _check_wait(backend, requests, sampling, [min_thinking], max_waits, wait)
    first = _generate(backend, requests, sampling)
    return _extend(backend, tokenizer, requests, sampling, first, min_thinking, max_waits, wait)


def wait_sweep(
    backend: Backend, requests: list[Request], sampling: SamplingParams, min_thinkings: list[int], max_waits: int,
    *, wait: str = "Wait",
) -> dict[int, list[Completion]]:
    """``wait_extend`` at every ``min_thinking``, sharing the first (uncontrolled) generation;
    every continuation is seeded per sample and phase, so this equals separate runs."""
    _check_budgets(min_thinkings)
    tokenizer = _check_wait(backend, requests, sampling, min_thinkings, max_waits, wait)
    first = _generate(backend, requests, sampling)
    return {m: _extend(backend, tokenizer, requests, sampling, first, m, max_waits, wait) for m in sorted(set(min_thinkings))}


def _check_wait(backend, requests, sampling, min_thinkings: list[int], max_waits: int, wait: str):
    for m in min_thinkings:
        _non_negative_int(m, "min_thinking")
    _non_negative_int(max_waits, "max_waits")
    _check_text(wait, "wait", empty_ok=False)
    if THINK_CLOSE in wait:
        raise ValueError(f"wait must not contain {THINK_CLOSE!r}, got {wait!r}")
    _check_requests(requests, sampling)
    _positive_int(sampling.max_tokens, "sampling.max_tokens")
    for m in min_thinkings:
        if m >= sampling.max_tokens:
            raise ValueError(f"min_thinking ({m}) must be below sampling.max_tokens ({sampling.max_tokens})")
    return _check_backend(backend, prefix=True)


def _extend(backend, tokenizer, requests, sampling, first: dict[Key, Completion], min_thinking: int, max_waits: int,
            wait: str) -> list[Completion]:
    traces = {(r.id, i): _Trace(r, i, meta={"waits": 0, "n_discarded_tokens": 0}) for r, i in _keys(requests, sampling)}
    latest = first
    for round_ in range(max_waits + 1):
        jobs = []
        for key, c in latest.items():
            t = traces[key]
            cut = c.text.find(THINK_CLOSE)
            if cut >= 0 and round_ < max_waits:
                kept = c.text[:cut]
                k = min(n_tokens(tokenizer, kept), c.n_tokens - 1)
                if t.generated + k < min_thinking:
                    so_far = t.text + kept
                    sep = "" if not so_far or so_far[-1].isspace() or so_far.endswith(THINK_OPEN) else " "
                    t.pieces += [(kept, k), (sep + wait, None)]
                    t.meta["waits"] += 1
                    t.meta["n_discarded_tokens"] += c.n_tokens - k
                    jobs.append((t.request, t.idx, t.text, sampling.max_tokens - t.generated))
                    continue
            t.pieces.append((c.text, c.n_tokens))
            t.finish = c.finish_reason
        if not jobs:
            break
        latest = _continue(backend, jobs, sampling, f"wait{round_ + 1}")
    meta = {"control": "wait_extend", "min_thinking": min_thinking, "max_waits": max_waits}
    return [_finish(traces[(r.id, i)], tokenizer, first[(r.id, i)], meta) for r, i in _keys(requests, sampling)]
