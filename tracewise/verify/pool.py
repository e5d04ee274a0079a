"""Verification with a hard time bound per comparison: a process pool with per-task deadlines.

math-verify bounds its own run time with ``signal.alarm``, which works only in a process's main
thread; ``tracewise.verify.answer`` switches it off and refuses inputs whose *size* could blow up. Size
guards cannot prove that every sympy simplification is fast, so batches go through this pool:

* the cheap, linear-time extraction (:func:`tracewise.verify.answer.prepare`) runs in the caller;
* math-verify parsing and comparison (:func:`tracewise.verify.answer.judge_prepared`) runs in worker
  processes; the parent waits on the workers' pipes with a deadline per task, and a worker that
  misses it is SIGKILLed and replaced. No signals are involved in the caller, so this works from
  any thread, and workers are ordinary (non-daemon) processes, so it works inside worker processes;
* results are cached by ``(gold, pred, status, parts)`` (the pair, whether it was compared at all,
  and the other boxes of a multi-box answer),
  and each distinct gold is checked once: a gold that cannot be parsed in time is
  ``unparseable_gold`` for every trace, without paying the deadline again per trace;
* workers cap their address space (``memory_mb``), so a ``9^{9^{9^9}}`` that escapes the guards
  dies of MemoryError inside the worker instead of swapping the machine.

A task that times out or kills its worker counts as ``wrong`` (``VerifyResult.timed_out``): no
benchmark answer needs seconds of sympy time, and the verdict keeps the extracted ``pred``.
Workers are fresh interpreters (``python -c``, ~0.5 s to import ``tracewise.verify.answer``) talking over
a socketpair, not ``multiprocessing`` children: ``spawn``/``forkserver`` re-import the caller's
``__main__`` (which breaks scripts and notebooks) and ``fork`` copies a parent's torch threads and
locks. Only the parent holds the other end of a worker's socket, so when the pool's process dies
(a SIGKILLed stage included) the worker reads EOF and exits: no orphans.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Iterable, Sequence

from tracewise.verify.answer import VerifyResult, judge_prepared, prepare

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0  # a plain comparison takes ~1-20 ms; 5 s is slack for a loaded machine
DEFAULT_MEMORY_MB = 2048
CACHE_SIZE = 200_000
STARTUP_TIMEOUT_S = 120.0  # importing sympy on a loaded machine; not part of any task's deadline
_TIMEOUT = object()  # marks a task that missed its deadline or killed its worker


def default_workers() -> int:
    return max(1, min(4, (os.cpu_count() or 2) - 1))


def _worker_entry(fd: int, memory_mb: int) -> None:
    """Entry point of a worker interpreter (see ``DeadlinePool._spawn``)."""
    sys.stdout = sys.stderr  # nothing may write into the parent's terminal by accident
    _worker_main(Connection(fd), memory_mb)


def _worker_main(conn, memory_mb: int) -> None:
    """Run ``fn(*args)`` for each task received; exit when the pool's process goes away."""
    if memory_mb:
        try:
            import resource

            limit = memory_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        except (ImportError, ValueError, OSError):  # not Linux, or a hard limit already lower
            pass
    try:  # math-verify loads its grammar lazily (~0.3 s): do it before the first deadline starts
        judge_prepared("1", "1", "compare")
    except Exception:
        pass
    try:
        conn.send("ready")
    except (EOFError, OSError):
        return
    parent = os.getppid()
    while True:
        try:
            if not conn.poll(1.0):
                if os.getppid() != parent:  # reparented: whoever started us is gone
                    return
                continue
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        fn, args = task
        try:
            out = (True, fn(*args))
        except BaseException as e:  # MemoryError, RecursionError, ...: report, keep serving
            out = (False, f"{type(e).__name__}: {e}"[:500])
        try:
            conn.send(out)
        except (EOFError, OSError):
            return


@dataclass
class _Worker:
    proc: Any
    conn: Any
    task: int | None = None  # index being computed
    ready: bool = False  # imported and warmed up (its first message)
    deadline: float = 0.0
    started: float = 0.0


@dataclass
class PoolStats:
    tasks: int = 0
    timeouts: int = 0
    errors: int = 0
    max_elapsed_s: float = 0.0
    elapsed_s: list[float] = field(default_factory=list, repr=False)


class DeadlinePool:
    """``map(fn, arglist)`` over worker processes, each task bounded by ``timeout_s`` wall seconds.

    ``fn`` must be importable (pickled by reference). A task that misses its deadline, or whose
    worker dies, yields ``on_timeout``; an exception inside ``fn`` yields ``on_error(message)``.
    Thread-safe: one map runs at a time.
    """

    def __init__(self, workers: int | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                 memory_mb: int = DEFAULT_MEMORY_MB):
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.n_workers = workers or default_workers()
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self._pid = os.getpid()
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self.stats = PoolStats()

    def _spawn(self) -> _Worker:
        ours, theirs = socket.socketpair()
        code = f"from tracewise.verify.pool import _worker_entry; _worker_entry({theirs.fileno()}, {self.memory_mb})"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=[theirs.fileno()], env=env,
                                stdin=subprocess.DEVNULL)
        theirs.close()
        return _Worker(proc, Connection(ours.detach()), deadline=time.monotonic() + STARTUP_TIMEOUT_S)

    def _kill(self, w: _Worker) -> None:
        try:
            w.proc.kill()
            w.proc.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        w.conn.close()

    def close(self) -> None:
        with self._lock:
            if os.getpid() != self._pid:  # a forked copy does not own these workers
                self._workers = []
                return
            for w in self._workers:
                try:
                    w.conn.send(None)
                except (OSError, ValueError):
                    pass
            for w in self._workers:
                try:
                    w.proc.wait(1)
                    w.conn.close()
                except subprocess.TimeoutExpired:
                    self._kill(w)
            self._workers = []

    def __enter__(self) -> "DeadlinePool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def map(self, fn: Callable, arglist: Sequence[tuple], on_timeout: Any = None,
            on_error: Callable[[str], Any] = lambda msg: None) -> list[Any]:
        with self._lock:
            if os.getpid() != self._pid:
                raise RuntimeError("a DeadlinePool cannot be used from a forked child; create one there")
            return self._map(fn, arglist, on_timeout, on_error)

    def _map(self, fn, arglist, on_timeout, on_error) -> list[Any]:
        n = len(arglist)
        results: list[Any] = [None] * n
        if not n:
            return results
        while len(self._workers) < min(self.n_workers, n):  # started together: one import's wait, not N
            self._workers.append(self._spawn())
        nxt = 0
        # A worker is starting (not ready: waiting for its "ready", outside any task's deadline),
        # idle (ready, no task) or busy (ready, a task with a deadline). A replacement starts while
        # the others keep working, so one stuck task never delays another task's deadline check.
        while True:
            now = time.monotonic()
            for w in self._workers:
                if w.ready and w.task is None and nxt < n:
                    w.task, w.started, w.deadline = nxt, now, now + self.timeout_s
                    nxt += 1
                    try:
                        w.conn.send((fn, arglist[w.task]))
                    except (OSError, ValueError):  # died between tasks: the deadline check replaces it
                        w.deadline = now
            pending = [w for w in self._workers if not w.ready or w.task is not None]
            if nxt >= n and not any(w.task is not None for w in pending):
                return results
            wait_s = max(0.0, min(w.deadline for w in pending) - time.monotonic())
            for conn in wait([w.conn for w in pending], timeout=wait_s):
                w = next(x for x in pending if x.conn is conn)
                now = time.monotonic()
                try:
                    msg = conn.recv()
                except (EOFError, OSError):  # the worker died (segfault, OOM killer): replace it
                    self._fail(w, results, on_timeout, now)
                    continue
                if not w.ready:
                    w.ready = msg == "ready"
                    continue
                ok, value = msg
                results[w.task] = value if ok else on_error(value)
                self._record(now - w.started, error=not ok)
                w.task = None
            now = time.monotonic()
            for w in pending:
                if now >= w.deadline and (w.task is not None or not w.ready):
                    if w.task is not None:
                        log.warning("verify: a comparison exceeded %.1f s; its worker was killed and replaced",
                                    self.timeout_s)
                    self._fail(w, results, on_timeout, now)

    def _fail(self, w: _Worker, results: list, on_timeout: Any, now: float) -> None:
        """Record ``w``'s task (if any) as timed out and put a fresh worker in its place."""
        if w.task is not None:
            results[w.task] = on_timeout
            self._record(now - w.started, timeout=True)
        elif not w.ready:
            self._kill(w)
            raise RuntimeError(f"a verify worker failed to start within {STARTUP_TIMEOUT_S:.0f} s "
                               f"(exit code {w.proc.poll()}); is tracewise importable by {sys.executable}?")
        self._kill(w)
        fresh = self._spawn()
        w.proc, w.conn, w.task, w.ready, w.deadline = fresh.proc, fresh.conn, None, False, fresh.deadline

    def _record(self, elapsed: float, timeout: bool = False, error: bool = False) -> None:
        s = self.stats
        s.tasks += 1
        s.timeouts += timeout
        s.errors += error
        s.max_elapsed_s = max(s.max_elapsed_s, elapsed)
        if len(s.elapsed_s) < 1_000_000:
            s.elapsed_s.append(elapsed)


def _gold_ok(gold_s: str) -> bool:
    return judge_prepared(gold_s, None, "no_answer").reason != "unparseable_gold"


class VerifyPool:
    """Batched, cached, deadline-bounded :func:`tracewise.verify.answer.verify`."""

    def __init__(self, workers: int | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                 memory_mb: int = DEFAULT_MEMORY_MB, cache_size: int = CACHE_SIZE,
                 judge_fn: Callable[..., VerifyResult] = judge_prepared):
        self.pool = DeadlinePool(workers, timeout_s, memory_mb)
        self.judge_fn = judge_fn
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple, VerifyResult] = OrderedDict()
        self._gold: dict[str, bool] = {}
        self._lock = threading.Lock()
        self.hits = 0

    @property
    def stats(self) -> PoolStats:
        return self.pool.stats

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> "VerifyPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def verify_many(self, items: Iterable[tuple[Any, Any, bool]]) -> list[VerifyResult]:
        """``[(completion_text, gold, truncated), ...]`` → one :class:`VerifyResult` each, in order."""
        prepared = [prepare(text, gold, truncated=bool(trunc)) for text, gold, trunc in items]
        with self._lock:
            golds = sorted({key[0] for key in prepared} - set(self._gold))
            if golds:
                oks = self.pool.map(_gold_ok, [(g,) for g in golds], on_timeout=False, on_error=lambda m: False)
                self._gold.update(zip(golds, oks))
            out: list[VerifyResult | None] = [None] * len(prepared)
            todo: dict[tuple, list[int]] = {}
            for i, key in enumerate(prepared):
                gold_s, pred, status, _parts = key
                if not self._gold[gold_s]:
                    out[i] = VerifyResult(False, "unparseable_gold", None)
                elif status != "compare":
                    out[i] = VerifyResult(False, status if status in ("truncated", "no_answer") else "wrong", pred)
                elif key in self._cache:
                    self._cache.move_to_end(key)
                    out[i] = self._cache[key]
                    self.hits += 1
                else:
                    todo.setdefault(key, []).append(i)
            keys = list(todo)
            results = self.pool.map(self.judge_fn, keys, on_timeout=_TIMEOUT, on_error=lambda m: None)
            for key, res in zip(keys, results):
                if res is _TIMEOUT or res is None:
                    res = VerifyResult(False, "wrong", key[1], timed_out=res is _TIMEOUT)
                self._cache[key] = res
                for i in todo[key]:
                    out[i] = res
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return out  # type: ignore[return-value]


_SHARED: dict[tuple, VerifyPool] = {}
_SHARED_LOCK = threading.Lock()


def shared_pool(workers: int | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> VerifyPool:
    """One pool per process and setting, started on first use and closed at exit (cache included)."""
    key = (os.getpid(), workers or default_workers(), timeout_s)
    with _SHARED_LOCK:
        pool = _SHARED.get(key)
        if pool is None:
            pool = _SHARED[key] = VerifyPool(key[1], timeout_s)
        return pool


@atexit.register
def _close_shared() -> None:
    for (pid, *_), pool in list(_SHARED.items()):
        if pid == os.getpid():
            pool.close()
    _SHARED.clear()


class _Deadline(BaseException):
    """Raised by the alarm of :func:`_judge_in_process`; a BaseException so that no ``except Exception``
    inside verify or math-verify swallows it (and caches a verdict for an unfinished comparison)."""


def _judge_in_process(gold_s: str, pred: str | None, status: str, parts: tuple, timeout_s: float) -> VerifyResult:
    """:func:`judge_prepared` in this process's main thread, cut off after ``timeout_s`` by SIGALRM."""
    import signal

    def _alarm(signum, frame):
        raise _Deadline()

    previous = signal.signal(signal.SIGALRM, _alarm)
    started = time.monotonic()
    outer = (0.0, 0.0)
    try:
        outer = signal.setitimer(signal.ITIMER_REAL, timeout_s)  # a caller's own timer, if any
        try:
            return judge_prepared(gold_s, pred, status, parts)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _Deadline:
        log.warning("verify: a comparison exceeded %.1f s in process; counted as wrong", timeout_s)
        return VerifyResult(False, "wrong", pred, timed_out=True)
    finally:
        signal.signal(signal.SIGALRM, previous)
        if outer[0] > 0:  # give the caller's timer back what is left of it
            signal.setitimer(signal.ITIMER_REAL, max(outer[0] - (time.monotonic() - started), 1e-3), outer[1])


def verify_many(items: Iterable[tuple[Any, Any, bool]], workers: int | None = None,
                timeout_s: float = DEFAULT_TIMEOUT_S) -> list[VerifyResult]:
    """Verify ``(completion_text, gold, truncated)`` triples, each comparison within ``timeout_s``.

    Never raises on input. By default a per-process shared :class:`VerifyPool` is used, so the
    cache and the warm workers carry over between calls. ``workers=0`` runs in this process (no
    worker startup; for debugging and small runs) and is still bounded: from the main thread each
    comparison runs under a SIGALRM deadline; from any other thread (where signals cannot be
    delivered) it falls back to a one-worker shared pool.
    """
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    items = list(items)
    if workers == 0:
        import signal

        if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
            return [_judge_in_process(*prepare(t, g, truncated=bool(tr)), timeout_s) for t, g, tr in items]
        workers = 1
    return shared_pool(workers, timeout_s).verify_many(items)


def verify_bounded(completion_text: Any, gold: Any, truncated: bool = False,
                   timeout_s: float = DEFAULT_TIMEOUT_S) -> VerifyResult:
    """One deadline-bounded verdict through the shared pool (callers that score model text one at a time)."""
    return verify_many([(completion_text, gold, truncated)], timeout_s=timeout_s)[0]
