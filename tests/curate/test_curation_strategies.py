"""Curation strategies: LIMO's score on a hand-computed table, sizes, determinism, picks, bad input, curate hook."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from datasets import load_from_disk

from tracewise.curate.stage import CurateConfig, dataset_path
from tracewise.curate.stage import run as curate_run
from tracewise.curate.strategies import LimoConfig, SelectionConfig, limo_features, limo_scores, select
from tracewise.curate.decontam import DecontamConfig
from tracewise.generate.stage import GenerateConfig
from tracewise.generate.stage import run as generate
from tracewise.data.sources import ProblemsConfig
from tracewise.core.records import Problem, Sample, Trace, write_records
from tracewise.verify.stage import VerifyConfig
from tracewise.verify.stage import run as verify_run
from tracewise.world.problems import WorldConfig
from tracewise.world.teachers import TeacherConfig

WORDS = LimoConfig(verification=["check"], exploratory=["wait", "what if"], connectives=["so"])


def test_limo_score_matches_hand_computed_table():
    feats = {
        "A": limo_features("Wait, so... check. So!", 10, WORDS),  # 1 verif, 1 explore, 2 connectives
        "B": limo_features("what if so", 20, WORDS),  # "what if" is one exploratory phrase
        "C": limo_features("nothing waiting here", 5, WORDS),  # "waiting" is not "wait"
    }
    assert feats["A"] == {"length": 10.0, "verification": 0.1, "exploratory": 0.1, "connectives": 0.2}
    assert feats["B"] == {"length": 20.0, "verification": 0.0, "exploratory": 0.05, "connectives": 0.05}
    assert feats["C"] == {"length": 5.0, "verification": 0.0, "exploratory": 0.0, "connectives": 0.0}
    # each feature divided by its max (20, 0.1, 0.1, 0.2), weighted .30/.20/.25/.25
    scores = limo_scores(feats, WORDS)
    assert scores["A"] == pytest.approx(0.30 * 0.5 + 0.20 * 1 + 0.25 * 1 + 0.25 * 1)  # 0.85
    assert scores["B"] == pytest.approx(0.30 * 1 + 0.25 * 0.5 + 0.25 * 0.25)  # 0.4875
    assert scores["C"] == pytest.approx(0.30 * 0.25)  # 0.075
    custom = LimoConfig(w_length=1, w_verification=0, w_exploratory=0, w_connectives=0, **{
        k: getattr(WORDS, k) for k in ("verification", "exploratory", "connectives")})
    assert limo_scores(feats, custom) == pytest.approx({"A": 0.5, "B": 1.0, "C": 0.25})


def pool_of(n: int = 30):
    problems = {f"p{i:02d}": Problem(id=f"p{i:02d}", question=f"q{i}", answer="1", level=i % 3 + 1) for i in range(n)}
    traces = {"gpt-oss": {}, "r1": {}}
    for pid, p in problems.items():
        traces["gpt-oss"][pid] = Trace(pid, "gpt-oss", "so answer", "so", "Answer: 1", n_tokens=20 + p.level)
        traces["r1"][pid] = Trace(pid, "r1", "wait, let me check. so answer", "wait check", "boxed 1",
                                  n_tokens=80 + 10 * p.level + int(pid[1:]) % 5)
    return problems, traces


def pick(strategy, n=9, cfg=None, pool=None):
    problems, traces = pool_of()
    return select(strategy, n, pool or sorted(problems), problems, ["gpt-oss", "r1"], traces, cfg or SelectionConfig())


@pytest.mark.parametrize("strategy", ["random", "s1", "limo", "adaptive"])
def test_sizes_and_determinism(strategy):
    a, b = pick(strategy), pick(strategy)
    assert len(a.picks) == 9 and a.picks == b.picks and a.info["selected"] == 9
    assert set(a.picks) <= set(pool_of()[0])


def test_random_depends_on_seed_and_adaptive_reuses_its_problems():
    r0, r1 = pick("random"), pick("random", cfg=SelectionConfig(seed=1))
    assert set(r0.picks) != set(r1.picks)
    assert set(pick("adaptive").picks) == set(r0.picks)  # only the teacher choice differs


def test_adaptive_picks_verbose_for_hard_and_concise_for_easy(tmp_path: Path):
    problems, _ = pool_of()
    sel = pick("adaptive", n=30)
    for pid, teacher in sel.picks.items():  # levels 1,2,3 -> difficulty 0, .5, 1; threshold .5
        assert teacher == ("r1" if problems[pid].level >= 2 else "gpt-oss"), pid
    assert sel.info["verbose"] == "r1" and sel.info["concise"] == "gpt-oss"
    assert set(pick("adaptive", n=30, cfg=SelectionConfig(adaptive_threshold=0.9)).picks.values()) == {"r1", "gpt-oss"}
    assert Counter(pick("adaptive", n=30, cfg=SelectionConfig(adaptive_threshold=0.9)).picks.values())["r1"] == 10
    # a reference student's accuracy overrides levels: p00..p04 solved, the rest never
    ref = tmp_path / "samples.jsonl"
    write_records(ref, [Sample("ref", "world", pid, k, "", "", "", "1", int(pid[1:]) < 5, "x", 1, 0, 1)
                        for pid in problems for k in range(2)])
    sel = pick("adaptive", n=30, cfg=SelectionConfig(reference=str(ref)))
    assert {p for p, t in sel.picks.items() if t == "gpt-oss"} == {f"p{i:02d}" for i in range(5)}


def test_s1_hard_then_balanced_longest_traces(tmp_path: Path):
    problems, _ = pool_of()
    sel = pick("s1", n=9)  # no reference: hardest half by level, then longer traces
    assert set(sel.picks.values()) == {"r1"}  # s1 keeps the longest trace
    assert {problems[p].level for p in sel.picks} <= {2, 3}
    assert max(Counter(problems[p].level for p in sel.picks).values()) - min(
        Counter(problems[p].level for p in sel.picks).values()) <= 1  # diversity: balanced groups
    ref = tmp_path / "samples.jsonl"  # the reference student fails exactly p00..p11
    write_records(ref, [Sample("ref", "world", pid, 0, "", "", "", "1", int(pid[1:]) >= 12, "x", 1, 0, 1)
                        for pid in problems])
    sel = pick("s1", n=6, cfg=SelectionConfig(reference=str(ref)))
    assert set(sel.picks) <= {f"p{i:02d}" for i in range(12)} and sel.info["hard"] == 12
    assert Counter(problems[p].level for p in sel.picks) == {1: 2, 2: 2, 3: 2}


def test_limo_prefers_the_keyword_rich_trace():
    assert set(pick("limo").picks.values()) == {"r1"}


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="larger than the pool"):
        pick("random", n=31)
    with pytest.raises(ValueError, match="unknown strategy"):
        pick("nope")
    with pytest.raises(ValueError, match="unknown strategy 'nope'"):
        CurateConfig(generations=["x"], verdicts="y", strategy="nope").validate()
    with pytest.raises(ValueError, match="target_size"):
        CurateConfig(generations=["x"], verdicts="y", strategy="limo").validate()
    with pytest.raises(ValueError, match="adaptive_threshold"):
        SelectionConfig(adaptive_threshold=1.5).validate()
    with pytest.raises(ValueError, match="weights"):
        LimoConfig(w_length=-1).validate()


@pytest.fixture(scope="module")
def two_teachers(tmp_path_factory, student_path) -> dict:
    root = tmp_path_factory.mktemp("strategies")
    world = WorldConfig(n_train=24, n_test=2, seed=5)
    gens = [str(generate(GenerateConfig(out=str(root), tokenizer=student_path, problems=ProblemsConfig(world=world),
                                        teacher=TeacherConfig(style=s, error_rate=[0.0]))))
            for s in ("r1", "gpt-oss")]
    return {"root": root, "gens": gens, "ver": str(verify_run(VerifyConfig(out=str(root), generations=gens)))}


def test_curate_saves_the_selection_and_refuses_a_too_large_target(two_teachers):
    common = dict(out=str(two_teachers["root"]), generations=two_teachers["gens"], verdicts=two_teachers["ver"],
                  filter="math_verify", decontam=DecontamConfig(benchmarks=[], world_test=False))
    run_dir = curate_run(CurateConfig(strategy="adaptive", target_size=6, **common))
    sel = load_from_disk(str(dataset_path(run_dir, "selected")))
    levels = dict(zip(sel["problem_id"], sel["level"]))
    assert len(sel) == 6 and all((t == "r1") == (levels[p] >= 2) for p, t in zip(sel["problem_id"], sel["teacher"]))
    r1 = load_from_disk(str(dataset_path(run_dir, "r1")))
    assert sorted(r1["problem_id"]) == sorted(sel["problem_id"])  # per-teacher datasets: the same problems
    table = json.loads((run_dir / "table.json").read_text())
    assert table["strategy"]["strategy"] == "adaptive" and "Strategy **adaptive**" in (run_dir / "table.md").read_text()
    before = set(Path(two_teachers["root"]).iterdir())
    with pytest.raises(ValueError, match="larger than the pool"):
        curate_run(CurateConfig(strategy="random", target_size=10_000, **common))
    assert set(Path(two_teachers["root"]).iterdir()) == before  # refused before any output
