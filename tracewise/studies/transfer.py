"""``tracewise study transfer``: do the style findings hold in other domains, and does math transfer?

Two questions, both on the embedded world by default:

1. *Teacher level*, per domain: do the two teacher styles keep the r1 : gpt-oss token ratio and
   reach the same accuracy (math-verify on the teachers' own traces, same problems)?
2. *Student level*: students distilled from math only (r1-style and gpt-oss-style) are evaluated
   on every domain's test split next to their starting model (the pre-SFT base student), and the
   transferability index of "Does Math Reasoning Improve General LLM Capabilities?" is computed:
   ``TI_d = ΔR_d / ΔR_math × 100`` with ΔR a student's accuracy gain over its starting model.

The students come from a finished quickstart run (``from_run``) or are trained here, small, by the
ordinary stages. Everything else is ordinary stages too (generate, verify, eval), so a rerun reuses
every finished piece. Output: ``transfer.json`` (all numbers), ``transfer.png`` and the report
section ``transfer_section.json`` (``tracewise report section_files=[...]``).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from tracewise import evaluate, generate
from tracewise.verify import stage as verify_stage
from tracewise.backends.base import SamplingParams
from tracewise.core.config import doc
from tracewise.data.sources import ProblemsConfig, load_problems
from tracewise.core.records import Problem, Sample, Trace, Verdict, read_records
from tracewise.core.seeds import Replicated, seeds_field
from tracewise.studies.common import TrainSettings
from tracewise.studies.replicated import Replicates, per_seed, stats
from tracewise.core.threads import THREADS_HELP, use_threads
from tracewise.world.domains import get_domain
from tracewise.world.problems import WorldConfig, generate_problems
from tracewise.world.teachers import TeacherConfig

log = logging.getLogger(__name__)

VERBOSE, CONCISE = "r1", "gpt-oss"


# ---------------------------------------------------------------- the transferability index


@dataclass(frozen=True)
class TIRow:
    """One student on one domain: accuracies, gains and TI (None when undefined, with ``note`` saying why)."""

    student: str
    domain: str
    r_base: float
    r_student: float
    gain: float | None
    gain_math: float | None
    ti: float | None
    note: str = ""


def accuracy_gain(r_student: float, r_base: float, relative: bool = False) -> float | None:
    """ΔR: absolute gain ``R − R_base``, or relative ``(R − R_base) / R_base`` (None when R_base = 0)."""
    if relative:
        return None if r_base == 0 else (r_student - r_base) / r_base
    return r_student - r_base


def transferability_index(gain_other: float | None, gain_math: float | None) -> tuple[float | None, str]:
    """``(TI, note)`` with ``TI = gain_other / gain_math × 100``.

    Undefined (None, with the reason) when either gain is undefined or the math gain is not
    positive: with ΔR_math = 0 the ratio divides by zero, and with ΔR_math < 0 its sign would turn
    a loss elsewhere into "positive transfer". A negative ``gain_other`` gives a negative TI
    (the student got worse there), as in the paper.
    """
    if gain_other is None or gain_math is None:
        return None, "undefined: relative gain with base accuracy 0"
    if gain_math <= 0:
        return None, f"undefined: no math gain (ΔR_math = {gain_math:+.3f})"
    return 100.0 * gain_other / gain_math, ""


def ti_table(acc: dict[str, dict[str, float]], base: str, students: list[str], math_domain: str,
             relative: bool = False) -> list[TIRow]:
    """TI rows for every student × non-math domain from ``acc[model][domain]`` accuracies."""
    domains = list(acc.get(base, {}))
    if math_domain not in domains:
        raise ValueError(f"ti_table: base model {base!r} has no accuracy on the math domain {math_domain!r}")
    rows = []
    for s in students:
        missing = [d for d in domains if d not in acc.get(s, {})]
        if missing:
            raise ValueError(f"ti_table: student {s!r} has no accuracy on {missing}")
        g_math = accuracy_gain(acc[s][math_domain], acc[base][math_domain], relative)
        for d in domains:
            if d == math_domain:
                continue
            g = accuracy_gain(acc[s][d], acc[base][d], relative)
            ti, note = transferability_index(g, g_math)
            rows.append(TIRow(s, d, acc[base][d], acc[s][d], g, g_math, ti, note))
    return rows


# ---------------------------------------------------------------- config


def _world() -> WorldConfig:
    # The quickstart world: with from_run=runs/quickstart the math test split is the one its
    # students were evaluated on (and disjoint from their training problems; checked in run()).
    return WorldConfig(n_train=1000, n_test=100)


def _teachers() -> list[TeacherConfig]:
    return [TeacherConfig(style=VERBOSE), TeacherConfig(style=CONCISE)]


@dataclass
class SmallTrain(TrainSettings):
    """Math-only students trained here when no ``from_run`` is given (same steps and batch for both)."""

    n_problems: int = doc("Math training problems the teachers answer (before curation).", 1500)
    pretrain_steps: int = doc("Base-student pretraining steps (init-student).", 300)


@dataclass
class TransferConfig(Replicated):
    """Other domains and the transferability index (``tracewise study transfer``)."""

    out: str = doc("Output directory (stage run dirs, transfer.json, transfer.png, transfer_section.json).",
                   "runs/transfer", hash=False)
    from_run: str = doc("Finished quickstart run whose base and math-trained students to reuse "
                        "(e.g. runs/quickstart); empty = train small ones here (see `train`).", "")
    students: list[str] = doc("Math-only students (SFT experiment names) to evaluate.", factory=lambda: [VERBOSE, CONCISE])
    math_domain: str = doc("The domain the students were trained on (ΔR_math).", "arith")
    domains: list[str] = doc("Domains to compare (must include math_domain).", factory=lambda: ["arith", "ordering", "listops"])
    world: WorldConfig = doc("World settings for every domain (seed, levels, n_train = problems per domain for "
                             "the teacher comparison, n_test = held-out problems per domain); domain is set per domain.",
                             factory=_world)
    teachers: list[TeacherConfig] = doc("The two teachers (styles r1 and gpt-oss) and their error rates.", factory=_teachers)
    min_ratio: float = doc("The token ratio r1/gpt-oss 'holds' when at least this (the quickstart's 3.5×).", 3.5)
    parity_points: float = doc("Accuracy parity 'holds' when the two styles differ by at most this many points.", 3.0)
    relative_gain: bool = doc("ΔR as relative gain (R − R_base)/R_base instead of the absolute gain.", False)
    train: SmallTrain = doc("Students trained here when from_run is empty.", factory=lambda: SmallTrain(max_steps=400))
    eval_samples: int = doc("Samples per test problem.", 8)
    eval_temperature: float = doc("Sampling temperature at evaluation.", 0.6)
    eval_max_tokens: int = doc("Max new tokens per sample (the quickstart eval uses 400).", 400)
    seed: int = doc("Seed for the teachers' traces, and the first replicate's training and sampling.", 0)
    seeds: int | list[int] = seeds_field(
        "A replicate evaluates every model with sampling seed s; students trained here are trained with seed s, and "
        "from_run gives replicate s the student trained with seed s when the quickstart trained several seeds "
        "(else its one student, sampled per seed). The procedural teachers are shared. Accuracies are means "
        "over seeds with hierarchical intervals; ΔR vs base is a paired interval.")
    threads: int = doc(THREADS_HELP, 1, hash=False)

    def validate(self) -> None:
        for d in self.domains:
            get_domain(d, "transfer.domains")  # unknown domain: ValueError naming the valid ones
        if self.math_domain not in self.domains or len(set(self.domains)) < 2:
            raise ValueError(f"transfer.domains: need the math domain {self.math_domain!r} and at least one other, "
                             f"got {self.domains}")
        styles = sorted(t.style for t in self.teachers)
        if styles != sorted([VERBOSE, CONCISE]):
            raise ValueError(f"transfer.teachers: need exactly one {VERBOSE!r} and one {CONCISE!r} teacher, got {styles}")
        for t in self.teachers:
            t.validate()
        if not self.students or len(set(self.students)) != len(self.students) or "base" in self.students:
            raise ValueError(f"transfer.students: need distinct SFT experiment names (not 'base'), got {self.students}")
        if self.from_run and not Path(self.from_run).is_dir():
            raise ValueError(f"transfer.from_run: {self.from_run}: not a directory")
        if self.world.n_train < 1 or self.world.n_test < 1:
            raise ValueError("transfer.world: n_train and n_test must be >= 1")
        if self.eval_samples < 1 or self.eval_max_tokens < 1 or self.min_ratio <= 0 or self.parity_points < 0:
            raise ValueError("transfer: eval_samples, eval_max_tokens, min_ratio must be positive, parity_points >= 0")
        self.world.validate()
        self.validate_seeds("transfer")


# ---------------------------------------------------------------- students


def find_students(run: str | Path, names: list[str], seeds: list[int] = (0,)) -> tuple[str, dict[str, list[str]]]:
    """``(base model, {name: model per replicate seed})`` from a finished run's ``sft-*`` dirs (DONE +
    config.yaml): the newest run of each student, or of each seed when the run trained several
    (``replicated.per_seed``)."""
    import yaml

    found: dict[str, list[tuple[int | None, float, tuple[str, str]]]] = {}
    for d in Path(run).glob("sft-*"):
        if not (d / "DONE").exists():
            continue
        cfg = yaml.safe_load((d / "config.yaml").read_text())
        found.setdefault(cfg["experiment"], []).append((cfg.get("seed"), (d / "DONE").stat().st_mtime,
                                                        (str(d / "model"), cfg["model"])))
    missing = [n for n in names if n not in found]
    if missing:
        raise ValueError(f"{run}: no finished sft run for {missing}; found {sorted(found)}")
    chosen = {n: per_seed(found[n], list(seeds), f"{run}: student {n!r}") for n in names}
    bases = {b for runs in chosen.values() for _m, b in runs}
    if len(bases) != 1:
        raise ValueError(f"{run}: students {names} start from different base models {sorted(bases)}")
    base = bases.pop()
    if not Path(base).exists():
        raise ValueError(f"{run}: base model {base} not found (run from the directory the quickstart ran in)")
    return base, {n: [m for m, _b in runs] for n, runs in chosen.items()}


def _check_disjoint(run: str | Path, test: list[Problem]) -> None:
    """The math test problems must not be among the students' training problems."""
    questions = {p.question for p in test}
    for probs in Path(run).glob("generate-*/problems.jsonl"):
        seen = [p.id for p in read_records(probs, Problem) if p.question in questions]
        if seen:
            raise ValueError(f"transfer: {len(seen)} math test problems are in {probs} (the students' training "
                             f"pool, e.g. {seen[0]}); use the quickstart's world (seed, n_test <= its n_test)")


def train_students(cfg: TransferConfig) -> tuple[str, dict[str, list[str]]]:
    """Small math-only students through the ordinary stages (init-student → generate → verify → curate → sft)."""
    from tracewise import curate
    from tracewise.train import sft
    from tracewise.world import init_stage

    t = cfg.train
    student_dir = init_stage.run(init_stage.InitStudentConfig(out=cfg.out, pretrain_steps=t.pretrain_steps,
                                                              threads=cfg.threads))
    base = str(init_stage.model_path(student_dir))
    # Training problems: a separate seed stream from the evaluation world's, so never a test problem.
    world = replace(cfg.world, domain=cfg.math_domain, n_train=t.n_problems, seed=cfg.world.seed + 1000)
    problems = ProblemsConfig(source="world", split="train", world=world)
    gens = [str(generate.run(generate.GenerateConfig(out=cfg.out, tokenizer=base, teacher=tc, problems=problems,
                                                     sampling=SamplingParams(n=1, seed=cfg.seed)))) for tc in cfg.teachers]
    ver = verify_stage.run(verify_stage.VerifyConfig(out=cfg.out, generations=gens))
    cur = curate.run(curate.CurateConfig(out=cfg.out, generations=gens, verdicts=str(ver), filter="both", mix=False))
    models = {}
    for name in cfg.students:  # one after another, each with cfg.threads
        models[name] = [str(sft.model_dir(sft.run(t.sft_config(cfg.out, name, base, str(curate.dataset_path(cur, name)),
                                                                seed, threads=cfg.threads))))
                        for seed in cfg.seed_values()]
    return base, models


# ---------------------------------------------------------------- the study


def _paired_diff(a: dict[str, bool], b: dict[str, bool]) -> tuple[float, float]:
    """Mean of a − b over shared keys and its 95% normal-approximation half-width (paired problems)."""
    keys = sorted(set(a) & set(b))
    d = [float(a[k]) - float(b[k]) for k in keys]
    mean = sum(d) / len(d)
    var = sum((x - mean) ** 2 for x in d) / max(1, len(d) - 1)
    return mean, 1.96 * math.sqrt(var / len(d))


def teacher_level(cfg: TransferConfig, domain: str, tokenizer: str) -> dict:
    """Both teachers on the same train-split problems: mean tokens, ratio, accuracy and parity."""
    problems = ProblemsConfig(source="world", split="train", world=replace(cfg.world, domain=domain))
    by_style = {tc.style: tc for tc in cfg.teachers}
    gens = {s: generate.run(generate.GenerateConfig(out=cfg.out, tokenizer=tokenizer, teacher=by_style[s],
                                                    problems=problems, sampling=SamplingParams(n=1, seed=cfg.seed)))
            for s in (VERBOSE, CONCISE)}
    ver = verify_stage.run(verify_stage.VerifyConfig(out=cfg.out, generations=[str(g) for g in gens.values()],
                                                     methods=["math_verify"]))
    verdicts = read_records(Path(ver) / "verdicts.jsonl", Verdict)
    out: dict = {"domain": domain, "n": 0}
    correct: dict[str, dict[str, bool]] = {}
    for s, g in gens.items():
        traces = read_records(Path(g) / "traces.jsonl", Trace)
        correct[s] = {v.problem_id: v.correct for v in verdicts if v.teacher == s}
        out["n"] = len(traces)
        out[f"tokens_{s}"] = sum(t.n_tokens for t in traces) / len(traces)
        out[f"acc_{s}"] = sum(correct[s].values()) / len(correct[s])
    out["ratio"] = out[f"tokens_{VERBOSE}"] / out[f"tokens_{CONCISE}"]
    out["acc_diff"], out["acc_diff_ci"] = _paired_diff(correct[VERBOSE], correct[CONCISE])
    out["ratio_holds"] = out["ratio"] >= cfg.min_ratio
    out["parity_holds"] = abs(out["acc_diff"]) * 100 <= cfg.parity_points
    return out


def student_level(cfg: TransferConfig, models: dict[str, list[str]], domain: str) -> tuple[dict[str, dict], list[dict]]:
    """Every model (one per replicate seed, sampled with that seed) on the domain's test split: pass@1 and mean
    tokens over seeds (sd, ci95), answered fraction; and each student's paired gain over ``base``."""
    problems = ProblemsConfig(source="world", split="test", world=replace(cfg.world, domain=domain))
    # Number answers (positions, counts, items, sums) can be hit by a student that merely learned to
    # write a number; names and lists cannot. Splitting accuracy by answer kind separates "learned
    # the answer format" from "learned to solve the domain".
    numeric = {p.id: p.answer.strip().lstrip("-").isdigit() for p in load_problems(problems)}
    runs = {}
    for name, per_seed_models in models.items():
        runs[name] = [evaluate.run(evaluate.EvalConfig(
            out=cfg.out, experiment=name, model=model, problems=problems, benchmark=f"world-{domain}",
            sampling=SamplingParams(n=cfg.eval_samples, temperature=cfg.eval_temperature,
                                    max_tokens=cfg.eval_max_tokens, seed=seed), threads=cfg.threads))
            for model, seed in zip(per_seed_models, cfg.seed_values())]
    reps = Replicates(runs)
    out = {}
    for name, dirs in runs.items():
        row = reps.row(name)
        per_seed_samples = [read_records(Path(d) / "samples.jsonl", Sample) for d in dirs]
        out[name] = {"pass@1": row["pass@1"], "mean_tokens": row["mean_tokens"], **stats(row),
                     "answered": _mean([sum(s.reason not in ("no_answer", "truncated") for s in samples) / len(samples)
                                        for samples in per_seed_samples])}
        for kind, want in (("number", True), ("symbolic", False)):
            groups = [[s.correct for s in samples if numeric[s.problem_id] == want] for samples in per_seed_samples]
            out[name][f"pass@1_{kind}"] = _mean([sum(g) / len(g) for g in groups]) if all(groups) else None
    gains = [{**c.to_dict(), "domain": domain} for name in models if name != "base"
             for c in reps.compare(name, "base", metrics=("pass@1",)) if c.metric == "pass@1"]
    return out, gains


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def run(cfg: TransferConfig) -> Path:
    """Run the study; returns the section file path."""
    from tracewise.studies.transfer_report import write_report

    cfg.validate()
    use_threads(cfg.threads)
    t0 = time.time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.from_run:
        base, students = find_students(cfg.from_run, cfg.students, cfg.seed_values())
        _check_disjoint(cfg.from_run, generate_problems(replace(cfg.world, domain=cfg.math_domain), "test"))
    else:
        base, students = train_students(cfg)
    models = {"base": [base] * len(cfg.seed_values()), **students}
    teachers = [teacher_level(cfg, d, base) for d in cfg.domains]
    levels = {d: student_level(cfg, models, d) for d in cfg.domains}
    evals = {d: level[0] for d, level in levels.items()}
    acc = {m: {d: evals[d][m]["pass@1"] for d in cfg.domains} for m in models}
    ti = ti_table(acc, "base", list(students), cfg.math_domain, cfg.relative_gain)
    result = {"config": {"from_run": cfg.from_run, "students": cfg.students, "domains": cfg.domains,
                         "min_ratio": cfg.min_ratio, "parity_points": cfg.parity_points,
                         "relative_gain": cfg.relative_gain, "n_test": cfg.world.n_test,
                         "n_teacher_problems": cfg.world.n_train, "eval_samples": cfg.eval_samples,
                         "seeds": cfg.seed_values()},
              "teachers": teachers, "students": evals, "ti": [asdict(r) for r in ti],
              "gains": [g for d in cfg.domains for g in levels[d][1]],
              "seconds": round(time.time() - t0, 1)}
    (out / "transfer.json").write_text(json.dumps(result, indent=1))
    section = write_report(result, out, cfg.math_domain)
    log.info("transfer: %s (%.0f s)", section, result["seconds"])
    return section
