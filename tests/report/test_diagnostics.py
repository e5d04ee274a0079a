"""Per-problem consistency: hand-computed tables and a reading that follows the numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracewise.report.diagnostics import consistency, consistency_reading, plot_solve_histogram
from tracewise.core.records import Sample


def _samples(exp: str, per_problem: list[list[bool]]) -> list[Sample]:
    out = []
    for p, flags in enumerate(per_problem):
        for i, ok in enumerate(flags):
            out.append(Sample(exp, "world", f"p{p}", i, "", "", "", "1", ok, "correct" if ok else "wrong", 10, 8, 2))
    return out


# noisy: every problem solved 1 of 2 times; systematic: one problem always, one never
NOISY = _samples("noisy", [[True, False], [False, True]])
SYSTEMATIC = _samples("systematic", [[True, True], [False, False]])


def test_consistency_hand_computed() -> None:
    s = consistency(NOISY)
    assert s["pass@1"] == 0.5 and s["pass@n"] == 1.0 and s["n"] == 2
    assert s["independent_pass@n"] == pytest.approx(0.75)  # 1 - 0.5**2
    assert s["never"] == 0.0 and s["always"] == 0.0 and s["histogram"] == {"1": 2}
    t = consistency(SYSTEMATIC)
    assert t["pass@1"] == 0.5 and t["pass@n"] == 0.5
    assert t["never"] == 0.5 and t["always"] == 0.5 and t["histogram"] == {"0": 1, "2": 1}


def test_reading_names_the_problem_specific_student(tmp_path: Path) -> None:
    stats = {"noisy": consistency(NOISY), "systematic": consistency(SYSTEMATIC)}
    line = consistency_reading(stats)
    assert line.startswith("Reading: systematic's errors are the most problem-specific")
    assert "noisy's the least" in line
    swapped = {"a": stats["noisy"], "b": stats["noisy"] | {"pass@n": 0.2}}
    assert "b's errors are the most" in consistency_reading(swapped)
    assert plot_solve_histogram(stats, tmp_path / "h.png").stat().st_size > 1000


def test_empty_samples_rejected() -> None:
    with pytest.raises(ValueError, match="no samples"):
        consistency([])
