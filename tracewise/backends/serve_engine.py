"""The decoding engine behind ``tracewise serve``: one model thread that interleaves batches.

Requests reach the engine already validated and encoded (``Pending``). The model thread forms a
batch from what is queued (up to ``max_batch`` samples, FIFO, within the KV budget
``max_batch_tokens``: prompt width + max_tokens reserved per sample over every live batch) and
then steps every live batch one token in turn, so a request that arrives while a long one decodes
gets its own batch at once instead of waiting for the long one to end (at most ``max_live_batches``
live). When idle it waits, at most ``batch_wait_ms``, for as many samples as the last round had, so a
lone client never waits and concurrent clients share batches.

Rows of one batch may differ in max_tokens, temperature and top_p; every sample is seeded by its
request's seed and its index only (``HFBackend.make_row``), so what a client gets does not depend on
who shared its batch. Stop strings end a sample as soon as they appear; a cancelled request (client
gone) drops its rows at the next step. A batch that raises is retried one request at a time, so one
request that breaks the model fails alone. Results and streamed text reach the event loop through
``loop.call_soon_threadsafe``; nothing a client sent ever appears in another client's answer.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from tracewise.backends.base import Request, SamplingParams

log = logging.getLogger(__name__)


class ServeError(Exception):
    """A failure with a fixed, client-safe message (never another client's text, never a path)."""

    def __init__(self, status: int, message: str, kind: str = "server_error"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


SHUTTING_DOWN = ServeError(503, "the server is shutting down", "service_unavailable")
GENERATION_FAILED = ServeError(500, "generation failed for this request", "server_error")


@dataclass
class _Text:
    """Incremental detokenisation of one sample (only for streamed samples or ones with stop strings)."""

    prefix: int = 0  # tokens[prefix:read] were decoded last time; decoding from `prefix` keeps word joins right
    read: int = 0
    text: str = ""
    emitted: int = 0  # characters of `text` already streamed
    cut: int = -1  # where a stop string begins, once one appeared

    def push(self, tokenizer: Any, tokens: list[int], stops: list[str]) -> None:
        before = tokenizer.decode(tokens[self.prefix:self.read], skip_special_tokens=False,
                                  clean_up_tokenization_spaces=False)
        after = tokenizer.decode(tokens[self.prefix:], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return  # an incomplete UTF-8 sequence: wait for the next token
        start = len(self.text)
        self.text += after[len(before):]
        self.prefix, self.read = self.read, len(tokens)
        if stops:
            longest = max(len(s) for s in stops)
            window = max(0, start - longest + 1)  # only text that could hold a new match
            hits = [i for i in (self.text.find(s, window) for s in stops) if i >= 0]
            if hits:
                self.cut = min(hits)


@dataclass
class Pending:
    """One admitted request: encoded prompt, settings, and how its results reach the event loop."""

    loop: asyncio.AbstractEventLoop
    request: Request  # id = the seed as text
    prompt_ids: list[int]
    sampling: SamplingParams
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    future: asyncio.Future | None = None  # resolved with a list of choice dicts (or a ServeError)
    events: asyncio.Queue | None = None  # streamed: ("delta", idx, text), ("finish", idx, reason), ("end", usage)
    cancelled: bool = False  # the client went away: set on the loop, read by the model thread
    solo: bool = False  # retried alone after its batch failed
    arrived: float = field(default_factory=time.monotonic)
    left: int = 0
    choices: dict[int, dict] = field(default_factory=dict)
    texts: dict[int, _Text] = field(default_factory=dict)
    completion_tokens: int = 0

    def __post_init__(self) -> None:
        if self.stream:
            self.events = asyncio.Queue()
        else:
            self.future = self.loop.create_future()

    @property
    def n(self) -> int:
        return self.sampling.n

    @property
    def hold(self) -> int:
        """Characters kept back from a stream: the start of a stop string that may still complete."""
        return max((len(s) for s in self.stop), default=1) - 1

    def cancel(self) -> None:
        self.cancelled = True

    # ---- model-thread side: everything below reaches the loop through call_soon_threadsafe ----

    def _post(self, fn: Any, *args: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    def fail(self, err: ServeError) -> None:
        if self.stream:
            self._post(self.events.put_nowait, ("error", err))
        else:
            self._post(_settle, self.future, err)

    def reset(self) -> None:
        self.left, self.choices, self.texts, self.completion_tokens = self.n, {}, {}, 0

    @property
    def streamed_anything(self) -> bool:
        return any(t.emitted for t in self.texts.values())


def _settle(fut: asyncio.Future, value: Any) -> None:
    if fut.done():
        return
    if isinstance(value, BaseException):
        fut.set_exception(value)
    else:
        fut.set_result(value)


@dataclass
class _Live:
    batch: Any  # hf.Decoding
    pendings: list[Pending]


class Engine:
    """Runs ``backend`` (an ``HFBackend``) on one thread; ``submit`` from the event loop."""

    def __init__(self, backend: Any, *, max_batch: int = 64, max_batch_tokens: int = 65536,
                 max_live_batches: int = 4, batch_wait_ms: float = 50.0):
        self.backend = backend
        self.tokenizer = backend.tokenizer
        self.max_batch, self.max_batch_tokens = max_batch, max_batch_tokens
        self.max_live, self.batch_wait = max_live_batches, batch_wait_ms / 1000
        self._inbox: collections.deque[Pending] = collections.deque()
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self.closing = False  # set from a signal handler too: a plain attribute, no lock
        self._target = 1
        self.stats = collections.Counter()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tracewise-serve-model", daemon=True)
            self._thread.start()

    def submit(self, p: Pending) -> None:
        p.reset()
        with self._cv:
            self._inbox.append(p)
            self._cv.notify()

    def close(self) -> None:
        """Stop after the current step; every queued or running request fails with 503."""
        self.closing = True

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    # ---- the model thread --------------------------------------------------------------------

    def _run(self) -> None:
        live: list[_Live] = []
        try:
            while not self.closing:
                with self._cv:
                    while self._inbox and self._inbox[0].cancelled:
                        self._inbox.popleft()
                        self.stats["cancelled_queued"] += 1
                    take = self._take(live)
                    if not take and not live:
                        self._cv.wait(self._idle_wait())
                        continue
                if take:
                    self._start(take, live)
                for lb in list(live):
                    if self.closing:
                        break
                    self._step(lb, live)
        except BaseException:  # a bug here must not leave clients waiting forever
            log.exception("serve: the model thread failed")
        finally:
            self.closing = True
            with self._cv:
                queued, self._inbox = list(self._inbox), collections.deque()
            for p in [p for lb in live for p in lb.pendings] + queued:
                p.fail(SHUTTING_DOWN)

    def _idle_wait(self) -> float:
        if not self._inbox:
            return 0.25  # wake up now and then to notice close()
        return max(0.001, self.batch_wait - (time.monotonic() - self._inbox[0].arrived))

    def _take(self, live: list[_Live]) -> list[Pending]:
        """Pendings for a new batch (FIFO), or [] if none should start now. Called holding the lock."""
        inbox = self._inbox
        if not inbox or len(live) >= self.max_live:
            return []
        if inbox[0].solo:
            return [inbox.popleft()] if not live or self._fits(inbox[0], [], live) else []
        queued = sum(p.n for p in inbox if not p.cancelled)
        waited = time.monotonic() - inbox[0].arrived
        if queued < min(self._target, self.max_batch) and waited < self.batch_wait:
            return []
        take: list[Pending] = []
        rows = 0
        while inbox and not inbox[0].solo:
            p = inbox[0]
            if p.cancelled:
                inbox.popleft()
                self.stats["cancelled_queued"] += 1
                continue
            if rows + p.n > self.max_batch or not self._fits(p, take, live):
                # Alone and idle, a request bigger than the budget still runs (its size is bounded by
                # the model's context at validation); otherwise it waits its turn (FIFO, no starvation).
                if not take and not live:
                    take.append(inbox.popleft())
                break
            take.append(inbox.popleft())
            rows += p.n
        self._target = max(1, rows + sum(p.n for p in inbox))
        return take

    def _fits(self, p: Pending, take: list[Pending], live: list[_Live]) -> bool:
        group = [*take, p]
        width = max(len(q.prompt_ids) for q in group)
        need = sum(q.n * (width + q.sampling.max_tokens) for q in group)
        used = sum(lb.batch.reserved_tokens() for lb in live)
        return used + need <= self.max_batch_tokens

    def _start(self, take: list[Pending], live: list[_Live]) -> None:
        rows = [self.backend.make_row(p.request, idx, p.prompt_ids, p.sampling, owner=p)
                for p in take for idx in range(p.n)]
        try:
            batch = self.backend.start_batch(rows)
        except Exception:
            log.exception("serve: could not start a batch of %d request(s)", len(take))
            self._split(take)
            return
        self.stats["batches"] += 1
        live.append(_Live(batch, take))

    def _step(self, lb: _Live, live: list[_Live]) -> None:
        try:
            finished = lb.batch.step(stop=self._stop_row)
        except Exception:
            log.exception("serve: a batch of %d request(s) failed", len(lb.pendings))
            live.remove(lb)
            self._split(lb.pendings)
            return
        self.stats["steps"] += 1
        for row in finished:
            self._finish_row(row)
        if not lb.batch.active:
            live.remove(lb)

    def _split(self, pendings: list[Pending]) -> None:
        """A failed batch: each request is retried alone (first in line); one that fails alone gets a 500."""
        pendings = [p for p in pendings if not p.cancelled]
        retry = []
        for p in pendings:
            if len(pendings) == 1 or p.solo or (p.stream and p.streamed_anything):
                p.fail(GENERATION_FAILED)
            else:
                p.solo = True
                p.reset()
                retry.append(p)
        self.stats["retried"] += len(retry)
        with self._cv:
            self._inbox.extendleft(reversed(retry))

    def _stop_row(self, row: Any) -> bool:
        """Asked after each new (non-EOS) token: finish this row now?"""
        p: Pending = row.owner
        if p.cancelled:
            self.stats["cancelled_rows"] += 1
            return True
        if not (p.stream or p.stop):
            return False
        t = p.texts.setdefault(row.sample_idx, _Text())
        t.push(self.tokenizer, row.tokens, p.stop)
        if p.stream:
            end = t.cut if t.cut >= 0 else len(t.text) - p.hold
            if end > t.emitted:
                p._post(p.events.put_nowait, ("delta", row.sample_idx, t.text[t.emitted:end]))
                t.emitted = end
        return t.cut >= 0

    def _finish_row(self, row: Any) -> None:
        p: Pending = row.owner
        if p.cancelled:
            return
        t = p.texts.get(row.sample_idx)
        if t is not None and t.cut >= 0:
            text, finish = t.text[:t.cut], "stop"
        else:
            text = self.tokenizer.decode(self.backend.body_tokens(row), skip_special_tokens=False,
                                         clean_up_tokenization_spaces=False)
            finish = row.finish_reason
            cuts = [i for i in (text.find(s) for s in p.stop) if i >= 0]
            if cuts:  # a stop string completed by the last token
                text, finish = text[:min(cuts)], "stop"
        p.completion_tokens += len(row.tokens)
        choice = {"index": row.sample_idx, "text": text, "finish_reason": finish, "n_tokens": len(row.tokens)}
        p.choices[row.sample_idx] = choice
        if p.stream:
            sent = t.text[:t.emitted] if t is not None else ""
            rest = text[len(sent):] if text.startswith(sent) else ""
            p._post(p.events.put_nowait, ("finish", row.sample_idx, rest, finish))
        p.left -= 1
        if p.left == 0:
            usage = {"prompt_tokens": len(p.prompt_ids), "completion_tokens": p.completion_tokens,
                     "total_tokens": len(p.prompt_ids) + p.completion_tokens}
            if p.stream:
                p._post(p.events.put_nowait, ("end", usage))
            else:
                p._post(_settle, p.future, ([p.choices[i] for i in sorted(p.choices)], usage))
