"""The embedded world's other domains (ordering, listops): generators, teachers, verification."""

from __future__ import annotations

from collections import Counter

import pytest

from tracewise.data.sources import ProblemsConfig, load_problems
from tracewise.core.records import to_json_line
from tracewise.core.tokens import span_counts
from tracewise.core.text import parse_completion
from tracewise.verify.answer import verify
from tracewise.world.domains import DOMAIN_NAMES, get_domain
from tracewise.world.judge import JudgeConfig, procedural_judge
from tracewise.world.problems import WorldConfig, generate_problems
from tracewise.world.teachers import STYLES, TeacherConfig, write_trace

OTHER = [d for d in DOMAIN_NAMES if d != "arith"]
NO_ERRORS = dict(error_rate=[0.0, 0.0, 0.0], format_error_rate=0.0)


def _bytes(problems) -> bytes:
    return "".join(map(to_json_line, problems)).encode()


def _line_answer(p) -> str:
    """Independent replay of an ordering problem (list.pop/insert instead of the module's code)."""
    line = list(p.meta["people"])
    for move in p.meta["moves"]:
        if move[0] == "swap":
            a, b = line.index(move[1]), line.index(move[2])
            line[a], line[b] = move[2], move[1]
        else:
            line.pop(line.index(move[1]))
            line.insert(0 if move[0] == "front" else len(line), move[1])
    q = p.meta["query"]
    return line[q[1] - 1] if q[0] == "who" else str(line.index(q[1]) + 1)


def _list_answer(p) -> str:
    xs = list(p.meta["start"])
    table = {"reverse": lambda v: list(reversed(v)), "sort": sorted, "rotate": lambda v: v[1:] + [v[0]],
             "drop": lambda v: v[1:], "swap": lambda v: [v[-1]] + v[1:-1] + [v[0]]}
    for op in p.meta["ops"]:
        xs = table[op](xs)
    q = p.meta["query"]
    if q[0] == "list":
        return "[" + ", ".join(map(str, xs)) + "]"
    return str(xs[q[1] - 1]) if q[0] == "item" else str(len([x for x in xs if x > q[1]]))


REPLAY = {"ordering": _line_answer, "listops": _list_answer}


@pytest.fixture(scope="module", params=OTHER)
def domain_problems(request):
    cfg = WorldConfig(domain=request.param, seed=5, n_train=300, n_test=60)
    return request.param, generate_problems(cfg, "train"), generate_problems(cfg, "test")


def test_registry_lists_math_and_at_least_two_other_domains() -> None:
    assert DOMAIN_NAMES[0] == "arith" and len(OTHER) >= 2
    with pytest.raises(ValueError, match=r"unknown domain 'chess'.*ordering"):
        get_domain("chess")


@pytest.mark.parametrize("domain", OTHER)
def test_generator_is_deterministic_and_seeded(domain: str) -> None:
    cfg = WorldConfig(domain=domain, seed=3, n_train=40, n_test=20)
    assert _bytes(generate_problems(cfg, "train")) == _bytes(generate_problems(cfg, "train"))
    other = WorldConfig(domain=domain, seed=4, n_train=40, n_test=20)
    assert _bytes(generate_problems(cfg, "test")) != _bytes(generate_problems(other, "test"))


def test_splits_are_disjoint_and_levels_balanced(domain_problems) -> None:
    domain, train, test = domain_problems
    assert not {p.question for p in train} & {p.question for p in test}
    assert len({p.question for p in train}) == len(train) == 300
    assert {p.domain for p in train + test} == {domain} and {p.split for p in test} == {"test"}
    assert Counter(p.level for p in train) == {1: 100, 2: 100, 3: 100}
    # difficulty = chained steps (L+1), as in the arithmetic world
    steps = "moves" if domain == "ordering" else "ops"
    assert all(len(p.meta[steps]) == p.level + 1 for p in train)


def test_gold_answers_match_an_independent_replay(domain_problems) -> None:
    domain, train, test = domain_problems
    for p in train + test:
        assert p.answer == REPLAY[domain](p), p
    kinds = Counter(p.meta["query"][0] for p in train)
    assert len(kinds) >= 2, kinds  # both name/list and number answers occur


@pytest.mark.parametrize("style", STYLES)
def test_error_free_traces_verify_correct(domain_problems, style: str) -> None:
    _domain, train, _test = domain_problems
    for p in train[:150]:
        text, erred = write_trace(p, TeacherConfig(style=style, **NO_ERRORS), seed=0)
        assert not erred
        res = verify(text, p.answer)
        assert res.correct, (p.question, p.answer, res, text)


def test_errors_depend_on_difficulty_and_reach_the_answer(domain_problems) -> None:
    _domain, train, _test = domain_problems
    cfg = TeacherConfig(style="gpt-oss", error_rate=[0.0, 0.0, 1.0], format_error_rate=0.0)
    erred_by_level: Counter = Counter()
    for p in train:
        text, erred = write_trace(p, cfg, seed=0)
        erred_by_level[p.level] += erred
        # an uncorrected mistake is a wrong final answer: verify and the flag agree
        assert verify(text, p.answer).correct != erred, (p.answer, text)
    # only level 3 errs; a few problems no single slip can change (e.g. "X moves to the front" last,
    # then "where is X?") stay correct
    assert erred_by_level[1] == erred_by_level[2] == 0 and erred_by_level[3] >= 90


def test_teachers_err_on_different_problems(domain_problems) -> None:
    _domain, train, _test = domain_problems
    wrong = {s: {p.id for p in train if write_trace(p, TeacherConfig(style=s, error_rate=[0.2, 0.2, 0.2]), 0)[1]}
             for s in STYLES}
    assert wrong["r1"] and wrong["gpt-oss"] and wrong["r1"] != wrong["gpt-oss"]


def test_r1_is_about_four_times_gptoss_in_student_tokens(domain_problems, student_tokenizer) -> None:
    _domain, train, _test = domain_problems
    totals = dict.fromkeys(STYLES, 0)
    for p in train[:90]:
        for s in STYLES:
            parsed = parse_completion(write_trace(p, TeacherConfig(style=s), seed=0)[0])
            totals[s] += span_counts(student_tokenizer, parsed.thinking, parsed.answer)[0]
    ratio = totals["r1"] / totals["gpt-oss"]
    assert 3.0 <= ratio <= 6.0, ratio


def test_r1_trace_has_the_verbose_features(domain_problems) -> None:
    _domain, train, _test = domain_problems
    texts = [write_trace(p, TeacherConfig(style="r1", slip_rate=0.5), seed=0)[0] for p in train[:30]]
    assert all(t.startswith("<think>") and "\\boxed{" in t for t in texts)
    assert any("Wait, that is not right" in t for t in texts) and any("double check" in t for t in texts)
    concise = write_trace(train[0], TeacherConfig(style="gpt-oss"), seed=0)[0]
    assert concise.startswith("<|channel|>analysis") and "<|channel|>final" in concise


def test_verify_compares_names_and_lists_exactly() -> None:
    box = "<think>x</think>\\boxed{%s}"
    assert verify(box % "Bob", "Bob").correct and verify(box % "bob", "Bob").correct
    assert not verify(box % "Obb", "Bob").correct  # math-verify alone: b*b*o == b*o*b
    assert verify(box % "[3,1, 2]", "[3, 1, 2]").correct
    assert not verify(box % "[1, 2, 3]", "[3, 1, 2]").correct
    assert not verify("Answer: 3, 1, 2", "[3, 1, 2]").correct  # a set is not the ordered list
    # math answers keep math-verify's equivalences
    assert verify(box % "\\frac{1}{2}", "0.5").correct and verify(box % "[-2,7]", "[-2, 7]").correct


def test_judge_compares_whole_lists() -> None:
    cfg = JudgeConfig(false_positive_rate=0.0, false_negative_rate=0.0)
    assert not procedural_judge("k", "[5, 1, 2]", "[3, 1, 2]", cfg)[0]
    assert procedural_judge("k", "[3,1,2]", "[3, 1, 2]", cfg)[0]


def test_unknown_domain_is_a_clear_error_before_any_work() -> None:
    with pytest.raises(ValueError, match="world.domain: unknown domain 'chess'"):
        WorldConfig(domain="chess").validate()
    with pytest.raises(ValueError, match="unknown domain"):
        generate_problems(WorldConfig(domain="chess"), "test")
    with pytest.raises(ValueError, match="unknown domain"):
        ProblemsConfig(world=WorldConfig(domain="chess")).validate()


def test_problems_config_selects_the_domain() -> None:
    cfg = ProblemsConfig(split="test", limit=5, world=WorldConfig(domain="listops", n_test=10))
    problems = load_problems(cfg)
    assert len(problems) == 5 and all(p.domain == "listops" and p.id.startswith("listops-test-") for p in problems)
