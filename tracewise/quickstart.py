"""``tracewise quickstart``: arXiv 2511.19333 in miniature, end to end on a CPU.

R1-style (verbose) vs gpt-oss-style (concise) vs 50/50-mix students, distilled from the *same*
curated problems with the same steps and batch, evaluated on the same held-out problems. Every
step is an ordinary stage writing to its own content-addressed run dir, so a rerun skips what is
done and an interrupted run resumes.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import multiprocessing
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from tracewise import curate, evaluate, generate, report, verify_stage
from tracewise.backends.base import SamplingParams
from tracewise.config import doc
from tracewise.problem_sources import ProblemsConfig
from tracewise.progress import console, progress_bar
from tracewise.train import sft
from tracewise.world import init_stage
from tracewise.world.judge import JudgeConfig
from tracewise.world.problems import WorldConfig
from tracewise.world.student import StudentConfig
from tracewise.world.teachers import TeacherConfig

log = logging.getLogger(__name__)


def _world() -> WorldConfig:
    return WorldConfig(n_train=4000, n_test=100)


def _teachers() -> list[TeacherConfig]:
    return [TeacherConfig(style="r1"), TeacherConfig(style="gpt-oss")]


@dataclass
class TrainSettings:
    """Training settings shared by every quickstart student (same steps and batch for all)."""

    max_steps: int = doc("Optimizer steps per student (1000 keeps the quickstart under 10 min on 2 cores; 3000 reaches the plateau).", 1000)
    batch_size: int = doc("Batch size.", 16)
    learning_rate: float = doc("Peak learning rate.", 3e-3)
    warmup_ratio: float = doc("Warmup fraction.", 0.05)
    logging_steps: int = doc("Loss logging interval.", 10)
    batch_order: str = doc("Batch order (train sft batch_order): random, length_buckets or group_by_length (the "
                           "last two put one teacher per batch in the mix and cost the mix student its accuracy).",
                           "random")


@dataclass
class QuickstartConfig:
    """The quickstart experiment (``tracewise quickstart``)."""

    out: str = doc("Output directory (report.html, report.md, summary.json and all stage run dirs).", "runs/quickstart")
    world: WorldConfig = doc("Embedded world: problem counts, levels, seed.", factory=_world)
    student: StudentConfig = doc("Tiny student architecture.", factory=StudentConfig)
    pretrain_steps: int = doc("Style-neutral base pretraining steps of the student (see init-student).", 300)
    teachers: list[TeacherConfig] = doc("Procedural teachers (style and error rates).", factory=_teachers)
    judge: JudgeConfig = doc("Procedural judge error rates.", factory=JudgeConfig)
    filter: str = doc("Correctness filter for curation: judge | math_verify | both | none.", "both")
    train: TrainSettings = doc("Training settings shared by all students.", factory=TrainSettings)
    eval_samples: int = doc("Samples per test problem (pass@k uses k <= this).", 8)
    eval_temperature: float = doc("Sampling temperature at evaluation.", 0.6)
    eval_max_tokens: int = doc("Max new tokens per evaluation sample.", 400)
    parallel: int = doc("Students trained at once (separate processes, 1 torch thread each).", 2)
    seed: int = doc("Seed for generation, training and sampling.", 0)

    def validate(self) -> None:
        if len({t.style for t in self.teachers}) != len(self.teachers) or len(self.teachers) < 2:
            raise ValueError("quickstart.teachers: need at least two teachers with distinct styles")
        if self.parallel < 1:
            raise ValueError("quickstart.parallel must be >= 1")


def _train_one(cfg: sft.SFTRunConfig) -> str:
    """Child-process entry: one student, one thread (two small models train faster side by side)."""
    from tracewise.progress import quiet_library_bars

    os.environ["TRACEWISE_NO_PROGRESS"] = "1"
    logging.basicConfig(level=logging.WARNING)
    quiet_library_bars()
    return str(sft.run(cfg))


def _train_all(cfgs: list[sft.SFTRunConfig], parallel: int) -> list[Path]:
    if parallel == 1 or len(cfgs) == 1:
        return [sft.run(c) for c in cfgs]
    ctx = multiprocessing.get_context("spawn")
    results: dict[int, Path] = {}
    with progress_bar("train students", len(cfgs)) as advance:
        with cf.ProcessPoolExecutor(max_workers=parallel, mp_context=ctx) as pool:
            futures = {pool.submit(_train_one, replace(c, threads=1)): i for i, c in enumerate(cfgs)}
            for fut in cf.as_completed(futures):
                results[futures[fut]] = Path(fut.result())
                log.info("trained %s", cfgs[futures[fut]].experiment)
                advance(1)
    return [results[i] for i in range(len(cfgs))]


def run(cfg: QuickstartConfig) -> Path:
    """Run the whole experiment; returns the report's HTML path."""
    cfg.validate()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.time()

    def lap(name: str) -> None:
        nonlocal t0
        timings[name] = round(time.time() - t0, 2)
        t0 = time.time()

    student_dir = init_stage.run(init_stage.InitStudentConfig(out=str(out), student=cfg.student,
                                                                       pretrain_steps=cfg.pretrain_steps))
    base_model = str(init_stage.model_path(student_dir))
    lap("init-student")
    problems = ProblemsConfig(source="world", split="train", world=cfg.world)
    gens = [
        generate.run(generate.GenerateConfig(out=str(out), tokenizer=base_model, teacher=t, problems=problems,
                                             sampling=SamplingParams(n=1, seed=cfg.seed)))
        for t in cfg.teachers
    ]
    lap("generate")
    ver = verify_stage.run(verify_stage.VerifyConfig(out=str(out), generations=[str(g) for g in gens], judge_cfg=cfg.judge))
    lap("verify")
    cur = curate.run(curate.CurateConfig(out=str(out), generations=[str(g) for g in gens], verdicts=str(ver),
                                         filter=cfg.filter, mix_seed=cfg.seed))
    lap("curate")
    names = [t.style for t in cfg.teachers] + ["mix"]
    t = cfg.train
    sft_cfgs = [
        sft.SFTRunConfig(out=str(out), experiment=name, model=base_model, dataset=str(curate.dataset_path(cur, name)),
                         max_steps=t.max_steps, batch_size=t.batch_size, learning_rate=t.learning_rate,
                         warmup_ratio=t.warmup_ratio, logging_steps=t.logging_steps, seed=cfg.seed,
                         batch_order=t.batch_order)
        for name in names
    ]
    # Longest first, so the verbose student does not start last and finish alone.
    order = sorted(range(len(sft_cfgs)), key=lambda i: names[i] != "r1")
    trained = _train_all([sft_cfgs[i] for i in order], cfg.parallel)
    sft_dirs = {sft_cfgs[i].experiment: d for i, d in zip(order, trained)}
    lap("train")
    test = ProblemsConfig(source="world", split="test", world=cfg.world)
    sampling = SamplingParams(n=cfg.eval_samples, temperature=cfg.eval_temperature, max_tokens=cfg.eval_max_tokens, seed=cfg.seed)
    evals = [
        evaluate.run(evaluate.EvalConfig(out=str(out), experiment=name, model=str(sft.model_dir(sft_dirs[name])),
                                         problems=test, sampling=sampling))
        for name in names
    ]
    lap("eval")
    html = report.run(report.ReportConfig(
        out=str(out),
        title="tracewise quickstart: verbose vs concise teacher traces",
        summaries=[str(e / "summary.json") for e in evals],
        samples=[str(e / "samples.jsonl") for e in evals],
        train_logs=[str(sft_dirs[n] / "log_history.json") for n in names],
        curate_table=str(Path(cur) / "table.md"),
        mix_experiment="mix",
    ))
    lap("report")
    (out / "timings.json").write_text(json.dumps(timings, indent=1))
    _print_summary(out, timings)
    return html


def _print_summary(out: Path, timings: dict[str, float]) -> None:
    """The one-screen summary: each student's accuracy next to its cost, and where to look next."""
    from rich.table import Table

    rows = json.loads((out / "summary.json").read_text())["rows"]
    table = Table(title="quickstart results (held-out problems)")
    for col in ("student", "pass@1", "pass@8", "maj@8", "mean tokens", "thinking", "acc/1k tok"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["experiment"], f"{r['pass@1']:.3f}", f"{r['pass@8']:.3f}", f"{r['maj@8']:.3f}",
                      f"{r['mean_tokens']:.1f}", f"{r['mean_thinking_tokens']:.1f}", f"{r.get('acc_per_1k_tokens', 0):.1f}")
    console.print(table)
    headline = (out / "report.md").read_text().split("\n")
    lines = [ln for ln in headline if ln.startswith("**") or ln.lower().startswith("headline")]
    if lines:
        console.print(lines[0])
    console.print(f"stage times (s): {timings}  total {sum(timings.values()):.0f}")
    console.print(f"report: {out / 'report.html'}  |  {out / 'report.md'}  |  {out / 'summary.json'}")
