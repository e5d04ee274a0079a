"""Test-time controls as evaluation axes: budget forcing, "Wait" extension, ThinkFree, truncation.

Every control is implemented *by continuation* through the Backend protocol only: generate until a
budget (``max_tokens``) or until the model closes its thinking, edit the text, and continue with
``Request.prefix``. A control therefore behaves the same on every backend that can continue from a
prefix (``supports_prefix``) and that samples deterministically per ``(seed, request.id, idx)``.

Token accounting (all counts in the backend's tokenizer):

* ``Completion.text`` is the full assistant text after the request's own prefix: generated tokens
  *and* the control's inserted text (``</think>Final Answer:``, ``Wait``, ``<think></think>``), so
  ``parse_completion`` splits it as the model would have seen it.
* ``Completion.n_tokens`` counts **generated** tokens only (EOS included, as backends count it);
  inserted text is prefill, not decode, and is reported separately as ``meta["n_forced_tokens"]``
  (each inserted piece tokenized on its own). Generated tokens that a control threw away (answer
  text after an early ``</think>`` that ``wait_extend`` dropped) are ``meta["n_discarded_tokens"]``.
* ``meta["n_thinking_tokens"]`` is the generated tokens up to and including the first
  ``</think>`` when the model wrote it, excluding it when the control inserted it; without any
  ``</think>`` every generated token is thinking if the text holds ``<think>`` or inserted text
  (a ``Wait``), else none (a plain answer). Callers
  that split thinking from answer should use it (and ``n_tokens - n_thinking_tokens`` for the
  answer) rather than re-tokenizing the text, which would count inserted markers as generated.
* ``meta`` also holds ``control``, the control's parameters, ``forced`` (whether the control
  inserted anything into this sample) and the backend's ``prompt_tokens`` when it reports them.

Seeds: the first generation of every control uses ``sampling`` unchanged, so a control that never
intervenes returns exactly the uncontrolled sample. Each later continuation phase draws from its
own stream, ``sample_seed(sampling.seed, "tracewise.controls/<phase>", 0)`` fed back as the seed, so
it does not replay the random numbers of the phase it continues.

Sweeps (``control_sweep``, ``ControlConfig.budgets``, ``tracewise eval --budget 16,32,64``) run every
budget in one call: ``budget_force`` and ``truncate`` generate each sample once at the largest budget
and cut it for the smaller ones (the first B tokens of a seeded sample do not depend on
``max_tokens``); ``wait_extend`` shares its first generation across ``min_thinking`` values. Each
point equals a separate run with the same seed.

Inputs are validated before anything is generated; every problem is a ``ValueError``. Few-shot
exemplars live in ``tracewise.evaluate.few_shot`` (re-exported here).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

from tracewise.backends.base import Backend, Completion, Request, SamplingParams, sample_seed
from tracewise.core.config import doc
from tracewise.core.tokens import THINK_CLOSE, THINK_OPEN, n_tokens

log = logging.getLogger(__name__)

CONTROLS = ("none", "truncate", "budget_force", "wait_extend", "think_free")
THINK_FREE_PREFIX = THINK_OPEN + THINK_CLOSE

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


# ---- controls ----------------------------------------------------------------------------------


def think_free(requests: list[Request], *, prefix: str = THINK_FREE_PREFIX) -> list[Request]:
    """ThinkFree: copies of ``requests`` whose assistant turn starts with an empty thinking span.

    Templates that already open ``<think>`` in the generation prompt (R1-distill) take
    ``prefix="</think>"``. A request that already carries a prefix has started thinking: ValueError.
    """
    _check_text(prefix, "prefix", empty_ok=False)
    out = []
    for r in requests:
        if r.prefix:
            raise ValueError(f"request {r.id!r} already has a prefix ({r.prefix[:40]!r}); ThinkFree needs an empty one")
        out.append(dataclasses.replace(r, prefix=prefix))
    return out


def _plain(backend, requests, sampling, max_tokens: int, control_meta: dict, insert: str = "") -> list[Completion]:
    tokenizer = getattr(backend, "tokenizer")
    gen = _generate(backend, requests, _phase_sampling(sampling, "first", max_tokens))
    out = []
    for r, i in _keys(requests, sampling):
        c = gen[(r.id, i)]
        pieces = ([(insert, None)] if insert else []) + [(c.text, c.n_tokens)]
        out.append(_finish(_Trace(r, i, pieces, c.finish_reason), tokenizer, c, control_meta))
    return out


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


def _check_budgets(budgets: Any) -> list[int]:
    if not isinstance(budgets, (list, tuple)) or not budgets:
        raise ValueError(f"budgets must be a non-empty list of positive ints, got {budgets!r}")
    for b in budgets:
        _positive_int(b, "each budget")
    return list(budgets)


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


# ---- one entry point for the eval stage ---------------------------------------------------------


# Controls with a token parameter that a sweep varies, and the field it sets.
SWEEPABLE = {"budget_force": "budget", "truncate": "budget", "wait_extend": "min_thinking"}
NEEDS_PREFIX = ("budget_force", "wait_extend", "think_free")


@dataclass
class ControlConfig:
    """A test-time control applied while evaluating (``eval.control``)."""

    name: str = doc(f"Control: one of {', '.join(CONTROLS)}.", "none")
    budget: int = doc("Thinking-token budget (budget_force) or total token cap (truncate).", 0)
    budgets: list[int] = doc(
        "Sweep: evaluate at each of these values in one call (budget_force/truncate: budget, one generation "
        "at the largest budget is cut for the smaller ones; wait_extend: min_thinking). With name 'none' the "
        "sweep is budget_force. CLI: tracewise eval --budget 16,32,64.", factory=list)
    answer_tokens: int = doc("budget_force: max answer tokens after the thinking.", 64)
    final_prompt: str = doc("budget_force: text inserted after the forced </think>.", "Final Answer:")
    min_thinking: int = doc("wait_extend: extend thinking shorter than this many tokens.", 0)
    max_waits: int = doc("wait_extend: at most this many 'Wait' insertions per sample.", 0)
    wait: str = doc("wait_extend: the inserted text.", "Wait")
    think_prefix: str = doc("think_free: the empty thinking span ('</think>' if the template opens it).", THINK_FREE_PREFIX)

    def __post_init__(self) -> None:
        # `tracewise eval --budget 16,32` names no control: a budget sweep is s1 budget forcing.
        if self.budgets and self.name == "none":
            self.name = "budget_force"

    def validate(self) -> None:
        if self.name not in CONTROLS:
            raise ValueError(f"unknown control {self.name!r}; valid: {', '.join(CONTROLS)}")
        if self.budgets:
            if not isinstance(self.budgets, (list, tuple)):
                raise ValueError(f"control.budgets must be a list of positive ints, got {self.budgets!r}")
            if self.name not in SWEEPABLE:
                raise ValueError(f"control.budgets: control {self.name!r} has no budget to sweep; "
                                 f"sweepable: {', '.join(SWEEPABLE)}")
            for b in self.budgets:
                _positive_int(b, "each of control.budgets")
            if len(set(self.budgets)) != len(self.budgets):
                raise ValueError(f"control.budgets lists a budget twice: {list(self.budgets)}")
            if getattr(self, SWEEPABLE[self.name]):
                raise ValueError(f"set control.{SWEEPABLE[self.name]} or control.budgets (a sweep), not both")
        elif self.name in ("budget_force", "truncate"):
            _positive_int(self.budget, f"control.budget ({self.name})")
        if self.name == "budget_force":
            _positive_int(self.answer_tokens, "control.answer_tokens")
        if self.name == "wait_extend":
            _non_negative_int(self.min_thinking, "control.min_thinking")
            _non_negative_int(self.max_waits, "control.max_waits")

    def at(self, value: int) -> "ControlConfig":
        """This control at one point of its sweep (``budgets`` cleared)."""
        return dataclasses.replace(self, budgets=[], **{SWEEPABLE[self.name]: value})

    @property
    def points(self) -> list["ControlConfig"]:
        """The single controls this config evaluates: one per swept value, in ascending order."""
        return [self.at(b) for b in sorted(self.budgets)] if self.budgets else [self]

    @property
    def swept_value(self) -> int | None:
        """The control's token parameter (budget, or min_thinking for wait_extend); None if it has none."""
        return getattr(self, SWEEPABLE[self.name]) if self.name in SWEEPABLE else None

    @property
    def label(self) -> str:
        """Short tag for tables: 'none', 'budget_force@512', 'wait_extend@256x2', 'think_free'."""
        if self.name in ("budget_force", "truncate"):
            return f"{self.name}@{self.budget}"
        if self.name == "wait_extend":
            return f"wait_extend@{self.min_thinking}x{self.max_waits}"
        return self.name


def check_backend_for(control: ControlConfig, backend: Any) -> None:
    """ValueError unless ``backend`` (an instance or a backend class) can run ``control``."""
    if control.name in NEEDS_PREFIX and not supports_prefix(backend):
        name = getattr(backend, "name", getattr(backend, "__name__", type(backend).__name__))
        raise ValueError(f"control {control.name!r} continues a prefix, but backend {name!r} does not support "
                         "continuing from Request.prefix (supports_prefix); use control 'truncate' or 'none'")


def control_sweep(
    control: ControlConfig, backend: Backend, requests: list[Request], sampling: SamplingParams
) -> dict[int, list[Completion]]:
    """Run every point of ``control.budgets`` in one call, sharing generation across points:
    ``{swept value: completions}``, each equal to a separate ``run_control`` at that value."""
    control.validate()
    if not control.budgets:
        raise ValueError("control_sweep needs control.budgets; use run_control for a single setting")
    c = control
    if c.name == "budget_force":
        return budget_sweep(backend, requests, sampling, c.budgets, final_prompt=c.final_prompt,
                            answer_tokens=c.answer_tokens)
    if c.name == "truncate":
        return truncate_sweep(backend, requests, sampling, c.budgets)
    return wait_sweep(backend, requests, sampling, c.budgets, c.max_waits, wait=c.wait)


def run_control(
    control: ControlConfig | str, backend: Backend, requests: list[Request], sampling: SamplingParams, **params: Any
) -> list[Completion]:
    """Run ``requests`` under a control (a ControlConfig, or a name plus its parameters)."""
    if isinstance(control, str):
        if control not in CONTROLS:
            raise ValueError(f"unknown control {control!r}; valid: {', '.join(CONTROLS)}")
        names = {f.name for f in dataclasses.fields(ControlConfig)}
        unknown = set(params) - names
        if unknown:
            raise ValueError(f"unknown control parameters {sorted(unknown)}")
        control = ControlConfig(name=control, **params)
    elif params:
        raise ValueError("pass parameters either in the ControlConfig or as keywords, not both")
    control.validate()
    if control.budgets:
        raise ValueError("control.budgets is a sweep: use control_sweep")
    c = control
    if c.name == "budget_force":
        return budget_force(backend, requests, sampling, c.budget, final_prompt=c.final_prompt, answer_tokens=c.answer_tokens)
    if c.name == "wait_extend":
        return wait_extend(backend, requests, sampling, c.min_thinking, c.max_waits, wait=c.wait)
    if c.name == "truncate":
        return truncate(backend, requests, sampling, c.budget)
    _check_requests(requests, sampling)
    if c.name == "think_free":
        reqs = think_free(requests, prefix=c.think_prefix)
        _check_backend(backend, prefix=True)
        # The inserted span is part of the assistant text (so the parse sees empty thinking).
        return _plain(backend, reqs, sampling, sampling.max_tokens, {"control": "think_free"}, insert=c.think_prefix)
    _check_backend(backend, prefix=False)
    return _plain(backend, requests, sampling, sampling.max_tokens, {"control": "none"})


# Few-shot exemplars moved to tracewise.evaluate.few_shot; re-exported for callers of the old location.
from tracewise.evaluate.few_shot import few_shot_messages, load_exemplars  # noqa: E402,F401
