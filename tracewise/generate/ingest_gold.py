"""Gold answers for ingested traces whose dataset has none (``ingest.gold.*``).

Nemotron-Post-Training-Dataset-v1 (split ``math``, the paper's R1 traces) has the columns
``uuid, license, generator, version, category, reasoning, messages, metadata``: no gold answer.
Two ways to still curate "problems both teachers got right":

* ``gold.source=join`` -- look each problem up, by normalised problem text, in a dataset that has
  answers (``gold.path``). Nemotron's math prompts are AoPS problems from nvidia/OpenMathReasoning,
  whose rows carry ``problem`` and ``expected_answer``. The key drops the instruction line Nemotron
  prepends to every math prompt ("Solve the following math problem. Make sure to put the answer
  (and only answer) inside \\boxed{}."), Unicode compatibility forms, case and whitespace; nothing
  else, so a join never pairs two different problems. A key whose answers disagree is ambiguous
  and joins nothing.
* ``gold.source=teacher`` -- the teacher's own final answer becomes the gold (agreement mode, no
  reference needed). A second teacher generated on these problems and verified (math-verify, or the
  LLM judge reading ``{gold}`` = the first teacher's answer) against it is "correct" exactly when
  the two teachers' final answers are judged equivalent; ``curate filter=judge`` then keeps the
  problems where they agree. This is weaker than correctness: two teachers can agree on a wrong
  answer.

Rows without a gold are dropped (``gold.missing=drop``, counted in DONE) or kept with an empty gold
(``keep``: verify reports ``unparseable_gold`` for them, curate drops them).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Any

from tracewise.data.benchmarks import iter_rows, normalize_gold
from tracewise.core.config import doc

log = logging.getLogger(__name__)

GOLD_SOURCES = ("column", "join", "teacher")
MISSING = ("drop", "keep")
QUESTION_COLUMNS = ("problem", "question")
ANSWER_COLUMNS = ("expected_answer", "answer", "gold")
# Instruction lines datasets wrap around the same problem text (Nemotron math / OpenMathReasoning prompts).
_INSTRUCTIONS = (
    re.compile(r"solve the following math problem\.?\s*(?:make sure to put the answer \(and only answer\) inside "
               r"\\boxed\{\}\.?)?", re.IGNORECASE),
)


@dataclass
class GoldConfig:
    """Where each ingested problem's gold answer comes from (``ingest.gold.*``)."""

    source: str = doc("'column': the row's answer column (fields.answer); 'join': looked up in gold.path by "
                      "normalised problem text; 'teacher': the teacher's own final answer (agreement mode: a "
                      "second teacher verified against it is right when both answers are equivalent).", "column")
    path: str = doc("join: .jsonl/.parquet file or Hugging Face dataset with problem text and answer "
                    "(e.g. nvidia/OpenMathReasoning, or a local extract of its problem/expected_answer columns).", "")
    split: str = doc("join: split of a Hugging Face gold dataset.", "train")
    subset: str = doc("join: config name of a Hugging Face gold dataset ('' = default).", "")
    question_field: str = doc(f"join: problem-text column ('' = first of {list(QUESTION_COLUMNS)}).", "")
    answer_field: str = doc(f"join: answer column ('' = first of {list(ANSWER_COLUMNS)}).", "")
    where: dict = doc("join: keep only gold rows whose columns have these values, e.g. "
                      "{problem_type: has_answer_extracted}; a list value allows any of its items.", factory=dict)
    missing: str = doc("Rows whose gold is not found: 'drop' (not ingested, counted in DONE) or 'keep' "
                       "(empty gold; verify reports unparseable_gold).", "drop")

    def validate(self) -> None:
        if self.source not in GOLD_SOURCES:
            raise ValueError(f"ingest.gold.source: expected one of {list(GOLD_SOURCES)}, got {self.source!r}")
        if self.missing not in MISSING:
            raise ValueError(f"ingest.gold.missing: expected one of {list(MISSING)}, got {self.missing!r}")
        if self.source == "join" and not self.path:
            raise ValueError("ingest.gold.path is required for gold.source=join (a dataset with problem and answer)")
        if self.source != "join" and (self.path or self.where):
            raise ValueError(f"ingest.gold.path/where apply to gold.source=join only (source is {self.source!r})")


def problem_key(text: str) -> str:
    """The join key of a problem statement: instruction lines, Unicode compatibility forms, case and
    whitespace runs removed; nothing else (two different problems must never share a key)."""
    t = unicodedata.normalize("NFKC", text)
    for pattern in _INSTRUCTIONS:
        t = pattern.sub(" ", t)
    return re.sub(r"\s+", " ", t).strip().lower()


def _matches(row: dict, where: dict) -> bool:
    for col, allowed in where.items():
        values = allowed if isinstance(allowed, list) else [allowed]
        if row.get(col) not in values:
            return False
    return True


def _column(row: dict, name: str, defaults: tuple[str, ...], what: str, where: str) -> Any:
    if name:
        if name not in row:
            raise ValueError(f"{where}: gold dataset has no column {name!r} ({what}; columns: {sorted(row)})")
        return row[name]
    col = next((c for c in defaults if c in row), None)
    if col is None:
        raise ValueError(f"{where}: gold dataset has none of {list(defaults)} ({what}); set ingest.gold.{what}=NAME")
    return row[col]


class GoldIndex:
    """Normalised problem text -> gold answer, read once from ``cfg.path``."""

    def __init__(self, cfg: GoldConfig) -> None:
        answers: dict[str, set[str]] = {}
        self.stats = Counter()
        for where, row in iter_rows(cfg.path, split=cfg.split, subset=cfg.subset or None):
            self.stats["gold_rows"] += 1
            if cfg.where and not _matches(row, cfg.where):
                continue
            question = _column(row, cfg.question_field, QUESTION_COLUMNS, "question_field", where)
            answer = _column(row, cfg.answer_field, ANSWER_COLUMNS, "answer_field", where)
            if isinstance(answer, (int, float)) and not isinstance(answer, bool):
                answer = str(answer)
            if not isinstance(question, str) or not isinstance(answer, str) or not answer.strip():
                continue
            answers.setdefault(problem_key(question), set()).add(normalize_gold(answer))
        self.answers = {k: next(iter(v)) for k, v in answers.items() if len(v) == 1}
        self.stats["gold_keys"] = len(self.answers)
        self.stats["gold_ambiguous_keys"] = sum(len(v) > 1 for v in answers.values())
        if not self.answers:
            raise ValueError(f"{cfg.path}: no usable (problem, answer) rows in the gold dataset")
        log.info("ingest: %d gold answers from %s (%d ambiguous problem texts left out)", len(self.answers),
                 cfg.path, self.stats["gold_ambiguous_keys"])

    def lookup(self, question: str) -> str | None:
        return self.answers.get(problem_key(question))


def teacher_gold(answer_text: str, text: str, truncated: bool) -> str | None:
    """A teacher's own final answer as a gold (agreement mode); None when it gave none or was cut off."""
    from tracewise.verify import extract_answer

    if truncated:
        return None
    value = extract_answer(answer_text) or extract_answer(text)
    return normalize_gold(value) if value else None


def with_gold(problem, samples: list, teacher: str, cfg: GoldConfig, index: GoldIndex | None, known):
    """``problem`` with its gold from ``cfg`` (``samples``: the row's ``(text, spans, hit_length)``;
    ``known``: the problem as first ingested, if seen before); None when it has none and ``missing=drop``."""
    if cfg.source == "column":
        return problem
    if cfg.source == "join":
        gold, tag = index.lookup(problem.question), f"join:{cfg.path}"
    elif known is not None:  # agreement mode: the problem's first trace fixed its gold
        gold, tag = known.answer, known.meta.get("gold_source", "")
    else:
        text, parsed, hit_length = samples[0]
        gold, tag = teacher_gold(parsed.answer, text, parsed.truncated or hit_length), f"teacher:{teacher}"
    if not gold:
        if cfg.missing == "drop":
            return None
        gold = ""
    return dataclasses.replace(problem, answer=gold, meta={**problem.meta, "gold_source": tag})
