"""Stage ``generate``: teacher traces for a set of problems, through any backend.

Not in the original module list: it is the first pipeline stage and needed a home beside
``verify``/``curate``. It only orchestrates — backends produce text, ``traces`` splits it,
``tokens`` counts it in the student tokenizer, ``store`` makes it resumable.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

from tracewise.backends.base import Completion, Request, SamplingParams
from tracewise.backends.openai_http import FAILED, OpenAIConfig
from tracewise.backends.vllm import VLLMConfig
from tracewise.core.config import doc
from tracewise.core.fingerprint import model_input
from tracewise.data.sources import ProblemsConfig, load_problems
from tracewise.core.logs import progress_bar
from tracewise.core.records import Problem, Trace, write_records
from tracewise.core.store import (AppendLog, atomic_copy, is_done, lock_run_dir, mark_done, save_config, stage_dir,
                                  unlock_run_dir)
from tracewise.core.tokens import load_tokenizer, span_counts
from tracewise.core.text import parse_completion
from tracewise.world.teachers import TeacherConfig

log = logging.getLogger(__name__)


@dataclass
class GenerateConfig:
    """Generate teacher traces (``tracewise generate``)."""

    out: str = doc("Root directory; the stage writes into <out>/generate-<hash>/.", "runs", hash=False)
    name: str = doc("Teacher label stored in every trace (default: the embedded teacher's style).", "")
    backend: str = doc("Backend name: 'embedded' (procedural teacher), 'hf', 'vllm' or 'openai'.", "embedded")
    model: str = doc("Model path or id for model backends (unused by 'embedded').", "")
    tokenizer: str = doc("Student tokenizer (path or id) in which token counts are taken.", "")
    teacher: TeacherConfig = doc("Embedded teacher style and error rates.", factory=TeacherConfig)
    problems: ProblemsConfig = doc("Which problems to answer.", factory=ProblemsConfig)
    sampling: SamplingParams = doc("Samples per problem, temperature, max tokens, seed.", factory=SamplingParams)
    batch_size: int = doc("Backend batch size (model backends).", 64, hash=False)
    trust_remote_code: bool = doc("Run Python code shipped with the model or tokenizer (HF auto_map); off unless you pass it.", False, hash=False)
    openai: OpenAIConfig = doc("'openai' backend: endpoint, API key env var, concurrency, retries, timeouts.",
                               factory=OpenAIConfig, hash=False)
    vllm: VLLMConfig = doc("'vllm' backend: tensor/data parallel sizes, memory.", factory=VLLMConfig, hash=False)
    retry_failed: bool = doc("Redo samples recorded as failed (failed.jsonl) instead of skipping them; reopens a "
                             "finished run directory (CLI: --retry-failed).", False, hash=False)

    def validate(self) -> None:
        from tracewise.backends import BACKENDS

        if self.backend not in BACKENDS:
            raise ValueError(f"generate.backend: unknown backend {self.backend!r}; valid: {sorted(BACKENDS)}")
        if self.backend != "embedded" and not self.model:
            raise ValueError(f"generate.model is required for backend {self.backend!r}")
        if not self.tokenizer:
            raise ValueError("generate.tokenizer is required: token counts are taken in the student tokenizer")
        self.sampling.validate("generate.sampling")
        # Nested sections built in Python (not via load_config) are not validated by build().
        self.teacher.validate()
        self.problems.validate()
        if self.backend == "openai":
            self.openai.validate()
        if self.backend == "vllm":
            self.vllm.validate()

    @property
    def label(self) -> str:
        return self.name or (self.teacher.style if self.backend == "embedded" else Path(self.model).name)


def make_backend(name: str, model: str = "", teacher: TeacherConfig | None = None, batch_size: int = 64, **options):
    """Build a backend from stage settings (the name→class map lives in ``tracewise.backends``);
    ``options`` are backend-specific keyword arguments (``backend_options``)."""
    from tracewise.backends import get_backend

    if name == "embedded":
        return get_backend("embedded", teacher=teacher)
    return get_backend(name, model=model, batch_size=batch_size, **options)


def backend_options(cfg: GenerateConfig) -> dict:
    """The backend-specific settings of ``cfg`` as ``make_backend`` keyword arguments."""
    if cfg.backend == "embedded":
        return {}
    return {**_backend_specific(cfg), "trust_remote_code": cfg.trust_remote_code}


def _backend_specific(cfg: GenerateConfig) -> dict:
    if cfg.backend == "openai":
        # generate records failed samples (failed.jsonl) instead of silently leaving them pending.
        return {**dataclasses.asdict(cfg.openai), "tokenizer": cfg.openai.tokenizer or cfg.tokenizer,
                "report_failures": True}
    if cfg.backend == "vllm":
        return dataclasses.asdict(cfg.vllm)
    return {}


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
    run_dir = stage_dir(cfg.out, "generate", cfg, inputs=_inputs(cfg))
    if is_done(run_dir):
        if not cfg.retry_failed:
            log.info("generate: %s is complete, nothing to do", run_dir)
            return run_dir
        # The lock first, then DONE goes: no other process ever sees (or starts into) a half-reopened run.
        lock_run_dir(run_dir, reopen=True)
        if not _reopen_for_retry(run_dir):
            unlock_run_dir(run_dir)
            return run_dir
    # Built before anything is written: a bad model or an unreachable endpoint leaves no partial run dir.
    backend = make_backend(cfg.backend, cfg.model, cfg.teacher, cfg.batch_size, **backend_options(cfg))
    tokenizer = load_tokenizer(cfg.tokenizer, cfg.trust_remote_code)  # a bad tokenizer: also no run dir
    save_config(run_dir, cfg)
    write_records(run_dir / "problems.jsonl", problems)
    store = AppendLog(run_dir / "traces.partial.jsonl", Trace, key=lambda t: t.key)
    if cfg.retry_failed:
        (run_dir / "failed.partial.jsonl").unlink(missing_ok=True)
    # Samples that exhausted a backend's retries: Trace records with finish_reason "error" and the reason in meta.
    failures = AppendLog(run_dir / "failed.partial.jsonl", Trace, key=lambda t: t.key)
    requests = _pending_requests(problems, cfg, store, skip=failures.records)
    todo = sum(len(r.sample_idxs or []) for r in requests)
    if store.records:
        log.info("generate: resuming, %d traces already done, %d to go", len(store.records), todo)
    with progress_bar(f"generate \\[{cfg.label}]", todo) as advance:  # "\\[": not rich markup
        for batch in backend.generate(requests, cfg.sampling):
            store.append(completion_to_trace(c, cfg.label, tokenizer) for c in batch if c.finish_reason != FAILED)
            failures.append(_failed_trace(c, cfg.label) for c in batch if c.finish_reason == FAILED)
            advance(len(batch))
    n_failed = _finish_failures(run_dir, failures, store)
    store.finalize(run_dir / "traces.jsonl")
    mark_done(run_dir, {"teacher": cfg.label, "n_traces": len(store.records), "n_problems": len(problems),
                        "n_failed": n_failed})
    log.info("generate: %d traces by %s in %s", len(store.records), cfg.label, run_dir)
    return run_dir


def _inputs(cfg: GenerateConfig) -> list:
    """What the traces depend on besides the config: the problems, the tokenizer and, for a model the
    backend loads itself (hf, vllm), the model's content (tracewise.core.fingerprint). An 'openai' endpoint's
    model is known only by its name (in the config)."""
    local_models = ("hf", "vllm")
    return [*cfg.problems.input_files(), *model_input(cfg.tokenizer),
            *(model_input(cfg.model) if cfg.backend in local_models else [])]


def _pending_requests(problems: list[Problem], cfg: GenerateConfig, store: AppendLog, skip=()) -> list[Request]:
    out = []
    for p in problems:
        idxs = [i for i in range(cfg.sampling.n)
                if not store.done(key := f"{cfg.label}|{p.id}|{i}") and key not in skip]
        if idxs:
            out.append(Request(id=p.id, messages=[{"role": "user", "content": p.question}], problem=p, sample_idxs=idxs))
    return out


def _failed_trace(c: Completion, teacher: str) -> Trace:
    return Trace(problem_id=c.request_id, teacher=teacher, text="", thinking="", answer_text="", format="plain",
                 finish_reason=FAILED, sample_idx=c.sample_idx, meta=dict(c.meta))


def _finish_failures(run_dir: Path, failures: AppendLog, store: AppendLog) -> int:
    """Write ``failed.jsonl`` (samples still failed, with reasons) or remove it when none are left."""
    for key in [k for k in failures.records if store.done(k)]:
        del failures.records[key]
    if not failures.records:
        failures.path.unlink(missing_ok=True)
        (run_dir / "failed.jsonl").unlink(missing_ok=True)
        return 0
    failures.finalize(run_dir / "failed.jsonl")
    log.warning("generate: %d samples failed after all retries (reasons in %s); rerun with --retry-failed",
                len(failures.records), run_dir / "failed.jsonl")
    return len(failures.records)


def _reopen_for_retry(run_dir: Path) -> bool:
    """Turn a finished run with failures back into a resumable one: its traces become the partial log
    (copied atomically first, so a crash at any point leaves either the finished run or a resumable one).
    Called with the run dir's lock held."""
    if not (run_dir / "failed.jsonl").exists():
        log.info("generate: %s has no failed samples to retry", run_dir)
        return False
    partial = run_dir / "traces.partial.jsonl"
    if not partial.exists():
        atomic_copy(run_dir / "traces.jsonl", partial)
    (run_dir / "DONE").unlink(missing_ok=True)  # gone already: a retry that died after reopening it
    log.info("generate: retrying the failed samples of %s", run_dir)
    return True
