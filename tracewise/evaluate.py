"""Stage ``eval``: sample a student on held-out problems; accuracy next to token cost.

n samples per problem (default 8 at temperature 0.6), each verified with math-verify; unbiased
pass@k, maj@k, mean generated tokens split into thinking and answer, accuracy per 1k tokens, and
bootstrap CIs (``tracewise.metrics``). Writes per-sample ``samples.jsonl`` and ``summary.json``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from tracewise.backends.base import Completion, Request, SamplingParams
from tracewise.config import doc
from tracewise.controls import ControlConfig, run_control
from tracewise.metrics import summarize, write_summary
from tracewise.problem_sources import ProblemsConfig, load_problems
from tracewise.progress import progress_bar
from tracewise.records import Problem, Sample
from tracewise.store import AppendLog, is_done, mark_done, save_config, stage_dir
from tracewise.tokens import THINK_CLOSE, n_tokens
from tracewise.traces import parse_completion
from tracewise.verify import verify

log = logging.getLogger(__name__)


def _test_problems() -> ProblemsConfig:
    return ProblemsConfig(split="test")


@dataclass
class EvalConfig:
    """Evaluate a model (``tracewise eval``)."""

    out: str = doc("Root directory; the stage writes into <out>/eval-<hash>/.", "runs", hash=False)
    experiment: str = doc("Label of the evaluated student in tables and plots.", "")
    model: str = doc("Model path or id to evaluate.", "")
    backend: str = doc("Backend name ('hf').", "hf")
    benchmark: str = doc("Benchmark label in summary.json (default: 'world' or the problem file's stem).", "")
    problems: ProblemsConfig = doc("Which problems to evaluate on (default: the world's test split).", factory=_test_problems)
    sampling: SamplingParams = doc(
        "Samples per problem, temperature, max new tokens, seed.",
        factory=lambda: SamplingParams(n=8, temperature=0.6, max_tokens=512),
    )
    control: ControlConfig = doc("Test-time control: none, budget_force, wait_extend, think_free, truncate.",
                                 factory=ControlConfig)
    batch_size: int = doc("Generation batch size (rows decoded together).", 256, hash=False)
    n_boot: int = doc("Bootstrap resamples for the 95% CIs.", 1000)
    threads: int = doc("torch CPU threads (0 = torch default).", 0, hash=False)

    def validate(self) -> None:
        from tracewise.backends import BACKENDS

        if not self.model:
            raise ValueError("eval.model is required (a model path or id)")
        if self.backend not in BACKENDS or self.backend == "embedded":
            raise ValueError(f"eval.backend: {self.backend!r} cannot evaluate a model; valid: {sorted(set(BACKENDS) - {'embedded'})}")
        if self.sampling.n < 1 or self.sampling.max_tokens < 1 or self.sampling.temperature < 0:
            raise ValueError("eval.sampling: n and max_tokens must be >= 1 and temperature >= 0")
        self.control.validate()

    @property
    def benchmark_label(self) -> str:
        return self.benchmark or ("world" if self.problems.source == "world" else Path(self.problems.source).stem)


def completion_to_sample(c: Completion, problem: Problem, experiment: str, benchmark: str, tokenizer,
                         control: ControlConfig | None = None) -> Sample:
    """Verify one completion and split its generated tokens into thinking and answer."""
    parsed = parse_completion(c.text)
    truncated = c.finish_reason == "length"
    result = verify(c.text, problem.answer, truncated=truncated)
    if "n_thinking_tokens" in c.meta:  # a control counted them (markers it inserted are not generated)
        n_think = int(c.meta["n_thinking_tokens"])
    else:
        cut = c.text.find(THINK_CLOSE)
        n_think = n_tokens(tokenizer, c.text[: cut + len(THINK_CLOSE)]) if cut >= 0 else (c.n_tokens if parsed.thinking else 0)
    n_think = min(n_think, c.n_tokens)
    return Sample(
        experiment=experiment,
        benchmark=benchmark,
        problem_id=problem.id,
        sample_idx=c.sample_idx,
        text=c.text,
        thinking=parsed.thinking,
        answer_text=parsed.answer,
        pred=result.pred,
        correct=result.correct,
        reason=result.reason,
        n_tokens=c.n_tokens,
        n_thinking_tokens=n_think,
        n_answer_tokens=c.n_tokens - n_think,
        finish_reason=c.finish_reason,
        level=problem.level,
        control=control.label if control else "none",
        budget=(control.budget or None) if control and control.name in ("budget_force", "truncate") else None,
    )


def run(cfg: EvalConfig) -> Path:
    """Evaluate; resumable (finished samples are skipped); returns the run dir."""
    import torch

    from tracewise.backends import get_backend

    cfg.validate()
    problems = load_problems(cfg.problems)
    inputs = [*cfg.problems.input_files(), *([cfg.model] if Path(cfg.model).exists() else [])]
    run_dir = stage_dir(cfg.out, "eval", cfg, inputs=inputs)
    if is_done(run_dir):
        log.info("eval: %s is complete, nothing to do", run_dir)
        return run_dir
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    save_config(run_dir, cfg)
    store = AppendLog(run_dir / "samples.partial.jsonl", Sample, key=lambda s: s.key)
    by_id = {p.id: p for p in problems}
    requests = []
    for p in problems:
        idxs = [i for i in range(cfg.sampling.n) if not store.done(f"{p.id}|{i}")]
        if idxs:
            requests.append(Request(id=p.id, messages=[{"role": "user", "content": p.question}], sample_idxs=idxs))
    backend = get_backend(cfg.backend, model=cfg.model, batch_size=cfg.batch_size)
    tokenizer = backend.tokenizer
    label = cfg.experiment or Path(cfg.model).name
    if cfg.control.name != "none":
        label = f"{label} [{cfg.control.label}]"
    todo = sum(len(r.sample_idxs or []) for r in requests)
    with progress_bar(f"eval [{label}]", todo) as advance:
        for batch in _generate(backend, requests, cfg):
            store.append(completion_to_sample(c, by_id[c.request_id], label, cfg.benchmark_label, tokenizer, cfg.control)
                         for c in batch)
            advance(len(batch))
    samples_path = store.finalize(run_dir / "samples.jsonl")
    samples = [store.records[k] for k in sorted(store.records)]
    summary = summarize(samples, label, cfg.benchmark_label, n_boot=cfg.n_boot, seed=cfg.sampling.seed)
    write_summary(run_dir / "summary.json", [summary.to_row()])
    (run_dir / "experiment.txt").write_text(label)
    mark_done(run_dir, {"experiment": label, "samples": str(samples_path.name), "n": len(samples)})
    row = summary.to_row()
    log.info("eval [%s]: pass@1 %.3f pass@8 %.3f mean tokens %.1f", label, row["pass@1"], row["pass@8"], row["mean_tokens"])
    return run_dir


def _generate(backend, requests: list[Request], cfg: EvalConfig):
    """Plain sampling streams batches as they finish; a control runs chunk by chunk (it edits and
    continues samples), and each chunk is stored before the next starts, so resume still works."""
    if cfg.control.name == "none":
        yield from backend.generate(requests, cfg.sampling)
        return
    chunk = max(1, cfg.batch_size // max(1, cfg.sampling.n))
    for i in range(0, len(requests), chunk):
        yield run_control(cfg.control, backend, requests[i : i + chunk], cfg.sampling)
