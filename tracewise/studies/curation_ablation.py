"""``tracewise study curation``: random vs s1 vs LIMO vs difficulty-adaptive curation at equal size.

Both teachers' traces are generated, verified and filtered once; each strategy then picks the same
number of (problem, trace) pairs (``curate.strategy``, ``curate.target_size``) and one student per
strategy is trained with the same steps and evaluated on the same held-out problems. Accuracy is
reported next to the tokens it costs (the picked traces' length and the student's own output).

s1 and the adaptive mix need difficulty: a *reference student* (the base student fine-tuned briefly
on concise traces of a separate world seed, so it has not seen the pool) is sampled on the training
pool and its per-problem accuracy is handed to curate (``selection.reference``), as s1 used models
that had not trained on its pool. ``reference_steps=0`` falls back to problem levels.

Outputs under ``<out>/<name>/``: ``curation.json``, ``curation.png``, ``curation_section.json``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

from tracewise import curate
from tracewise.verify import stage as verify_stage
from tracewise.backends.base import SamplingParams
from tracewise.core.config import doc
from tracewise.curate.strategies import STRATEGIES, SelectionConfig
from tracewise.curate.decontam import DecontamConfig
from tracewise.data.sources import ProblemsConfig
from tracewise.report.sections import write_section_file
from tracewise.evaluate.replicates import Comparison, cell
from tracewise.report.stage import readings_block
from tracewise.studies.common import (StudyBase, StudyEval, TrainSettings, base_student, generate_world, plot_bars,
                                      train_eval_seeds, train_students)
from tracewise.studies.replicated import Replicates, find, stats
from tracewise.world.judge import JudgeConfig
from tracewise.world.problems import WorldConfig
from tracewise.world.teachers import TeacherConfig

log = logging.getLogger(__name__)


@dataclass
class CurationStudyConfig(StudyBase):
    """Curation-strategy ablation (``tracewise study curation``)."""

    name: str = doc("Sub-directory of out for this study's tables, plot and section.", "curation")
    teachers: list[TeacherConfig] = doc("Embedded teachers (a verbose and a concise one for adaptive).",
                                        factory=lambda: [TeacherConfig(style="r1"), TeacherConfig(style="gpt-oss")])
    judge: JudgeConfig = doc("Judge error rates of the verify stage.", factory=JudgeConfig)
    filter: str = doc("Correctness filter before the strategies.", "both")
    decontam: DecontamConfig = doc("Decontamination/dedup before the filter.", factory=DecontamConfig)
    strategies: list[str] = doc("Strategies compared: random, s1, limo, adaptive.",
                                factory=lambda: ["random", "s1", "limo", "adaptive"])
    target_size: int = doc("Problems every strategy keeps (equal dataset size).", 400)
    selection: SelectionConfig = doc("Strategy settings (the study fills selection.reference).",
                                     factory=SelectionConfig)
    reference_steps: int = doc("Fine-tuning steps of the reference student (0 = difficulty from levels).", 150)
    reference_samples: int = doc("Reference student's samples per pool problem.", 1)
    reference_max_tokens: int = doc("Max new tokens of the reference student's samples (it writes concise traces).",
                                    150)
    reference_world: WorldConfig = doc("World whose concise traces train the reference student (another seed: "
                                       "it never sees the pool).",
                                       factory=lambda: WorldConfig(seed=1000, n_train=600, n_test=0))
    train: TrainSettings = doc("Training shared by every student.", factory=TrainSettings)
    eval: StudyEval = doc("Evaluation shared by every student.", factory=StudyEval)

    def validate(self) -> None:
        bad = [s for s in self.strategies if s not in STRATEGIES or s == "all"]
        if bad:
            raise ValueError(f"curation.strategies: unknown strategy {bad}; valid: "
                             f"{[s for s in STRATEGIES if s != 'all']}")
        if not self.strategies or len(set(self.strategies)) != len(self.strategies):
            raise ValueError(f"curation.strategies: give distinct strategies, got {self.strategies}")
        if self.target_size < 1:
            raise ValueError(f"curation.target_size must be >= 1, got {self.target_size}")
        if self.target_size > self.world.n_train:  # the exact pool is checked by curate, before any training
            raise ValueError(f"curation.target_size={self.target_size} is larger than the pool "
                             f"(world.n_train={self.world.n_train})")
        if self.filter not in curate.FILTERS:
            raise ValueError(f"curation.filter: unknown filter {self.filter!r}; valid: {sorted(curate.FILTERS)}")
        if len({t.style for t in self.teachers}) != len(self.teachers) or not self.teachers:
            raise ValueError("curation.teachers: give teachers with distinct styles")
        if self.reference_steps < 0 or self.reference_samples < 1 or self.reference_max_tokens < 1 or self.parallel < 1:
            raise ValueError("curation: reference_steps >= 0, reference_samples >= 1, reference_max_tokens >= 1 "
                             "and parallel >= 1 required")
        for part in (self.world, self.judge, self.decontam, self.selection, self.train, self.eval, *self.teachers):
            part.validate()
        self.validate_seeds("curation")


def reference_run(cfg: CurationStudyConfig, base: str) -> str:
    """Train the reference student on a separate world and sample it on the pool; returns its eval dir."""
    from tracewise import evaluate

    concise = next((t for t in cfg.teachers if t.style == "gpt-oss"), cfg.teachers[-1])
    gen = generate_world(cfg.out, base, replace(concise, error_rate=[0.0]), cfg.reference_world, cfg.seed)
    ver = verify_stage.run(verify_stage.VerifyConfig(out=cfg.out, generations=[gen], methods=["math_verify"]))
    cur = curate.run(curate.CurateConfig(out=cfg.out, generations=[gen], verdicts=str(ver), filter="math_verify",
                                         mix=False, decontam=DecontamConfig(enabled=False, dedup=False)))
    ds = str(curate.dataset_path(cur, json.loads((cur / "table.json").read_text())["teachers"][0]))
    model = train_students(cfg.out, base, {"reference": ds}, replace(cfg.train, max_steps=cfg.reference_steps),
                           cfg.seed, 1)["reference"]
    from tracewise.train import sft

    pool = ProblemsConfig(source="world", split="train", world=cfg.world)
    sampling = SamplingParams(n=cfg.reference_samples, temperature=cfg.eval.temperature,
                              max_tokens=cfg.reference_max_tokens, seed=cfg.seed)
    return str(evaluate.run(evaluate.EvalConfig(out=cfg.out, experiment="reference", model=str(sft.model_dir(model)),
                                                problems=pool, sampling=sampling, threads=2, n_boot=10)))


def run(cfg: CurationStudyConfig) -> Path:
    """Run the ablation; returns the section JSON path."""
    cfg.validate()
    t_start, timings = time.time(), {}

    def lap(name: str) -> None:
        timings[name] = round(time.time() - t_start - sum(timings.values()), 1)

    base = base_student(cfg.out, cfg.student, cfg.pretrain_steps, cfg.base_model)
    gens = [generate_world(cfg.out, base, t, cfg.world, cfg.seed) for t in cfg.teachers]
    ver = verify_stage.run(verify_stage.VerifyConfig(out=cfg.out, generations=gens, judge_cfg=cfg.judge))
    lap("base+generate+verify")
    selection = cfg.selection
    if cfg.reference_steps > 0 and any(s in ("s1", "adaptive") for s in cfg.strategies):
        selection = replace(selection, reference=reference_run(cfg, base))
    lap("reference")
    datasets, infos = {}, {}
    for s in cfg.strategies:  # every curate runs (and may refuse the target size) before any student trains
        cur = curate.run(curate.CurateConfig(out=cfg.out, generations=gens, verdicts=str(ver), filter=cfg.filter,
                                             mix=False, decontam=cfg.decontam, strategy=s,
                                             target_size=cfg.target_size, selection=selection))
        datasets[s] = str(curate.dataset_path(cur, "selected"))
        infos[s] = json.loads((cur / "table.json").read_text())["strategy"]
    lap("curate")
    test = ProblemsConfig(source="world", split="test", world=cfg.world)
    reps = Replicates(train_eval_seeds(cfg.out, base, datasets, cfg.train, cfg.eval, test, cfg.seed_values(),
                                       cfg.parallel))
    lap("train+eval")
    rows = {s: reps.row(s) for s in cfg.strategies}
    results = [{"strategy": s, "selected": infos[s]["selected"], "pool": infos[s]["pool"],
                "teachers": infos[s]["teachers"], "levels": infos[s]["levels"],
                "train_tokens": infos[s]["mean_tokens"], "pass@1": rows[s]["pass@1"], "pass@8": rows[s]["pass@8"],
                "mean_tokens": rows[s]["mean_tokens"], "ci95_pass@1": rows[s]["ci95"]["pass@1"], **stats(rows[s])}
               for s in cfg.strategies]
    pair = contrast(results)
    comparisons = reps.compare(*pair) if pair else []
    return write_outputs(Path(cfg.out) / cfg.name, results, timings, selection.reference != "", comparisons)


def _best(results: list[dict]) -> dict:
    return max(results, key=lambda r: (r["pass@1"], -r["mean_tokens"]))


def contrast(results: list[dict]) -> tuple[str, str] | None:
    """The pair the reading tests with paired intervals: the best strategy vs random (vs the runner-up when
    random is best); None with a single strategy."""
    best = _best(results)
    rnd = next((r for r in results if r["strategy"] == "random"), None)
    if rnd is not None and best is not rnd:
        return best["strategy"], rnd["strategy"]
    others = [r for r in results if r is not best]
    return (best["strategy"], _best(others)["strategy"]) if others else None


def reading(results: list[dict], comparisons: Sequence[Comparison] = ()) -> str:
    """One line computed from the numbers: best strategy, its cost, and how it compares with random; with
    ``comparisons`` (paired intervals of ``contrast``) whether the difference is distinguishable."""
    best = _best(results)
    cheap = min(results, key=lambda r: (r["mean_tokens"], -r["pass@1"]))
    line = (f"{best['strategy']} gives the best student pass@1 ({best['pass@1']:.3f}, pass@8 {best['pass@8']:.3f}) "
            f"at {best['mean_tokens']:.0f} tokens per answer; {cheap['strategy']} is cheapest "
            f"({cheap['mean_tokens']:.0f} tokens, pass@1 {cheap['pass@1']:.3f})")
    rnd = next((r for r in results if r["strategy"] == "random"), None)
    if rnd is not None and best is not rnd:
        ratio = best["mean_tokens"] / rnd["mean_tokens"] if rnd["mean_tokens"] else float("nan")
        line += (f"; vs random: {100 * (best['pass@1'] - rnd['pass@1']):+.1f} points pass@1 at {ratio:.2f}x "
                 "random's tokens")
    pair = contrast(results)
    paired = find(comparisons, *pair) if pair else None
    return line + "." + (f" Paired {paired.reading()}" if paired else "")


def render(results: list[dict]) -> str:
    lines = ["| strategy | problems | traces from | levels | train trace tokens | pass@1 | pass@8 "
             "| student mean tokens | pass@1 per 1k tokens |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        teachers = ", ".join(f"{t} {n}" for t, n in r["teachers"].items())
        levels = ", ".join(f"L{k} {v}" for k, v in r["levels"].items())
        per_k = 1000 * r["pass@1"] / r["mean_tokens"] if r["mean_tokens"] else 0.0
        lines.append(f"| {r['strategy']} | {r['selected']} of {r['pool']} | {teachers} | {levels} "
                     f"| {r['train_tokens']:.1f} | {cell(r, 'pass@1')} | {cell(r, 'pass@8')} "
                     f"| {cell(r, 'mean_tokens', 1)} | {per_k:.2f} |")
    return "\n".join(lines)


def write_outputs(out: Path, results: list[dict], timings: dict[str, float], reference: bool,
                  comparisons: Sequence[Comparison] = ()) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "curation.json").write_text(json.dumps({"results": results, "comparisons": [c.to_dict() for c in comparisons],
                                                   "timings_s": timings}, indent=1))
    png = plot_bars(out / "curation.png", [r["strategy"] for r in results],
                    {"pass@1": [r["pass@1"] for r in results], "pass@8": [r["pass@8"] for r in results]},
                    [r["mean_tokens"] for r in results], "Curation strategies at equal dataset size")
    diff = "a reference student's accuracy on the pool" if reference else "problem levels (no reference student)"
    seeds = results[0].get("seeds", 1) if results else 1
    paired = f"\n\n{readings_block(list(comparisons))}" if comparisons else ""
    md = (f"**Reading:** {reading(results, comparisons)}\n\n{render(results)}{paired}\n\n"
          f"Same pool (after decontamination, dedup and the correctness filter), same size, steps and test problems "
          f"for every student; {seeds} seed{'s' if seeds != 1 else ''} per student (cells: mean over seeds ± seed SD "
          f"[95% CI over problems and seeds]); s1/adaptive difficulty from {diff}. "
          f"Wall time: {sum(timings.values()):.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in timings.items())}).")
    log.info("curation: %s", reading(results, comparisons))
    return write_section_file(out / "curation_section.json", "Curation strategies at equal dataset size", md, [png])
