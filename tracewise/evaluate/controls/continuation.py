"""What every test-time control is built from: input checks, and generation by continuation.

A control generates through the Backend protocol only (``_generate``), continues a sample from an
edited prefix (``_continue``), cuts a sample generated at a large budget down to a smaller one
(``_cut_prefixes``, via its token ids) and assembles the final ``Completion`` with the token
accounting described in :mod:`tracewise.evaluate.controls` (``_Trace``, ``_finish``). Each later
phase draws from its own seed stream (``_phase_sampling``).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

from tracewise.backends.base import Backend, Completion, Request, SamplingParams
from tracewise.core.seeding import sample_seed
from tracewise.core.tokens import THINK_CLOSE, THINK_OPEN, n_tokens

log = logging.getLogger(__name__)

Key = tuple[str, int]  # (request id, sample idx)


# ---- validation --------------------------------------------------------------------------------

def supports_prefix(backend: Any) -> bool:
    """Capability check: can ``backend`` continue from ``Request.prefix``? Backends opt in with a
    ``supports_prefix = True`` attribute; anything else is assumed not to."""
    return getattr(backend, "supports_prefix", False) is True


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _non_negative_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    return value


def _check_text(value: Any, name: str, *, empty_ok: bool) -> str:
    if not isinstance(value, str) or (not empty_ok and not value):
        raise ValueError(f"{name} must be a {'' if empty_ok else 'non-empty '}str, got {value!r}")
    return value


def _check_requests(requests: list[Request], sampling: SamplingParams) -> None:
    if not isinstance(sampling, SamplingParams):
        raise ValueError(f"sampling must be SamplingParams, got {type(sampling).__name__}")
    _positive_int(sampling.n, "sampling.n")
    seen: set[str] = set()
    for r in requests:
        if not isinstance(r, Request):
            raise ValueError(f"requests must be Request objects, got {type(r).__name__}")
        if r.id in seen:
            # Same id = same seeds and colliding (id, sample_idx) keys: samples would be mixed up.
            raise ValueError(f"duplicate request id {r.id!r}")
        seen.add(r.id)
        for idx in r.sample_idxs if r.sample_idxs is not None else ():
            if not 0 <= idx < sampling.n:
                raise ValueError(f"request {r.id!r}: sample_idx {idx} is outside 0..{sampling.n - 1}")


def _check_backend(backend: Any, *, prefix: bool) -> Any:
    """Return the backend's tokenizer after checking the capabilities a control needs."""
    name = getattr(backend, "name", type(backend).__name__)
    if prefix and not supports_prefix(backend):
        raise ValueError(
            f"backend {name!r} does not support continuing from Request.prefix (supports_prefix), "
            "which test-time controls need"
        )
    tokenizer = getattr(backend, "tokenizer", None)
    if tokenizer is None:
        raise ValueError(f"backend {name!r} has no tokenizer; controls count tokens in the backend tokenizer")
    return tokenizer


def _check_budgets(budgets: Any) -> list[int]:
    if not isinstance(budgets, (list, tuple)) or not budgets:
        raise ValueError(f"budgets must be a non-empty list of positive ints, got {budgets!r}")
    for b in budgets:
        _positive_int(b, "each budget")
    return list(budgets)


# ---- generation plumbing -----------------------------------------------------------------------

def _phase_sampling(sampling: SamplingParams, phase: str, max_tokens: int) -> SamplingParams:
    seed = sampling.seed if phase == "first" else sample_seed(sampling.seed, f"tracewise.controls/{phase}", 0)
    return dataclasses.replace(sampling, max_tokens=max_tokens, seed=seed)


def _keys(requests: list[Request], sampling: SamplingParams) -> list[tuple[Request, int]]:
    return [(r, i) for r in requests for i in (r.sample_idxs if r.sample_idxs is not None else range(sampling.n))]


def _generate(backend: Backend, requests: list[Request], sampling: SamplingParams) -> dict[Key, Completion]:
    """All completions of one backend call, keyed by (request id, sample idx); all must come back."""
    out: dict[Key, Completion] = {}
    if not requests:
        return out
    for batch in backend.generate(requests, sampling):
        for c in batch:
            out[(c.request_id, c.sample_idx)] = c
    missing = {(r.id, i) for r, i in _keys(requests, sampling)} - set(out)
    if missing:
        raise RuntimeError(f"backend {getattr(backend, 'name', backend)!r} returned no completion for {sorted(missing)[:5]}")
    return out


def _continue(
    backend: Backend, jobs: list[tuple[Request, int, str, int]], sampling: SamplingParams, phase: str
) -> dict[Key, Completion]:
    """Continue samples ``(request, idx, prefix_text, max_tokens)``: one request per sample (their
    prefixes differ); a sample keeps its (id, idx), so its random stream is still its own (drawn
    from the ``phase`` seed).

    All samples go in ONE backend call at the largest ``max_tokens`` (one call per distinct limit
    made wait_extend issue dozens of tiny batches); a sample that ran past its own limit is cut to
    it, which is what a call at that limit returns (see ``budget_sweep``). A sample whose token ids
    cannot be recovered is regenerated at its own limit.
    """
    tokenizer = getattr(backend, "tokenizer")
    reqs, limits = [], {}
    for request, idx, text, max_tokens in jobs:
        reqs.append(dataclasses.replace(request, prefix=request.prefix + text, sample_idxs=[idx]))
        limits[(request.id, idx)] = max_tokens
    if not reqs:
        return {}
    out = _generate(backend, reqs, _phase_sampling(sampling, phase, max(limits.values())))
    redo: dict[int, list[Request]] = {}
    for req in reqs:
        key = (req.id, req.sample_idxs[0])
        c, limit = out[key], limits[key]
        if c.n_tokens <= limit:
            continue
        ids = _token_ids(c, tokenizer)
        if ids is None:
            redo.setdefault(limit, []).append(req)
        else:
            out[key] = Completion(c.request_id, c.sample_idx, _decode(tokenizer, ids[:limit]), limit, "length", dict(c.meta))
    for limit, again in sorted(redo.items()):
        out.update(_generate(backend, again, _phase_sampling(sampling, phase, limit)))
    return out


@dataclass
class _Trace:
    """One sample under construction: pieces of ``(text, generated tokens | None if inserted)``."""

    request: Request
    idx: int
    pieces: list[tuple[str, int | None]] = field(default_factory=list)
    finish: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def text(self) -> str:
        return "".join(t for t, _ in self.pieces)

    @property
    def generated(self) -> int:
        return sum(n for _, n in self.pieces if n is not None)


def _thinking_tokens(pieces: list[tuple[str, int | None]], tokenizer) -> int:
    done = 0
    for text, n in pieces:
        cut = text.find(THINK_CLOSE)
        if cut >= 0:
            return done if n is None else done + min(n, n_tokens(tokenizer, text[: cut + len(THINK_CLOSE)]))
        done += n or 0
    # No </think> at all: still thinking if it was opened, or if a control inserted text into it.
    opened = THINK_OPEN in "".join(t for t, _ in pieces) or any(n is None for _, n in pieces)
    return done if opened else 0


def _finish(trace: _Trace, tokenizer, first: Completion, control_meta: dict) -> Completion:
    meta = {k: first.meta[k] for k in ("prompt_tokens",) if k in first.meta}
    forced = [t for t, n in trace.pieces if n is None]
    meta.update(control_meta)
    meta.update(trace.meta)
    meta.update(
        forced=bool(forced),
        n_thinking_tokens=_thinking_tokens(trace.pieces, tokenizer),
        n_forced_tokens=sum(n_tokens(tokenizer, t) for t in forced),
    )
    meta.setdefault("n_discarded_tokens", 0)
    return Completion(trace.request.id, trace.idx, trace.text, trace.generated, trace.finish, meta)


def _plain(backend, requests, sampling, max_tokens: int, control_meta: dict, insert: str = "") -> list[Completion]:
    tokenizer = getattr(backend, "tokenizer")
    gen = _generate(backend, requests, _phase_sampling(sampling, "first", max_tokens))
    out = []
    for r, i in _keys(requests, sampling):
        c = gen[(r.id, i)]
        pieces = ([(insert, None)] if insert else []) + [(c.text, c.n_tokens)]
        out.append(_finish(_Trace(r, i, pieces, c.finish_reason), tokenizer, c, control_meta))
    return out


def _token_ids(c: Completion, tokenizer) -> list[int] | None:
    """The generated token ids of ``c`` (EOS excluded), or None when they cannot be recovered.

    A backend may report them as ``meta["token_ids"]``; otherwise the text is re-encoded and
    accepted only if it decodes back to the same text with the number of tokens generated.
    """
    body = c.n_tokens - (1 if c.finish_reason == "stop" else 0)
    ids = c.meta.get("token_ids")
    if ids is not None:
        return list(ids[:body])
    ids = tokenizer(c.text, add_special_tokens=False)["input_ids"]
    if len(ids) != body or _decode(tokenizer, ids) != c.text:
        return None
    return list(ids)


def _decode(tokenizer, ids: list[int]) -> str:
    # As the HF backend decodes: special tokens (<think>, </think>) kept, no space clean-up.
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _cut_prefixes(backend, tokenizer, requests, sampling, budgets: list[int]):
    """Yield ``(budget, {key: first-B-tokens completion})`` for ascending ``budgets``, generating
    each sample once at the largest budget and cutting it (see ``budget_sweep``)."""
    ordered = sorted(set(budgets))
    top = _generate(backend, requests, _phase_sampling(sampling, "first", ordered[-1]))
    ids_cache: dict[Key, list[int] | None] = {}
    for budget in ordered:
        first: dict[Key, Completion] = {}
        redo: dict[str, list[int]] = {}
        for r, i in _keys(requests, sampling):
            c = top[(r.id, i)]
            if c.n_tokens <= budget:
                first[(r.id, i)] = c  # ended (or was cut) within this budget: the same sample
                continue
            if (r.id, i) not in ids_cache:
                ids_cache[(r.id, i)] = _token_ids(c, tokenizer)
            ids = ids_cache[(r.id, i)]
            if ids is None:
                redo.setdefault(r.id, []).append(i)
                continue
            first[(r.id, i)] = Completion(r.id, i, _decode(tokenizer, ids[:budget]), budget, "length", dict(c.meta))
        if redo:
            log.info("sweep: regenerating phase 1 of %d samples at budget %d", sum(map(len, redo.values())), budget)
            again = [dataclasses.replace(r, sample_idxs=redo[r.id]) for r in requests if r.id in redo]
            first.update(_generate(backend, again, _phase_sampling(sampling, "first", budget)))
        yield budget, first
