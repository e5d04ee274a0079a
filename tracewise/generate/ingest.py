"""Stage ``ingest``: existing teacher traces (a file or an HF dataset) → Problem and Trace records.

Real teacher traces (DeepSeek-R1 and its distills, gpt-oss, Nemotron) come as published datasets
rather than from our own ``generate`` runs. This stage reads them and writes exactly what
``generate`` writes (``problems.jsonl``, ``traces.jsonl``, ``DONE`` in ``<out>/ingest-<hash>/``), so
``verify`` and ``curate`` take an ingest run directory wherever they take a generate one.

Row formats (``format``):

* ``r1``        -- completion text ``<think>…</think>answer``; the ``<think>`` may be missing (the chat
  template opened it). Text with no tag at all is a trace cut off while thinking.
* ``harmony``   -- gpt-oss completion text rendered with ``<|channel|>…<|message|>…`` markers.
* ``harmony_messages`` -- a list of ``{role, channel, content}`` messages; an assistant message
  with a ``thinking`` / ``reasoning_content`` key (HF chat-template style) counts as analysis.
* ``nemotron``  -- Nemotron-Post-Training style ``messages`` whose assistant content holds
  ``<think>…</think>``; the ``reasoning`` column (or a "detailed thinking on/off" system prompt)
  says whether thinking was on, and with it off the thinking span is empty.
* ``plain``     -- CoT text with ``\\boxed{}``; no thinking span.
* ``auto``      -- per row: text formats detected from markers when there is a completion
  column, else ``harmony_messages`` if any assistant message has a channel/thinking key, else
  ``nemotron``.

Truncated traces (thinking never closed, no final channel, or a ``finish_reason`` column saying
``length``) become traces with ``finish_reason="length"``, never errors.

``reasoning=on`` keeps only rows whose reasoning flag is on (the ``reasoning`` column or a
"detailed thinking on/off" system prompt), as the paper took Nemotron's R1 traces; ``limit`` then
counts the rows kept. Datasets without a gold answer get one from ``gold.*``
(:mod:`tracewise.generate.ingest_gold`: joined from another dataset by normalised problem text, or the
teacher's own answer for agreement-based curation).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracewise.data.benchmarks import iter_rows, normalize_gold, parse_level
from tracewise.core.config import doc
from tracewise.core.logs import progress_bar
from tracewise.core.records import Problem, Trace, write_records
from tracewise.core.store import AppendLog, is_done, mark_done, save_config, stage_dir
from tracewise.core.tokens import load_tokenizer, span_counts
from tracewise.core.text import THINK_CLOSE, THINK_OPEN, ParsedTrace, parse_completion, parse_harmony_messages
from tracewise.core.text import strip_end_markers
from tracewise.generate.ingest_gold import GoldConfig, GoldIndex, with_gold

log = logging.getLogger(__name__)

FORMATS = ("auto", "r1", "harmony", "harmony_messages", "nemotron", "plain")
# Column names tried in order for each field the config does not map. They cover
# shared/data/traces/r1distill_math_thought_anchors.jsonl (whose 'id' names a *trace*, while
# 'math_problem_idx' names the problem two teachers both answered: curate compares teachers on
# shared problem ids) and common HF datasets (Nemotron: uuid/generator; OpenR1: generations).
DEFAULT_COLUMNS: dict[str, tuple[str, ...]] = {
    "id": ("problem_id", "math_problem_idx", "id", "uuid"),
    "question": ("problem", "question"),
    "answer": ("answer", "expected_answer", "gold"),
    "completion": ("completion", "generation", "generations"),
    "messages": ("messages",),
    "reasoning": ("reasoning",),
    "teacher": ("teacher_model", "generator", "model"),
    "finish_reason": ("finish_reason", "finish_reasons"),
}
_SAFE_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")  # curate turns teacher labels into directory names
_DETAILED_THINKING = re.compile(r"detailed thinking (on|off)", re.IGNORECASE)
MAX_META_CHARS = 200  # short row columns (is_correct, subject, ...) ride along in Trace.meta; long ones do not
BATCH = 128  # traces tokenized per AppendLog write


@dataclass
class IngestConfig:
    """Ingest existing teacher traces (``tracewise ingest``)."""

    out: str = doc("Root directory; the stage writes into <out>/ingest-<hash>/.", "runs", hash=False)
    path: str = doc("Local .jsonl/.parquet file of teacher traces, or a Hugging Face dataset name.", "")
    teacher: str = doc("Teacher label stored in every trace; '' = per row from the teacher column "
                       "(last part of the model id), else the file name.", "")
    format: str = doc(f"Row format, one of {FORMATS}.", "auto")
    fields: dict = doc("Column names for id, question, answer, completion, messages, reasoning, teacher, "
                       "finish_reason; unmapped ones are looked up in DEFAULT_COLUMNS. answer: '' = no gold "
                       "column (verify will report unparseable_gold).", factory=dict)
    tokenizer: str = doc("Student tokenizer (path or id) in which token counts are taken.", "")
    limit: int | None = doc("Read only the first N rows (None = all).", None)
    split: str = doc("Split of a Hugging Face dataset (unused for local files).", "train")
    subset: str = doc("Config name of a Hugging Face dataset ('' = default; unused for local files).", "")
    reasoning: str = doc("Keep only rows whose reasoning flag is 'on' or 'off' (reasoning column or 'detailed "
                         "thinking on/off' system prompt); '' = every row.", "")
    gold: GoldConfig = doc("Gold answers: the row's column (default), joined from another dataset by problem text "
                           "(gold.source=join gold.path=...), or the teacher's own answer (gold.source=teacher).",
                           factory=GoldConfig)

    def __post_init__(self) -> None:
        # YAML reads a bare on/off (reasoning=on on the command line) as a boolean.
        self.reasoning = {"True": "on", "False": "off", "true": "on", "false": "off"}.get(str(self.reasoning),
                                                                                          self.reasoning)

    def validate(self) -> None:
        if not self.path:
            raise ValueError("ingest.path is required: a .jsonl/.parquet file or a Hugging Face dataset name")
        if self.format not in FORMATS:
            raise ValueError(f"ingest.format: unknown format {self.format!r}; valid: {list(FORMATS)}")
        if not self.tokenizer:
            raise ValueError("ingest.tokenizer is required: token counts are taken in the student tokenizer")
        unknown = sorted(set(self.fields) - set(DEFAULT_COLUMNS))
        if unknown:
            raise ValueError(f"ingest.fields: unknown key(s) {unknown}; valid keys: {list(DEFAULT_COLUMNS)}")
        bad = {k: v for k, v in self.fields.items() if not isinstance(v, str)}
        if bad:
            raise ValueError(f"ingest.fields: column names must be strings, got {bad}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"ingest.limit must be >= 1, got {self.limit}")
        if self.reasoning not in ("", "on", "off"):
            raise ValueError(f"ingest.reasoning: expected 'on', 'off' or '' (all rows), got {self.reasoning!r}")
        self.gold.validate()
        if self.gold.source != "column" and "answer" in self.fields:
            raise ValueError(f"ingest.fields.answer and gold.source={self.gold.source} both say where the gold comes "
                             "from; give one")
        if self.teacher and not _SAFE_LABEL.fullmatch(self.teacher):
            raise ValueError(f"ingest.teacher: {self.teacher!r} must match {_SAFE_LABEL.pattern} "
                             "(curate uses it as a directory name)")


class _Columns:
    """Resolves a field to a row's column: the mapped name (strictly), else the first default present."""

    def __init__(self, fields: dict):
        self.mapped = dict(fields)

    def name(self, row: dict, key: str) -> str | None:
        if key in self.mapped:
            return self.mapped[key] or None
        return next((c for c in DEFAULT_COLUMNS[key] if c in row), None)

    def get(self, row: dict, key: str, where: str, required: bool = True) -> Any:
        col = self.name(row, key)
        if col is not None and col in row and row[col] is not None:
            return row[col]
        if not required:
            return None
        tried = repr(col) if key in self.mapped else "/".join(DEFAULT_COLUMNS[key])
        raise ValueError(f"{where}: missing field {tried} for {key!r} (map the column with fields.{key}=NAME)")


def label(value: str) -> str:
    """A directory-safe teacher label: 'deepseek-ai/DeepSeek-R1' → 'DeepSeek-R1'."""
    tail = str(value).rstrip("/").rsplit("/", 1)[-1]
    return re.sub(r"^[^A-Za-z0-9]+", "", re.sub(r"[^A-Za-z0-9._+-]+", "-", tail)).rstrip("-") or "teacher"


def _content(value: Any, where: str) -> str:
    if isinstance(value, list):  # openai-style content parts
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in value)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{where}: message content must be a string, got {type(value).__name__}")
    return value


def _messages(value: Any, where: str, col: str) -> list[dict]:
    if isinstance(value, str):  # some datasets store the conversation as a JSON string
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f"{where}: field {col!r} is a string but not JSON messages") from None
    if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
        raise ValueError(f"{where}: field {col!r} must be a list of {{role, content}} messages")
    out = []
    for m in value:
        thinking = m.get("thinking") or m.get("reasoning_content") or ""
        out.append({"role": m.get("role", "assistant"), "channel": m.get("channel"),
                    "content": _content(m.get("content"), where), "thinking": _content(thinking, where)})
    return out


def split_text(text: str, fmt: str, where: str) -> ParsedTrace:
    """Spans of a completion text in a text format (auto, r1, harmony, plain, nemotron)."""
    if not isinstance(text, str):
        raise ValueError(f"{where}: completion must be a string, got {type(text).__name__}")
    has_tag = THINK_OPEN in text or THINK_CLOSE in text
    if fmt == "r1" and not has_tag:
        # The template opened <think> and generation stopped before </think>: all of it is thinking.
        return ParsedTrace(strip_end_markers(text).strip(), "", "think", True)
    if fmt == "nemotron":
        return parse_completion(text, "think" if has_tag else "plain")
    if fmt == "harmony":
        try:
            return parse_completion(text, "harmony")
        except ValueError:
            if text.lstrip().startswith("analysis"):  # special tokens stripped, cut off before 'assistantfinal'
                return ParsedTrace(text.lstrip()[len("analysis"):].strip(), "", "harmony", True)
            raise ValueError(f"{where}: completion is not harmony text (no <|channel|> markers)") from None
    return parse_completion(text, {"auto": "auto", "r1": "think", "plain": "plain"}[fmt])


def render_harmony(msgs: list[dict]) -> str:
    """Harmony text for structured assistant messages (kept as ``Trace.text``, which verify re-parses)."""
    parts = []
    for i, m in enumerate(msgs):
        channel = m.get("channel") or "final"
        end = "<|return|>" if channel == "final" else "<|end|>"
        parts.append(("" if i == 0 else "<|start|>assistant") + f"<|channel|>{channel}<|message|>{m['content']}{end}")
    return "".join(parts)


def message_format(msgs: list[dict], fmt: str) -> str:
    """The conversation format of a row: ``fmt`` itself unless it is 'auto'."""
    if fmt != "auto":
        return fmt
    structured = any(m["channel"] or m["thinking"] for m in msgs if m["role"] == "assistant")
    return "harmony_messages" if structured else "nemotron"


def split_messages(msgs: list[dict], fmt: str, where: str) -> tuple[str, ParsedTrace]:
    """``(text, spans)`` of a conversation in ``harmony_messages`` or ``nemotron`` form."""
    assistant = [m for m in msgs if m["role"] == "assistant"]
    if not assistant:
        raise ValueError(f"{where}: no assistant message in the conversation")
    if fmt == "harmony_messages":
        flat: list[dict] = []
        for m in assistant:
            if m["thinking"]:
                flat.append({"role": "assistant", "channel": "analysis", "content": m["thinking"]})
            if m["content"] or m["channel"]:
                flat.append({"role": "assistant", "channel": m["channel"], "content": m["content"]})
        return render_harmony(flat), parse_harmony_messages(flat)
    last = assistant[-1]
    if last["thinking"]:  # reasoning_content beside content: the API already split the spans
        return last["content"], ParsedTrace(last["thinking"].strip(), last["content"].strip(), "think", False)
    return last["content"], split_text(last["content"], "nemotron", where)


def reasoning_flag(value: Any, msgs: list[dict], where: str, strict: bool) -> str | None:
    """'on' / 'off' / None from the reasoning column, else from a 'detailed thinking' system prompt.

    ``strict`` (format 'nemotron' named explicitly) refuses other values; under 'auto' a
    ``reasoning`` column can hold something else entirely (a thinking text, an effort level).
    """
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, str) and value.strip().lower() in ("on", "off"):
        return value.strip().lower()
    if value is not None and strict:
        raise ValueError(f"{where}: reasoning flag must be 'on' or 'off', got {str(value)[:40]!r}")
    for m in msgs:
        if m["role"] == "system":
            hit = _DETAILED_THINKING.search(m["content"])
            if hit:
                return hit.group(1).lower()
    return None


@dataclass
class RowTraces:
    """What one input row contributes: its problem, teacher, and one or more completions."""

    problem: Problem
    teacher: str
    samples: list[tuple[str, ParsedTrace, bool]]  # (raw text, spans, generation hit its length limit)
    meta: dict


def parse_row(row: dict, where: str, cfg: IngestConfig, default_teacher: str, source: str) -> RowTraces:
    """Read one row into a problem and its completions; errors name ``where`` and the field."""
    cols = _Columns(cfg.fields)
    msgs_col, comp_col = cols.name(row, "messages"), cols.name(row, "completion")
    msgs = _messages(row[msgs_col], where, msgs_col) if msgs_col and row.get(msgs_col) is not None else None
    has_text = comp_col is not None and row.get(comp_col) is not None
    # A completion column wins (nemotron-style text included); a conversation is read otherwise.
    use_messages = cfg.format == "harmony_messages" or (cfg.format in ("auto", "nemotron") and not has_text)
    meta: dict = {}
    if use_messages:
        if msgs is None:
            if cfg.format == "auto":
                raise ValueError(f"{where}: no completion ({'/'.join(DEFAULT_COLUMNS['completion'])}) or messages "
                                 f"column (map one with fields.completion=NAME or fields.messages=NAME)")
            cols.get(row, "messages", where)  # raises, naming the field
        fmt = message_format(msgs, cfg.format)
        text, parsed = split_messages(msgs, fmt, where)
        samples = [(text, parsed, False)]
    else:
        fmt = cfg.format
        value = row.get(comp_col) if has_text else None
        if value is None and msgs is not None:  # text formats also read the last assistant turn
            value = next((m["content"] for m in reversed(msgs) if m["role"] == "assistant"), None)
        if value is None:
            value = cols.get(row, "completion", where)  # raises, naming the field
        texts = value if isinstance(value, list) else [value]  # OpenR1-style: several generations a row
        if not texts:
            raise ValueError(f"{where}: field {comp_col!r} is an empty list of completions")
        finish = cols.get(row, "finish_reason", where, required=False)
        finishes = finish if isinstance(finish, list) else [finish] * len(texts)
        if len(finishes) != len(texts):
            raise ValueError(f"{where}: {len(texts)} completions but {len(finishes)} finish reasons")
        samples = [(t, split_text(t, fmt, where), f == "length") for t, f in zip(texts, finishes)]
    if fmt == "auto":
        fmt = {"think": "r1", "harmony": "harmony", "plain": "plain"}[samples[0][1].format]
    if fmt == "nemotron" or cfg.reasoning:
        flag = reasoning_flag(cols.get(row, "reasoning", where, required=False), msgs or [], where,
                              strict=cfg.format == "nemotron")
        if flag is not None:
            meta["reasoning"] = flag
        elif cfg.reasoning:
            raise ValueError(f"{where}: ingest.reasoning={cfg.reasoning} needs each row's reasoning flag: no "
                             f"'reasoning' column (map one with fields.reasoning=NAME) or 'detailed thinking' prompt")
    meta["ingest_format"] = fmt
    used = {cols.name(row, k) for k in DEFAULT_COLUMNS} | {"level", "subject", "split"}  # those go to the Problem
    for k, v in row.items():
        short = isinstance(v, (bool, int, float)) or (isinstance(v, str) and len(v) <= MAX_META_CHARS)
        if k not in used and short:
            meta[k] = v
    teacher = cfg.teacher or label(cols.get(row, "teacher", where, required=False) or default_teacher)
    return RowTraces(_problem(row, where, cols, msgs, source, cfg.gold.source == "column"), teacher, samples, meta)


def _problem(row: dict, where: str, cols: _Columns, msgs: list[dict] | None, source: str,
             gold_column: bool = True) -> Problem:
    pid = cols.get(row, "id", where)
    question = cols.get(row, "question", where, required=msgs is None or "question" in cols.mapped)
    if question is None:  # conversation datasets carry the question as the user turn
        question = next((m["content"] for m in msgs if m["role"] == "user"), None)
        if question is None:
            cols.get(row, "question", where)  # raises, naming the field
    if not isinstance(question, str):
        raise ValueError(f"{where}: question must be a string, got {type(question).__name__}")
    answer_col = cols.name(row, "answer")
    if not gold_column or ("answer" in cols.mapped and answer_col is None):
        gold = ""  # no gold column (e.g. Nemotron); gold.source fills it in, else verify reports unparseable_gold
    else:
        raw = cols.get(row, "answer", where)
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            raw = str(raw)
        if not isinstance(raw, str) or not raw.strip():
            raise ValueError(f"{where}: gold answer field {answer_col!r} is empty or not a string ({raw!r})")
        gold = normalize_gold(raw)
    meta = {"subject": row["subject"]} if isinstance(row.get("subject"), str) else {}
    return Problem(id=str(pid), question=question, answer=gold, level=parse_level(row.get("level")),
                   domain="math", split=str(row.get("split", "train")), source=source, meta=meta)


def run(cfg: IngestConfig) -> Path:
    """Ingest traces; resumable; returns the run directory (``problems.jsonl``, ``traces.jsonl``)."""
    cfg.validate()
    local = [p for p in (cfg.path, cfg.tokenizer, cfg.gold.path) if p and Path(p).exists()]
    run_dir = stage_dir(cfg.out, "ingest", cfg, inputs=local)
    if is_done(run_dir):
        log.info("ingest: %s is complete, nothing to do", run_dir)
        return run_dir
    index = GoldIndex(cfg.gold) if cfg.gold.source == "join" else None  # bad gold data fails before any output
    tokenizer = load_tokenizer(cfg.tokenizer)  # before anything is written: a bad tokenizer leaves no run dir
    fresh = not run_dir.exists()
    save_config(run_dir, cfg)
    try:
        store = AppendLog(run_dir / "traces.partial.jsonl", Trace, key=lambda t: t.key)
        if store.records:
            log.info("ingest: resuming, %d traces already done", len(store.records))
        source = Path(cfg.path).stem if Path(cfg.path).is_file() else cfg.path
        default_teacher = label(source)
        problems: dict[str, Problem] = {}
        first_at: dict[str, str] = {}
        counters: Counter = Counter()  # (teacher, problem id) -> next sample_idx
        pending: list[Trace] = []
        kept = Counter()  # rows read / kept / dropped, per reason (DONE)
        # With filters, `limit` counts the rows KEPT: read on (streamed) until that many are.
        filtering = bool(cfg.reasoning) or cfg.gold.source != "column"
        read_limit = (1 << 62 if cfg.limit else None) if filtering else cfg.limit
        with progress_bar("ingest", None) as advance:
            for where, row in iter_rows(cfg.path, split=cfg.split, subset=cfg.subset or None, limit=read_limit):
                if cfg.limit is not None and kept["rows_kept"] >= cfg.limit:
                    break
                kept["rows_read"] += 1
                advance(1)
                rt = parse_row(row, where, cfg, default_teacher, source)
                if cfg.reasoning and rt.meta.get("reasoning") != cfg.reasoning:
                    kept[f"dropped_reasoning_{rt.meta.get('reasoning')}"] += 1
                    continue
                p = with_gold(rt.problem, rt.samples, rt.teacher, cfg.gold, index, problems.get(rt.problem.id))
                if p is None:
                    kept["dropped_no_gold"] += 1
                    continue
                kept["rows_kept"] += 1
                known = problems.get(p.id)
                if known is None:
                    problems[p.id], first_at[p.id] = p, where
                elif (known.question, known.answer) != (p.question, p.answer):
                    raise ValueError(f"{where}: problem id {p.id!r} has a different question or answer than at "
                                     f"{first_at[p.id]}")
                for text, parsed, hit_length in rt.samples:
                    idx = counters[(rt.teacher, p.id)]
                    counters[(rt.teacher, p.id)] += 1
                    if not store.done(f"{rt.teacher}|{p.id}|{idx}"):
                        pending.append(_trace(p.id, rt.teacher, idx, text, parsed, hit_length, rt.meta, tokenizer))
                if len(pending) >= BATCH:
                    store.append(pending)
                    pending = []
        store.append(pending)
        if not problems:
            raise ValueError(f"{cfg.path}: no rows found (empty)")
    except ValueError:
        # A bad row: the input's bytes are in the run dir's name, so this run dir could never finish;
        # a fresh one is removed (no partial output), one that an earlier run started is left alone.
        if fresh:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    write_records(run_dir / "problems.jsonl", problems.values())
    store.finalize(run_dir / "traces.jsonl")
    traces = store.records.values()
    manifest = {
        "n_problems": len(problems), "n_traces": len(store.records),
        "teachers": sorted({t.teacher for t in traces}),
        "n_truncated": sum(t.finish_reason == "length" for t in traces),
        "formats": dict(sorted(Counter(t.format for t in traces).items())),
    }
    if filtering:  # what the reasoning filter and the gold source dropped
        manifest.update(sorted(kept.items()), gold_source=cfg.gold.source, **(dict(index.stats) if index else {}))
    mark_done(run_dir, manifest)
    log.info("ingest: %d traces of %d problems from %s in %s", manifest["n_traces"], len(problems), cfg.path, run_dir)
    return run_dir


def _trace(pid: str, teacher: str, idx: int, text: str, parsed: ParsedTrace, hit_length: bool, meta: dict,
           tokenizer) -> Trace:
    truncated = parsed.truncated or hit_length
    total, n_think, n_ans = span_counts(tokenizer, parsed.thinking, parsed.answer, closed=not truncated)
    return Trace(problem_id=pid, teacher=teacher, text=text, thinking=parsed.thinking, answer_text=parsed.answer,
                 format=parsed.format, n_tokens=total, n_thinking_tokens=n_think, n_answer_tokens=n_ans,
                 finish_reason="length" if truncated else "stop", sample_idx=idx, meta=dict(meta))
