"""Plumbing shared by the judge-bias and curation studies: base student, students per dataset, plots.

Every step is an ordinary stage (init-student, generate, verify, curate, train sft, eval) writing
its own content-addressed run dir, so a rerun of a study skips what is done and an interrupted one
resumes; the study only decides which datasets to train on and reads the stages' outputs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from tracewise import evaluate, generate
from tracewise.backends.base import SamplingParams
from tracewise.core.config import doc
from tracewise.evaluate.metrics import read_summary
from tracewise.data.sources import ProblemsConfig
from tracewise.train import sft
from tracewise.world import init_stage
from tracewise.world.problems import WorldConfig
from tracewise.world.student import StudentConfig
from tracewise.world.teachers import TeacherConfig

log = logging.getLogger(__name__)


@dataclass
class StudyBase:
    """Fields every curation study shares: where it writes, the world, the base student, parallelism."""

    out: str = doc("Root of the stage run dirs (shared with other studies, so finished stages are reused).",
                   "runs/studies")
    name: str = doc("Sub-directory of out for this study's tables, plot and section.", "study")
    world: WorldConfig = doc("Embedded world (train pool and test split).",
                             factory=lambda: WorldConfig(n_train=1500, n_test=100))
    student: StudentConfig = doc("Tiny student architecture (ignored when base_model is given).",
                                 factory=StudentConfig)
    pretrain_steps: int = doc("Base pretraining steps of the embedded student.", 300)
    base_model: str = doc("A real base model to fine-tune instead of the embedded student.", "")
    parallel: int = doc("Students trained at once (1 torch thread each).", 2)
    seed: int = doc("Seed for generation, training and sampling.", 0)


@dataclass
class StudyTrain:
    """Training shared by every student of a study (same steps and batch for all variants)."""

    max_steps: int = doc("Optimizer steps per student.", 300)
    batch_size: int = doc("Batch size.", 16)
    learning_rate: float = doc("Peak learning rate.", 3e-3)
    warmup_ratio: float = doc("Warmup fraction.", 0.05)

    def validate(self) -> None:
        if self.max_steps < 1 or self.batch_size < 1 or self.learning_rate <= 0:
            raise ValueError("train: max_steps and batch_size must be >= 1 and learning_rate > 0")


@dataclass
class StudyEval:
    """Evaluation shared by every student of a study."""

    samples: int = doc("Samples per test problem (pass@8 needs >= 8).", 8)
    temperature: float = doc("Sampling temperature.", 0.6)
    max_tokens: int = doc("Max new tokens per sample.", 400)

    def validate(self) -> None:
        if self.samples < 1 or self.max_tokens < 1 or self.temperature < 0:
            raise ValueError("eval: samples and max_tokens must be >= 1, temperature >= 0")


def base_student(out: str, student: StudentConfig, pretrain_steps: int, model: str = "") -> str:
    """The starting model: ``model`` if given (a real base model), else the embedded tiny student."""
    if model:
        return model
    run_dir = init_stage.run(init_stage.InitStudentConfig(out=out, student=student, pretrain_steps=pretrain_steps,
                                                          threads=1))
    return str(init_stage.model_path(run_dir))


def generate_world(out: str, tokenizer: str, teacher: TeacherConfig, world: WorldConfig, seed: int) -> str:
    problems = ProblemsConfig(source="world", split="train", world=world)
    return str(generate.run(generate.GenerateConfig(out=out, tokenizer=tokenizer, teacher=teacher, problems=problems,
                                                    sampling=SamplingParams(n=1, seed=seed))))


def train_students(out: str, base_model: str, datasets: dict[str, str], train: StudyTrain, seed: int,
                   parallel: int) -> dict[str, Path]:
    """One SFT run per ``name -> dataset dir``, ``parallel`` at a time (1 torch thread each)."""
    from tracewise.studies.quickstart import _train_all

    names = list(datasets)
    cfgs = [sft.SFTRunConfig(out=out, experiment=n, model=base_model, dataset=datasets[n], max_steps=train.max_steps,
                             batch_size=train.batch_size, learning_rate=train.learning_rate,
                             warmup_ratio=train.warmup_ratio, seed=seed, threads=1) for n in names]
    return dict(zip(names, _train_all(cfgs, parallel)))


def eval_students(out: str, models: dict[str, Path], problems: ProblemsConfig, ev: StudyEval, seed: int) -> dict[str, dict]:
    """``name -> summary row`` (summary.json contract) of each trained student on ``problems``."""
    rows = {}
    sampling = SamplingParams(n=ev.samples, temperature=ev.temperature, max_tokens=ev.max_tokens, seed=seed)
    for name, run_dir in models.items():
        e = evaluate.run(evaluate.EvalConfig(out=out, experiment=name, model=str(sft.model_dir(run_dir)),
                                             problems=problems, sampling=sampling, threads=2))
        rows[name] = read_summary(e / "summary.json")[0]
    return rows


def plot_bars(path: Path, labels: list[str], acc: dict[str, list[float]], tokens: list[float], title: str) -> Path:
    """Accuracy bars (one group per variant) with the student's mean tokens on a second axis."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(6.0, 1.2 * len(labels) + 2), 4.2))
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(acc))
    for i, (metric, ys) in enumerate(acc.items()):
        ax.bar([x + i * width for x in range(len(labels))], ys, width, label=metric)
    ax.set_xticks([x + width * (len(acc) - 1) / 2 for x in range(len(labels))], labels, rotation=20, ha="right",
                  fontsize=8)
    ax.set_ylabel("student accuracy")
    ax.set_ylim(0, 1.05)
    ax2 = ax.twinx()
    ax2.plot(range(len(labels)), tokens, "k^--", label="mean tokens")
    ax2.set_ylabel("student mean tokens")
    ax2.set_ylim(0, max(tokens, default=1) * 1.25 or 1)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper left", fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def pearson(xs: list[float], ys: list[float]) -> float | None:
    """Correlation of two equally long lists; None when undefined (fewer than 3 points or no spread)."""
    n = len(xs)
    if n < 3:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sx = sum((x - mx) ** 2 for x in xs) ** 0.5
    sy = sum((y - my) ** 2 for y in ys) ** 0.5
    return sxy / (sx * sy) if sx > 0 and sy > 0 else None
