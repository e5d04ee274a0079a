"""Replicate seeds as an axis: per-experiment intervals over seeds *and* problems, and paired comparisons.

A miniature student's accuracy moves with its training seed about as much as with the problems it
is tested on, so an interval over problems alone (``metrics.summarize``) is too narrow to compare two
students. Here every statistic comes from a **hierarchical bootstrap**: resample the seeds with
replacement, then, inside each drawn seed, resample the problems with replacement, and recompute the
statistic on that draw. With one seed it reduces to the ordinary problem bootstrap.

Comparisons are **paired**: two experiments are evaluated on the same problems with the same seed
list, so the per-problem difference ``a[s, p] - b[s, p]`` is bootstrapped (paired over problems within
a seed, then across seeds). A difference is called distinguishable from zero only when its 95%
interval excludes 0; the reading sentences below are derived from that rule and nothing else.

Inputs are plain per-problem tables built from ``Sample`` records, so everything is a pure function of
``samples.jsonl`` files and an explicit bootstrap seed.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from tracewise.core.records import Sample, read_records
from tracewise.core.seeds import seed_list  # noqa: F401  (re-exported: the replicate seed list)
from tracewise.evaluate.metrics import MAIN_K, _truncated, group_by_problem, maj_at_k, pass_at_k, read_summary

#: Per-problem columns of a ``ProblemTable``; accuracy columns are means over problems, token columns
#: are weighted by the number of samples (``count``) so the statistic is the mean over samples.
ACCURACY = ("pass@1", "pass@8", "maj@8")
TOKENS = ("mean_tokens",)


@dataclass(frozen=True)
class ProblemTable:
    """One experiment, one seed: aligned per-problem arrays (problem ids sorted)."""

    problem_ids: tuple[str, ...]
    values: Mapping[str, np.ndarray]  # metric -> (n_problems,)
    tok_sum: np.ndarray  # total output tokens of the problem's samples
    count: np.ndarray  # samples per problem


def problem_table(samples: Sequence[Sample], k: int = MAIN_K) -> ProblemTable:
    """Per-problem pass@1, pass@k (k clipped to the smallest sample count), maj@k and token sums."""
    if not samples:
        raise ValueError("problem_table: no samples")
    groups = group_by_problem(samples)
    ids = tuple(sorted(groups))
    n_min = min(len(g) for g in groups.values())
    kk = min(k, n_min)
    rows = [groups[i] for i in ids]
    values = {
        "pass@1": np.array([pass_at_k(len(g), sum(s.correct for s in g), 1) for g in rows]),
        "pass@8": np.array([pass_at_k(len(g), sum(s.correct for s in g), kk) for g in rows]),
        "maj@8": np.array([maj_at_k([s.pred for s in g], [s.correct for s in g], kk, [_truncated(s) for s in g])
                           for g in rows]),
    }
    tok_sum = np.array([sum(s.n_tokens for s in g) for g in rows], dtype=float)
    count = np.array([len(g) for g in rows], dtype=float)
    return ProblemTable(ids, values, tok_sum, count)


def _aligned(tables: Sequence[ProblemTable], where: str) -> tuple[str, ...]:
    ids = tables[0].problem_ids
    for t in tables[1:]:
        if t.problem_ids != ids:
            missing = sorted(set(ids) ^ set(t.problem_ids))[:5]
            raise ValueError(f"{where}: seeds/experiments were evaluated on different problems (e.g. {missing})")
    return ids


def _draw(n_seeds: int, n_problems: int, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hierarchical resampling indices: seeds (n_boot, S), then problems inside each drawn seed (n_boot, S, P)."""
    rng = np.random.default_rng(seed)
    s_idx = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    p_idx = rng.integers(0, n_problems, size=(n_boot, n_seeds, n_problems))
    return s_idx, p_idx


def _ci(stats: np.ndarray) -> list[float]:
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return [float(lo), float(hi)]


def _matrix(tables: Sequence[ProblemTable], metric: str) -> np.ndarray:
    return np.stack([t.values[metric] for t in tables])  # (S, P)


def _boot_mean(x: np.ndarray, s_idx: np.ndarray, p_idx: np.ndarray) -> np.ndarray:
    """Mean of x (S, P) for every bootstrap draw → (n_boot,)."""
    return x[s_idx[..., None], p_idx].mean(axis=(1, 2))


def _boot_ratio(num: np.ndarray, den: np.ndarray, s_idx: np.ndarray, p_idx: np.ndarray) -> np.ndarray:
    return num[s_idx[..., None], p_idx].sum(axis=(1, 2)) / den[s_idx[..., None], p_idx].sum(axis=(1, 2))


def aggregate(tables: Sequence[ProblemTable], n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean over seeds, seed SD and hierarchical-bootstrap 95% CI for every metric of one experiment.

    Returns ``{"seeds": S, "n": P, metric: mean, "sd": {metric: sd or None}, "ci95": {metric: [lo, hi]}}``;
    the SD is across per-seed means (None with one seed).
    """
    if not tables:
        raise ValueError("aggregate: no seeds")
    ids = _aligned(tables, "aggregate")
    s_idx, p_idx = _draw(len(tables), len(ids), n_boot, seed)
    out: dict = {"seeds": len(tables), "n": len(ids), "sd": {}, "ci95": {}}
    for m in ACCURACY:
        x = _matrix(tables, m)
        per_seed = x.mean(axis=1)
        out[m] = float(per_seed.mean())
        out["sd"][m] = float(per_seed.std(ddof=1)) if len(tables) > 1 else None
        out["ci95"][m] = _ci(_boot_mean(x, s_idx, p_idx))
    tok = np.stack([t.tok_sum for t in tables])
    cnt = np.stack([t.count for t in tables])
    per_seed_tok = tok.sum(axis=1) / cnt.sum(axis=1)
    out["mean_tokens"] = float(per_seed_tok.mean())
    out["sd"]["mean_tokens"] = float(per_seed_tok.std(ddof=1)) if len(tables) > 1 else None
    out["ci95"]["mean_tokens"] = _ci(_boot_ratio(tok, cnt, s_idx, p_idx))
    return out


@dataclass(frozen=True)
class Comparison:
    """``a - b`` for an accuracy metric (or ``b / a`` token ratio) with its paired 95% interval."""

    metric: str
    a: str
    b: str
    estimate: float
    ci95: tuple[float, float]
    null: float  # the value meaning "no effect": 0 for differences, 1 for ratios
    n_problems: int
    n_seeds: int

    @property
    def distinguishable(self) -> bool:
        lo, hi = self.ci95
        return not (lo <= self.null <= hi)

    def reading(self) -> str:
        """One sentence that says only what the interval supports."""
        lo, hi = self.ci95
        size = f"{self.n_problems} problems × {self.n_seeds} seed{'s' if self.n_seeds != 1 else ''}"
        if self.metric == "token_ratio":
            head = f"{self.b} uses {self.estimate:.2f}× the tokens of {self.a} [95% CI {lo:.2f}, {hi:.2f}]"
            if not self.distinguishable:
                return f"{head}: token counts not distinguishable at this size ({size})."
            return f"{head}: {'fewer' if self.estimate < 1 else 'more'} tokens, distinguishable ({size})."
        head = (f"{self.metric}: {self.a} − {self.b} = {self.estimate * 100:+.1f} points "
                f"[95% CI {lo * 100:+.1f}, {hi * 100:+.1f}]")
        if not self.distinguishable:
            return f"{head}: not distinguishable from zero at this size ({size})."
        better = self.a if self.estimate > 0 else self.b
        return f"{head}: {better} is higher, distinguishable from zero ({size})."

    def to_dict(self) -> dict:
        return {"metric": self.metric, "a": self.a, "b": self.b, "estimate": self.estimate,
                "ci95": list(self.ci95), "distinguishable": self.distinguishable,
                "n_problems": self.n_problems, "seeds": self.n_seeds, "reading": self.reading()}


def compare(a_name: str, a: Sequence[ProblemTable], b_name: str, b: Sequence[ProblemTable],
            metrics: Sequence[str] = ("pass@1", "pass@8"), n_boot: int = 2000, seed: int = 0) -> list[Comparison]:
    """Paired comparisons of ``a`` vs ``b`` (same seeds in the same order, same problems).

    Accuracy metrics give ``a − b``; ``token_ratio`` gives mean tokens of ``b`` / mean tokens of ``a``
    (so with a = verbose teacher's student, b = concise one, 0.25 means 4× fewer tokens).
    """
    if len(a) != len(b):
        raise ValueError(f"compare({a_name}, {b_name}): {len(a)} vs {len(b)} seeds; pair the same seed list")
    ids = _aligned(list(a) + list(b), f"compare({a_name}, {b_name})")
    s_idx, p_idx = _draw(len(a), len(ids), n_boot, seed)
    out = []
    for m in metrics:
        d = _matrix(a, m) - _matrix(b, m)
        out.append(Comparison(m, a_name, b_name, float(d.mean()), tuple(_ci(_boot_mean(d, s_idx, p_idx))), 0.0,
                              len(ids), len(a)))
    ta, ca = np.stack([t.tok_sum for t in a]), np.stack([t.count for t in a])
    tb, cb = np.stack([t.tok_sum for t in b]), np.stack([t.count for t in b])
    est = (tb.sum() / cb.sum()) / (ta.sum() / ca.sum())
    stats = _boot_ratio(tb, cb, s_idx, p_idx) / _boot_ratio(ta, ca, s_idx, p_idx)
    out.append(Comparison("token_ratio", a_name, b_name, float(est), tuple(_ci(stats)), 1.0, len(ids), len(a)))
    return out


def mean_values(values: list):
    """Mean of numbers, or of dicts of numbers key by key; None when any value is missing. Equal values
    are kept as they are (a budget of 16 in every seed stays the int 16)."""
    if any(v is None for v in values):
        return None
    if all(v == values[0] for v in values):
        return values[0]
    if all(isinstance(v, dict) for v in values):
        keys = set().union(*values)
        return {k: mean_values([v.get(k) for v in values]) for k in sorted(keys)}
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return float(np.mean(values))
    return None


def combine_rows(rows: Sequence[dict], tables: Sequence[ProblemTable], n_boot: int = 2000, seed: int = 0) -> dict:
    """One ``summary.json`` row for several seeds of one experiment (rows and tables in seed order).

    Every key keeps its meaning as the mean over seeds (so readers of one-seed summaries read it the
    same way); ``seeds``, ``sd`` and a hierarchical-bootstrap ``ci95`` are added per metric.
    """
    if not rows or len(rows) != len(tables):
        raise ValueError(f"combine_rows: {len(rows)} rows for {len(tables)} seeds")
    out = {k: mean_values([r.get(k) for r in rows]) for k in rows[0] if k not in ("ci95", "n", "note")}
    agg = aggregate(tables, n_boot=n_boot, seed=seed)
    out.update({m: agg[m] for m in (*ACCURACY, *TOKENS)})
    out.update(n=agg["n"], seeds=agg["seeds"], sd=agg["sd"], ci95=agg["ci95"])
    if "n_samples" in out:
        out["n_samples"] = int(sum(r.get("n_samples", 0) for r in rows))
    return out


def cell(row: dict, metric: str, digits: int = 3) -> str:
    """``mean ± seed SD [95% CI]`` of one metric of a row (no ± with one seed, no [..] without an interval)."""
    text = f"{row[metric]:.{digits}f}"
    sd = (row.get("sd") or {}).get(metric)
    ci = (row.get("ci95") or {}).get(metric)
    if sd is not None:
        text += f" ± {sd:.{digits}f}"
    if ci:
        text += f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"
    return text


def combine_runs(per_seed: Sequence[Sequence[str | Path]], n_boot: int = 2000, seed: int = 0) -> list[dict]:
    """``summary.json`` rows over replicate seeds from eval run dirs: ``per_seed[i]`` holds seed i's run
    dirs (one per benchmark), each with ``summary.json`` and ``samples.jsonl``. Every row of the first
    seed (one per experiment and benchmark; a budget sweep has one per budget) is combined with the
    same row of the other seeds and the per-problem tables of that row's samples (``combine_rows``)."""
    if not per_seed:
        raise ValueError("combine_runs: no seeds")
    rows_by_seed, samples_by_seed = [], []
    for dirs in per_seed:
        rows: dict[tuple[str, str], dict] = {}
        samples: dict[tuple[str, str], list[Sample]] = defaultdict(list)
        for d in dirs:
            for r in read_summary(Path(d) / "summary.json"):
                rows[(r["experiment"], r["benchmark"])] = r
            for smp in read_records(Path(d) / "samples.jsonl", Sample):
                samples[(smp.experiment, smp.benchmark)].append(smp)
        rows_by_seed.append(rows)
        samples_by_seed.append(samples)
    out = []
    for key in rows_by_seed[0]:
        missing = [i for i, rows in enumerate(rows_by_seed) if key not in rows or not samples_by_seed[i].get(key)]
        if missing:
            raise ValueError(f"combine_runs: {key[0]!r} on {key[1]!r} has no row or samples in replicate(s) {missing}")
        out.append(combine_rows([rows[key] for rows in rows_by_seed],
                                [problem_table(samples[key]) for samples in samples_by_seed], n_boot, seed))
    return out
