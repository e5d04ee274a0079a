"""``tracewise quickstart``: arXiv 2511.19333 in miniature, end to end on a CPU.

R1-style (verbose) vs gpt-oss-style (concise) vs 50/50-mix students, distilled from the *same*
curated problems with the same steps and batch, evaluated on the same held-out problems. Every
step is an ordinary stage writing to its own content-addressed run dir, so a rerun skips what is
done and an interrupted run resumes.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from tracewise import curate, evaluate, generate, report
from tracewise.verify import stage as verify_stage
from tracewise.backends.base import SamplingParams
from tracewise.core.config import doc
from tracewise.data.sources import ProblemsConfig
from tracewise.core.logs import console
from tracewise.core.threads import THREADS_HELP, resolve_threads
from tracewise.evaluate.metrics import write_summary
from tracewise.core.seeds import resolve_seeds, seeds_field
from tracewise.evaluate.replicates import combine_runs
from tracewise.train import sft
from tracewise.studies.common import TrainSettings, train_and_eval
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
class QuickstartConfig:
    """The quickstart experiment (``tracewise quickstart``)."""

    out: str = doc("Output directory (report.html, report.md, summary.json and all stage run dirs).", "runs/quickstart")
    world: WorldConfig = doc("Embedded world: problem counts, levels, seed.", factory=_world)
    student: StudentConfig = doc("Tiny student architecture.", factory=StudentConfig)
    pretrain_steps: int = doc("Style-neutral base pretraining steps of the student (see init-student).", 300)
    pretrain_facts: str = doc("Notation of the base's pretraining facts (see init-student): 'both' teachers' "
                              "notations equally often, or 'compact' ('7-1=6', the gpt-oss teacher's only: the base then "
                              "already knows the concise student's arithmetic tokens; with it the 3-seed r1 student "
                              "was 0.78 pass@1 against 1.00 with 'both'; README).", "both")
    teachers: list[TeacherConfig] = doc("Procedural teachers (style and error rates).", factory=_teachers)
    judge: JudgeConfig = doc("Procedural judge error rates.", factory=JudgeConfig)
    filter: str = doc("Correctness filter for curation: judge | math_verify | both | none.", "both")
    train: TrainSettings = doc("Training settings shared by all students (1000 steps: a 500-step trial, with bf16, "
                               "left them far below, pass@1 r1 0.37 / gpt-oss 0.63 / mix 0.57, 1 seed; README has "
                               "the measured times).",
                               factory=lambda: TrainSettings(max_steps=1000))
    eval_samples: int = doc("Samples per test problem (pass@k uses k <= this).", 8)
    eval_temperature: float = doc("Sampling temperature at evaluation.", 0.6)
    eval_max_tokens: int = doc("Max new tokens per evaluation sample.", 400)
    parallel: int = doc("Students trained at once (separate processes, threads/parallel torch threads each).", 2)
    threads: int = doc(THREADS_HELP, 0)
    seed: int = doc("Seed for the world's teacher traces and the mix, and the first replicate's training and sampling.", 0)
    seeds: int | list[int] = seeds_field(
        "A replicate retrains every student with its own data order and evaluates it with its own sampling seed; "
        "the base student, the teacher traces and the curated datasets are shared, so replicates measure training "
        "and sampling noise, not a new world.")

    def seed_values(self) -> list[int]:
        return resolve_seeds(self.seed, self.seeds)

    def validate(self) -> None:
        if len({t.style for t in self.teachers}) != len(self.teachers) or len(self.teachers) < 2:
            raise ValueError("quickstart.teachers: need at least two teachers with distinct styles")
        if self.parallel < 1:
            raise ValueError("quickstart.parallel must be >= 1")
        init_stage.check_pretrain_facts(self.pretrain_facts, "quickstart")
        try:
            self.seed_values()
        except ValueError as e:
            raise ValueError(f"quickstart.{e}") from None
        self.train.validate()


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

    threads = resolve_threads(cfg.threads)  # once, so every stage of this run gets the same number
    student_dir = init_stage.run(init_stage.InitStudentConfig(out=str(out), student=cfg.student,
                                                              pretrain_steps=cfg.pretrain_steps,
                                                              pretrain_facts=cfg.pretrain_facts, threads=threads))
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
    seeds = cfg.seed_values()
    jobs = [(sd, name) for sd in seeds for name in names]
    sft_cfgs = [cfg.train.sft_config(str(out), name, base_model, str(curate.dataset_path(cur, name)), sd)
                for sd, name in jobs]
    test = ProblemsConfig(source="world", split="test", world=cfg.world)
    eval_cfgs = [evaluate.EvalConfig(out=str(out), experiment=name, model="", problems=test,
                                     sampling=SamplingParams(n=cfg.eval_samples, temperature=cfg.eval_temperature,
                                                             max_tokens=cfg.eval_max_tokens, seed=sd))
                 for sd, name in jobs]
    # Longest first, so a verbose student does not start last and finish alone; each worker evaluates its
    # student right after training it, so sampling overlaps the other students' training.
    rank = {"r1": 0, "mix": 1}  # longest training first (verbose, then mixed, then concise), seeds in turn
    order = sorted(range(len(jobs)), key=lambda i: (rank.get(jobs[i][1], 2), i))
    done = train_and_eval([sft_cfgs[i] for i in order], [eval_cfgs[i] for i in order], cfg.parallel, threads)
    sft_dirs = {jobs[i]: d for i, (d, _) in zip(order, done)}
    evals = {jobs[i]: e for i, (_, e) in zip(order, done)}
    lap("train+eval")
    # The teachers wrote traces for the TRAIN problems; the eval is on TEST problems, so the viewer would show
    # no teacher trace next to a student's sample. The embedded teachers are procedural and fast, so they also
    # write one reference trace per test problem, in <out>/reference/ (not <out>/generate-*: those are the
    # training pools other studies read), shown labelled "reference (not trained on)".
    refs = [generate.run(generate.GenerateConfig(out=str(out / "reference"), tokenizer=base_model, teacher=t,
                                                 problems=test, sampling=SamplingParams(n=1, seed=cfg.seed)))
            for t in cfg.teachers]
    lap("reference")
    samples = [str(evals[(sd, name)] / "samples.jsonl") for sd in seeds for name in names]  # seed-major
    summaries = [str(evals[(seeds[0], n)] / "summary.json") for n in names]
    if len(seeds) > 1:
        summaries = [str(_replicate_summary(out, names, seeds, evals))]
    html = report.run(report.ReportConfig(
        out=str(out),
        title="tracewise quickstart: verbose vs concise teacher traces"
              + (f" ({len(seeds)} seeds)" if len(seeds) > 1 else ""),
        summaries=summaries,
        samples=samples,
        # one seed's curves: the replicates' curves would overlap under the same labels
        train_logs=[str(sft_dirs[(seeds[0], n)] / "log_history.json") for n in names],
        curate_table=str(Path(cur) / "table.md"),
        mix_experiment="mix",
        # the sample viewer: questions and golds from the eval runs, the teachers' training traces, and
        # the reference traces on the test problems
        problems=[str(evals[(seeds[0], n)]) for n in names],
        traces=[str(g) for g in gens],
        reference_traces=[str(r) for r in refs],
    ))
    lap("report")
    (out / "timings.json").write_text(json.dumps(timings, indent=1))
    _print_summary(out, timings)
    return html


def _replicate_summary(out: Path, names: list[str], seeds: list[int], evals: dict) -> Path:
    """One row per student over all seeds: means, seed SD and hierarchical-bootstrap intervals."""
    rows = combine_runs([[evals[(sd, name)] for name in names] for sd in seeds])
    return write_summary(out / "replicates" / "summary.json", rows)


def _print_summary(out: Path, timings: dict[str, float]) -> None:
    """The one-screen summary: each student's accuracy next to its cost, the headline's interval readings,
    and where to look next."""
    from rich.table import Table

    rows = json.loads((out / "summary.json").read_text())["rows"]
    seeds = rows[0].get("seeds", 1) if rows else 1
    table = Table(title=f"quickstart results (held-out problems, {seeds} seed{'s' if seeds != 1 else ''}; [95% CI])")
    for col in ("student", "pass@1", "pass@8", "maj@8", "mean tokens", "thinking", "acc/1k tok"):
        table.add_column(col, justify="right")
    for r in rows:
        ci = r.get("ci95", {})
        cell = lambda m, d=3: f"{r[m]:.{d}f}" + (f" [{ci[m][0]:.{d}f}, {ci[m][1]:.{d}f}]" if m in ci else "")  # noqa: E731
        table.add_row(r["experiment"], cell("pass@1"), cell("pass@8"), f"{r['maj@8']:.3f}", cell("mean_tokens", 1),
                      f"{r['mean_thinking_tokens']:.1f}", f"{r.get('acc_per_1k_tokens') or 0:.1f}")
    console.print(table)
    md = (out / "report.md").read_text().split("\n## ")
    head = next((sec for sec in md if sec.startswith("Headline")), "")
    for line in head.splitlines()[1:]:
        if line.strip():
            console.print(line)
    console.print(f"stage times (s): {timings}  total {sum(timings.values()):.0f}")
    console.print(f"report: {out / 'report.html'}  |  {out / 'report.md'}  |  {out / 'summary.json'}")
