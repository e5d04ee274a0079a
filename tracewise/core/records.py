"""Typed records that stages exchange on disk, and their JSONL reader/writer.

Every line written carries ``"_kind"`` and ``"_schema"`` so that a reader can refuse a file
from another stage or a future version with a message naming the file and line, instead of
silently mis-reading it. Stages never parse each other's output any other way.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, TypeVar, get_type_hints

SCHEMA_VERSION = 1
# A 128k-token trace is ~0.5 MB of JSON; a line 16x that is corruption or an attack, not a record.
MAX_LINE_BYTES = 8 * 2**20

# Reasons a verdict can carry; the curate/eval tables group by these.
VERDICT_REASONS = ("correct", "wrong", "no_answer", "truncated", "unparseable_gold")
# An LLM judge's verdict can also be "judge_unparseable": no verdict outside its thinking (counted
# as not correct; the raw output is in Verdict.raw).


@dataclass
class Problem:
    """A question with a gold final answer."""

    id: str
    question: str
    answer: str
    level: int = 0  # difficulty level, 1 = easiest; 0 = unknown
    domain: str = "arith"
    split: str = "train"
    source: str = "world"
    meta: dict = field(default_factory=dict)


@dataclass
class Trace:
    """One teacher (or student) completion, split into thinking and answer spans."""

    problem_id: str
    teacher: str
    text: str  # raw completion as produced
    thinking: str  # thinking span ("" if none)
    answer_text: str  # text after the thinking span (the visible answer)
    format: str = "think"  # think | harmony | plain
    n_tokens: int = 0  # in the student tokenizer
    n_thinking_tokens: int = 0
    n_answer_tokens: int = 0
    finish_reason: str = "stop"  # stop | length
    sample_idx: int = 0
    meta: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.teacher}|{self.problem_id}|{self.sample_idx}"


@dataclass
class Verdict:
    """Whether a trace's final answer matches the gold, by one method."""

    problem_id: str
    teacher: str
    method: str  # math_verify | judge
    correct: bool
    reason: str  # one of VERDICT_REASONS
    pred: str | None = None
    gold: str = ""
    sample_idx: int = 0
    raw: str | None = None  # judge's raw output, kept for inspection
    meta: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.method}|{self.teacher}|{self.problem_id}|{self.sample_idx}"


@dataclass
class Sample:
    """One evaluation sample of a student on a benchmark problem."""

    experiment: str
    benchmark: str
    problem_id: str
    sample_idx: int
    text: str
    thinking: str
    answer_text: str
    pred: str | None
    correct: bool
    reason: str
    n_tokens: int
    n_thinking_tokens: int
    n_answer_tokens: int
    finish_reason: str = "stop"
    level: int = 0
    control: str = "none"
    budget: int | None = None

    @property
    def key(self) -> str:
        return f"{self.problem_id}|{self.sample_idx}"


@dataclass
class EvalSummary:
    """One row of ``summary.json`` (see README for the contract)."""

    experiment: str
    benchmark: str
    n: int
    pass_at_1: float
    pass_at_8: float
    maj_at_8: float
    mean_tokens: float
    mean_thinking_tokens: float
    mean_answer_tokens: float
    ci95: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def to_row(self) -> dict:
        row = {
            "experiment": self.experiment,
            "benchmark": self.benchmark,
            "n": self.n,
            "pass@1": self.pass_at_1,
            "pass@8": self.pass_at_8,
            "maj@8": self.maj_at_8,
            "mean_tokens": self.mean_tokens,
            "mean_thinking_tokens": self.mean_thinking_tokens,
            "mean_answer_tokens": self.mean_answer_tokens,
            "ci95": self.ci95,
        }
        row.update(self.extra)
        return row


@dataclass
class SampleTiming:
    """How long one eval sample took to generate: a row of ``timings.jsonl`` beside ``samples.jsonl``.

    Measurements, not results: kept out of ``samples.jsonl`` (which stays byte-identical across runs) and
    out of every content hash (``tracewise.core.fingerprint``). ``clock`` says what was timed:
    ``request`` (one HTTP request, send to last byte), ``batch`` (the sample's decode batch, from its
    start to this sample's last token; ``ttft_s`` is the batch's first decode step, prefill included),
    ``engine`` (from entering the vLLM engine to finishing; ``ttft_s`` from the engine's partial outputs or
    metrics, None when it reports neither, as vLLM V1 with final-only outputs does), ``chunk`` (a test-time control's chunk of samples, all passes; no ``ttft_s``) or
    ``none`` (not timed)."""

    key: str  # the sample's key in samples.jsonl: "problem|idx", or "control|problem|idx" in a budget sweep
    latency_s: float | None  # None: the backend timed nothing (e.g. a prompt it refused)
    ttft_s: float | None
    output_tokens: int
    clock: str


TIMINGS_NAME = "timings.jsonl"  # an eval run dir's SampleTiming rows (never hashed)

KINDS: dict[str, type] = {"problem": Problem, "trace": Trace, "verdict": Verdict, "sample": Sample,
                          "timing": SampleTiming}
_KIND_OF = {cls: name for name, cls in KINDS.items()}
R = TypeVar("R")


def to_json_line(rec: Any) -> str:
    """Serialise one record to a canonical JSON line (sorted keys, so bytes are reproducible)."""
    d = asdict(rec)
    d["_kind"] = _KIND_OF[type(rec)]
    d["_schema"] = SCHEMA_VERSION
    return json.dumps(d, sort_keys=True, ensure_ascii=False) + "\n"


def _type_ok(value: Any, hint: Any) -> bool:
    """Check a JSON value against a record field's type (primitives, ``X | None``, dict)."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    for a in args:
        if a is type(None) and value is None:
            return True
        if a is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if a is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if a in (str, bool, dict, list) and isinstance(value, a):
            return True
    return False


def from_dict(cls: type[R], d: dict, where: str) -> R:
    """Build a record from a dict, raising ``ValueError`` that names ``where`` on any problem."""
    kind = _KIND_OF[cls]
    if d.get("_kind", kind) != kind:
        raise ValueError(f"{where}: expected a '{kind}' record, found '_kind'={d.get('_kind')!r}")
    version = d.get("_schema", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise ValueError(
            f"{where}: unknown schema version {version!r} (this tracewise reads version {SCHEMA_VERSION})"
        )
    hints = get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in d:
            if not _type_ok(d[f.name], hints[f.name]):
                raise ValueError(
                    f"{where}: field '{f.name}' should be {hints[f.name]}, got {type(d[f.name]).__name__}"
                )
            kwargs[f.name] = d[f.name]
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ValueError(f"{where}: missing required field '{f.name}' for a '{kind}' record")
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)} - {"_kind", "_schema"}
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {sorted(unknown)} for a '{kind}' record")
    return cls(**kwargs)


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each non-blank line; errors name file and line."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: file not found")
    if path.is_dir():
        raise ValueError(f"{path}: is a directory, expected a JSONL file")
    with open(path, "rb") as fh:
        # readline with a limit: a corrupt or hostile file without newlines is refused after
        # MAX_LINE_BYTES instead of being read whole into memory.
        for lineno, raw in enumerate(iter(lambda: fh.readline(MAX_LINE_BYTES + 1), b""), start=1):
            if len(raw) > MAX_LINE_BYTES:
                raise ValueError(f"{path}:{lineno}: line longer than {MAX_LINE_BYTES // 2**20} MiB; "
                                 "not a record (a corrupt file or a missing newline?)")
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid UTF-8 ({e.reason})") from None
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: malformed JSON ({e.msg}); expected one object per line") from None
            except RecursionError:  # "[[[[…" deeper than the parser's stack: hostile or corrupt, not a record
                raise ValueError(f"{path}:{lineno}: JSON nested too deeply; not a record") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def read_records(path: str | os.PathLike, cls: type[R]) -> list[R]:
    """Read a whole JSONL file of records of type ``cls``, validating every line."""
    return [from_dict(cls, obj, f"{path}:{n}") for n, obj in iter_jsonl(path)]


# Test hook (kill/resume tests): TRACEWISE_TEST_KILL_AFTER="<point>:<N>" SIGKILLs the process right
# after the N-th event of <point>: a JSONL file name (the N-th record written to it, by write_records or
# an AppendLog, flushed and fsynced first), "steps" (the N-th optimizer step this process ends, before
# that step's checkpoint) or "saves" (the N-th checkpoint this process has saved completely), or
# "datasets" (the N-th dataset `curate` saved). Counts are per process. Unset, it costs one dict lookup
# per call (per file written, per append batch, per step), never per record.
KILL_ENV = "TRACEWISE_TEST_KILL_AFTER"
_kill_counts: dict[str, int] = {}


def kill_armed() -> bool:
    return bool(os.environ.get(KILL_ENV))


def kill_point(point: str, n: int = 1) -> None:
    """Count ``n`` events of ``point``; SIGKILL this process once the armed count is reached (test hook)."""
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return
    want, _, count = spec.rpartition(":")
    if not want or not count.isdigit() or int(count) < 1:
        raise ValueError(f"{KILL_ENV}={spec!r}: expected '<point>:<N>' with N >= 1 (a test hook)")
    if point != want:
        return
    _kill_counts[point] = _kill_counts.get(point, 0) + n
    if _kill_counts[point] >= int(count):
        os.kill(os.getpid(), signal.SIGKILL)


def write_records(path: str | os.PathLike, records: Iterable[Any]) -> Path:
    """Write records atomically (temp file + rename): readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, fd = open_temp(path)
    armed = kill_armed()
    try:
        with open(fd, "w", encoding="utf-8") as fh:
            for rec in records:
                fh.write(to_json_line(rec))
                if armed:  # test hook: a kill in the middle of writing the file, after this record
                    fh.flush()
                    os.fsync(fh.fileno())
                    kill_point(path.name)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write leaves the old file (if any) and no debris
        raise
    return path


LOCK_NAME = ".lock"  # a stage run dir's lock file (core.store.lock_run_dir)
TEMP_NAME = re.compile(r"\..+\.\d+\.[0-9a-f]{8}\.tmp")  # open_temp's names


def open_temp(path: str | os.PathLike) -> tuple[Path, int]:
    """A fresh temp file next to ``path`` for an atomic replace: a name unique to this process and call
    (two writers never share one), created exclusively and never through a symlink (O_EXCL|O_NOFOLLOW)."""
    import secrets

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    return tmp, os.open(tmp, flags, 0o666)
