"""Study ``few-shot``: does a concise student stay concise when shown verbose examples?

Each student is evaluated zero-shot and with ``k`` exemplars in each teacher's style — its own
(the control) and the other teacher's. Exemplars come from the quickstart's curated datasets
(``<curate run>/datasets/<teacher>``: the same kept problems in every teacher's words, so styles
differ and questions do not) or from user files (``exemplars: [STYLE=PATH]``, JSONL or a saved
dataset; see ``tracewise.evaluate.few_shot``). The section's table gives pass@1 and mean tokens with their
change against zero-shot; its reading is computed from the numbers: the student with the fewest
zero-shot tokens "stays concise" when the other style raises its mean tokens by at most
``concise_tolerance``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tracewise import evaluate
from tracewise.core.config import doc
from tracewise.evaluate.few_shot import FewShotConfig
from tracewise.evaluate.metrics import write_summary
from tracewise.evaluate.replicates import Comparison, cell, combine_runs
from tracewise.report.sections import write_section_file
from tracewise.report.stage import readings_block
from tracewise.studies.common import StudentsStudy, parse_models
from tracewise.studies.replicated import Replicates, find

log = logging.getLogger(__name__)
TITLE = "Few-shot style transfer"


def curated_styles(run_dir: str | Path) -> dict[str, str]:
    """``{teacher: dataset dir}`` from the (single) finished curate run under ``run_dir``; the mix is
    not a style and is left out."""
    runs = sorted(d for d in Path(run_dir).glob("curate-*") if (d / "DONE").exists())
    if len(runs) != 1:
        raise ValueError(f"{run_dir}: expected one finished curate run, found {[d.name for d in runs]}; "
                         "set `exemplars` (STYLE=PATH) instead")
    out = {}
    for d in sorted((runs[0] / "datasets").iterdir()):
        if not (d / "dataset_info.json").is_file():
            continue
        from datasets import load_from_disk

        ds = load_from_disk(str(d))
        if "teacher" in ds.column_names and set(ds["teacher"]) == {d.name}:  # one teacher's dataset, not a mix
            out[d.name] = str(d)
    return out


@dataclass
class FewShotStudyConfig(StudentsStudy):
    """k-shot exemplars in each teacher's style vs zero-shot, per student (``tracewise study few-shot``).
    ``run_dir`` also provides the exemplars: the curated dataset of each teacher."""

    out: str = doc("Directory for the eval run dirs, summary.json and few_shot_section.json.",
                   "runs/study-few-shot", hash=False)
    exemplars: list[str] = doc("Exemplar sets as STYLE=PATH (.jsonl or saved dataset); default: the curated "
                               "dataset of each teacher in run_dir.", factory=list)
    k: int = doc("Exemplars shown before each problem.", 1)
    concise_tolerance: float = doc("The reading's 'stays concise': mean tokens grow by at most this fraction.", 0.25)

    def validate(self) -> None:
        self.validate_seeds("study.few_shot")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"study.few_shot.k must be an int >= 1, got {self.k!r}")
        if not 0 <= self.concise_tolerance:
            raise ValueError(f"study.few_shot.concise_tolerance must be >= 0, got {self.concise_tolerance}")
        parse_models(self.models, "study.few_shot.models")
        for style, path in parse_models(self.exemplars, "study.few_shot.exemplars").items():
            FewShotConfig(path=path, k=self.k, label=style).validate()  # format and count, before generating
        if not self.run_dir and not (self.models and self.exemplars):
            raise ValueError("study.few_shot: set run_dir (a quickstart run), or both models and exemplars")

    def styles(self) -> dict[str, str]:
        styles = parse_models(self.exemplars, "study.few_shot.exemplars") or curated_styles(self.run_dir)
        if not styles:
            raise ValueError(f"study.few_shot: no single-teacher curated datasets under {self.run_dir}")
        return styles

    def student_replicates(self) -> dict[str, list[str]]:
        return super().student_replicates("study.few_shot")

    def eval_config(self, student: str, model: str, few_shot: FewShotConfig, seed: int | None = None
                    ) -> evaluate.EvalConfig:
        name = f"{student} +{few_shot.k}-shot {few_shot.style}" if few_shot.k else student
        return evaluate.EvalConfig(out=self.out, experiment=name, model=model, problems=self.problems,
                                   sampling=self.sampling_for(seed), few_shot=few_shot, batch_size=self.batch_size,
                                   threads=self.threads)


def relation(student: str, style: str, styles: set[str]) -> str:
    """'own' when the exemplars are in the student's teacher's style, 'other' when in another
    teacher's, '–' for a student that is no single teacher's (the mix)."""
    return "own" if student == style else "other" if student in styles else "–"


def _styles(rows: list[dict]) -> set[str]:
    return {r["few_shot_style"] for r in rows if r.get("few_shot_k")}


def table(rows: list[dict]) -> str:
    """Markdown: per student, zero-shot then each exemplar style, with changes against zero-shot (pass@1 and
    tokens: mean ± seed SD [95% CI] with several seeds)."""
    zero = {r["student"]: r for r in rows if not r.get("few_shot_k")}
    lines = ["| student | exemplars | pass@1 | Δ pass@1 | mean tokens | Δ tokens |", "|---|---|---|---|---|---|"]
    for r in rows:
        z = zero.get(r["student"])
        if not r.get("few_shot_k"):
            lines.append(f"| {r['student']} | none (zero-shot) | {_cell(r, 'pass@1')} | – | {_cell(r, 'mean_tokens', 0)} "
                         "| – |")
            continue
        rel = relation(r["student"], r["few_shot_style"], _styles(rows))
        ex = f"{r['few_shot_k']}× {r['few_shot_style']}" + (f" ({rel})" if rel != "–" else "")
        d_acc = f"{r['pass@1'] - z['pass@1']:+.3f}" if z else "–"
        d_tok = (f"{r['mean_tokens'] - z['mean_tokens']:+.0f} ({(r['mean_tokens'] / z['mean_tokens'] - 1) * 100:+.0f}%)"
                 if z and z["mean_tokens"] > 0 else "–")
        lines.append(f"| {r['student']} | {ex} | {_cell(r, 'pass@1')} | {d_acc} | {_cell(r, 'mean_tokens', 0)} "
                     f"| {d_tok} |")
    return "\n".join(lines)


def _cell(row: dict, metric: str, digits: int = 3) -> str:
    """The mean alone with one seed (as before replicates); mean ± seed SD [95% CI] with several."""
    return cell(row, metric, digits) if row.get("seeds", 1) > 1 else f"{row[metric]:.{digits}f}"


def _concise(rows: list[dict]) -> tuple[dict, list[dict]] | None:
    """The most concise zero-shot student that was shown another teacher's style, and those rows."""
    zero = {r["student"]: r for r in rows if not r.get("few_shot_k")}
    styles = _styles(rows)
    shown = [r for r in rows if r.get("few_shot_k") and relation(r["student"], r["few_shot_style"], styles) == "other"]
    candidates = [s for s in zero if any(r["student"] == s for r in shown) and zero[s]["mean_tokens"] > 0]
    if not candidates:
        return None
    s = min(candidates, key=lambda name: zero[name]["mean_tokens"])
    return zero[s], [r for r in shown if r["student"] == s]


def contrasts(rows: list[dict]) -> list[tuple[str, str]]:
    """(zero-shot, other-style) row labels of the reading's student: the pairs it compares by paired intervals."""
    found = _concise(rows)
    return [] if found is None else [(found[0]["experiment"], r["experiment"]) for r in found[1]]


def reading(rows: list[dict], tolerance: float, comparisons: Sequence[Comparison] = ()) -> str:
    """Does the most concise zero-shot student (that has a teacher style) stay concise with the other style?
    With ``comparisons`` (paired intervals of ``contrasts``) each change says whether it is distinguishable."""
    found = _concise(rows)
    if found is None:
        return "Reading: no student was shown another teacher's style next to a zero-shot run, so transfer cannot be assessed."
    z, shown = found
    s, styles = z["student"], _styles(rows)
    parts = []
    grew = []
    for r in shown:
        ratio = r["mean_tokens"] / z["mean_tokens"]
        grew.append(ratio)
        parts.append(f"{r['few_shot_k']}× {r['few_shot_style']} exemplars take it to {r['mean_tokens']:.0f} tokens "
                     f"({(ratio - 1) * 100:+.0f}%), pass@1 {z['pass@1']:.3f} → {r['pass@1']:.3f}")
    own = [r for r in rows if r.get("few_shot_k") and r["student"] == s and relation(s, r["few_shot_style"], styles) == "own"]
    if own:
        parts.append(f"its own style gives {own[0]['mean_tokens']:.0f} tokens "
                     f"({(own[0]['mean_tokens'] / z['mean_tokens'] - 1) * 100:+.0f}%)")
    verdict = ("it stays concise" if max(grew) <= 1 + tolerance else "it does not stay concise")
    paired = [c.reading() for r in shown for metric in ("token_ratio", "pass@1")
              if (c := find(comparisons, z["experiment"], r["experiment"], metric)) is not None]
    return (f"Reading: the most concise student zero-shot, {s} ({z['mean_tokens']:.0f} tokens): " + "; ".join(parts)
            + f" → {verdict} (tolerance +{tolerance:.0%} tokens)." + "".join(f" Paired: {p}" for p in paired))


def run(cfg: FewShotStudyConfig) -> Path:
    """Evaluate every (student, exemplar style) and zero-shot, once per seed; write summary.json (rows over
    seeds) and the section."""
    cfg.validate()
    students, styles = cfg.student_replicates(), cfg.styles()
    settings = [FewShotConfig()] + [FewShotConfig(path=p, k=cfg.k, label=s) for s, p in styles.items()]
    for fs in settings:  # every exemplar set loads and is big enough before the first eval runs
        fs.validate()
    seeds = cfg.seed_values()
    per_seed: list[list[Path]] = [[] for _ in seeds]
    runs: dict[str, list[Path]] = {}
    student_of: dict[str, str] = {}
    for student, models in students.items():
        for fs in settings:
            dirs = [evaluate.run(cfg.eval_config(student, m, fs, s)) for m, s in zip(models, seeds)]
            label = cfg.eval_config(student, models[0], fs).experiment
            runs[label], student_of[label] = dirs, student
            for i, d in enumerate(dirs):
                per_seed[i].append(d)
    # The eval labels the row by its experiment name ('r1 +1-shot gpt-oss'); group by the student.
    rows = [{**r, "student": student_of[r["experiment"]]} for r in combine_runs(per_seed)]
    out = Path(cfg.out)
    write_summary(out / "summary.json", rows)
    reps = Replicates(runs)
    comparisons = [c for a, b in contrasts(rows) for c in reps.compare(a, b)]
    body = (reading(rows, cfg.concise_tolerance, comparisons) + "\n\n" + table(rows) + "\n\n"
            + (readings_block(comparisons) + "\n\n" if comparisons else "")
            + f"Exemplars: {', '.join(f'{s} = {p}' for s, p in styles.items())}; the first {cfg.k} of each (the same "
            f"questions in every curated dataset), shown as earlier user/assistant turns with their thinking; "
            f"{len(seeds)} sampling seed{'s' if len(seeds) != 1 else ''} per row.")
    section = write_section_file(out / "few_shot_section.json", TITLE, body)
    log.info("study few-shot: %d rows; section %s", len(rows), section)
    return section
