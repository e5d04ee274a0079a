"""What the quickstart and the studies share: their config sections (``TrainSettings``, ``StudyBase``,
``StudyEval``, ``StudentsStudy``) and plumbing (base student, students trained per dataset in parallel,
their evals, the quickstart's students, plots).

Every step is an ordinary stage (init-student, generate, verify, curate, train sft, eval) writing
its own content-addressed run dir, so a rerun of a study skips what is done and an interrupted one
resumes; the study only decides which datasets to train on and reads the stages' outputs.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing
import os
from dataclasses import dataclass, replace
from pathlib import Path

from tracewise import evaluate, generate
from tracewise.backends.base import SamplingParams
from tracewise.core.config import doc
from tracewise.core.logs import progress_bar
from tracewise.core.seeds import Replicated, seeds_field
from tracewise.core.threads import THREADS_HELP
from tracewise.data.sources import ProblemsConfig
from tracewise.studies.replicated import per_seed
from tracewise.train import sft
from tracewise.world import init_stage
from tracewise.world.problems import WorldConfig
from tracewise.world.student import StudentConfig
from tracewise.world.teachers import TeacherConfig

log = logging.getLogger(__name__)


@dataclass
class StudyBase(Replicated):
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
    parallel: int = doc("Students trained at once (1 torch thread each; a worker evaluates its student next).", 2)
    seed: int = doc("Seed for generation and curation, and the first replicate's training and sampling.", 0)
    seeds: int | list[int] = seeds_field("A replicate trains every student with its own data order (train seed s) "
                                         "and evaluates it with sampling seed s; the base student, the teacher traces "
                                         "and the curated datasets are shared, so replicates measure training and "
                                         "sampling noise. Tables give mean ± seed SD [95% CI over problems and "
                                         "seeds]; readings use paired intervals.")


@dataclass
class TrainSettings:
    """Training shared by every student of the quickstart or a study (same steps and batch for all)."""

    max_steps: int = doc("Optimizer steps per student.", 300)
    batch_size: int = doc("Batch size.", 16)
    learning_rate: float = doc("Peak learning rate.", 3e-3)
    warmup_ratio: float = doc("Warmup fraction.", 0.05)
    logging_steps: int = doc("Loss logging interval.", 10)
    batch_order: str = doc("train sft batch_order: random (default), length_buckets (similar lengths per batch, "
                           "batches in shuffled order), group_by_length (legacy; its one-teacher streaks skewed "
                           "mixed students — only to reproduce old runs).", "random")
    bf16: bool = doc("bf16 mixed precision (autocast; float32 master weights). On a CPU with avx512_bf16, measured on "
                     "the quickstart's r1 student: 1.22x faster steps alone and 1.15x on top of 4 micro-batches, but slower "
                     "than micro-batches alone for the mix student; accuracy not checked (benchmarks/quickstart.py). On "
                     "an AVX2-only CPU bf16 matmuls are ~50x slower (train sft warns). Off: float32.", False,
                     hash="nondefault")
    torch_compile: bool = doc("torch.compile each student (see train sft torch_compile).", False, hash="nondefault")
    micro_batches: int = doc("train sft micro_batches: each random batch fed as this many length-sorted "
                             "micro-batches (same examples and gradient per step as one batch, less padding: "
                             "1.3-1.9x faster steps for the quickstart's students); must divide batch_size.", 4)

    def validate(self) -> None:
        if self.max_steps < 1 or self.batch_size < 1 or self.learning_rate <= 0:
            raise ValueError("train: max_steps and batch_size must be >= 1 and learning_rate > 0")
        if self.micro_batches < 1 or self.batch_size % self.micro_batches:
            fits = [m for m in range(1, min(self.batch_size, 8) + 1) if self.batch_size % m == 0]
            raise ValueError(f"train.micro_batches={self.micro_batches} must divide train.batch_size={self.batch_size} "
                             f"(e.g. one of {fits})")
        from tracewise.train.hf_trainer import BATCH_ORDERS

        if self.batch_order not in BATCH_ORDERS:
            raise ValueError(f"train.batch_order: expected one of {list(BATCH_ORDERS)}, got {self.batch_order!r}")

    def sft_config(self, out: str, experiment: str, model: str, dataset: str, seed: int, **extra) -> sft.SFTRunConfig:
        """The ``train sft`` config of one student with these settings."""
        return sft.SFTRunConfig(out=out, experiment=experiment, model=model, dataset=dataset, max_steps=self.max_steps,
                                batch_size=self.batch_size, learning_rate=self.learning_rate,
                                warmup_ratio=self.warmup_ratio, logging_steps=self.logging_steps, seed=seed,
                                batch_order=self.batch_order, **self._levers(), **extra)

    def _levers(self) -> dict:
        # Only set when on: an SFT config with bf16=None/torch_compile=False is the one runs had before these
        # levers existed, so their run dirs stay valid.
        return {**({"bf16": True} if self.bf16 else {}), **({"torch_compile": True} if self.torch_compile else {}),
                **({"micro_batches": self.micro_batches} if self.micro_batches != 1 else {})}


@dataclass
class StudyEval:
    """Evaluation shared by every student of a study."""

    samples: int = doc("Samples per test problem (pass@8 needs >= 8).", 8)
    temperature: float = doc("Sampling temperature.", 0.6)
    max_tokens: int = doc("Max new tokens per sample.", 400)

    def validate(self) -> None:
        if self.samples < 1 or self.max_tokens < 1 or self.temperature < 0:
            raise ValueError("eval: samples and max_tokens must be >= 1, temperature >= 0")

    def eval_config(self, out: str, name: str, problems: ProblemsConfig, seed: int) -> evaluate.EvalConfig:
        """The eval of student ``name`` sampled with ``seed`` (``model`` filled in once it is trained)."""
        sampling = SamplingParams(n=self.samples, temperature=self.temperature, max_tokens=self.max_tokens, seed=seed)
        return evaluate.EvalConfig(out=out, experiment=name, model="", problems=problems, sampling=sampling, threads=2)


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


def train_students(out: str, base_model: str, datasets: dict[str, str], train: TrainSettings, seed: int,
                   parallel: int) -> dict[str, Path]:
    """One SFT run per ``name -> dataset dir``, ``parallel`` at a time (1 torch thread each)."""
    names = list(datasets)
    cfgs = [train.sft_config(out, n, base_model, datasets[n], seed, threads=1) for n in names]
    return dict(zip(names, train_all(cfgs, parallel)))


def _train_one(cfg: sft.SFTRunConfig) -> str:
    """Child-process entry: one student, one thread (two small models train faster side by side)."""
    from tracewise.core.logs import quiet_library_bars

    os.environ["TRACEWISE_NO_PROGRESS"] = "1"
    logging.basicConfig(level=logging.WARNING)
    quiet_library_bars()
    return str(sft.run(cfg))


def _train_then_eval(cfg: sft.SFTRunConfig, ev: evaluate.EvalConfig | None) -> tuple[str, str | None]:
    """Child-process entry: one student trained, then (``ev``, its ``model`` filled in) evaluated in the
    same process, so a core that finished training goes on sampling while the other still trains."""
    run_dir = _train_one(cfg)
    eval_dir = _eval_trained(run_dir, ev, cfg.threads)
    return run_dir, None if eval_dir is None else str(eval_dir)


def _eval_trained(run_dir: str | Path, ev: evaluate.EvalConfig | None, threads: int) -> Path | None:
    """``ev`` (None: no eval) on the model of the finished SFT run ``run_dir``, with its training's threads."""
    return None if ev is None else evaluate.run(replace(ev, model=str(sft.model_dir(run_dir)), threads=threads))


def train_all(cfgs: list[sft.SFTRunConfig], parallel: int, threads: int | None = None) -> list[Path]:
    """Run every SFT config, ``parallel`` at a time in spawned processes; ``threads`` (None: each config's own,
    1 per child process) are shared among the processes. Results do not depend on the split (core.threads)."""
    return [d for d, _ in train_and_eval(cfgs, [None] * len(cfgs), parallel, threads)]


def train_and_eval(cfgs: list[sft.SFTRunConfig], evals: list[evaluate.EvalConfig | None], parallel: int,
                   threads: int | None = None) -> list[tuple[Path, Path | None]]:
    """Train every SFT config and evaluate each trained student with its ``evals`` entry (None: no eval;
    the entry's ``model`` is replaced by the trained model), ``parallel`` students at a time in spawned
    processes, ``threads`` (None: each config's own, 1 per child process) shared among the processes.
    A worker evaluates its student as soon as it is trained, so evaluation overlaps the other
    students' training. Results do not depend on the split (core.threads). Returns (sft dir, eval dir)."""
    if parallel == 1 or len(cfgs) == 1:
        out = []
        for c, ev in zip(cfgs, evals):
            c = c if threads is None else replace(c, threads=threads)
            d = sft.run(c)
            out.append((d, _eval_trained(d, ev, c.threads)))
        return out
    per_child = 1 if threads is None else max(1, threads // min(parallel, len(cfgs)))
    ctx = multiprocessing.get_context("spawn")
    results: dict[int, tuple[Path, Path | None]] = {}
    label = "train + eval students" if any(e is not None for e in evals) else "train students"
    with progress_bar(label, len(cfgs)) as advance:
        with cf.ProcessPoolExecutor(max_workers=parallel, mp_context=ctx) as pool:
            futures = {pool.submit(_train_then_eval, replace(c, threads=per_child), ev): i
                       for i, (c, ev) in enumerate(zip(cfgs, evals))}
            for fut in cf.as_completed(futures):
                d, e = fut.result()
                results[futures[fut]] = (Path(d), None if e is None else Path(e))
                log.info("trained %s", cfgs[futures[fut]].experiment)
                advance(1)
    return [results[i] for i in range(len(cfgs))]


def train_eval_seeds(out: str, base_model: str, datasets: dict[str, str], train: TrainSettings, ev: StudyEval,
                     problems: ProblemsConfig, seeds: list[int], parallel: int) -> dict[str, list[Path]]:
    """``name -> eval run dir per seed``: for every dataset and seed one student (train seed s) evaluated with
    sampling seed s, each (name, seed) a worker of ``train_and_eval``, ``parallel`` at a time (1 torch thread
    each), so replicates fill the cores without oversubscribing them."""
    jobs = [(name, seed) for seed in seeds for name in datasets]
    cfgs = [train.sft_config(out, name, base_model, datasets[name], seed, threads=1) for name, seed in jobs]
    evals = [ev.eval_config(out, name, problems, seed) for name, seed in jobs]
    done = train_and_eval(cfgs, evals, parallel)
    return {name: [e for (n, _), (_, e) in zip(jobs, done) if n == name] for name in datasets}


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


# ---- studies of a quickstart run's students (controls, few-shot) ------------------------------------

def quickstart_test_problems() -> ProblemsConfig:
    return ProblemsConfig(split="test", world=WorldConfig(n_train=4000, n_test=100))  # tracewise.studies.quickstart's world


def _finished_runs(root: Path):
    """``(run dir, label, model dir)`` of every finished ``sft-*`` / ``rl-*`` run under ``root``, in name order."""
    if not root.is_dir():
        raise ValueError(f"{root}: run directory not found (run `tracewise quickstart` first, or set models)")
    for d in sorted([*root.glob("sft-*"), *root.glob("rl-*")]):
        label_file, model = d / "experiment.txt", d / "model"
        if (d / "DONE").exists() and label_file.is_file() and (model / "config.json").is_file():
            yield d, label_file.read_text(encoding="utf-8").strip() or d.name, model


def discover_students(run_dir: str | Path) -> dict[str, Path]:
    """``{experiment: model dir}`` of the finished SFT and RL runs (``sft-*``, ``rl-*``) under ``run_dir``."""
    root = Path(run_dir)
    found: dict[str, Path] = {}
    for d, name, model in _finished_runs(root):
        if name in found:  # two runs with one label (e.g. RL reruns with other settings): name the later by its dir
            log.warning("%s: %s and %s are both labelled %r; the second is %r", root, found[name].parent.name,
                        d.name, name, f"{name} ({d.name})")
            name = f"{name} ({d.name})"
        found[name] = model
    return found


def discover_replicates(run_dir: str | Path) -> dict[str, dict[int | None, Path]]:
    """``{experiment: {train seed: model dir}}`` of the finished SFT and RL runs under ``run_dir``: one label's
    runs with distinct train seeds (``quickstart seeds=3``) are replicates of one student; two runs of one
    label and seed are two students, the later named by its dir (as ``discover_students`` does)."""
    import yaml

    found: dict[str, dict[int | None, Path]] = {}
    for d, name, model in _finished_runs(Path(run_dir)):
        config = d / "config.yaml"
        seed = (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("seed") if config.is_file() else None
        if seed in found.get(name, {}):
            name = f"{name} ({d.name})"
        found.setdefault(name, {})[seed] = model
    return found


def parse_models(specs: list[str], field_name: str) -> dict[str, str]:
    """``["name=path", ...]`` → ``{name: path}``; a bad entry is a ValueError naming ``field_name``."""
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ValueError(f"{field_name}: expected NAME=PATH, got {spec!r}")
        if name.strip() in out:
            raise ValueError(f"{field_name}: {name.strip()!r} is listed twice")
        out[name.strip()] = path.strip()
    return out


@dataclass
class StudentsStudy(Replicated):
    """Fields of a study that evaluates the finished students of a quickstart run (controls, few-shot)."""

    SEED = "sampling.seed"  # replicates count from the sampling seed

    out: str = doc("Directory for the eval run dirs, summary.json and the section JSON.", "runs/study", hash=False)
    run_dir: str = doc("Quickstart run dir whose finished students (sft-*, rl-*) are evaluated.", "runs/quickstart")
    students: list[str] = doc("Only these students (experiment labels; default: all found).", factory=list)
    models: list[str] = doc("Extra or replacement students as NAME=MODEL_PATH (used instead of run_dir when "
                            "run_dir is empty).", factory=list)
    problems: ProblemsConfig = doc("Held-out problems (default: the quickstart world's test split).",
                                   factory=quickstart_test_problems)
    sampling: SamplingParams = doc("Samples per problem, temperature, max tokens, seed.",
                                   factory=lambda: SamplingParams(n=4, temperature=0.6, max_tokens=256, seed=0))
    seeds: int | list[int] = seeds_field(
        "Sampling seeds (count N: sampling.seed … +N-1): every (student, setting) is evaluated once per seed s with "
        "sampling seed s; a student the quickstart trained with several seeds is its seed-s run in replicate s (else "
        "its one run, so the seed varies the sampling only). Rows are means with seeds, sd and a hierarchical ci95; "
        "the reading's comparison is a paired interval.")
    batch_size: int = doc("Generation batch size.", 256, hash=False)
    threads: int = doc(THREADS_HELP, 0, hash=False)

    def student_replicates(self, where: str) -> dict[str, list[str]]:
        """``{student: model dir per replicate seed}``: run_dir's finished students, then ``models``, narrowed to
        ``students``."""
        found = ({k: {s: str(m) for s, m in v.items()} for k, v in discover_replicates(self.run_dir).items()}
                 if self.run_dir else {})
        found.update({k: {None: p} for k, p in parse_models(self.models, f"{where}.models").items()})
        if self.students:
            missing = sorted(set(self.students) - set(found))
            if missing:
                raise ValueError(f"{where}.students: {missing} not found; students: {sorted(found)}")
            found = {k: found[k] for k in self.students}
        if not found:
            raise ValueError(f"{where}: no finished students under {self.run_dir!r}")
        seeds = self.seed_values()
        return {k: per_seed([(s, 0.0, m) for s, m in v.items()], seeds, f"{where}: student {k!r}")
                for k, v in found.items()}

    def sampling_for(self, seed: int | None) -> SamplingParams:
        return self.sampling if seed is None else replace(self.sampling, seed=seed)
