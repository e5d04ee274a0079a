"""Accuracy and token-cost metrics over evaluation ``Sample`` records, and the summary.json file.

Everything here is a pure function of its inputs (the bootstrap takes an explicit seed), so a
summary can be recomputed from ``samples.jsonl`` and compared byte for byte.

summary.json contract (extra keys allowed)::

    {"rows": [{"experiment": str, "benchmark": str, "n": int, "pass@1": float, "pass@8": float,
               "maj@8": float, "mean_tokens": float, "mean_thinking_tokens": float,
               "mean_answer_tokens": float, "ci95": {"pass@1": [lo, hi]}}]}
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

from tracewise.core.records import EvalSummary, Sample
from tracewise.core.store import atomic_write_text

log = logging.getLogger(__name__)

# The headline k of the summary row; the key is fixed by the contract even when fewer samples exist.
MAIN_K = 8

# Required row keys and the types they must hold (bool is rejected separately: it is an int subclass).
ROW_FIELDS: dict[str, type | tuple[type, ...]] = {
    "experiment": str,
    "benchmark": str,
    "n": int,
    "pass@1": (int, float),
    "pass@8": (int, float),
    "maj@8": (int, float),
    "mean_tokens": (int, float),
    "mean_thinking_tokens": (int, float),
    "mean_answer_tokens": (int, float),
    "ci95": dict,
}
ACCURACY_FIELDS = ("pass@1", "pass@8", "maj@8")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct (Chen et al. 2021).

    Uses the product form ``1 - prod_{i=n-c+1}^{n} (1 - k/i)`` instead of binomial coefficients,
    which overflow or lose precision for large ``n``.
    """
    if n < 1:
        raise ValueError(f"pass_at_k: n must be >= 1 sample, got n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: c must be between 0 and n={n}, got c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: k must be between 1 and n={n} (cannot draw k={k} of {n} samples)")
    if n - c < k:
        return 1.0  # every size-k subset contains a correct sample
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def maj_at_k(preds: Sequence[str | None], correct: Sequence[bool], k: int,
             truncated: Sequence[bool] | None = None) -> float:
    """Majority vote over the first ``k`` samples: the expected correctness of the voted answer.

    Only samples with a final answer vote: a sample whose answer is ``None`` or that was
    ``truncated`` (hit the token limit; its ``pred`` is whatever verify found anywhere in the
    unfinished text, not a final answer) casts no vote. If none vote the result is 0.0.
    Answers are compared as strings; an answer counts as correct when any of its votes was judged
    correct (equal strings get equal verdicts; only a comparison that missed its deadline can
    differ). A tie between answers is broken uniformly at random, in expectation: the result is
    the fraction of the tied answers that are correct (a 2-2 tie between a right and a wrong
    answer gives 0.5). So the result depends only on the multiset of (answer, verdict, truncated)
    among the first ``k`` samples, never on their order.
    """
    if len(preds) != len(correct):
        raise ValueError(f"maj_at_k: {len(preds)} predictions but {len(correct)} correctness flags")
    if truncated is not None and len(truncated) != len(preds):
        raise ValueError(f"maj_at_k: {len(preds)} predictions but {len(truncated)} truncation flags")
    if not 1 <= k <= len(preds):
        raise ValueError(f"maj_at_k: k must be between 1 and the number of samples ({len(preds)}), got {k}")
    cut = truncated[:k] if truncated is not None else [False] * k
    votes = [(p, bool(ok)) for p, ok, t in zip(preds[:k], correct[:k], cut) if p is not None and not t]
    if not votes:
        return 0.0
    counts = Counter(p for p, _ in votes)
    best = max(counts.values())
    winners = {p for p, c in counts.items() if c == best}
    right = {p for p, ok in votes if ok and p in winners}
    return len(right) / len(winners)


def _truncated(s: Sample) -> bool:
    """Whether a sample hit its token limit (its answer, if any, is not a final answer)."""
    return s.finish_reason == "length" or s.reason == "truncated"


def group_by_problem(samples: Sequence[Sample]) -> dict[str, list[Sample]]:
    """Samples grouped per problem, each group ordered by ``sample_idx`` (so "first k" is stable)."""
    groups: dict[str, list[Sample]] = defaultdict(list)
    seen: set[tuple[str, int]] = set()
    for s in samples:
        if (s.problem_id, s.sample_idx) in seen:
            raise ValueError(
                f"duplicate sample {s.problem_id!r} #{s.sample_idx}: was a samples file merged twice?"
            )
        seen.add((s.problem_id, s.sample_idx))
        groups[s.problem_id].append(s)
    return {pid: sorted(g, key=lambda s: s.sample_idx) for pid, g in sorted(groups.items())}


def level_breakdown(samples: Sequence[Sample]) -> dict[str, dict[str, float]]:
    """``{"tokens_by_level": {level: mean tokens}, "pass@1_by_level": {level: pass@1}}``.

    Levels are string keys so the dict survives a JSON round trip unchanged. pass@1 at a level is
    the mean over that level's problems of each problem's fraction correct.
    """
    tokens: dict[int, list[int]] = defaultdict(list)
    per_problem: dict[int, list[float]] = defaultdict(list)
    for group in group_by_problem(samples).values():
        level = group[0].level  # a problem's level is a property of the problem, not the sample
        tokens[level].extend(s.n_tokens for s in group)
        per_problem[level].append(float(np.mean([s.correct for s in group])))
    return {
        "tokens_by_level": {str(lv): float(np.mean(tokens[lv])) for lv in sorted(tokens)},
        "pass@1_by_level": {str(lv): float(np.mean(per_problem[lv])) for lv in sorted(tokens)},
    }


def _bootstrap_ci(values: np.ndarray, weights: np.ndarray, idx: np.ndarray) -> list[float]:
    """95% percentile CI of a weighted mean over resampled problems (``idx``: n_boot × n_problems)."""
    stats = (values[idx] * weights[idx]).sum(axis=1) / weights[idx].sum(axis=1)
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return [float(lo), float(hi)]


def summarize(
    samples: Sequence[Sample],
    experiment: str,
    benchmark: str,
    ks: Sequence[int] = (1, 8),
    n_boot: int = 1000,
    seed: int = 0,
) -> EvalSummary:
    """Summarise one experiment's samples on one benchmark into an ``EvalSummary``.

    pass@k uses ``min(k, n)`` where ``n`` is the smallest number of samples any problem has;
    when that clips k=8, ``extra["pass@8_k"]`` holds the k actually used and ``extra["note"]``
    says so. Every k in ``ks`` other than 1 and 8 is reported as ``extra["pass@k"]``. Token means
    are over all samples; CIs resample *problems* (not samples), since samples of one problem are
    correlated.
    """
    if not samples:
        raise ValueError(f"summarize({experiment!r}, {benchmark!r}): no samples")
    if any(not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"summarize: ks must be positive integers, got {list(ks)}")
    if n_boot < 1:
        raise ValueError(f"summarize: n_boot must be >= 1, got {n_boot}")
    benches = sorted({s.benchmark for s in samples})
    if len(benches) > 1:
        raise ValueError(f"summarize({experiment!r}): samples mix benchmarks {benches}; summarise each separately")

    groups = list(group_by_problem(samples).values())
    n_min = min(len(g) for g in groups)
    k_main = min(MAIN_K, n_min)

    def per_problem_pass(k: int) -> np.ndarray:
        return np.array([pass_at_k(len(g), sum(s.correct for s in g), min(k, n_min)) for g in groups])

    pass1 = per_problem_pass(1)
    pass_main = per_problem_pass(k_main)
    maj = np.array([maj_at_k([s.pred for s in g], [s.correct for s in g], k_main, [_truncated(s) for s in g])
                    for g in groups])
    tok_sum = np.array([sum(s.n_tokens for s in g) for g in groups], dtype=float)
    counts = np.array([len(g) for g in groups], dtype=float)

    all_tokens = np.array([s.n_tokens for s in samples], dtype=float)
    mean_tokens = float(all_tokens.mean())
    wrong_tokens = [s.n_tokens for s in samples if not s.correct]
    truncated = [_truncated(s) for s in samples]

    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(groups), size=(n_boot, len(groups)))
    ones = np.ones(len(groups))
    ci95 = {
        "pass@1": _bootstrap_ci(pass1, ones, idx),
        "pass@8": _bootstrap_ci(pass_main, ones, idx),
        # per-problem token means weighted by sample count = mean over the resampled samples
        "mean_tokens": _bootstrap_ci(tok_sum / counts, counts, idx),
    }

    pass1_mean = float(pass1.mean())
    extra: dict = {
        "acc_per_1k_tokens": pass1_mean / mean_tokens * 1000 if mean_tokens > 0 else None,
        "mean_tokens_wrong": float(np.mean(wrong_tokens)) if wrong_tokens else None,
        "truncated_rate": float(np.mean(truncated)),
        "n_samples": len(samples),
        "pass@8_k": k_main,
        **level_breakdown(samples),
    }
    if k_main < MAIN_K:
        extra["note"] = (
            f"only {n_min} samples per problem: pass@8 and maj@8 report pass@{k_main} and maj@{k_main}"
        )
        log.warning("%s/%s: %s", experiment, benchmark, extra["note"])
    for k in ks:
        if k not in (1, MAIN_K):
            extra[f"pass@{k}"] = float(per_problem_pass(k).mean())

    return EvalSummary(
        experiment=experiment,
        benchmark=benchmark,
        n=len(groups),
        pass_at_1=pass1_mean,
        pass_at_8=float(pass_main.mean()),
        maj_at_8=float(maj.mean()),
        mean_tokens=mean_tokens,
        mean_thinking_tokens=float(np.mean([s.n_thinking_tokens for s in samples])),
        mean_answer_tokens=float(np.mean([s.n_answer_tokens for s in samples])),
        ci95=ci95,
        extra=extra,
    )


def validate_row(row: object, where: str) -> dict:
    """Check one summary row against the contract; errors name ``where`` (file and row)."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected an object, got {type(row).__name__}")
    for key, typ in ROW_FIELDS.items():
        if key not in row:
            raise ValueError(f"{where}: missing required key {key!r}")
        value = row[key]
        if isinstance(value, bool) or not isinstance(value, typ):
            raise ValueError(f"{where}: key {key!r} has wrong type {type(value).__name__}: {value!r}")
    for key in ACCURACY_FIELDS:
        if not 0.0 <= row[key] <= 1.0:
            raise ValueError(f"{where}: {key!r}={row[key]!r} is not an accuracy in [0, 1]")
    if row["n"] < 1:
        raise ValueError(f"{where}: 'n' must be >= 1 problem, got {row['n']}")
    ci = row["ci95"].get("pass@1")
    if (
        not isinstance(ci, list)
        or len(ci) != 2
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in ci)
        or ci[0] > ci[1]
    ):
        raise ValueError(f"{where}: 'ci95' must hold 'pass@1': [lo, hi] with lo <= hi, got {ci!r}")
    return row


def write_summary(path: str | os.PathLike, rows: list[dict]) -> Path:
    """Validate ``rows`` and write ``{"rows": rows}`` atomically (``core.store.atomic_write_text``)."""
    path = Path(path)
    for i, row in enumerate(rows):
        validate_row(row, f"{path}: row {i}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, json.dumps({"rows": rows}, indent=2, sort_keys=True) + "\n")


def read_summary(path: str | os.PathLike) -> list[dict]:
    """Read and validate a summary.json; every error names the file and the offending row."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: summary file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise ValueError(f'{path}: expected {{"rows": [...]}} at top level')
    rows = data["rows"]
    for i, row in enumerate(rows):
        name = row.get("experiment") if isinstance(row, dict) else None
        validate_row(row, f"{path}: row {i}" + (f" ({name})" if name else ""))
    return rows
