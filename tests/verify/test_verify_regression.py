"""The hand-labelled regression table (tests/fixtures/verify_regression.jsonl): tracewise's verdict on every
row is the expected one. ``python scripts/verify_agreement.py table`` prints the same agreement next to
math-verify alone's."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from tracewise.verify import verify

TABLE = Path(__file__).parents[1] / "fixtures" / "verify_regression.jsonl"
ROWS = [json.loads(line) for line in TABLE.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_table_covers_the_decided_categories() -> None:
    cats = Counter(r["category"] for r in ROWS)
    assert len(ROWS) >= 60
    for cat in ("self_correction", "multi_box", "hedge", "identical_string", "sum_gold", "or_and_set", "r1_trace"):
        assert cats[cat] >= 3, cat
    assert {r["expected"] for r in ROWS} == {True, False}


@pytest.mark.parametrize("row", ROWS, ids=[f"{i}-{r['category']}" for i, r in enumerate(ROWS)])
def test_verdict_matches_the_table(row: dict) -> None:
    result = verify(row["pred"], row["gold"])
    assert result.correct is row["expected"], (row, result)
