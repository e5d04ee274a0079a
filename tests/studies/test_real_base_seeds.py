"""study real-base over several seeds: hierarchical paired intervals from run dirs labelled per seed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracewise.core.records import Sample, write_records
from tracewise.evaluate.metrics import summarize, write_summary
from tracewise.studies.real_base import paired_over_seeds, reading, seeds_table
from tracewise.studies.replicated import Replicates

# (problem, tokens, correct) per student and seed: r1 always 4x the tokens of gpt-oss; accuracy equal in
# seed 0 (A right, B wrong for both), r1 better in seed 1 (both right vs A only) -> gpt-oss − r1 = 0, −0.5.
HAND = {
    ("r1", 0): [("A", 100, True), ("B", 200, False)],
    ("gpt-oss", 0): [("A", 25, True), ("B", 50, False)],
    ("r1", 1): [("A", 100, True), ("B", 200, True)],
    ("gpt-oss", 1): [("A", 25, True), ("B", 50, False)],
}


def _eval_dir(root: Path, name: str, seed: int) -> Path:
    exp = f"{name}-s{seed}"
    samples = [Sample(experiment=exp, benchmark="world", problem_id=pid, sample_idx=0, text="", thinking="",
                      answer_text="", pred=None, correct=ok, reason="", n_tokens=tok, n_thinking_tokens=0,
                      n_answer_tokens=tok) for pid, tok, ok in HAND[(name, seed)]]
    d = root / exp
    write_records(d / "samples.jsonl", samples)
    write_summary(d / "summary.json", [summarize(samples, exp, "world", n_boot=50).to_row()])
    return d


def test_two_seeds_labelled_apart_give_hierarchical_paired_numbers(tmp_path):
    names = ["r1", "gpt-oss"]
    runs = {n: [_eval_dir(tmp_path, n, s) for s in (0, 1)] for n in names}
    reps = Replicates(runs, {n: [f"{n}-s0", f"{n}-s1"] for n in names}, n_boot=400)
    p = paired_over_seeds(reps, "r1", "gpt-oss")
    assert p["seeds"] == 2 and p["n_problems"] == 2
    assert p["token_ratio"] == pytest.approx(4.0) and p["token_ratio_ci95"] == pytest.approx([4.0, 4.0])
    assert p["acc_diff"] == pytest.approx(-0.25)  # mean of the per-seed differences 0 and −0.5
    lo, hi = p["acc_diff_ci95"]
    assert -1.0 <= lo <= -0.25 <= hi <= 0.5
    assert "over 2 test problems × 2 seeds" in reading("r1", "gpt-oss", p)
    table = seeds_table(reps, names)
    assert "| r1 | 2 | 0.750 ± 0.354 [" in table  # seeds 0.5 and 1.0: mean 0.75, sample SD 0.354
    assert "| gpt-oss | 2 | 0.500 ± 0.000 [" in table


def test_one_label_for_dirs_labelled_per_seed_is_a_clear_error(tmp_path):
    runs = {"r1": [_eval_dir(tmp_path, "r1", s) for s in (0, 1)]}
    with pytest.raises(ValueError, match="no samples of 'r1-s0'"):
        Replicates(runs, {"r1": "r1-s0"}).tables("r1")
    with pytest.raises(ValueError, match="1 labels for 2 run dirs"):
        Replicates(runs, {"r1": ["r1-s0"]}).tables("r1")


def test_table_says_reused_instead_of_a_cache_hits_seconds():
    from tracewise.studies.real_base import table

    row = {"teacher": "r1", "seed": 0, "pass@1": 0.5, "pass@8": 1.0, "maj@8": 0.5, "mean_tokens": 100.0}
    text = table([{**row, "train_s": None, "eval_s": 3.4}, {**row, "seed": 1, "train_s": 534.2, "eval_s": None}])
    assert "| r1 | 0 | 0.500 | 1.000 | 0.500 | 100.0 | reused | 3 |" in text
    assert "| r1 | 1 | 0.500 | 1.000 | 0.500 | 100.0 | 534 | reused |" in text
