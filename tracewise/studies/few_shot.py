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

from tracewise import evaluate
from tracewise.core.config import doc
from tracewise.evaluate.few_shot import FewShotConfig
from tracewise.evaluate.metrics import read_summary, write_summary
from tracewise.report.sections import write_section_file
from tracewise.studies.common import StudentsStudy, parse_models

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

    def student_models(self) -> dict[str, str]:
        return super().student_models("study.few_shot")

    def eval_config(self, student: str, model: str, few_shot: FewShotConfig) -> evaluate.EvalConfig:
        name = f"{student} +{few_shot.k}-shot {few_shot.style}" if few_shot.k else student
        return evaluate.EvalConfig(out=self.out, experiment=name, model=model, problems=self.problems,
                                   sampling=self.sampling, few_shot=few_shot, batch_size=self.batch_size,
                                   threads=self.threads)


def relation(student: str, style: str, styles: set[str]) -> str:
    """'own' when the exemplars are in the student's teacher's style, 'other' when in another
    teacher's, '–' for a student that is no single teacher's (the mix)."""
    return "own" if student == style else "other" if student in styles else "–"


def _styles(rows: list[dict]) -> set[str]:
    return {r["few_shot_style"] for r in rows if r.get("few_shot_k")}


def table(rows: list[dict]) -> str:
    """Markdown: per student, zero-shot then each exemplar style, with changes against zero-shot."""
    zero = {r["student"]: r for r in rows if not r.get("few_shot_k")}
    lines = ["| student | exemplars | pass@1 | Δ pass@1 | mean tokens | Δ tokens |", "|---|---|---|---|---|---|"]
    for r in rows:
        z = zero.get(r["student"])
        if not r.get("few_shot_k"):
            lines.append(f"| {r['student']} | none (zero-shot) | {r['pass@1']:.3f} | – | {r['mean_tokens']:.0f} | – |")
            continue
        rel = relation(r["student"], r["few_shot_style"], _styles(rows))
        ex = f"{r['few_shot_k']}× {r['few_shot_style']}" + (f" ({rel})" if rel != "–" else "")
        d_acc = f"{r['pass@1'] - z['pass@1']:+.3f}" if z else "–"
        d_tok = (f"{r['mean_tokens'] - z['mean_tokens']:+.0f} ({(r['mean_tokens'] / z['mean_tokens'] - 1) * 100:+.0f}%)"
                 if z and z["mean_tokens"] > 0 else "–")
        lines.append(f"| {r['student']} | {ex} | {r['pass@1']:.3f} | {d_acc} | {r['mean_tokens']:.0f} | {d_tok} |")
    return "\n".join(lines)


def reading(rows: list[dict], tolerance: float) -> str:
    """Does the most concise zero-shot student (that has a teacher style) stay concise with the other style?"""
    zero = {r["student"]: r for r in rows if not r.get("few_shot_k")}
    styles = _styles(rows)
    shown = [r for r in rows if r.get("few_shot_k") and relation(r["student"], r["few_shot_style"], styles) == "other"]
    candidates = [s for s in zero if any(r["student"] == s for r in shown) and zero[s]["mean_tokens"] > 0]
    if not candidates:
        return "Reading: no student was shown another teacher's style next to a zero-shot run, so transfer cannot be assessed."
    s = min(candidates, key=lambda name: zero[name]["mean_tokens"])
    z = zero[s]
    parts = []
    grew = []
    for r in (r for r in shown if r["student"] == s):
        ratio = r["mean_tokens"] / z["mean_tokens"]
        grew.append(ratio)
        parts.append(f"{r['few_shot_k']}× {r['few_shot_style']} exemplars take it to {r['mean_tokens']:.0f} tokens "
                     f"({(ratio - 1) * 100:+.0f}%), pass@1 {z['pass@1']:.3f} → {r['pass@1']:.3f}")
    own = [r for r in rows if r.get("few_shot_k") and r["student"] == s and relation(s, r["few_shot_style"], styles) == "own"]
    if own:
        parts.append(f"its own style gives {own[0]['mean_tokens']:.0f} tokens "
                     f"({(own[0]['mean_tokens'] / z['mean_tokens'] - 1) * 100:+.0f}%)")
    verdict = ("it stays concise" if max(grew) <= 1 + tolerance else "it does not stay concise")
    return (f"Reading: the most concise student zero-shot, {s} ({z['mean_tokens']:.0f} tokens): " + "; ".join(parts)
            + f" → {verdict} (tolerance +{tolerance:.0%} tokens).")


def run(cfg: FewShotStudyConfig) -> Path:
    """Evaluate every (student, exemplar style) and zero-shot; write summary.json and the section."""
    cfg.validate()
    students, styles = cfg.student_models(), cfg.styles()
    settings = [FewShotConfig()] + [FewShotConfig(path=p, k=cfg.k, label=s) for s, p in styles.items()]
    for fs in settings:  # every exemplar set loads and is big enough before the first eval runs
        fs.validate()
    rows = []
    for student, model in students.items():
        for fs in settings:
            run_dir = evaluate.run(cfg.eval_config(student, model, fs))
            # The eval labels the row by its experiment name ('r1 +1-shot gpt-oss'); group by the student.
            rows.extend({**r, "student": student} for r in read_summary(run_dir / "summary.json"))
    out = Path(cfg.out)
    write_summary(out / "summary.json", rows)
    body = (reading(rows, cfg.concise_tolerance) + "\n\n" + table(rows) + "\n\n"
            f"Exemplars: {', '.join(f'{s} = {p}' for s, p in styles.items())}; the first {cfg.k} of each (the same "
            "questions in every curated dataset), shown as earlier user/assistant turns with their thinking.")
    section = write_section_file(out / "few_shot_section.json", TITLE, body)
    log.info("study few-shot: %d rows; section %s", len(rows), section)
    return section
