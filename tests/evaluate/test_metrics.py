"""Metrics: pass@k / maj@k against hand values, summarize on hand-made samples, summary.json contract."""

from __future__ import annotations

import json
import math

import pytest

from tracewise.evaluate.metrics import maj_at_k, pass_at_k, read_summary, summarize, write_summary
from tracewise.core.records import Sample


def make_sample(pid: str, idx: int, correct: bool, tokens: int, level: int = 1, pred: str | None = "1",
                finish: str = "stop", exp: str = "e", bench: str = "b") -> Sample:
    return Sample(
        experiment=exp, benchmark=bench, problem_id=pid, sample_idx=idx, text="", thinking="", answer_text="",
        pred=pred, correct=correct, reason="correct" if correct else "wrong", n_tokens=tokens,
        n_thinking_tokens=tokens - 10, n_answer_tokens=10, finish_reason=finish, level=level,
    )


@pytest.mark.parametrize(
    "n,c,k,expected",
    [(8, 0, 1, 0.0), (8, 1, 1, 0.125), (8, 8, 1, 1.0), (8, 0, 8, 0.0), (8, 1, 8, 1.0), (8, 8, 8, 1.0),
     (10, 3, 2, 1 - 21 / 45)],
)
def test_pass_at_k_hand_values(n: int, c: int, k: int, expected: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_matches_binomial_form() -> None:
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)


@pytest.mark.parametrize("n,c,k", [(4, 1, 5), (4, 5, 1), (0, 0, 1), (4, 1, 0), (4, -1, 1)])
def test_pass_at_k_rejects_bad_arguments(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_maj_at_k_tie_counts_the_fraction_of_tied_answers_that_are_correct() -> None:
    # 2-2 between a wrong "a" and a right "b": a random tie-break is right half the time, in any order.
    assert maj_at_k(["a", "b", "b", "a"], [False, True, True, False], 4) == 0.5
    assert maj_at_k(["b", "a", "a", "b"], [True, False, False, True], 4) == 0.5
    assert maj_at_k(["a", "b", "c"], [False, True, True], 3) == pytest.approx(2 / 3)


# The case: five samples, answers 42 42 42 7 7 with verdicts F T T F F, and the first 42 was
# truncated (its "42" was found mid-thought; verify marks it wrong). Hand count: the truncated one
# does not vote, so 42 (right) and 7 (wrong) have two votes each -> a tie -> 0.5. Before, 42 won 3-2
# and took the verdict of its first occurrence: 0.0 as listed, 1.0 once the truncated one moved later.
MAJ_TABLE = [
    # (answers, verdicts, truncated, expected maj@k)
    (["42", "42", "42", "7", "7"], [False, True, True, False, False], [True, False, False, False, False], 0.5),
    # without a tie: 42 has 2 votes (1 truncated 42 cannot vote), 7 has 1 -> 42, right
    (["42", "42", "42", "7"], [False, True, True, False], [True, False, False, False], 1.0),
    # two of three 7s truncated: 7 has 1 vote, 42 has 2 -> 42 (right), although 7 appears most often
    (["7", "7", "7", "42", "42"], [False, False, False, True, True], [True, True, False, False, False], 1.0),
    # every sample truncated: nobody votes
    (["5", "5"], [False, False], [True, True], 0.0),
]


@pytest.mark.parametrize("preds,correct,truncated,expected", MAJ_TABLE)
def test_maj_at_k_truncated_samples_do_not_vote_and_order_does_not_matter(preds, correct, truncated, expected):
    import itertools

    rows = list(zip(preds, correct, truncated))
    for perm in set(itertools.permutations(rows)):
        p, c, t = (list(x) for x in zip(*perm))
        assert maj_at_k(p, c, len(p), t) == pytest.approx(expected), perm


def test_summarize_maj_ignores_truncated_samples() -> None:
    # One problem, the five samples; the truncated one carries finish_reason="length".
    answers, verdicts = ["42", "42", "42", "7", "7"], [False, True, True, False, False]
    for first in (0, 4):  # the truncated sample first, then last: same maj
        order = [0, 1, 2, 3, 4] if first == 0 else [1, 2, 0, 3, 4]
        samples = [make_sample("p", i, verdicts[j], 10, pred=answers[j], finish="length" if j == 0 else "stop")
                   for i, j in enumerate(order)]
        assert summarize(samples, "e", "b").maj_at_8 == pytest.approx(0.5)


def test_maj_at_k_clear_majority_and_first_k_only() -> None:
    preds = ["7", "3", "3", "3", "7", "7", "7", "7"]
    correct = [True, False, False, False, True, True, True, True]
    assert maj_at_k(preds, correct, 8) == 1.0
    assert maj_at_k(preds, correct, 4) == 0.0  # among the first four, "3" wins 3-1


def test_maj_at_k_ignores_missing_answers() -> None:
    assert maj_at_k([None, None, "5"], [False, False, True], 3) == 1.0
    assert maj_at_k([None, None], [False, False], 2) == 0.0
    with pytest.raises(ValueError):
        maj_at_k(["a"], [True, False], 1)
    with pytest.raises(ValueError):
        maj_at_k(["a"], [True], 2)


def hand_samples() -> list[Sample]:
    # p1 (level 1): 8/8 correct, 100 tokens; p2 (level 1): 2/8 correct, 200 tokens;
    # p3 (level 3): 0/8 correct, 600 tokens, the last two truncated.
    out = [make_sample("p1", i, True, 100, 1, pred="1") for i in range(8)]
    out += [make_sample("p2", i, i < 2, 200, 1, pred="2" if i < 2 else "9") for i in range(8)]
    out += [make_sample("p3", i, False, 600, 3, pred="0", finish="length" if i >= 6 else "stop") for i in range(8)]
    return out


def test_summarize_hand_made_samples() -> None:
    s = summarize(hand_samples(), "e", "b")
    assert s.n == 3
    assert s.pass_at_1 == pytest.approx((1 + 0.25 + 0) / 3)
    assert s.pass_at_8 == pytest.approx(2 / 3)
    assert s.maj_at_8 == pytest.approx(1 / 3)  # p2's majority is the wrong "9"
    assert s.mean_tokens == pytest.approx(300)
    assert s.mean_thinking_tokens == pytest.approx(290)
    assert s.mean_answer_tokens == pytest.approx(10)
    assert s.extra["n_samples"] == 24
    assert s.extra["acc_per_1k_tokens"] == pytest.approx(s.pass_at_1 / 300 * 1000)
    assert s.extra["mean_tokens_wrong"] == pytest.approx((6 * 200 + 8 * 600) / 14)
    assert s.extra["truncated_rate"] == pytest.approx(2 / 24)
    assert s.extra["tokens_by_level"] == {"1": pytest.approx(150), "3": pytest.approx(600)}
    assert s.extra["pass@1_by_level"] == {"1": pytest.approx(0.625), "3": pytest.approx(0.0)}
    assert "note" not in s.extra and s.extra["pass@8_k"] == 8


def test_summarize_confidence_intervals() -> None:
    s = summarize(hand_samples(), "e", "b", n_boot=500, seed=3)
    for key, point in (("pass@1", s.pass_at_1), ("pass@8", s.pass_at_8), ("mean_tokens", s.mean_tokens)):
        lo, hi = s.ci95[key]
        assert lo <= point <= hi
        assert lo < hi  # problems differ, so resampling them must spread the estimate
    assert summarize(hand_samples(), "e", "b", n_boot=500, seed=3).ci95 == s.ci95
    assert summarize(hand_samples(), "e", "b", n_boot=500, seed=4).ci95 != s.ci95
    same = [make_sample(f"p{j}", i, i < 4, 50) for j in range(5) for i in range(8)]
    assert summarize(same, "e", "b").ci95["pass@1"] == [pytest.approx(0.5), pytest.approx(0.5)]


def test_summarize_with_fewer_than_eight_samples_says_so() -> None:
    samples = [make_sample("p", i, i == 0, 10) for i in range(4)]
    s = summarize(samples, "e", "b", ks=(1, 2, 8))
    assert s.extra["pass@8_k"] == 4
    assert "pass@4" in s.extra["note"]
    assert s.pass_at_8 == 1.0
    assert s.extra["pass@2"] == pytest.approx(pass_at_k(4, 1, 2))


def test_summarize_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="no samples"):
        summarize([], "e", "b")
    dup = [make_sample("p", 0, True, 1), make_sample("p", 0, True, 1)]
    with pytest.raises(ValueError, match="duplicate"):
        summarize(dup, "e", "b")
    mixed = [make_sample("p", 0, True, 1, bench="x"), make_sample("q", 0, True, 1, bench="y")]
    with pytest.raises(ValueError, match="mix benchmarks"):
        summarize(mixed, "e", "b")
    with pytest.raises(ValueError, match="n_boot"):
        summarize(hand_samples(), "e", "b", n_boot=0)


def test_summary_round_trip(tmp_path) -> None:
    row = summarize(hand_samples(), "e", "b").to_row()
    path = write_summary(tmp_path / "summary.json", [row])
    assert not list(tmp_path.glob("*.tmp"))
    back = read_summary(path)
    assert back == [json.loads(json.dumps(row))]
    assert back[0]["pass@1"] == pytest.approx(1.25 / 3)


def _good_row() -> dict:
    return summarize(hand_samples(), "exp1", "b").to_row()


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda r: r.pop("mean_tokens"), "missing required key 'mean_tokens'"),
        (lambda r: r.update({"n": "3"}), "'n' has wrong type"),
        (lambda r: r.update({"pass@8": True}), "'pass@8' has wrong type"),
        (lambda r: r.update({"pass@1": 41.7}), "not an accuracy"),
        (lambda r: r.update({"ci95": {}}), "'ci95' must hold"),
        (lambda r: r.update({"ci95": {"pass@1": [0.9, 0.1]}}), "lo <= hi"),
    ],
)
def test_read_summary_names_file_and_row(tmp_path, mutate, message) -> None:
    rows = [_good_row(), _good_row()]
    mutate(rows[1])
    path = tmp_path / "summary.json"
    path.write_text(json.dumps({"rows": rows}))
    with pytest.raises(ValueError) as err:
        read_summary(path)
    assert str(path) in str(err.value) and "row 1" in str(err.value) and message in str(err.value)
    with pytest.raises(ValueError, match="row 1"):
        write_summary(tmp_path / "other.json", rows)
    assert not (tmp_path / "other.json").exists()


def test_read_summary_rejects_bad_files(tmp_path) -> None:
    (tmp_path / "a.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="rows"):
        read_summary(tmp_path / "a.json")
    (tmp_path / "b.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_summary(tmp_path / "b.json")
    with pytest.raises(ValueError, match="not found"):
        read_summary(tmp_path / "missing.json")


# ---- hand-computed cases (literals worked out on paper, no formula from the code under test) ------


@pytest.mark.parametrize(
    "n,c,k,expected",
    [
        (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (5, 2, 3, 0.9),  # 1 - C(3,3)/C(5,3) = 1 - 1/10
        (6, 2, 2, 0.6),  # 1 - C(4,2)/C(6,2) = 1 - 6/15
        (8, 2, 4, 0.7857142857142857),  # 1 - C(6,4)/C(8,4) = 1 - 15/70 = 11/14
        (100, 1, 10, 0.1),  # one correct of 100: the chance it is among 10 drawn is 10/100
        (1000, 500, 1, 0.5),
    ],
)
def test_pass_at_k_more_hand_values(n: int, c: int, k: int, expected: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_summarize_four_samples_by_hand() -> None:
    # q1: correct, wrong, wrong, wrong; tokens 40, 60, 60, 80 -> c=1, mean 60
    # q2: correct x4;                  tokens 20 each         -> c=4, mean 20
    # q3: wrong x4;                    tokens 100 each        -> c=0, mean 100
    tokens = {"q1": [40, 60, 60, 80], "q2": [20] * 4, "q3": [100] * 4}
    right = {"q1": [True, False, False, False], "q2": [True] * 4, "q3": [False] * 4}
    samples = [make_sample(q, i, right[q][i], tokens[q][i]) for q in tokens for i in range(4)]
    s = summarize(samples, "e", "b", ks=(1, 2, 8))
    # pass@1 = (1/4 + 1 + 0) / 3 = 0.41666...; pass@2: q1 1 - C(3,2)/C(4,2) = 0.5, so (0.5 + 1 + 0) / 3 = 0.5
    assert s.pass_at_1 == pytest.approx(0.4166666666666667)
    assert s.extra["pass@2"] == pytest.approx(0.5)
    assert s.pass_at_8 == pytest.approx(2 / 3) and s.extra["pass@8_k"] == 4  # pass@4: q1 and q2
    # mean over problems of per-problem means = (60 + 20 + 100) / 3 = 60; thinking = tokens - 10 -> 50
    assert (s.mean_tokens, s.mean_thinking_tokens, s.mean_answer_tokens) == (
        pytest.approx(60.0), pytest.approx(50.0), pytest.approx(10.0))
    # accuracy per 1k tokens = 0.41666... / 60 * 1000 = 6.9444...
    assert s.extra["acc_per_1k_tokens"] == pytest.approx(6.944444444444445)
    # wrong samples: 60 + 60 + 80 (q1) + 4 * 100 (q3) = 600 over 7 samples
    assert s.extra["mean_tokens_wrong"] == pytest.approx(85.71428571428571)
