"""Token budgets: ``budget_force`` (s1 budget forcing), the ``truncate`` baseline, and their sweeps
(one generation at the largest budget, cut for the smaller ones)."""

from __future__ import annotations

from tracewise.backends.base import Backend, Completion, Request, SamplingParams
from tracewise.core.tokens import THINK_CLOSE, n_tokens
from tracewise.evaluate.controls.continuation import (Key, _check_backend, _check_budgets, _check_requests,
                                                      _check_text, _continue, _cut_prefixes, _finish, _generate,
                                                      _keys, _phase_sampling, _plain, _positive_int, _Trace)


def truncate(backend: Backend, requests: list[Request], sampling: SamplingParams, budget: int) -> list[Completion]:
    """Baseline: plain generation cut at ``budget`` tokens (thinking + answer). A cut sample keeps
    ``finish_reason="length"``, so ``verify(..., truncated=True)`` counts it wrong, and it is counted."""
    _positive_int(budget, "budget")
    _check_requests(requests, sampling)
    _check_backend(backend, prefix=False)
    return _plain(backend, requests, sampling, budget, {"control": "truncate", "budget": budget})


def _force(
    backend, tokenizer, requests, sampling, budget, first: dict[Key, Completion], final_prompt, answer_tokens
) -> list[Completion]:
    """Budget forcing from each sample's first ``budget`` generated tokens (``first``)."""
    traces: dict[Key, _Trace] = {}
    jobs = []
    for r, i in _keys(requests, sampling):
        c = first[(r.id, i)]
        t = traces[(r.id, i)] = _Trace(r, i, [(c.text, c.n_tokens)], c.finish_reason)
        if c.finish_reason == "stop":
            continue  # finished (closed or not) within the budget: nothing to force
        cut = c.text.find(THINK_CLOSE)
        if cut >= 0:
            # Thinking closed within the budget but the budget also cut the answer: give the answer
            # what is left of its answer_tokens; nothing is inserted.
            answered = c.n_tokens - min(c.n_tokens, n_tokens(tokenizer, c.text[: cut + len(THINK_CLOSE)]))
            if answer_tokens - answered >= 1:
                jobs.append((r, i, c.text, answer_tokens - answered))
            continue
        t.pieces.append((THINK_CLOSE + final_prompt, None))
        jobs.append((r, i, c.text + THINK_CLOSE + final_prompt, answer_tokens))
    second = _continue(backend, jobs, sampling, "answer")
    for key, c in second.items():
        traces[key].pieces.append((c.text, c.n_tokens))
        traces[key].finish = c.finish_reason
    meta = {"control": "budget_force", "budget": budget}
    return [_finish(traces[(r.id, i)], tokenizer, first[(r.id, i)], meta) for r, i in _keys(requests, sampling)]


def budget_force(
    backend: Backend,
    requests: list[Request],
    sampling: SamplingParams,
    budget: int,
    *,
    final_prompt: str = "Final Answer:",
    answer_tokens: int = 64,
) -> list[Completion]:
    """s1 budget forcing: at most ``budget`` generated thinking tokens, then an answer.

    Phase 1 generates with ``max_tokens=budget`` (``sampling.max_tokens`` is not used). A sample
    that ended (EOS) within the budget is complete. One that hit the budget with its thinking
    closed continues its answer up to ``answer_tokens`` answer tokens in all. One that hit it still
    thinking is forced: it continues from ``<generated text></think>{final_prompt}`` for up to
    ``answer_tokens`` tokens (``meta["forced"]``). Thinking never exceeds ``budget`` tokens and
    ``n_tokens <= budget + answer_tokens``. Completions come back in request order, then sample
    index.
    """
    _positive_int(budget, "budget")
    _positive_int(answer_tokens, "answer_tokens")
    _check_text(final_prompt, "final_prompt", empty_ok=True)
    _check_requests(requests, sampling)
    tokenizer = _check_backend(backend, prefix=True)
    first = _generate(backend, requests, _phase_sampling(sampling, "first", budget))
    return _force(backend, tokenizer, requests, sampling, budget, first, final_prompt, answer_tokens)


def budget_sweep(
    backend: Backend,
    requests: list[Request],
    sampling: SamplingParams,
    budgets: list[int],
    *,
    final_prompt: str = "Final Answer:",
    answer_tokens: int = 64,
) -> dict[int, list[Completion]]:
    """``budget_force`` at every budget, sharing phase 1: ``{budget: completions}``.

    Each sample is generated once with the largest budget. Sampling is per-sample deterministic
    and a backend draws a sample's random stream up front, so the first B tokens of that sample
    are the tokens a ``max_tokens=B`` run produces (tested for HFBackend). Each smaller budget's
    phase 1 is cut from it; only phase 2 runs per budget. The result equals separate
    ``budget_force`` runs with the same seed. A sample whose token ids cannot be recovered from its
    text (no ``meta["token_ids"]`` and a non round-tripping tokenization) gets its phase 1
    regenerated at that budget instead.
    """
    _check_budgets(budgets)
    _positive_int(answer_tokens, "answer_tokens")
    _check_text(final_prompt, "final_prompt", empty_ok=True)
    _check_requests(requests, sampling)
    tokenizer = _check_backend(backend, prefix=True)
    return {
        budget: _force(backend, tokenizer, requests, sampling, budget, first, final_prompt, answer_tokens)
        for budget, first in _cut_prefixes(backend, tokenizer, requests, sampling, budgets)
    }


def truncate_sweep(
    backend: Backend, requests: list[Request], sampling: SamplingParams, budgets: list[int]
) -> dict[int, list[Completion]]:
    """``truncate`` at every budget from one generation at the largest (equal to separate runs)."""
    _check_budgets(budgets)
    _check_requests(requests, sampling)
    tokenizer = _check_backend(backend, prefix=False)
    out = {}
    for budget, first in _cut_prefixes(backend, tokenizer, requests, sampling, budgets):
        meta = {"control": "truncate", "budget": budget}
        out[budget] = [
            _finish(_Trace(r, i, [(first[(r.id, i)].text, first[(r.id, i)].n_tokens)], first[(r.id, i)].finish_reason),
                    tokenizer, first[(r.id, i)], meta)
            for r, i in _keys(requests, sampling)
        ]
    return out
