"""The report's "Test-time controls" section: accuracy vs tokens per student and per control.

Input is summary rows (``tracewise.evaluate.metrics`` contract) as the eval stage writes them, with the
extra keys ``student``, ``control`` and ``budget``. A *curve* is every row of one (student,
control) pair — a budget sweep, or a single point for ThinkFree — placed at (mean generated tokens,
pass@1). Rows with control ``none`` (or no ``control`` key) are trained students evaluated as they
are: they appear as points on the same chart.

Area under a curve, normalised (``normalized_auc``): sort the curve's points by mean tokens
``x_1 <= ... <= x_n`` with pass@1 ``y_i``; the area is the trapezoid sum
``sum_i (x_{i+1} - x_i) * (y_i + y_{i+1}) / 2`` divided by the token range ``x_n - x_1``. It is
the mean pass@1 over the tokens the curve spans (in [0, 1]); a curve with one point or no token
range gets that (mean) pass@1. Because curves span different ranges, the table also gives the
area on the range every curve with a range covers (``auc_on_range``: the curve linearly
interpolated on ``[max x_1, min x_n]``), which compares them over the same tokens.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from tracewise.evaluate.replicates import cell
from tracewise.report.sections import Section, register_section, write_section_file

log = logging.getLogger(__name__)

TITLE = "Test-time controls"
MARKERS = {"budget_force": "o", "truncate": "x", "wait_extend": "s", "think_free": "D"}
LINES = {"budget_force": "-", "truncate": ":", "wait_extend": "--"}
NEAR_BEST = 0.9  # "reaches accuracy" in the reading = at least this fraction of the best pass@1


@dataclass
class Curve:
    student: str
    control: str
    points: list[tuple[float, float, int | None]] = field(default_factory=list)  # (tokens, pass@1, budget)

    @property
    def name(self) -> str:
        return f"{self.student} + {self.control}"

    @property
    def xy(self) -> tuple[np.ndarray, np.ndarray]:
        pts = sorted(self.points, key=lambda p: (p[0], p[2] or 0))
        return np.array([p[0] for p in pts], dtype=float), np.array([p[1] for p in pts], dtype=float)


def normalized_auc(tokens: list[float] | np.ndarray, acc: list[float] | np.ndarray) -> float:
    """Trapezoid area of ``acc`` over ``tokens`` divided by the token range (see module doc)."""
    x, y = np.asarray(tokens, dtype=float), np.asarray(acc, dtype=float)
    if x.shape != y.shape or x.size == 0:
        raise ValueError(f"normalized_auc: need equal-length, non-empty tokens and accuracies, got {x.size} and {y.size}")
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    span = x[-1] - x[0]
    if span <= 0:
        return float(y.mean())
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2) / span)


def auc_on_range(tokens, acc, lo: float, hi: float) -> float | None:
    """Normalised area of the linearly interpolated curve on ``[lo, hi]``; None if the curve does
    not cover that range (or the range is empty)."""
    x, y = np.asarray(tokens, dtype=float), np.asarray(acc, dtype=float)
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    if hi <= lo or x.size < 2 or x[0] > lo or x[-1] < hi:
        return None
    inner = x[(x > lo) & (x < hi)]
    grid = np.concatenate([[lo], inner, [hi]])
    return normalized_auc(grid, np.interp(grid, x, y))


def split_rows(rows: list[dict]) -> tuple[list[Curve], list[dict]]:
    """(curves of controlled rows, rows of uncontrolled students), in first-seen order."""
    curves: dict[tuple[str, str], Curve] = {}
    trained = []
    for r in rows:
        control = r.get("control") or "none"
        if control == "none":
            if not r.get("few_shot_k"):  # few-shot rows are another study's
                trained.append(r)
            continue
        student = r.get("student") or r["experiment"].split(" [")[0]
        curve = curves.setdefault((student, control), Curve(student, control))
        curve.points.append((float(r["mean_tokens"]), float(r["pass@1"]), r.get("budget")))
    return list(curves.values()), trained


def common_range(curves: list[Curve]) -> tuple[float, float] | None:
    """The token range every curve with more than one point covers; None if they do not overlap."""
    spans = [(c.xy[0][0], c.xy[0][-1]) for c in curves if len(c.points) > 1 and c.xy[0][-1] > c.xy[0][0]]
    if not spans:
        return None
    lo, hi = max(s[0] for s in spans), min(s[1] for s in spans)
    return (float(lo), float(hi)) if hi > lo else None


def auc_table(curves: list[Curve]) -> str:
    rng = common_range(curves)
    head = "| student | control | budgets | mean tokens | pass@1 | normalised AUC |"
    head += f" AUC on [{rng[0]:.0f}, {rng[1]:.0f}] tokens |" if rng else ""
    lines = [head, "|" + "---|" * (7 if rng else 6)]
    for c in curves:
        x, y = c.xy
        budgets = ", ".join(str(b) for b in sorted(p[2] for p in c.points if p[2] is not None)) or "–"
        cells = [c.student, c.control, budgets, f"{x[0]:.0f}–{x[-1]:.0f}", f"{y.min():.3f}–{y.max():.3f}",
                 f"{normalized_auc(x, y):.3f}"]
        if rng:
            a = auc_on_range(x, y, *rng)
            cells.append("–" if a is None else f"{a:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reading(curves: list[Curve], trained: list[dict]) -> str:
    """One line computed from the numbers: which setting buys near-best accuracy cheapest."""
    # Trained students first: on a tie (a budget that never binds reproduces the student) the
    # reading credits the student, not a control that changed nothing.
    settings = [(f"{r.get('student') or r['experiment']} as trained (no control)", float(r["mean_tokens"]),
                 float(r["pass@1"])) for r in trained]
    settings += [(f"{c.name}" + (f"@{b}" if b is not None else ""), x, y) for c in curves for x, y, b in c.points]
    if not settings:
        return "Reading: no results to compare."
    best = max(s[2] for s in settings)
    if best <= 0:
        return "Reading: no setting answered any problem correctly, so none buys accuracy."
    name, tokens, acc = min((s for s in settings if s[2] >= NEAR_BEST * best), key=lambda s: (s[1], -s[2]))
    best_name = max(settings, key=lambda s: (s[2], -s[1]))[0]
    text = (f"Reading: {name} is the cheapest setting within {NEAR_BEST:.0%} of the best pass@1 "
            f"({acc:.3f} at {tokens:.0f} mean tokens; best {best:.3f}, {best_name})")
    rng = common_range(curves)
    if rng:
        areas = [(auc_on_range(*c.xy, *rng), c.name) for c in curves]
        areas = [a for a in areas if a[0] is not None]
        if areas:
            top = max(areas)
            text += f"; the largest area on the common range {rng[0]:.0f}–{rng[1]:.0f} tokens is {top[1]} ({top[0]:.3f})"
    return text + "."


def plot_controls(curves: list[Curve], trained: list[dict], path: Path) -> Path:
    """pass@1 vs mean tokens: a line per (student, control), a star per trained student."""
    fig = Figure(figsize=(8, 5))
    ax = fig.add_subplot()
    students = list(dict.fromkeys([c.student for c in curves] + [r.get("student") or r["experiment"] for r in trained]))
    color = {s: f"C{i % 10}" for i, s in enumerate(students)}
    for c in curves:
        x, y = c.xy
        ax.plot(x, y, marker=MARKERS.get(c.control, "v"), ls=LINES.get(c.control, "-") if len(x) > 1 else "", color=color[c.student],
                label=c.name, alpha=0.85)
    for r in trained:
        s = r.get("student") or r["experiment"]
        ax.plot([r["mean_tokens"]], [r["pass@1"]], marker="*", ms=16, ls="", color=color[s], mec="k",
                label=f"{s} (trained)")
    xs = [p[0] for c in curves for p in c.points] + [r["mean_tokens"] for r in trained]
    if xs and min(xs) > 0:
        ax.set_xscale("log")  # budgets are swept in multiples
    ax.set_xlabel("mean generated tokens per sample")
    ax.set_ylabel("pass@1")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def controls_markdown(rows: list[dict], out_dir: str | Path, name: str = "controls_accuracy_vs_tokens.png",
                      paired: str = "") -> tuple[str, list[Path]]:
    """The section's markdown and images (the plot is written into ``out_dir``); ``paired``: what the paired
    intervals say about the reading's settings, shown under it."""
    curves, trained = split_rows(rows)
    if not curves and not trained:
        raise ValueError("controls section: no rows to show")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    image = plot_controls(curves, trained, out_dir / name)
    parts = [reading(curves, trained)] + ([paired] if paired else [])
    if curves:
        rng = common_range(curves)
        parts.append("Area under each accuracy-vs-tokens curve: trapezoid of pass@1 over mean tokens divided by the "
                     "curve's token range (its mean pass@1 over the tokens it spans); "
                     + ("the last column compares every curve on the token range all of them cover."
                        if rng else "the curves share no token range, so areas are over each curve's own range.")
                     + "\n\n" + auc_table(curves))
    if any(r.get("seeds", 1) > 1 for r in rows):
        parts.append(seeds_table(rows))
    if trained:
        parts.append("Trained students (no control): " + "; ".join(
            f"{r.get('student') or r['experiment']} pass@1 {r['pass@1']:.3f} at {r['mean_tokens']:.0f} tokens"
            for r in trained) + ".")
    return "\n\n".join(parts), [image]


def seeds_table(rows: list[dict]) -> str:
    """Every setting's numbers over its replicate seeds: mean ± seed SD [hierarchical 95% CI]."""
    lines = [f"Over {rows[0].get('seeds', 1)} seeds (mean ± seed SD [95% CI over problems and seeds]):", "",
             "| setting | pass@1 | mean tokens |", "|---|---|---|"]
    lines += [f"| {r['experiment']} | {cell(r, 'pass@1')} | {cell(r, 'mean_tokens', 0)} |" for r in rows]
    return "\n".join(lines)


def write_controls_section(rows: list[dict], out_dir: str | Path, paired: str = "") -> Path:
    """Write ``<out_dir>/controls_section.json`` (for ``tracewise report section_files=[...]``)."""
    body, images = controls_markdown(rows, out_dir, paired=paired)
    return write_section_file(Path(out_dir) / "controls_section.json", TITLE, body, images)


def has_control_rows(rows: list[dict]) -> bool:
    return any((r.get("control") or "none") != "none" for r in rows)


def sections(rows: list[dict], out_dir: str | Path) -> list[tuple[str, str, list[Path]]]:
    """``(title, markdown, images)`` per benchmark (a chart compares settings on one benchmark);
    ``tracewise report`` adds these when its summaries hold control rows."""
    by_bench: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_bench[r["benchmark"]].append(r)
    out = []
    for i, (bench, group) in enumerate(sorted(by_bench.items())):
        if not has_control_rows(group):
            continue
        body, images = controls_markdown(group, out_dir, f"controls_accuracy_vs_tokens_{i}.png")
        out.append((TITLE + (f" ({bench})" if len(by_bench) > 1 else ""), body, images))
    return out


@register_section("controls")
def controls_sections(rows: list[dict], out_dir: Path, existing: list[Section]) -> list[Section]:
    """The report's "Test-time controls" section(s) when the summaries hold control rows and no study
    section with that title is already in the report."""
    if not has_control_rows(rows) or any(s.title.startswith(TITLE) for s in existing):
        return []
    return [Section(title, body, images) for title, body, images in sections(rows, out_dir)]
