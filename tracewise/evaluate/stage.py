"""Stage ``eval``: sample a student on held-out problems; accuracy next to token cost.

n samples per problem (default 8 at temperature 0.6), each verified with math-verify; unbiased
pass@k, maj@k, mean generated tokens split into thinking and answer, accuracy per 1k tokens, and
bootstrap CIs (``tracewise.evaluate.metrics``). Writes per-sample ``samples.jsonl`` and ``summary.json``.

Several benchmarks in one command (``benchmarks=[gsm8k,math500,aime24]``, CLI ``--benchmark a,b,c``,
like lm-eval's ``--tasks``): one ordinary, resumable eval run dir per benchmark - the same dir as
``problems.source=B benchmark=B`` alone - sharing one loaded model, and their rows (one per
benchmark) collected in ``<out>/benchmarks-<hash>/summary.json``.

Replicates (``seeds=3`` or ``seeds=[0,1,2]``): one ordinary eval run per sampling seed, and their rows
combined (mean over seeds, seed SD, hierarchical-bootstrap CI) in ``<out>/replicates-<hash>/summary.json``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

from tracewise.backends.base import Completion, Request, SamplingParams
from tracewise.backends.openai_http import OpenAIConfig
from tracewise.backends.vllm import VLLMConfig
from tracewise.core.config import doc
from tracewise.core.fingerprint import model_input
from tracewise.core.threads import THREADS_HELP, use_threads
from tracewise.evaluate.controls import ControlConfig, check_backend_for, control_sweep, run_control
from tracewise.evaluate.few_shot import FewShotConfig, few_shot_messages
from tracewise.evaluate.metrics import read_summary, summarize, write_summary
from tracewise.data.sources import ProblemsConfig, load_problems
from tracewise.core.logs import progress_bar
from tracewise.core.records import TIMINGS_NAME, Problem, Sample, SampleTiming
from tracewise.core.seeds import Replicated, seeds_field
from tracewise.core.store import AppendLog, is_done, mark_done, save_config, stage_dir
from tracewise.core.tokens import THINK_CLOSE, n_tokens
from tracewise.core.text import parse_completion
from tracewise.verify.answer import VerifyResult
from tracewise.verify.pool import DEFAULT_TIMEOUT_S, verify_bounded, verify_many

log = logging.getLogger(__name__)


def _test_problems() -> ProblemsConfig:
    return ProblemsConfig(split="test")


@dataclass
class EvalConfig(Replicated):
    """Evaluate a model (``tracewise eval``)."""

    SEED = "sampling.seed"  # what a replicate varies (core.seeds)

    out: str = doc("Root directory; the stage writes into <out>/eval-<hash>/.", "runs", hash=False)
    experiment: str = doc("Label of the evaluated student in tables and plots.", "")
    model: str = doc("Model path or id to evaluate.", "")
    backend: str = doc("Backend name: 'hf', 'vllm' or 'openai'.", "hf")
    benchmark: str = doc("Benchmark label in summary.json (default: 'world' or the problem file's stem).", "")
    benchmarks: list[str] = doc("Evaluate on each of these in turn (CLI: --benchmark gsm8k,math500,aime24): benchmark "
                                "names or JSONL files, each run as problems.source=B benchmark=B in its own resumable "
                                "run dir; the rows are collected in <out>/benchmarks-<hash>/summary.json "
                                "(runs.json: benchmark -> run dir).",
                                factory=list, hash=False)
    problems: ProblemsConfig = doc("Which problems to evaluate on (default: the world's test split).", factory=_test_problems)
    sampling: SamplingParams = doc(
        "Samples per problem, temperature, max new tokens, seed.",
        factory=lambda: SamplingParams(n=8, temperature=0.6, max_tokens=512),
    )
    seeds: int | list[int] = seeds_field("One eval run per sampling seed (sampling.seed = each; count N: "
                                         "sampling.seed … +N-1), the model loaded once; their rows are combined in "
                                         "<out>/replicates-<hash>/summary.json (mean over seeds, plus seeds, sd and a "
                                         "hierarchical-bootstrap ci95; runs.json: seed -> run dirs). The seed varies "
                                         "the samples drawn, nothing else.")
    control: ControlConfig = doc("Test-time control: none, budget_force, wait_extend, think_free, truncate.",
                                 factory=ControlConfig)
    few_shot: FewShotConfig = doc("k-shot exemplars shown before each problem (style transfer); k=0 = zero-shot.",
                                  factory=FewShotConfig)
    batch_size: int = doc("Generation batch size (rows decoded together).", 256, hash=False)
    vllm: VLLMConfig = doc("'vllm' backend: tensor/data parallel sizes, memory, max_model_len (set it for models "
                           "whose config declares a context the GPU cannot hold).", factory=VLLMConfig, hash=False)
    openai: OpenAIConfig = doc("'openai' backend (an OpenAI-compatible server: model = its served name): base_url, "
                               "API key env var, endpoint ('completions' to continue a prefix, which every test-time "
                               "control needs), tokenizer, concurrency, retries.", factory=OpenAIConfig, hash=False)
    n_boot: int = doc("Bootstrap resamples for the 95% CIs.", 1000)
    threads: int = doc(THREADS_HELP, 0, hash=False)
    trust_remote_code: bool = doc("Run Python code shipped with the model or tokenizer (HF auto_map); off unless you pass it.", False, hash=False)
    verify_workers: int = doc("math-verify worker processes (-1 = auto, 0 = in this process without a hard "
                              "time bound).", -1, hash=False)
    verify_timeout_s: float = doc("Seconds one math-verify comparison may take; slower ones count as wrong.",
                                  DEFAULT_TIMEOUT_S)
    timings: bool = doc("Write timings.jsonl: per sample (by its samples.jsonl key) wall latency, time to first "
                        "token and output tokens as the backend measured them (hf: its decode batch; openai: its "
                        "request; vllm: in the engine). Never changes samples.jsonl and is never hashed.",
                        True, hash=False)

    def validate(self) -> None:
        from tracewise.backends import BACKENDS

        if not self.model:
            raise ValueError("eval.model is required (a model path or id)")
        if self.backend not in BACKENDS or self.backend == "embedded":
            raise ValueError(f"eval.backend: {self.backend!r} cannot evaluate a model; valid: {sorted(set(BACKENDS) - {'embedded'})}")
        self.sampling.validate("eval.sampling")
        self.control.validate()
        if self.verify_workers < -1 or not self.verify_timeout_s > 0:
            raise ValueError(f"eval.verify_workers must be >= -1 and eval.verify_timeout_s > 0, got "
                             f"{self.verify_workers} and {self.verify_timeout_s}")
        # A control that continues a prefix needs a backend that can: checked on the class when it
        # declares supports_prefix (before a model is loaded), else on the instance in run(), still
        # before anything is generated (the OpenAI backend decides per endpoint).
        import importlib

        module_name, class_name = BACKENDS[self.backend].split(":")
        backend_cls = getattr(importlib.import_module(module_name), class_name)
        if getattr(backend_cls, "supports_prefix", None) is not None:
            check_backend_for(self.control, backend_cls)
        if self.control.name == "wait_extend":
            for m in self.control.budgets or [self.control.min_thinking]:
                if m >= self.sampling.max_tokens:
                    raise ValueError(f"eval.control: min_thinking {m} must be below sampling.max_tokens "
                                     f"({self.sampling.max_tokens})")
        self.few_shot.validate()
        if self.backend == "vllm":
            self.vllm.validate()
        if self.backend == "openai":
            self.openai.validate()
        if self.benchmarks:
            self._validate_benchmarks()
        self.validate_seeds("eval")

    def _validate_benchmarks(self) -> None:
        from tracewise.data.benchmarks import BENCHMARKS

        if self.benchmark:
            raise ValueError(f"eval: set benchmark (one label) or benchmarks (several), not both "
                             f"(benchmark={self.benchmark!r}, benchmarks={self.benchmarks})")
        labels = [source_label(b) for b in self.benchmarks]
        if len(set(labels)) < len(labels):
            raise ValueError(f"eval.benchmarks: {self.benchmarks} names a benchmark twice (labels {labels})")
        for b in self.benchmarks:
            if b != "world" and b not in BENCHMARKS and not Path(b).is_file():
                raise ValueError(f"eval.benchmarks: {b!r} is neither a benchmark ({', '.join(sorted(BENCHMARKS))}, "
                                 f"world) nor a JSONL file")

    def per_benchmark(self) -> list[EvalConfig]:
        """One single-benchmark config per entry of ``benchmarks`` (the config itself when there are none)."""
        if not self.benchmarks:
            return [self]
        return [replace(self, benchmarks=[], benchmark=source_label(b), problems=self._problems_for(b))
                for b in self.benchmarks]

    def _problems_for(self, source: str) -> ProblemsConfig:
        # What `problems.source=B` on the command line builds (the field's default, _test_problems, with that
        # key set; split only matters for the world), so a benchmark of the set finds the run dir of a
        # one-benchmark `eval problems.source=B benchmark=B`.
        if source == "world":
            return replace(self.problems, source=source)
        return replace(_test_problems(), source=source, limit=self.problems.limit)

    @property
    def benchmark_label(self) -> str:
        return self.benchmark or ("world" if self.problems.source == "world" else Path(self.problems.source).stem)


def source_label(source: str) -> str:
    """A benchmark's label in summaries: its name, or a problem file's stem."""
    from tracewise.data.benchmarks import BENCHMARKS

    return source if source == "world" or source in BENCHMARKS else Path(source).stem


def completion_to_sample(c: Completion, problem: Problem, experiment: str, benchmark: str, tokenizer,
                         control: ControlConfig | None = None, result: VerifyResult | None = None) -> Sample:
    """Verify one completion (unless ``result`` is its verdict already) and split its generated tokens
    into thinking and answer."""
    parsed = parse_completion(c.text)
    truncated = c.finish_reason == "length"
    result = result or verify_bounded(c.text, problem.answer, truncated=truncated)
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
        budget=control.swept_value if control else None,
    )


def run(cfg: EvalConfig) -> Path:
    """Evaluate; resumable (finished samples are skipped); returns the run dir (with ``benchmarks``:
    the ``benchmarks-<hash>`` dir whose ``summary.json`` has one row per benchmark)."""
    cfg.validate()
    seeds = cfg.seed_values()
    if len(seeds) > 1:
        return run_replicates(cfg)
    if seeds != [cfg.base_seed()]:  # seeds=[5]: the one run of sampling.seed=5, as it would be alone
        cfg = cfg.for_seed(seeds[0])
    if cfg.benchmarks:
        return run_benchmarks(cfg)
    return _run_one(cfg, load_problems(cfg.problems), {})


def run_replicates(cfg: EvalConfig) -> Path:
    """One ordinary eval run per seed of ``cfg.seeds`` (per benchmark with ``benchmarks``), the model loaded
    once; returns ``<out>/replicates-<hash>`` with their rows combined over seeds (``combine_runs``)."""
    from tracewise.evaluate.replicates import combine_runs

    cfg.validate()
    seeds = cfg.seed_values()
    subs = [cfg.for_seed(s).per_benchmark() for s in seeds]
    problems = [load_problems(b.problems) for b in subs[0]]  # the same problems for every seed
    shared: dict = {}
    per_seed = [[_run_one(b, p, shared) for b, p in zip(runs, problems)] for runs in subs]
    for seed, dirs in zip(seeds, per_seed):
        log.info("eval seed %d: %s", seed, " ".join(str(d) for d in dirs))
    names = {str(seed): [d.name for d in dirs] for seed, dirs in zip(seeds, per_seed)}
    set_dir = stage_dir(cfg.out, "replicates", {"runs": names})
    if not is_done(set_dir):
        set_dir.mkdir(parents=True, exist_ok=True)
        rows = write_summary(set_dir / "summary.json", combine_runs(per_seed, n_boot=cfg.n_boot))
        (set_dir / "runs.json").write_text(json.dumps(names, indent=1) + "\n")
        mark_done(set_dir, {"seeds": seeds, "runs": names, "summary": rows.name})
    for row in read_summary(set_dir / "summary.json"):
        log.info("eval [%s] over %d seeds: pass@1 %.3f (sd %s) [%.3f, %.3f], mean tokens %.1f", row["experiment"],
                 row["seeds"], row["pass@1"], _fmt_sd(row["sd"]["pass@1"]), *row["ci95"]["pass@1"],
                 row["mean_tokens"])
    return set_dir


def _fmt_sd(sd: float | None) -> str:
    return "–" if sd is None else f"{sd:.3f}"


def run_benchmarks(cfg: EvalConfig) -> Path:
    """``cfg`` on each of ``cfg.benchmarks``: every benchmark is read (and its golds checked) before the
    first one runs; the model is loaded once, and only if some benchmark is not finished yet."""
    cfg.validate()
    subs = cfg.per_benchmark()
    problems = [load_problems(s.problems) for s in subs]
    shared: dict = {}
    dirs = [_run_one(s, p, shared) for s, p in zip(subs, problems)]
    set_dir = stage_dir(cfg.out, "benchmarks", {"runs": [d.name for d in dirs]})
    for s, d in zip(subs, dirs):
        for row in read_summary(d / "summary.json"):
            log.info("eval %s: pass@1 %.3f pass@8 %.3f mean tokens %.1f (%s)", s.benchmark, row["pass@1"],
                     row["pass@8"], row["mean_tokens"], d)
    if not is_done(set_dir):
        set_dir.mkdir(parents=True, exist_ok=True)
        write_summary(set_dir / "summary.json", [row for d in dirs for row in read_summary(d / "summary.json")])
        names = {s.benchmark: d.name for s, d in zip(subs, dirs)}
        (set_dir / "runs.json").write_text(json.dumps(names, indent=1) + "\n")
        mark_done(set_dir, {"benchmarks": [s.benchmark for s in subs], "runs": [d.name for d in dirs]})
    return set_dir


def _run_one(cfg: EvalConfig, problems: list[Problem], shared: dict) -> Path:
    """One benchmark; ``shared`` keeps the backend (one loaded model) for the next benchmark."""
    from tracewise.backends import get_backend

    exemplars = cfg.few_shot.exemplars()
    inputs = [*cfg.problems.input_files(), *model_input(cfg.model),
              *([cfg.few_shot.path] if cfg.few_shot.k else [])]
    run_dir = stage_dir(cfg.out, "eval", cfg, inputs=inputs)
    if is_done(run_dir):
        log.info("eval: %s is complete, nothing to do", run_dir)
        return run_dir
    cfg = replace(cfg, threads=use_threads(cfg.threads))  # the number it ran with, in config.yaml
    # One control, or one per point of a budget sweep; a sweep's samples are keyed by control too.
    points = cfg.control.points
    sweep = bool(cfg.control.budgets)

    def key(label: str, problem_id: str, idx: int) -> str:
        return f"{label}|{problem_id}|{idx}" if sweep else f"{problem_id}|{idx}"

    by_id = {p.id: p for p in problems}
    messages = {p.id: few_shot_messages(p.question, exemplars, cfg.few_shot.k) for p in problems}
    if "backend" not in shared:
        shared["backend"] = get_backend(cfg.backend, model=cfg.model, batch_size=cfg.batch_size,
                                        trust_remote_code=cfg.trust_remote_code, **_backend_options(cfg))
    backend = shared["backend"]
    check_backend_for(cfg.control, backend)
    save_config(run_dir, cfg)
    store = AppendLog(run_dir / "samples.partial.jsonl", Sample, key=lambda s: key(s.control, s.problem_id, s.sample_idx))
    timings = AppendLog(run_dir / "timings.partial.jsonl", SampleTiming, key=lambda t: t.key) if cfg.timings else None
    requests = []
    for p in problems:
        # A sample is redone when any point lacks it: the sweep is deterministic, and the store
        # drops the records it already holds.
        idxs = [i for i in range(cfg.sampling.n) if not all(store.done(key(c.label, p.id, i)) for c in points)]
        if idxs:
            requests.append(Request(id=p.id, messages=messages[p.id], sample_idxs=idxs))
    tokenizer = backend.tokenizer
    student = cfg.experiment or Path(cfg.model).name
    labels = {c.label: f"{student} [{c.label}]" if c.name != "none" else student for c in points}
    todo = sum(len(r.sample_idxs or []) for r in requests) * len(points)
    with progress_bar(f"eval [{student}]", todo) as advance:
        for control, batch in _generate(backend, requests, cfg):
            # One pooled, deadline-bounded, cached math-verify call per batch (tracewise.verify.pool).
            verdicts = verify_many([(c.text, by_id[c.request_id].answer, c.finish_reason == "length") for c in batch],
                                   workers=cfg.verify_workers if cfg.verify_workers >= 0 else None,
                                   timeout_s=cfg.verify_timeout_s)
            if timings is not None:  # before the samples: a sample on disk always has its timing row
                timings.append(sample_timing(key(control.label, c.request_id, c.sample_idx), c) for c in batch)
            store.append(completion_to_sample(c, by_id[c.request_id], labels[control.label], cfg.benchmark_label,
                                              tokenizer, control, v) for c, v in zip(batch, verdicts, strict=True))
            advance(len(batch))
    samples_path = store.finalize(run_dir / "samples.jsonl")
    if timings is not None:
        timings.finalize(run_dir / TIMINGS_NAME)
    samples = [store.records[k] for k in sorted(store.records)]
    rows = []
    for control in points:
        label = labels[control.label]
        summary = summarize([s for s in samples if s.control == control.label], label, cfg.benchmark_label,
                            n_boot=cfg.n_boot, seed=cfg.sampling.seed)
        row = summary.to_row()
        # Which student, under which control and budget, with which exemplars: the report groups by these.
        row.update(student=student, control=control.name, control_label=control.label, budget=control.swept_value)
        if cfg.few_shot.k:
            row.update(few_shot_k=cfg.few_shot.k, few_shot_style=cfg.few_shot.style)
        rows.append(row)
        log.info("eval [%s]: pass@1 %.3f pass@8 %.3f mean tokens %.1f", label, row["pass@1"], row["pass@8"],
                 row["mean_tokens"])
    write_summary(run_dir / "summary.json", rows)
    (run_dir / "experiment.txt").write_text(student if sweep else labels[points[0].label])
    mark_done(run_dir, {"experiment": [labels[c.label] for c in points] if sweep else labels[points[0].label],
                        "samples": str(samples_path.name), "n": len(samples)})
    return run_dir


def sample_timing(key: str, c: Completion) -> SampleTiming:
    """The timing row of one completion (``clock`` "none" when its backend timed nothing)."""
    t = c.timing or {}
    return SampleTiming(key=key, latency_s=t.get("latency_s"), ttft_s=t.get("ttft_s"), output_tokens=c.n_tokens,
                        clock=t.get("clock", "none"))


def _backend_options(cfg: EvalConfig) -> dict:
    """Backend-specific constructor arguments (the vllm or openai section, as ``generate`` passes them)."""
    import dataclasses

    if cfg.backend == "openai":
        return {**dataclasses.asdict(cfg.openai), "tokenizer": cfg.openai.tokenizer or None}
    return dataclasses.asdict(cfg.vllm) if cfg.backend == "vllm" else {}


def _generate(backend, requests: list[Request], cfg: EvalConfig):
    """Yield ``(control, completions)``. Plain sampling streams batches as they finish; a control
    runs chunk by chunk (it edits and continues samples), a sweep runs every budget of a chunk in
    one call, and each chunk is stored before the next starts, so resume still works."""
    if cfg.control.name == "none":
        for batch in backend.generate(requests, cfg.sampling):
            yield cfg.control, batch
        return
    chunk = max(1, cfg.batch_size // max(1, cfg.sampling.n))
    for i in range(0, len(requests), chunk):
        part = requests[i : i + chunk]
        t0 = time.perf_counter()
        if cfg.control.budgets:
            swept = control_sweep(cfg.control, backend, part, cfg.sampling)
            wall = time.perf_counter() - t0
            for value, completions in swept.items():
                yield cfg.control.at(value), _chunk_timed(completions, wall)
        else:
            done = run_control(cfg.control, backend, part, cfg.sampling)
            yield cfg.control, _chunk_timed(done, time.perf_counter() - t0)


def _chunk_timed(completions: list[Completion], wall: float) -> list[Completion]:
    """A control's samples are several generation passes: each is timed by its chunk's wall time (a sweep's
    chunk holds every budget), with no time to first token."""
    timing = {"latency_s": wall, "ttft_s": None, "clock": "chunk"}
    for c in completions:
        c.timing = dict(timing)
    return completions
