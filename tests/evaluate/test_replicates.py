"""Replicate aggregation and paired comparisons: hand-computed expectations, not the module's formula."""

import numpy as np
import pytest

from tracewise.core.records import Sample
from tracewise.evaluate.replicates import aggregate, compare, problem_table, seed_list


def _s(pid: str, i: int, correct: bool, tokens: int, exp: str = "e") -> Sample:
    return Sample(experiment=exp, benchmark="b", problem_id=pid, sample_idx=i, text="", thinking="", answer_text="",
                  pred="1" if correct else "2", correct=correct, reason="", n_tokens=tokens,
                  n_thinking_tokens=tokens, n_answer_tokens=0)


def _table(spec: dict[str, list[tuple[bool, int]]], exp: str = "e"):
    return problem_table([_s(pid, i, c, t, exp) for pid, rows in spec.items() for i, (c, t) in enumerate(rows)], k=2)


def test_problem_table_hand_values():
    # p1: 1 of 2 correct → pass@1 0.5, pass@2 1.0; p2: 0 of 2 → 0, 0. Tokens: p1 10+30, p2 20+20.
    t = _table({"p1": [(True, 10), (False, 30)], "p2": [(False, 20), (False, 20)]})
    assert t.problem_ids == ("p1", "p2")
    assert list(t.values["pass@1"]) == [0.5, 0.0]
    assert list(t.values["pass@8"]) == [1.0, 0.0]
    assert list(t.tok_sum) == [40.0, 40.0] and list(t.count) == [2.0, 2.0]


def test_aggregate_means_and_sd_over_seeds():
    # seed 0: pass@1 per problem (1, 0) → 0.5; seed 1: (1, 1) → 1.0. Mean 0.75, SD (ddof 1) = 0.3536.
    s0 = _table({"p1": [(True, 10), (True, 10)], "p2": [(False, 30), (False, 30)]})
    s1 = _table({"p1": [(True, 10), (True, 10)], "p2": [(True, 10), (True, 10)]})
    agg = aggregate([s0, s1], n_boot=500)
    assert agg["seeds"] == 2 and agg["n"] == 2
    assert agg["pass@1"] == pytest.approx(0.75)
    assert agg["sd"]["pass@1"] == pytest.approx(0.35355, abs=1e-4)
    # tokens per seed: (10+10+30+30)/4 = 20 and 10 → mean 15
    assert agg["mean_tokens"] == pytest.approx(15.0)
    lo, hi = agg["ci95"]["pass@1"]
    assert 0.0 <= lo <= 0.75 <= hi <= 1.0


def test_single_seed_has_no_sd_and_constant_data_has_zero_width_interval():
    t = _table({"p1": [(True, 7), (True, 7)], "p2": [(True, 7), (True, 7)]})
    agg = aggregate([t], n_boot=200)
    assert agg["sd"]["pass@1"] is None
    assert agg["ci95"]["pass@1"] == [1.0, 1.0]
    assert agg["ci95"]["mean_tokens"] == [7.0, 7.0]


def test_seed_noise_widens_the_interval():
    # Same problem-level spread in every seed → problem-only interval; seeds that disagree widen it.
    rng = np.random.default_rng(1)
    def seed_table(p_correct: float):
        return _table({f"p{i}": [(bool(rng.random() < p_correct), 10)] * 2 for i in range(60)})
    stable = [seed_table(0.5) for _ in range(3)]
    unstable = [seed_table(p) for p in (0.2, 0.5, 0.8)]
    w = lambda agg: agg["ci95"]["pass@1"][1] - agg["ci95"]["pass@1"][0]
    assert w(aggregate(unstable, n_boot=1000)) > 1.5 * w(aggregate(stable, n_boot=1000))


def test_paired_difference_and_token_ratio_hand_case():
    # a is right on every problem, b on none → difference exactly +1, interval [1, 1]; b uses 1/4 the tokens.
    a = [_table({f"p{i}": [(True, 40), (True, 40)] for i in range(5)}, "a")]
    b = [_table({f"p{i}": [(False, 10), (False, 10)] for i in range(5)}, "b")]
    cmp = {c.metric: c for c in compare("a", a, "b", b, n_boot=300)}
    assert cmp["pass@1"].estimate == 1.0 and cmp["pass@1"].ci95 == (1.0, 1.0)
    assert cmp["pass@1"].distinguishable
    assert "a is higher" in cmp["pass@1"].reading()
    assert cmp["token_ratio"].estimate == pytest.approx(0.25)
    assert "fewer tokens, distinguishable" in cmp["token_ratio"].reading()


def test_identical_students_are_not_distinguishable():
    spec = {f"p{i}": [(i % 2 == 0, 10), (i % 3 == 0, 12)] for i in range(40)}
    a, b = [_table(spec, "a")], [_table(spec, "b")]
    for c in compare("a", a, "b", b, n_boot=300):
        assert not c.distinguishable
        assert "not distinguishable" in c.reading()
        assert "40 problems × 1 seed" in c.reading()


def test_pairing_is_what_narrows_the_interval():
    # b = a with one extra correct sample on every problem: paired difference is exactly -0.5 everywhere.
    rng = np.random.default_rng(0)
    base = [bool(rng.random() < 0.5) for _ in range(50)]
    a = [_table({f"p{i}": [(base[i], 10), (False, 10)] for i in range(50)}, "a")]
    b = [_table({f"p{i}": [(base[i], 10), (True, 10)] for i in range(50)}, "b")]
    c = compare("a", a, "b", b, metrics=("pass@1",), n_boot=300)[0]
    assert c.estimate == pytest.approx(-0.5) and c.ci95 == pytest.approx((-0.5, -0.5))


def test_misaligned_inputs_are_rejected():
    a = [_table({"p1": [(True, 1)]})]
    b = [_table({"p2": [(True, 1)]})]
    with pytest.raises(ValueError, match="different problems"):
        compare("a", a, "b", b)
    with pytest.raises(ValueError, match="seeds"):
        compare("a", a + a, "b", a)


def test_seed_list():
    assert seed_list(3) == [0, 1, 2]
    assert seed_list([5, 7]) == [5, 7]
    for bad in (0, [], [1, 1], True):
        with pytest.raises(ValueError):
            seed_list(bad)
