"""``tracewise study judge-bias``: what does the correctness filter let through, and does it matter?

The paper kept only problems a judge LLM called correct; its third unrun check asks whether that
judge biased the comparison. Here the *same* teacher traces are curated with the judge only,
math-verify only, both, and no correctness filter, and (embedded world) with the judge's
false-positive / false-negative rates swept. One student per variant is trained with the same
steps and evaluated on the same held-out problems. Reported per variant: kept-set size, known-wrong
traces let through (the embedded teachers record their uncorrected mistakes in
``Trace.meta['teacher_error']``), student pass@1 / pass@8 and mean tokens.

Outputs under ``<out>/<name>/``: ``judge_bias.json``, ``judge_bias.png`` and the report section
``judge_bias_section.json`` (``tracewise report section_files=[...]``).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tracewise import curate
from tracewise.verify import stage as verify_stage
from tracewise.core.config import doc
from tracewise.curate.decontam import DecontamConfig
from tracewise.data.sources import ProblemsConfig
from tracewise.report.sections import write_section_file
from tracewise.evaluate.replicates import Comparison, cell
from tracewise.report.stage import readings_block
from tracewise.studies.common import (StudyBase, StudyEval, TrainSettings, base_student, generate_world, pearson,
                                      plot_bars, train_eval_seeds)
from tracewise.studies.replicated import Replicates, find, stats
from tracewise.world.judge import JudgeConfig
from tracewise.world.teachers import TeacherConfig

log = logging.getLogger(__name__)


def _sweep() -> list[JudgeConfig]:
    return [JudgeConfig(false_positive_rate=0.3, false_negative_rate=0.1),
            JudgeConfig(false_positive_rate=0.6, false_negative_rate=0.2)]


@dataclass
class JudgeBiasConfig(StudyBase):
    """Judge-bias ablation (``tracewise study judge-bias``)."""

    name: str = doc("Sub-directory of out for this study's tables, plot and section.", "judge_bias")
    teacher: TeacherConfig = doc("Embedded teacher whose traces every variant curates; errs often, so the "
                                 "filter matters.", factory=lambda: TeacherConfig(style="gpt-oss",
                                                                                  error_rate=[0.15, 0.25, 0.35]))
    generations: list[str] = doc("Existing generate run dirs (e.g. real teacher traces) instead of the embedded "
                                 "teacher.", factory=list)
    eval_problems: ProblemsConfig | None = doc("Held-out problems (default: the world's test split).", None)
    judge: JudgeConfig = doc("Judge error rates of the judge / both variants.", factory=JudgeConfig)
    filters: list[str] = doc("Correctness filters compared: judge, math_verify, both, none.",
                             factory=lambda: ["judge", "math_verify", "both", "none"])
    judge_sweep: list[JudgeConfig] = doc("Extra judge-only variants with these error rates (rates in [0, 1]).",
                                         factory=_sweep)
    decontam: DecontamConfig = doc("Decontamination/dedup before every filter (same for all variants).",
                                   factory=DecontamConfig)
    train: TrainSettings = doc("Training shared by every student.", factory=TrainSettings)
    eval: StudyEval = doc("Evaluation shared by every student.", factory=lambda: StudyEval(max_tokens=200))

    def validate(self) -> None:
        bad = [f for f in self.filters if f not in curate.FILTERS]
        if bad or len(set(self.filters)) != len(self.filters):
            raise ValueError(f"judge_bias.filters: expected distinct values from {sorted(curate.FILTERS)}, "
                             f"got {self.filters}")
        for i, j in enumerate([self.judge, *self.judge_sweep]):
            for field in ("false_positive_rate", "false_negative_rate"):
                v = getattr(j, field)
                if not 0.0 <= v <= 1.0:
                    where = "judge" if i == 0 else f"judge_sweep[{i - 1}]"
                    raise ValueError(f"judge_bias.{where}.{field} must be in [0, 1], got {v}")
        if not self.filters and not self.judge_sweep:
            raise ValueError("judge_bias: nothing to compare; give filters and/or judge_sweep")
        if self.parallel < 1 or self.pretrain_steps < 0:
            raise ValueError("judge_bias: parallel must be >= 1 and pretrain_steps >= 0")
        for part in (self.world, self.teacher, self.decontam, self.train, self.eval):
            part.validate()
        self.validate_seeds("judge_bias")


def _rates(j: JudgeConfig) -> str:
    return f"FP {j.false_positive_rate:.2f} / FN {j.false_negative_rate:.2f}"


def variants(cfg: JudgeBiasConfig) -> list[tuple[str, str, JudgeConfig]]:
    """``(label, filter, judge)`` per student: the filters first, then the judge-only sweep."""
    out = [(f, f, cfg.judge) for f in cfg.filters]
    out += [(f"judge {j.false_positive_rate:g}/{j.false_negative_rate:g}", "judge", j) for j in cfg.judge_sweep]
    return out


def run(cfg: JudgeBiasConfig) -> Path:
    """Run the ablation; returns the section JSON path."""
    cfg.validate()
    t_start, timings = time.time(), {}

    def lap(name: str) -> None:
        timings[name] = round(time.time() - t_start - sum(timings.values()), 1)

    base = base_student(cfg.out, cfg.student, cfg.pretrain_steps, cfg.base_model)
    gens = cfg.generations or [generate_world(cfg.out, base, cfg.teacher, cfg.world, cfg.seed)]
    lap("base+generate")
    datasets, tables, labels = {}, {}, []
    for label, filt, judge in variants(cfg):
        # One verify run per judge setting; math_verify verdicts do not depend on it.
        ver = verify_stage.run(verify_stage.VerifyConfig(out=cfg.out, generations=gens, judge_cfg=judge))
        cur = curate.run(curate.CurateConfig(out=cfg.out, generations=gens, verdicts=str(ver), filter=filt, mix=False,
                                             decontam=cfg.decontam))
        table = json.loads((cur / "table.json").read_text())
        teacher = table["teachers"][0]
        datasets[label] = str(curate.dataset_path(cur, teacher))
        tables[label] = {"filter": filt, "judge": _rates(judge) if filt in ("judge", "both") else "–",
                         "kept": table["kept"], "pool": table["problems_in"], **{
                             k: table["per_teacher"][teacher][k] for k in ("known_wrong", "wrong_let_through",
                                                                           "mean_tokens_kept")}}
        labels.append(label)
    empty = [k for k in labels if tables[k]["kept"] == 0]
    if empty:
        raise ValueError(f"judge_bias: variants {empty} keep no problem; lower the judge error rates")
    lap("verify+curate")
    test = cfg.eval_problems or ProblemsConfig(source="world", split="test", world=cfg.world)
    reps = Replicates(train_eval_seeds(cfg.out, base, datasets, cfg.train, cfg.eval, test, cfg.seed_values(),
                                       cfg.parallel))
    lap("train+eval")
    rows = {k: reps.row(k) for k in labels}
    results = [{"variant": k, **tables[k], "pass@1": rows[k]["pass@1"], "pass@8": rows[k]["pass@8"],
                "mean_tokens": rows[k]["mean_tokens"], "ci95_pass@1": rows[k]["ci95"]["pass@1"], **stats(rows[k])}
               for k in labels]
    comparisons = [c for a, b in contrasts(results) for c in reps.compare(a, b)]
    return write_outputs(Path(cfg.out) / cfg.name, results, timings, comparisons)


def _share(r: dict) -> float:
    return (r["wrong_let_through"] or 0) / r["kept"]


def _extremes(results: list[dict]) -> tuple[dict, dict, dict, dict]:
    """(best, worst) by student pass@1 and (cleanest, dirtiest) by known-wrong traces let through."""
    best = max(results, key=lambda r: (r["pass@1"], -r["mean_tokens"]))
    worst = min(results, key=lambda r: r["pass@1"])
    cleanest = min(results, key=lambda r: (r["wrong_let_through"] or 0, -r["kept"]))
    dirtiest = max(results, key=lambda r: (_share(r), r["variant"]))
    return best, worst, cleanest, dirtiest


def contrasts(results: list[dict]) -> list[tuple[str, str]]:
    """The variant pairs the reading tests with paired intervals: best vs worst pass@1 (is the spread real?)
    and, when the teacher's errors are known, the cleanest vs the dirtiest filter (did letting wrong traces
    through cost accuracy?)."""
    best, worst, cleanest, dirtiest = _extremes(results)
    pairs = [(best["variant"], worst["variant"])] if best is not worst else []
    known = all(r["wrong_let_through"] is not None for r in results)
    pair = (cleanest["variant"], dirtiest["variant"])
    if known and cleanest is not dirtiest and pair not in pairs and pair[::-1] not in pairs:
        pairs.append(pair)
    return pairs


def reading(results: list[dict], comparisons: Sequence[Comparison] = ()) -> str:
    """One line computed from the numbers: who let wrong traces in, and whether students paid for it; with
    ``comparisons`` (paired intervals of ``contrasts``) each difference says whether it is distinguishable."""
    best, worst, cleanest, dirtiest = _extremes(results)
    corr = pearson([_share(r) for r in results], [r["pass@1"] for r in results])
    known = all(r["wrong_let_through"] is not None for r in results)
    parts = []
    if known:
        parts.append(f"{dirtiest['variant']} let the most known-wrong traces through "
                     f"({dirtiest['wrong_let_through']} of {dirtiest['kept']} kept, "
                     f"{100 * _share(dirtiest):.1f}%), "
                     f"{cleanest['variant']} the fewest ({cleanest['wrong_let_through']})")
    spread = best["pass@1"] - worst["pass@1"]
    parts.append(f"student pass@1 ranges from {worst['pass@1']:.3f} ({worst['variant']}) to {best['pass@1']:.3f} "
                 f"({best['variant']}), a spread of {100 * spread:.1f} points")
    if corr is not None and known:
        direction = "lower" if corr < 0 else "higher"
        parts.append(f"across variants, a larger wrong-trace share goes with {direction} pass@1 (r = {corr:+.2f})")
    paired = [c.reading() for a, b in contrasts(results)
              if (c := find(comparisons, a, b)) is not None]
    return "; ".join(parts) + "." + "".join(f" Paired {p}" for p in paired)


def render(results: list[dict]) -> str:
    lines = ["| variant | filter | judge error rates | kept | known-wrong let through | train tokens (kept) "
             "| pass@1 | pass@8 | student mean tokens |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        wrong = "n/a" if r["wrong_let_through"] is None else f"{r['wrong_let_through']} of {r['known_wrong']}"
        lines.append(f"| {r['variant']} | {r['filter']} | {r['judge']} | {r['kept']} of {r['pool']} | {wrong} "
                     f"| {r['mean_tokens_kept']:.1f} | {cell(r, 'pass@1')} | {cell(r, 'pass@8')} "
                     f"| {cell(r, 'mean_tokens', 1)} |")
    return "\n".join(lines)


def write_outputs(out: Path, results: list[dict], timings: dict[str, float],
                  comparisons: Sequence[Comparison] = ()) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "judge_bias.json").write_text(json.dumps({"results": results, "comparisons": [c.to_dict() for c in comparisons],
                                                     "timings_s": timings}, indent=1))
    png = plot_bars(out / "judge_bias.png", [r["variant"] for r in results],
                    {"pass@1": [r["pass@1"] for r in results], "pass@8": [r["pass@8"] for r in results],
                     "known-wrong share of kept": [_share(r) for r in results]},
                    [r["mean_tokens"] for r in results], "Judge-bias ablation: one student per correctness filter")
    seeds = results[0].get("seeds", 1) if results else 1
    paired = f"\n\n{readings_block(list(comparisons))}" if comparisons else ""
    md = (f"**Reading:** {reading(results, comparisons)}\n\n{render(results)}{paired}\n\n"
          "Known-wrong = traces whose embedded teacher made an uncorrected mistake (exact, not a verdict). "
          f"Same teacher traces, same training steps and test problems for every student; {seeds} "
          f"seed{'s' if seeds != 1 else ''} per student (cells: mean over seeds ± seed SD [95% CI over problems and "
          f"seeds]). Wall time: {sum(timings.values()):.0f} s.")
    log.info("judge-bias: %s", reading(results, comparisons))
    return write_section_file(out / "judge_bias_section.json", "Judge-bias ablation", md, [png])

