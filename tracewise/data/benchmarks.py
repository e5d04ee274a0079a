"""Real benchmark loaders: GSM8K, MATH-500, AIME 2024 and the MATH/GSM8K training pools.

Benchmarks are read from local copies (``data_dir()``: the normalized JSONL files described in
``shared/data/README.md``), from any local JSONL/parquet file, or from a Hugging Face dataset name.
Every gold answer is checked with :func:`tracewise.verify.answer.parse_gold_ok` at load time: a gold that
math-verify cannot read makes every sample of that problem "unparseable_gold", which would look
like a student failure in the tables, so it is an error unless explicitly allowed.

This module is imported by ``problem_sources`` (benchmark names are problem sources), so it keeps
its top-level imports light; math-verify and ``datasets`` are imported only when needed.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from tracewise.core.records import Problem, iter_jsonl

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "{question}\nPlease reason step by step, and put your final answer within \\boxed{}."
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")
# Column names tried, in order, when a file is not a known benchmark and no field_map names them.
ID_COLUMNS = ("id", "unique_id", "uuid", "problem_id")
QUESTION_COLUMNS = ("problem", "question", "Problem", "Question", "prompt")
ANSWER_COLUMNS = ("answer", "Answer", "final_answer", "expected_answer", "gold")
SOLUTION_COLUMNS = ("solution", "Solution")
META_COLUMNS = ("subject", "type", "answer_raw", "unique_id", "url")  # short fields worth keeping


@dataclass(frozen=True)
class BenchmarkSpec:
    """Where a benchmark lives and how its rows map to :class:`Problem`."""

    file: str  # file name inside data_dir()
    hf_name: str  # the public original, named in "not found" errors
    id_field: str = "id"
    question_field: str = "problem"
    answer_field: str = "answer"
    split: str = "test"
    template: str = DEFAULT_TEMPLATE
    integer_gold: bool = False  # AIME and GSM8K golds are integers; anything else is a bad row
    allow_bad_gold: bool = False  # training pools keep the few unreadable golds (verify flags them)


BENCHMARKS: dict[str, BenchmarkSpec] = {
    "gsm8k": BenchmarkSpec("gsm8k_test.jsonl", "openai/gsm8k", integer_gold=True),
    "gsm8k_train": BenchmarkSpec("gsm8k_train.jsonl", "openai/gsm8k", split="train", integer_gold=True,
                                 allow_bad_gold=True),
    "math500": BenchmarkSpec("math500_test.jsonl", "HuggingFaceH4/MATH-500"),
    "aime24": BenchmarkSpec("aime2024.jsonl", "HuggingFaceH4/aime_2024", integer_gold=True),
    # 4 of the 7469 golds are not math-verify-readable ('a + b + c', '\\sin^2 t', ...): kept, flagged.
    "math_train": BenchmarkSpec("math_train.jsonl", "EleutherAI/hendrycks_math", split="train",
                                allow_bad_gold=True),
}


def data_dir() -> Path:
    """The local data directory: ``$TRACEWISE_DATA``, else ``<repo>/../shared/data``, else ``./data``."""
    env = os.environ.get("TRACEWISE_DATA")
    if env:
        # An explicit setting that is wrong must not silently fall back to another copy.
        if Path(env).is_dir():
            return Path(env)
        raise ValueError(f"TRACEWISE_DATA={env}: directory not found")
    tried = [Path(__file__).resolve().parents[2].parent / "shared" / "data", Path("data").resolve()]
    for d in tried:
        if d.is_dir():
            return d
    raise ValueError(
        "benchmark data directory not found; tried $TRACEWISE_DATA (unset), "
        + ", ".join(str(d) for d in tried)
        + ". Set TRACEWISE_DATA to the folder holding gsm8k_test.jsonl, math500_test.jsonl, ..."
    )


def benchmark_path(name: str) -> Path:
    """Local file of a known benchmark, or a ValueError saying where it was looked for."""
    spec = BENCHMARKS[name]
    path = data_dir() / spec.file
    if not path.is_file():
        raise ValueError(
            f"benchmark {name!r}: {path} not found; put a copy there (or set TRACEWISE_DATA), "
            f"or load the original with load_benchmark({spec.hf_name!r}) where there is network"
        )
    return path


def iter_rows(source: str, *, split: str = "train", subset: str | None = None,
              limit: int | None = None) -> Iterator[tuple[str, dict]]:
    """Yield ``(where, row)`` from a JSONL/parquet file or a Hugging Face dataset name.

    ``where`` is ``file:line`` (JSONL), ``file:row N`` (parquet) or ``name[split]:row N`` (HF), so
    that every later error can point at the offending row.
    """
    path = Path(source)
    if path.is_file():
        rows = _parquet_rows(path) if path.suffix == ".parquet" else _jsonl_rows(path)
    elif path.suffix in LOCAL_SUFFIXES or path.is_dir():
        raise ValueError(f"{source}: file not found (expected a .jsonl or .parquet file)")
    else:
        rows = _hf_rows(source, split, subset, streaming=limit is not None)
    for n, item in enumerate(rows):
        if limit is not None and n >= limit:
            return
        yield item


def _jsonl_rows(path: Path) -> Iterator[tuple[str, dict]]:
    for lineno, row in iter_jsonl(path):
        yield f"{path}:{lineno}", row


def _parquet_rows(path: Path) -> Iterator[tuple[str, dict]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError for non-parquet bytes
        raise ValueError(f"{path}: not a readable parquet file ({e})") from None
    n = 0
    for batch in pf.iter_batches(batch_size=1024):  # batches: a large file never sits in memory whole
        for row in batch.to_pylist():
            n += 1
            yield f"{path}:row {n}", row


def _hf_rows(name: str, split: str, subset: str | None, streaming: bool) -> Iterator[tuple[str, dict]]:
    import datasets

    try:
        ds = datasets.load_dataset(name, subset or None, split=split, streaming=streaming)
        rows = iter(ds)
        first = next(rows, None)  # streaming datasets only fail (offline, bad split) on first read
    except Exception as e:  # datasets raises ConnectionError, FileNotFoundError, DatasetNotFoundError, ...
        raise ValueError(
            f"{name}: not a local file, and loading it as a Hugging Face dataset (split {split!r}) failed: "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. This needs network access to "
            f"the Hub, or a local copy: save it once as .jsonl/.parquet and pass that path"
        ) from None
    if first is None:
        return
    yield f"{name}[{split}]:row 1", dict(first)
    for n, row in enumerate(rows, start=2):
        yield f"{name}[{split}]:row {n}", dict(row)


_TEX_THOUSANDS = re.compile(r"(?<=\d)(?:,\\!|\{,\})\s*(?=\d{3}(?!\d))")


def normalize_gold(answer: str) -> str:
    """Strip typesetting that math-verify cannot read and that never changes the value.

    ``\\$`` (a currency sign: ``\\$18.90``), TeX thousands separators ``,\\!`` / ``{,}`` between
    digits, a stray ``\\!`` and a trailing comma. Measured on the shared data, this turns every
    unreadable MATH-500 gold (3, all currency) readable; plain ``1,000`` is left alone because a
    bare comma can also separate the items of a list answer.
    """
    a = answer.strip().replace("\\$", "")
    a = _TEX_THOUSANDS.sub("", a).replace("\\!", "")
    return a.rstrip(",").strip()


def gsm8k_gold(rationale: str) -> str | None:
    """The final answer of a GSM8K rationale: the text after the last ``####``, commas removed."""
    if "####" not in rationale:
        return None
    return rationale.rsplit("####", 1)[1].strip().replace(",", "")


def parse_level(value: Any) -> int:
    """MATH levels come as ints (MATH-500), 'Level 5' strings (Hendrycks) or null ('Level ?')."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(?:level\s*)?(\d+)\s*", value, re.IGNORECASE)
        if m:
            return int(m.group(1))
    return 0


def _column(row: dict, mapped: str | None, candidates: tuple[str, ...]) -> str | None:
    """The column to read: the mapped one (even if absent, so the error names it), else the first present."""
    if mapped:
        return mapped
    return next((c for c in candidates if c in row), None)


def row_to_problem(row: dict, where: str, index: int, *, source: str, spec: BenchmarkSpec | None = None,
                   field_map: Mapping[str, str] | None = None, split: str = "test") -> Problem:
    """Build a Problem from one benchmark row; errors name ``where`` and the field."""
    fm = dict(field_map or {})
    if spec is not None:
        fm = {"id": spec.id_field, "question": spec.question_field, "answer": spec.answer_field, **fm}
        split = spec.split
    id_col = _column(row, fm.get("id"), ID_COLUMNS)
    if id_col is None:
        pid = f"{source}-{index:04d}"  # HF gsm8k has no ids; row order is the benchmark's identity
    elif id_col not in row:
        raise ValueError(f"{where}: missing id field {id_col!r} (map another column with field_map['id'])")
    else:
        pid = str(row[id_col])
    q_col = _column(row, fm.get("question"), QUESTION_COLUMNS)
    question = row.get(q_col) if q_col else None
    if not isinstance(question, str) or not question.strip():
        name = q_col or "/".join(QUESTION_COLUMNS)
        raise ValueError(f"{where}: missing or empty question field {name!r} (set field_map['question'])")
    meta = {k: row[k] for k in META_COLUMNS if isinstance(row.get(k), (str, int)) and k not in (id_col, q_col)}
    raw = _gold_text(row, where, fm.get("answer"), meta)
    gold = raw
    if "####" in raw:
        gold = gsm8k_gold(raw) or ""
    gold = normalize_gold(gold)
    if spec is not None and spec.integer_gold:
        if not re.fullmatch(r"-?\d+", gold):
            raise ValueError(f"{where}: gold answer {raw!r} is not an integer, as every {source} answer must be")
        gold = str(int(gold))  # AIME writes '025'
    if gold != raw.strip():
        meta.setdefault("answer_raw", raw.strip())
    return Problem(
        id=pid, question=question, answer=gold, level=parse_level(row.get("level")),
        domain="math", split=str(row.get("split", split)), source=source, meta=meta,
    )


def _gold_text(row: dict, where: str, mapped: str | None, meta: dict) -> str:
    col = _column(row, mapped, ANSWER_COLUMNS)
    if col is not None and col in row:
        value = row[col]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, str) and value.strip():
            return value
        raise ValueError(f"{where}: gold answer field {col!r} is empty or not a string ({value!r})")
    if mapped is None:
        # Only a worked solution: GSM8K's '#### N' or MATH's last \boxed{} carries the answer.
        sol_col = next((c for c in SOLUTION_COLUMNS if isinstance(row.get(c), str)), None)
        if sol_col is not None:
            from tracewise.verify.answer import extract_answer

            gold = gsm8k_gold(row[sol_col]) or extract_answer(row[sol_col])
            if gold:
                meta["answer_from"] = sol_col
                return gold
    name = col or "/".join(ANSWER_COLUMNS)
    raise ValueError(f"{where}: missing gold answer field {name!r} (set field_map['answer'])")


def check_golds(problems: list[Problem], source: str, allow_bad_gold: bool) -> None:
    """Refuse (or, if allowed, flag in ``meta['bad_gold']``) golds that math-verify cannot read."""
    from tracewise.verify.answer import parse_gold_ok

    bad = [p for p in problems if not parse_gold_ok(p.answer)]
    if not bad:
        return
    listed = ", ".join(f"{p.id} ({p.answer!r})" for p in bad[:10]) + (" ..." if len(bad) > 10 else "")
    msg = f"{source}: {len(bad)} of {len(problems)} gold answers cannot be parsed by math-verify: {listed}"
    if not allow_bad_gold:
        raise ValueError(msg + "; pass allow_bad_gold=True to keep them (their samples score 'unparseable_gold')")
    log.warning("%s; kept, flagged meta['bad_gold']", msg)
    for p in bad:
        p.meta["bad_gold"] = True


def load_benchmark(name_or_path: str, *, limit: int | None = None, field_map: Mapping[str, str] | None = None,
                   allow_bad_gold: bool | None = None, split: str = "test", subset: str | None = None) -> list[Problem]:
    """Problems of a known benchmark (``BENCHMARKS``), a local JSONL/parquet file, or an HF dataset.

    ``field_map`` maps ``id``/``question``/``answer`` to column names; unmapped ones are guessed from
    common names (``problem``/``question``, ``answer``, else the solution's ``####``/``\\boxed{}``).
    ``allow_bad_gold=None`` takes the benchmark's own setting (False for files and HF datasets).
    ``split``/``subset`` only apply to HF datasets.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    spec = BENCHMARKS.get(name_or_path)
    if spec is not None:
        source, rows_from = name_or_path, str(benchmark_path(name_or_path))
    else:
        rows_from = name_or_path
        source = Path(name_or_path).stem if Path(name_or_path).is_file() else name_or_path
    problems: list[Problem] = []
    first_seen: dict[str, str] = {}
    for i, (where, row) in enumerate(iter_rows(rows_from, split=split, subset=subset, limit=limit)):
        p = row_to_problem(row, where, i, source=source, spec=spec, field_map=field_map, split=split)
        if p.id in first_seen:
            raise ValueError(f"{where}: duplicate problem id {p.id!r} (first at {first_seen[p.id]})")
        first_seen[p.id] = where
        problems.append(p)
    if not problems:
        raise ValueError(f"{name_or_path}: no problems found (empty)")
    allow = spec.allow_bad_gold if (allow_bad_gold is None and spec is not None) else bool(allow_bad_gold)
    check_golds(problems, source, allow)
    log.info("loaded %d problems from %s", len(problems), rows_from)
    return problems


def format_prompt(problem: Problem, template: str | Mapping[str, str] | None = None) -> str:
    """The user prompt for ``problem``.

    ``template`` is a string with a ``{question}`` placeholder, or a mapping benchmark name →
    template (looked up by ``problem.source``); None uses the benchmark's own template, else
    DEFAULT_TEMPLATE. Substitution is literal, so ``\\boxed{}`` and other braces need no escaping.
    """
    if isinstance(template, Mapping):
        template = template.get(problem.source)
    if template is None:
        spec = BENCHMARKS.get(problem.source)
        template = spec.template if spec is not None else DEFAULT_TEMPLATE
    if "{question}" not in template:
        raise ValueError(f"prompt template {template!r} has no '{{question}}' placeholder")
    return template.replace("{question}", problem.question)

