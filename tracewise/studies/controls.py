"""Study ``controls``: test-time controls vs trained students on one accuracy-vs-tokens chart.

For every student of a quickstart run (its SFT students r1 / gpt-oss / mix, and RL students when
``rl-*`` runs are there) the study runs one ``eval`` per control: a budget sweep for
``budget_force`` and ``truncate`` (``control.budgets``: one generation at the largest budget is cut
for the smaller ones), a ``min_thinking`` sweep for ``wait_extend``, a single point for
``think_free``, and the student as trained (no control). Every eval is an ordinary stage in the
store, so a rerun is a no-op and an interrupted study resumes. The rows go to ``<out>/summary.json``
and the "Test-time controls" section (``tracewise.report.controls``) to
``<out>/controls_section.json``; pass it to ``tracewise report section_files=[...]``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from tracewise import evaluate
from tracewise.core.config import doc
from tracewise.evaluate.controls import CONTROLS, ControlConfig
from tracewise.evaluate.metrics import read_summary, write_summary
from tracewise.evaluate.replicates import combine_runs
from tracewise.report.controls import NEAR_BEST, write_controls_section
from tracewise.report.stage import readings_block
from tracewise.studies.common import StudentsStudy, parse_models
from tracewise.studies.replicated import Replicates

log = logging.getLogger(__name__)

STUDY_CONTROLS = ("budget_force", "truncate", "wait_extend", "think_free")


@dataclass
class ControlsStudyConfig(StudentsStudy):
    """Sweep test-time controls over every student of a quickstart run (``tracewise study controls``).
    ``sampling.max_tokens`` caps the uncontrolled, think_free and wait_extend samples."""

    out: str = doc("Directory for the eval run dirs, summary.json, the plot and controls_section.json.",
                   "runs/study-controls", hash=False)
    controls: list[str] = doc(f"Controls to sweep: any of {', '.join(STUDY_CONTROLS)}.",
                              factory=lambda: list(STUDY_CONTROLS))
    budgets: list[int] = doc("Budgets for budget_force (thinking tokens) and truncate (total tokens).",
                             factory=lambda: [16, 32, 64, 128])
    min_thinking: list[int] = doc("wait_extend: minimum thinking tokens swept.", factory=lambda: [32, 64, 128])
    max_waits: int = doc("wait_extend: most 'Wait' insertions per sample.", 2)
    answer_tokens: int = doc("budget_force: answer tokens after the forced end of thinking.", 32)
    final_prompt: str = doc("budget_force: text after the forced </think>. s1 uses 'Final Answer:'; the embedded "
                            "students were trained to answer in \\boxed{}, so the default opens one.",
                            "So the answer is \\boxed{")
    include_trained: bool = doc("Also evaluate each student without a control (its trained point).", True)

    def validate(self) -> None:
        self.validate_seeds("study.controls")
        unknown = [c for c in self.controls if c not in STUDY_CONTROLS]
        if unknown or not self.controls:
            raise ValueError(f"study.controls.controls: unknown or empty {unknown or self.controls}; "
                             f"valid: {', '.join(STUDY_CONTROLS)} (of {', '.join(CONTROLS)})")
        parse_models(self.models, "study.controls.models")
        if not self.run_dir and not self.models:
            raise ValueError("study.controls: set run_dir (a quickstart run) or models (NAME=PATH)")
        for control in self.control_configs():  # every eval config is checked before the first one runs
            self.eval_config("check", "model", control).validate()

    def control_configs(self) -> list[ControlConfig]:
        out = [ControlConfig()] if self.include_trained else []
        for name in self.controls:
            if name in ("budget_force", "truncate"):
                out.append(ControlConfig(name=name, budgets=list(self.budgets), answer_tokens=self.answer_tokens,
                                         final_prompt=self.final_prompt))
            elif name == "wait_extend":
                out.append(ControlConfig(name=name, budgets=list(self.min_thinking), max_waits=self.max_waits))
            else:
                out.append(ControlConfig(name=name))
        return out

    def eval_config(self, student: str, model: str, control: ControlConfig, seed: int | None = None
                    ) -> evaluate.EvalConfig:
        return evaluate.EvalConfig(out=self.out, experiment=student, model=model, problems=self.problems,
                                   sampling=self.sampling_for(seed), control=control, batch_size=self.batch_size,
                                   threads=self.threads)

    def student_replicates(self) -> dict[str, list[str]]:
        return super().student_replicates("study.controls")


def run(cfg: ControlsStudyConfig) -> Path:
    """Run every (student, control, seed) eval, then write summary.json (rows over seeds) and the section;
    returns the section path."""
    cfg.validate()
    students = cfg.student_replicates()
    seeds = cfg.seed_values()
    out = Path(cfg.out)
    per_seed: list[list[Path]] = [[] for _ in seeds]
    runs: dict[str, list[Path]] = {}  # row label -> its eval dir per seed
    timings: dict[str, float] = {}
    for student, models in students.items():
        for control in cfg.control_configs():
            t0 = time.time()
            dirs = [evaluate.run(cfg.eval_config(student, m, control, s)) for m, s in zip(models, seeds)]
            timings[f"{student}/{control.name}"] = round(time.time() - t0, 1)
            for i, d in enumerate(dirs):
                per_seed[i].append(d)
            runs.update({r["experiment"]: dirs for r in read_summary(dirs[0] / "summary.json")})
    rows = combine_runs(per_seed)
    write_summary(out / "summary.json", rows)
    pair = contrast(rows)
    paired = readings_block(Replicates(runs).compare(*pair)) if pair else ""
    section = write_controls_section(rows, out, paired)
    log.info("study controls: %d rows for %d students × %d seed(s); section %s; eval times (s) %s", len(rows),
             len(students), len(seeds), section, timings)
    return section


def contrast(rows: list[dict]) -> tuple[str, str] | None:
    """(the best setting, the cheapest setting within NEAR_BEST of its pass@1) as row labels: the two settings
    the section's reading names (trained students first on ties, as the reading does); None when they are
    one setting or nothing answered."""
    none = [r for r in rows if (r.get("control") or "none") == "none" and not r.get("few_shot_k")]
    ordered = none + [r for r in rows if (r.get("control") or "none") != "none"]
    if not ordered:
        return None
    best = max(ordered, key=lambda r: (r["pass@1"], -r["mean_tokens"]))
    if best["pass@1"] <= 0:
        return None
    cheap = min((r for r in ordered if r["pass@1"] >= NEAR_BEST * best["pass@1"]),
                key=lambda r: (r["mean_tokens"], -r["pass@1"]))
    return None if cheap is best else (best["experiment"], cheap["experiment"])
