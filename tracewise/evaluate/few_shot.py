"""Few-shot exemplars for style transfer: load them, and render them as prior chat turns.

The paper's first proposed check is whether a student keeps its own length when shown another
teacher's style: evaluate it with ``k`` exemplars written by the *other* teacher (and by its own,
as the control) and compare tokens and accuracy with zero-shot (``tracewise study few-shot``).

Exemplar sources (``load_exemplars``), checked before anything is generated:

* a ``.jsonl`` file, one object a line, in one of three shapes:
  ``{"question": str, "completion": str}`` (``problem`` is accepted for ``question``),
  ``{"prompt": [messages], "completion": [messages]}`` (TRL conversational prompt-completion, as
  ``tracewise curate`` writes), or ``{"messages": [user ..., assistant]}``;
* a ``datasets.save_to_disk`` directory with the same columns, e.g. a curate run's
  ``datasets/<teacher>`` (``tracewise.curate.stage.dataset_path``).

Anything else is a ValueError naming the file (and line or row).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from tracewise.core.config import doc

log = logging.getLogger(__name__)

FORMATS = "a .jsonl file or a datasets.save_to_disk directory (e.g. <curate run>/datasets/<teacher>)"


def _text_of(messages: Any, role: str) -> str | None:
    """Content of the last ``role`` message in a message list, or None if there is none."""
    if not isinstance(messages, list):
        return None
    found = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == role]
    return found[-1] if found and isinstance(found[-1], str) else None


def exemplar_from_row(row: Any, where: str) -> dict:
    """Normalise one row to ``{"question", "completion", ...other keys}``; ValueError naming ``where``."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected an object with 'question' and 'completion', got {type(row).__name__}")
    q = row.get("question", row.get("problem"))
    c = row.get("completion")
    if isinstance(row.get("prompt"), list) or isinstance(c, list):  # conversational prompt-completion
        q, c = _text_of(row.get("prompt"), "user"), _text_of(c, "assistant")
    elif "messages" in row and q is None and c is None:
        q, c = _text_of(row["messages"], "user"), _text_of(row["messages"], "assistant")
    for key, value in (("question", q), ("completion", c)):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{where}: expected a non-empty string {key!r} (exemplars are {{question, completion}}, "
                             "{prompt, completion} message lists, or {messages})")
    rest = {k: v for k, v in row.items() if k not in ("question", "problem", "completion", "prompt", "messages")}
    return {**rest, "question": q, "completion": c}


def _jsonl_rows(path: Path) -> Iterable[tuple[str, Any]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read exemplars ({e})") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield f"{path}:{lineno}", json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: not JSON ({e.msg})") from None


def _dataset_rows(path: Path) -> Iterable[tuple[str, Any]]:
    from datasets import Dataset, DatasetDict, load_from_disk

    try:
        ds = load_from_disk(str(path))
    except Exception as e:  # datasets raises several types for "not a saved dataset"
        raise ValueError(f"{path}: cannot load the saved dataset ({type(e).__name__}: {e})") from None
    if isinstance(ds, DatasetDict):
        if "train" not in ds:
            raise ValueError(f"{path}: a DatasetDict without a 'train' split ({sorted(ds)}); save one split")
        ds = ds["train"]
    assert isinstance(ds, Dataset)
    for i, row in enumerate(ds):
        yield f"{path}: row {i}", row


def load_exemplars(path: str | Path, teacher: str = "") -> list[dict]:
    """Exemplars from ``path`` (see the module doc for formats), in file order; other keys are kept.

    ``teacher`` keeps only rows whose ``teacher`` field equals it (e.g. the r1 rows of a mix).
    """
    path = Path(path)
    if path.is_dir():
        if not any((path / f).is_file() for f in ("dataset_info.json", "state.json", "dataset_dict.json")):
            raise ValueError(f"{path}: unknown few-shot format: a directory that is not a saved dataset; expected {FORMATS}")
        rows = _dataset_rows(path)
    elif path.suffix == ".jsonl":
        rows = _jsonl_rows(path)
    elif not path.exists() and not path.suffix:
        raise ValueError(f"{path}: cannot read exemplars (not found; expected {FORMATS})")
    else:
        raise ValueError(f"{path}: unknown few-shot format {path.suffix or '(no suffix)'!r}; expected {FORMATS}")
    out = [exemplar_from_row(row, where) for where, row in rows]
    if teacher:
        found = sorted({str(e.get("teacher")) for e in out})
        out = [e for e in out if e.get("teacher") == teacher]
        if not out:
            raise ValueError(f"{path}: no exemplars with teacher {teacher!r} (teachers found: {found})")
    if not out:
        raise ValueError(f"{path}: no exemplars")
    return out


def few_shot_messages(problem_question: str, exemplars: list[dict], k: int) -> list[dict]:
    """Chat messages with ``k`` exemplars as prior user/assistant turns, then the problem.

    The first ``k`` exemplars are used, skipping any whose question is the problem's own (that
    would leak its answer); fewer than ``k`` left is a ValueError. Note that some chat templates
    (Qwen3, DeepSeek-R1) strip ``<think>`` spans from earlier assistant turns, which removes the
    thinking style these exemplars are meant to transfer.
    """
    if not isinstance(problem_question, str) or not problem_question:
        raise ValueError(f"problem_question must be a non-empty str, got {problem_question!r}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be an int >= 0, got {k!r}")
    for i, e in enumerate(exemplars):
        if not isinstance(e, dict) or not all(isinstance(e.get(key), str) for key in ("question", "completion")):
            raise ValueError(f"exemplar {i} must be a dict with str 'question' and 'completion' (see load_exemplars)")
    chosen = [e for e in exemplars if e["question"].strip() != problem_question.strip()][:k]
    if len(chosen) < k:
        raise ValueError(f"asked for {k} exemplars, only {len(chosen)} available (excluding the problem itself)")
    messages: list[dict] = []
    for e in chosen:
        messages += [{"role": "user", "content": e["question"]}, {"role": "assistant", "content": e["completion"]}]
    return messages + [{"role": "user", "content": problem_question}]


@dataclass
class FewShotConfig:
    """k-shot exemplars shown before each problem (``eval.few_shot``); k=0 is zero-shot."""

    path: str = doc(f"Exemplars: {FORMATS}. Empty = zero-shot.", "")
    k: int = doc("Exemplars shown before each problem (0 = zero-shot).", 0)
    teacher: str = doc("Use only exemplar rows whose 'teacher' field is this (e.g. the r1 rows of a mix).", "")
    label: str = doc("Name of the exemplars' style in tables (default: teacher, else the file or dir name).", "")

    def validate(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 0:
            raise ValueError(f"few_shot.k must be an int >= 0, got {self.k!r}")
        if self.k and not self.path:
            raise ValueError("few_shot.k > 0 needs few_shot.path (a .jsonl file or a saved dataset directory)")
        if self.path and not self.k:
            raise ValueError("few_shot.path is set but few_shot.k is 0; set k >= 1 or drop the path")
        if self.k:
            n = len(self.exemplars())
            if n < self.k:
                raise ValueError(f"few_shot: {self.path} holds {n} exemplars, fewer than k={self.k}")

    def exemplars(self) -> list[dict]:
        return load_exemplars(self.path, self.teacher) if self.k else []

    @property
    def style(self) -> str:
        """How tables name the exemplars: '' for zero-shot."""
        if not self.k:
            return ""
        return self.label or self.teacher or Path(self.path).name.removesuffix(".jsonl")
