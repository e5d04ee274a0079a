"""Stage ``generate``: teacher traces for a set of problems, through any backend.

Not in the original module list: it is the first pipeline stage and needed a home beside
``verify``/``curate``. It only orchestrates — backends produce text, ``traces`` splits it,
``tokens`` counts it in the student tokenizer, ``store`` makes it resumable.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from tracewise.backends.base import Completion, Request, SamplingParams
from tracewise.config import doc
from tracewise.problem_sources import ProblemsConfig, load_problems
from tracewise.progress import progress_bar
from tracewise.records import Problem, Trace, write_records
from tracewise.store import AppendLog, is_done, mark_done, save_config, stage_dir
from tracewise.tokens import load_tokenizer, span_counts
from tracewise.traces import parse_completion
from tracewise.world.teachers import TeacherConfig

log = logging.getLogger(__name__)


@dataclass
class GenerateConfig:
    """Generate teacher traces (``tracewise generate``)."""

    out: str = doc("Root directory; the stage writes into <out>/generate-<hash>/.", "runs", hash=False)
    name: str = doc("Teacher label stored in every trace (default: the embedded teacher's style).", "")
    backend: str = doc("Backend name: 'embedded' (procedural teacher) or 'hf'.", "embedded")
    model: str = doc("Model path or id for model backends (unused by 'embedded').", "")
    tokenizer: str = doc("Student tokenizer (path or id) in which token counts are taken.", "")
    teacher: TeacherConfig = doc("Embedded teacher style and error rates.", factory=TeacherConfig)
    problems: ProblemsConfig = doc("Which problems to answer.", factory=ProblemsConfig)
    sampling: SamplingParams = doc("Samples per problem, temperature, max tokens, seed.", factory=SamplingParams)
    batch_size: int = doc("Backend batch size (model backends).", 64, hash=False)

    def validate(self) -> None:
        from tracewise.backends import BACKENDS

        if self.backend not in BACKENDS:
            raise ValueError(f"generate.backend: unknown backend {self.backend!r}; valid: {sorted(BACKENDS)}")
        if self.backend != "embedded" and not self.model:
            raise ValueError(f"generate.model is required for backend {self.backend!r}")
        if not self.tokenizer:
            raise ValueError("generate.tokenizer is required: token counts are taken in the student tokenizer")
        if self.sampling.n < 1 or self.sampling.max_tokens < 1:
            raise ValueError("generate.sampling.n and sampling.max_tokens must be >= 1")
        # Nested sections built in Python (not via load_config) are not validated by build().
        self.teacher.validate()
        self.problems.validate()

    @property
    def label(self) -> str:
        return self.name or (self.teacher.style if self.backend == "embedded" else Path(self.model).name)


def make_backend(name: str, model: str = "", teacher: TeacherConfig | None = None, batch_size: int = 64):
    """Build a backend from stage settings (the name→class map lives in ``tracewise.backends``)."""
    from tracewise.backends import get_backend

    if name == "embedded":
        return get_backend("embedded", teacher=teacher)
    return get_backend(name, model=model, batch_size=batch_size)


def completion_to_trace(c: Completion, teacher: str, tokenizer) -> Trace:
    """Split a completion into spans and count them in the student tokenizer."""
    parsed = parse_completion(c.text)
    truncated = parsed.truncated or c.finish_reason == "length"
    total, n_think, n_ans = span_counts(tokenizer, parsed.thinking, parsed.answer, closed=not truncated)
    meta = dict(c.meta)
    return Trace(
        problem_id=c.request_id,
        teacher=teacher,
        text=c.text,
        thinking=parsed.thinking,
        answer_text=parsed.answer,
        format=parsed.format,
        n_tokens=total,
        n_thinking_tokens=n_think,
        n_answer_tokens=n_ans,
        finish_reason="length" if truncated else "stop",
        sample_idx=c.sample_idx,
        meta=meta,
    )


def run(cfg: GenerateConfig) -> Path:
    """Generate traces; resumable; returns the run directory (``problems.jsonl``, ``traces.jsonl``)."""
    cfg.validate()
    problems = load_problems(cfg.problems)
    run_dir = stage_dir(cfg.out, "generate", cfg, inputs=[*cfg.problems.input_files(), *_local(cfg.tokenizer)])
    if is_done(run_dir):
        log.info("generate: %s is complete, nothing to do", run_dir)
        return run_dir
    save_config(run_dir, cfg)
    write_records(run_dir / "problems.jsonl", problems)
    tokenizer = load_tokenizer(cfg.tokenizer)
    store = AppendLog(run_dir / "traces.partial.jsonl", Trace, key=lambda t: t.key)
    requests = _pending_requests(problems, cfg, store)
    todo = sum(len(r.sample_idxs or []) for r in requests)
    if store.records:
        log.info("generate: resuming, %d traces already done, %d to go", len(store.records), todo)
    backend = make_backend(cfg.backend, cfg.model, cfg.teacher, cfg.batch_size)
    with progress_bar(f"generate \\[{cfg.label}]", todo) as advance:  # "\\[": not rich markup
        for batch in backend.generate(requests, cfg.sampling):
            store.append(completion_to_trace(c, cfg.label, tokenizer) for c in batch)
            advance(len(batch))
    store.finalize(run_dir / "traces.jsonl")
    mark_done(run_dir, {"teacher": cfg.label, "n_traces": len(store.records), "n_problems": len(problems)})
    log.info("generate: %d traces by %s in %s", len(store.records), cfg.label, run_dir)
    return run_dir


def _local(path: str) -> list[str]:
    return [path] if path and Path(path).exists() else []


def _pending_requests(problems: list[Problem], cfg: GenerateConfig, store: AppendLog) -> list[Request]:
    out = []
    for p in problems:
        idxs = [i for i in range(cfg.sampling.n) if not store.done(f"{cfg.label}|{p.id}|{i}")]
        if idxs:
            out.append(Request(id=p.id, messages=[{"role": "user", "content": p.question}], problem=p, sample_idxs=idxs))
    return out
