"""Why pass@1 and pass@k can disagree: how each student's errors spread over problems.

Two students with the same pass@1 can have very different pass@8. If a student's mistakes are
per-sample noise (any problem is solved with probability ≈ p on each try), eight tries almost always
find the answer; if they are problem-specific (some problems are never solved, others always),
pass@8 stays close to pass@1. The quickstart showed exactly this split between the verbose and the
concise student, so the report shows the per-problem distribution and computes the reading from it
instead of leaving users to guess.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from tracewise.evaluate.metrics import group_by_problem
from tracewise.core.records import Sample


def consistency(samples: Sequence[Sample]) -> dict:
    """Per-problem solve counts of one student's samples and what independent errors would predict.

    ``independent_pass@n`` is 1 − (1 − pass@1)^n, the pass@n of a student whose every sample succeeds
    with probability pass@1 regardless of the problem; the observed pass@n falling short of it
    measures how problem-specific the errors are.
    """
    groups = list(group_by_problem(samples).values())
    if not groups:
        raise ValueError("consistency: no samples")
    n = min(len(g) for g in groups)
    counts = [sum(bool(s.correct) for s in g[:n]) for g in groups]
    p = float(np.mean([c / n for c in counts]))
    return {
        "n_problems": len(groups),
        "n": n,
        "pass@1": p,
        "pass@n": float(np.mean([c > 0 for c in counts])),
        "independent_pass@n": 1.0 - (1.0 - p) ** n,
        "never": float(np.mean([c == 0 for c in counts])),
        "always": float(np.mean([c == n for c in counts])),
        "histogram": {str(k): v for k, v in sorted(Counter(counts).items())},
    }


def consistency_table(stats: dict[str, dict]) -> str:
    """Markdown table, one row per experiment."""
    lines = [
        "| experiment | problems | pass@1 | pass@n observed | pass@n if errors were independent | solved in 0/n | solved in n/n |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in stats.items():
        lines.append(
            f"| {name} | {s['n_problems']} | {s['pass@1']:.3f} | {s['pass@n']:.3f} (n={s['n']}) | "
            f"{s['independent_pass@n']:.3f} | {s['never']:.0%} | {s['always']:.0%} |"
        )
    return "\n".join(lines)


def consistency_reading(stats: dict[str, dict]) -> str:
    """One line, computed: which student's errors are most problem-specific and what that does to pass@n."""
    if len(stats) < 2:
        return "Reading: one student only; nothing to compare."
    # shortfall of observed pass@n below the independent-errors prediction: 0 = pure noise
    short = {k: s["independent_pass@n"] - s["pass@n"] for k, s in stats.items()}
    most, least = max(short, key=short.get), min(short, key=short.get)
    a, b = stats[most], stats[least]
    return (
        f"Reading: {most}'s errors are the most problem-specific (it never solves {a['never']:.0%} of problems; "
        f"pass@{a['n']} {a['pass@n']:.2f} vs {a['independent_pass@n']:.2f} if its errors were independent), "
        f"{least}'s the least ({b['never']:.0%} never solved; {b['pass@n']:.2f} vs {b['independent_pass@n']:.2f}) — "
        f"so pass@1 {a['pass@1']:.2f} vs {b['pass@1']:.2f} becomes pass@{a['n']} {a['pass@n']:.2f} vs {b['pass@n']:.2f}."
    )


def plot_solve_histogram(stats: dict[str, dict], path: Path) -> Path:
    """Grouped bars: share of problems solved in k of n samples, per experiment."""
    fig = Figure(figsize=(7, 3.6))
    ax = fig.subplots()
    n = max(s["n"] for s in stats.values())
    width = 0.8 / max(1, len(stats))
    for i, (name, s) in enumerate(stats.items()):
        xs = np.arange(n + 1) + i * width
        ys = [s["histogram"].get(str(k), 0) / s["n_problems"] for k in range(n + 1)]
        ax.bar(xs, ys, width=width, label=name)
    ax.set_xticks(np.arange(n + 1) + 0.4 - width / 2)
    ax.set_xticklabels([str(k) for k in range(n + 1)])
    ax.set_xlabel("samples correct (of n) per problem")
    ax.set_ylabel("share of problems")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
