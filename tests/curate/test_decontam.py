"""Decontamination (planted n-gram overlaps) and dedup (exact / near duplicates), alone and inside curate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datasets import load_from_disk

from tracewise.curate.stage import CurateConfig, dataset_path
from tracewise.curate.stage import run as curate_run
from tracewise.curate.decontam import DecontamConfig, EvalSet, clean_pool, contaminated, near_duplicates, ngrams
from tracewise.generate.stage import GenerateConfig
from tracewise.generate.stage import run as generate
from tracewise.data.sources import ProblemsConfig
from tracewise.core.records import Problem, write_records
from tracewise.verify.stage import VerifyConfig
from tracewise.verify.stage import run as verify_run
from tracewise.world.problems import WorldConfig, generate_problems
from tracewise.world.teachers import TeacherConfig

EVAL_Q = ("A train leaves the station at nine in the morning travelling at sixty miles per hour "
          "toward a city two hundred miles away. When does it arrive?")


def P(pid: str, q: str) -> Problem:
    return Problem(id=pid, question=q, answer="1")


def off(**kw) -> DecontamConfig:
    """Only the sets a test plants: no shared benchmarks, no world test split."""
    kw.setdefault("benchmarks", [])
    kw.setdefault("world_test", False)
    return DecontamConfig(**kw)


def test_ngrams_normalise_case_punctuation_and_short_texts():
    assert ngrams("A, b; C!", 2) == {("a", "b"), ("b", "c")}
    assert ngrams("one two", 8) == {("one", "two")}  # shorter than n: the whole text is one gram


def test_planted_overlaps_are_found_per_eval_set():
    pool = [
        # shares the 8-gram "travelling at sixty miles per hour toward a" with EVAL_Q
        P("a", "Bob is travelling at sixty miles per hour toward a lake. How far in 2 hours?"),
        P("b", EVAL_Q.upper()),  # the eval question itself, case changed
        P("c", "Bob is travelling at fifty miles per hour toward a lake. How far in 2 hours?"),  # 5-gram only
        P("d", "sixty miles per hour"),  # under 8 words, contained in the eval text
        P("e", "Count the apples in the basket."),
    ]
    sets = [EvalSet("trains", [EVAL_Q]), EvalSet("other", ["Count the apples in the basket."])]
    hits = contaminated(pool, sets, 8)
    assert hits == {"a": ["trains"], "b": ["trains"], "d": ["trains"], "e": ["other"]}
    # c shares only the 5 words "miles per hour toward a": caught at n=5, not at n=6 or 8
    assert "c" not in hits and "c" not in contaminated(pool, sets, 6) and "c" in contaminated(pool, sets, 5)


def test_clean_pool_counts_user_files_and_world_test(tmp_path: Path):
    f1 = tmp_path / "mine.jsonl"
    f1.write_text(json.dumps({"question": EVAL_Q, "answer": "1"}) + "\n")
    world = WorldConfig(n_train=5, n_test=5)
    test_q = generate_problems(world, "test")[2].question
    pool = {p.id: p for p in [P("x1", EVAL_Q), P("x2", test_q + " Quickly."), P("x3", "Something else entirely here.")]}
    res = clean_pool(pool, off(files=[str(f1)], world_test=True), [world, world])
    d = res.report["decontam"]
    assert res.kept == {"x3"} and res.dropped == {"x1": "contaminated", "x2": "contaminated"}
    assert d["per_eval_set"]["mine"]["dropped"] == 1 and d["per_eval_set"]["world_test"]["dropped"] == 1
    assert list(d["per_eval_set"]) == ["world_test", "mine"]  # the same world twice is one eval set
    # disabled: the same contaminated problems stay
    assert clean_pool(pool, off(files=[str(f1)], world_test=True, enabled=False), [world]).kept == set(pool)


def test_missing_default_benchmark_is_reported_not_fatal(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("TRACEWISE_DATA", str(tmp_path))  # an empty data dir: no benchmark files
    res = clean_pool({"a": P("a", EVAL_Q)}, DecontamConfig(world_test=False))
    assert res.report["decontam"]["not_found"] == ["gsm8k", "math500", "aime24"] and res.kept == {"a"}


def test_shared_benchmarks_catch_a_real_gsm8k_question():
    from tracewise.data.benchmarks import benchmark_path, iter_rows

    try:
        _, row = next(iter_rows(str(benchmark_path("gsm8k"))))
    except ValueError:
        pytest.skip("no shared benchmark data on this machine")
    pool = {"g": P("g", "Note: " + row["problem"]), "h": P("h", "How many legs do 3 ducks have?")}
    res = clean_pool(pool, DecontamConfig(world_test=False, benchmarks=["gsm8k"]))
    assert res.dropped == {"g": "contaminated"}


def test_exact_and_near_duplicates_keep_the_smallest_id():
    base = ("Ann has seven red apples and gives three of them to her friend Ben who already had "
            "four green apples in his basket at home. How many apples does Ben have now?")
    pool = [
        P("p3", base.replace("seven", "SEVEN,")),  # exact after normalisation
        P("p1", base),
        P("p2", base.replace("now?", "today?")),  # last word changed: 1 of 29 shingles differs
        P("p4", "A completely different question about the number of legs on five spiders?"),
        P("p5", base.replace("seven red apples", "nine blue pears").replace("four green apples", "two hats")),
    ]
    exact, near = near_duplicates(pool, off())
    assert exact == {"p3": "p1"}
    assert near == {"p2": "p1"}  # p5 changes too much to be a near duplicate at 0.8
    assert near_duplicates(pool, off(near_dup_threshold=1.0)) == ({"p3": "p1"}, {})
    shuffled = near_duplicates(list(reversed(pool)), off())
    assert shuffled == (exact, near)  # order of the input does not matter


@pytest.mark.parametrize("kw, msg", [
    ({"ngram": 0}, "ngram"), ({"near_dup_threshold": 1.5}, "near_dup_threshold"),
    ({"benchmarks": ["nope"]}, "unknown"), ({"files": ["/no/such.jsonl"]}, "not found"),
])
def test_bad_config(kw, msg):
    with pytest.raises(ValueError, match=msg):
        DecontamConfig(**kw).validate()


@pytest.fixture(scope="module")
def planted(tmp_path_factory, student_path) -> dict:
    """A generate + verify run over a problem file where one problem is an eval question and two are duplicates."""
    root = tmp_path_factory.mktemp("planted")
    problems = generate_problems(WorldConfig(n_train=12, n_test=2), "train")
    for i, p in enumerate(problems):
        p.id = f"q{i}"
    problems[3].question = EVAL_Q  # the planted contamination (embedded teachers solve from meta, not text)
    problems[7].question = problems[5].question.upper()  # an exact duplicate after normalisation
    write_records(root / "train.jsonl", problems)
    evalf = root / "eval.jsonl"
    evalf.write_text(json.dumps({"problem": EVAL_Q, "answer": "3"}) + "\n")
    gen = str(generate(GenerateConfig(out=str(root), tokenizer=student_path, teacher=TeacherConfig(style="gpt-oss", error_rate=[0.0]),
                                      problems=ProblemsConfig(source=str(root / "train.jsonl")))))
    ver = str(verify_run(VerifyConfig(out=str(root), generations=[gen])))
    return {"root": root, "gen": gen, "ver": ver, "eval": str(evalf)}


def test_curate_drops_planted_overlap_and_counts_it(planted):
    dec = off(files=[planted["eval"]])
    run_dir = curate_run(CurateConfig(out=str(planted["root"]), generations=[planted["gen"]], verdicts=planted["ver"],
                                      filter="none", decontam=dec))
    ids = set(load_from_disk(str(dataset_path(run_dir, "gpt-oss")))["problem_id"])
    assert "q3" not in ids and "q7" not in ids and "q5" in ids and len(ids) == 10
    table = json.loads((run_dir / "table.json").read_text())["pool_cleaning"]
    assert table["decontam"]["per_eval_set"]["eval"]["dropped"] == 1 and table["dedup"]["exact"] == 1
    md = (run_dir / "table.md").read_text()
    assert "Decontamination (8-gram overlap): dropped 1 of 12" in md and "dropped 1 exact" in md
    # with decontamination and dedup off the planted problems are trained on: the check above can fail
    bare = curate_run(CurateConfig(out=str(planted["root"]), generations=[planted["gen"]], verdicts=planted["ver"],
                                   filter="none", decontam=off(enabled=False, dedup=False)))
    assert {"q3", "q7"} <= set(load_from_disk(str(dataset_path(bare, "gpt-oss")))["problem_id"])
