"""The report's own plots: accuracy against tokens, and training loss curves."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.lines import Line2D


def plot_accuracy_vs_tokens(rows: list[dict], path: Path) -> Path:
    """Scatter of pass@1 (circles) and pass@8 (triangles) against mean tokens, with CI bars."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    multi = len({r["benchmark"] for r in rows}) > 1
    for i, r in enumerate(rows):
        color = f"C{i % 10}"
        x = r["mean_tokens"]
        for key, marker in (("pass@1", "o"), ("pass@8", "^")):
            y = r[key]
            ci = r["ci95"].get(key)
            # a percentile CI need not straddle the point; clip so matplotlib gets non-negative bars
            yerr = [[max(0.0, y - ci[0])], [max(0.0, ci[1] - y)]] if ci else None
            ax.errorbar([x], [y], yerr=yerr, fmt=marker, color=color, capsize=3)
        label = f"{r['experiment']} ({r['benchmark']})" if multi else r["experiment"]
        ax.annotate(label, (x, r["pass@1"]), textcoords="offset points", xytext=(6, -10), fontsize=8)
    if all(r["mean_tokens"] > 0 for r in rows):
        ax.set_xscale("log")  # teachers differ by multiples in length, so ratios read better on a log axis
    ax.set_xlabel("mean tokens per sample")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    handles = [Line2D([], [], marker=m, ls="", color="k", label=k) for k, m in (("pass@1", "o"), ("pass@8", "^"))]
    ax.legend(handles=handles, loc="lower right")
    return _save(fig, path)


def plot_learning_curves(curves: list[tuple[str, list[float], list[float]]], path: Path) -> Path:
    """Training loss against step, one line per run."""
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    for label, steps, losses in curves:
        ax.plot(steps, losses, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (log scale)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
