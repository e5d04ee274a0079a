"""The embedded world: problem generator, procedural teachers, procedural judge, config checks."""

from __future__ import annotations

from collections import Counter

import pytest

from tracewise.core.records import to_json_line
from tracewise.core.tokens import span_counts
from tracewise.core.text import parse_completion
from tracewise.verify.answer import verify
from tracewise.world.judge import JudgeConfig, procedural_judge
from tracewise.world.problems import WorldConfig, generate_problems
from tracewise.world.teachers import STYLES, TeacherConfig, write_trace

NO_ERRORS = dict(error_rate=[0.0, 0.0, 0.0], format_error_rate=0.0)


def _bytes(problems) -> bytes:
    return "".join(map(to_json_line, problems)).encode()


def _replay(p) -> int:
    value = int(p.meta["start"])
    for op, b, before, after in p.meta["steps"]:
        assert before == value, p
        value = {"+": value + b, "-": value - b, "*": value * b}[op]
        assert after == value, p
    return value


@pytest.fixture(scope="module")
def big():
    """A few thousand train problems (generation is fast)."""
    return generate_problems(WorldConfig(seed=7, n_train=3000, n_test=0), "train")


def test_generator_is_deterministic_per_seed() -> None:
    cfg = WorldConfig(seed=3, n_train=50, n_test=20)
    for split in ("train", "test"):
        assert _bytes(generate_problems(cfg, split)) == _bytes(generate_problems(WorldConfig(seed=3, n_train=50, n_test=20), split))
        assert _bytes(generate_problems(WorldConfig(seed=4, n_train=50, n_test=20), split)) != _bytes(generate_problems(cfg, split))


def test_splits_are_disjoint_and_well_formed() -> None:
    cfg = WorldConfig(seed=0, n_train=400, n_test=200)
    train, test = generate_problems(cfg, "train"), generate_problems(cfg, "test")
    assert len(train) == 400 and len(test) == 200
    assert not {p.question for p in train} & {p.question for p in test}
    assert len({p.question for p in train}) == 400  # no repeats inside a split either
    assert len({p.id for p in train} | {p.id for p in test}) == 600
    assert {p.split for p in train} == {"train"} and {p.split for p in test} == {"test"}
    # the test split does not depend on how many train problems are asked for
    assert _bytes(generate_problems(WorldConfig(seed=0, n_train=5, n_test=200), "test")) == _bytes(test)
    with pytest.raises(ValueError, match="split"):
        generate_problems(cfg, "dev")
    # a small question space (1 level = 2 ops), where independent draws would collide
    small = WorldConfig(seed=0, n_train=3000, n_test=3000, levels=[1])
    tr, te = generate_problems(small, "train"), generate_problems(small, "test")
    assert len({p.question for p in tr}) == 3000 and not {p.question for p in tr} & {p.question for p in te}


def test_levels_present_and_balanced(big) -> None:
    counts = Counter(p.level for p in big)
    assert len(counts) >= 3 and set(counts) == set(WorldConfig().levels)
    assert max(counts.values()) - min(counts.values()) <= 1
    four = Counter(p.level for p in generate_problems(WorldConfig(n_train=101, n_test=0, levels=[1, 2, 3, 4]), "train"))
    assert set(four) == {1, 2, 3, 4} and max(four.values()) - min(four.values()) <= 1


def test_answers_replay_meta_steps(big) -> None:
    cfg = WorldConfig()
    for p in big:
        assert p.answer == str(_replay(p))
        assert len(p.meta["steps"]) == p.level + 1  # level L chains L+1 operations
        assert len(p.meta["verbs"]) == len(p.meta["steps"])
        assert all(1 <= s[3] <= cfg.max_value and 1 <= s[1] <= 9 and s[0] in cfg.ops for s in p.meta["steps"])
        assert str(p.meta["start"]) in p.question and p.meta["item"] in p.question
    mult = generate_problems(WorldConfig(n_train=300, n_test=0, ops=["+", "-", "*"]), "train")
    assert all(p.answer == str(_replay(p)) for p in mult)
    assert any(s[0] == "*" for p in mult for s in p.meta["steps"])


def test_error_free_teachers_verify_correct() -> None:
    problems = generate_problems(WorldConfig(seed=11, n_train=200, n_test=0), "train")
    for style in STYLES:
        cfg = TeacherConfig(style=style, **NO_ERRORS)
        for p in problems:
            text, erred = write_trace(p, cfg, seed=0)
            assert not erred
            res = verify(text, p.answer)
            assert res.correct, (style, p.question, text, res)
        assert parse_completion(text).format == ("think" if style == "r1" else "harmony")


def _error_sets(problems, seed: int = 0) -> dict[str, set[str]]:
    out = {}
    for style in STYLES:
        cfg = TeacherConfig(style=style, error_rate=[0.05, 0.10, 0.20], format_error_rate=0.0)
        out[style] = {p.id for p in problems if write_trace(p, cfg, seed)[1]}
    return out


def test_teachers_err_on_different_problems_more_often_when_harder(big) -> None:
    errs = _error_sets(big)
    r1, oss = errs["r1"], errs["gpt-oss"]
    assert r1 and oss and r1 != oss
    assert len(r1 & oss) < 0.5 * min(len(r1), len(oss))  # independent, not shared mistakes
    by_level = {lv: [p for p in big if p.level == lv] for lv in (1, 2, 3)}
    for style in STYLES:
        rate = [sum(p.id in errs[style] for p in ps) / len(ps) for ps in by_level.values()]
        assert rate[0] < rate[1] < rate[2], (style, rate)
        assert abs(rate[0] - 0.05) < 0.03 and abs(rate[2] - 0.20) < 0.05, (style, rate)


def test_teacher_errors_are_real_and_seeded(big) -> None:
    sample = big[:300]
    for style in STYLES:
        cfg = TeacherConfig(style=style, error_rate=[0.3, 0.3, 0.3], format_error_rate=0.0)
        for p in sample:
            text, erred = write_trace(p, cfg, seed=0)
            assert write_trace(p, cfg, seed=0) == (text, erred)  # same identity, same bytes
            assert verify(text, p.answer).correct is (not erred)
        texts = [write_trace(p, cfg, seed=0)[0] for p in sample]
        assert texts != [write_trace(p, cfg, seed=1)[0] for p in sample]
    for style in STYLES:  # a dropped final answer is never credited, though the computation was right
        dropped = TeacherConfig(style=style, **{**NO_ERRORS, "format_error_rate": 1.0})
        assert not any(verify(write_trace(p, dropped, 0)[0], p.answer).correct for p in big[:20])


def test_token_ratio_r1_to_gptoss(student_tokenizer) -> None:
    problems = generate_problems(WorldConfig(seed=5, n_train=150, n_test=0), "train")
    totals = {}
    for style in STYLES:
        cfg = TeacherConfig(style=style, **NO_ERRORS)
        n = 0
        for p in problems:
            parsed = parse_completion(write_trace(p, cfg, 0)[0])
            n += span_counts(student_tokenizer, parsed.thinking, parsed.answer)[0]
        totals[style] = n
    ratio = totals["r1"] / totals["gpt-oss"]
    assert 3.0 <= ratio <= 6.0, totals


@pytest.mark.parametrize("fp, fn", [(0.05, 0.02), (0.3, 0.1), (0.0, 0.0)])
def test_judge_error_rates(fp: float, fn: float) -> None:
    cfg = JudgeConfig(false_positive_rate=fp, false_negative_rate=fn)
    n = 4000
    fps = sum(procedural_judge(f"k{i}", "5", "7", cfg)[0] for i in range(n)) / n
    fns = sum(not procedural_judge(f"k{i}", "7", "7", cfg)[0] for i in range(n)) / n
    tol = lambda p: 4 * (p * (1 - p) / n) ** 0.5 + 1e-9  # noqa: E731
    assert abs(fps - fp) <= tol(fp), fps
    assert abs(fns - fn) <= tol(fn), fns
    assert procedural_judge("k1", "5", "7", cfg) == procedural_judge("k1", "5", "7", cfg)


def test_judge_reads_numbers_and_missing_answers() -> None:
    exact = JudgeConfig(false_positive_rate=0.0, false_negative_rate=0.0)
    assert procedural_judge("a", "The answer is 1,234", "1234", exact)[0]
    assert not procedural_judge("a", None, "7", exact)[0]
    verdict, raw = procedural_judge("a", "6", "7", exact)
    assert not verdict and "INCORRECT" in raw


@pytest.mark.parametrize(
    "make",
    [
        lambda: TeacherConfig(error_rate=[0.1, 1.5, 0.1]),
        lambda: TeacherConfig(error_rate=[]),
        lambda: TeacherConfig(format_error_rate=-0.1),
        lambda: TeacherConfig(style="verbose"),
        lambda: WorldConfig(levels=[7]),
        lambda: WorldConfig(levels=[]),
        lambda: WorldConfig(ops=["/"]),
        lambda: WorldConfig(max_value=5),
        lambda: WorldConfig(domain="geometry"),
        lambda: WorldConfig(n_train=-1),
        lambda: JudgeConfig(false_positive_rate=1.5),
        lambda: JudgeConfig(false_negative_rate=-0.5),
    ],
)
def test_bad_config_values_raise(make) -> None:
    with pytest.raises(ValueError):
        make().validate()


def test_bad_teacher_rejected_by_backend() -> None:
    from tracewise.backends.embedded import EmbeddedTeacherBackend

    with pytest.raises(ValueError, match="unknown style"):
        EmbeddedTeacherBackend(TeacherConfig(style="o1"))
    with pytest.raises(ValueError, match="error_rate"):
        EmbeddedTeacherBackend(TeacherConfig(error_rate=[1.5]))


def test_rate_for_clamps_levels() -> None:
    cfg = TeacherConfig(error_rate=[0.1, 0.2])
    assert [cfg.rate_for(lv) for lv in (0, 1, 2, 3, 9)] == [0.1, 0.1, 0.2, 0.2, 0.2]
