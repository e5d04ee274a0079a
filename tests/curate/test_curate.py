"""Curate: the all-teachers-correct intersection, same-problem datasets, a stable mix, exact table numbers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from datasets import load_from_disk

from tracewise.core.config import build
from tracewise.curate.stage import CurateConfig, dataset_path, run
from tracewise.curate.strategies import mix_teacher
from tracewise.generate.stage import GenerateConfig
from tracewise.generate.stage import run as generate
from tracewise.data.sources import ProblemsConfig
from tracewise.core.records import Problem, Trace
from tracewise.core.tokens import student_completion
from tracewise.verify.stage import VerifyConfig
from tracewise.verify.stage import run as verify_run
from tracewise.world.judge import JudgeConfig
from tracewise.world.problems import WorldConfig, generate_problems
from tracewise.world.student import StudentConfig, init_student
from tracewise.world.teachers import TeacherConfig, write_trace

WORLD = WorldConfig(n_train=60, n_test=10)
TEACHERS = ("gpt-oss", "r1")


@pytest.fixture(scope="module")
def world(tmp_path_factory, backend_calls) -> dict:
    """Two generate runs whose teachers err often, and a verify run whose judge accepts many wrong answers."""
    root = tmp_path_factory.mktemp("world")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRACEWISE_NO_PROGRESS", "1")
        problems = generate_problems(WORLD, "train")
        corpus = [p.question for p in problems] + [write_trace(p, TeacherConfig(style="r1"), 0)[0] for p in problems]
        tiny = StudentConfig(hidden_size=32, intermediate_size=64, num_layers=1)  # only its tokenizer is used
        student = init_student(root / "student", corpus, tiny)
        gens = [
            str(generate(GenerateConfig(out=str(root), tokenizer=str(student), problems=ProblemsConfig(world=WORLD),
                                        teacher=TeacherConfig(style=s, error_rate=[0.2, 0.3, 0.4]))))
            for s in ("r1", "gpt-oss")
        ]
        judge = JudgeConfig(false_positive_rate=0.4, false_negative_rate=0.05)
        verdicts = str(verify_run(VerifyConfig(out=str(root), generations=gens, judge_cfg=judge)))
    return {"gens": gens, "verdicts": verdicts, "root": root}


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("TRACEWISE_NO_PROGRESS", "1")


def raw_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truth(world: dict) -> dict:
    """Independent view of the inputs, read as plain JSON: (teacher, pid) -> trace row / verdicts by method."""
    traces = {(t["teacher"], t["problem_id"]): t for g in world["gens"] for t in raw_lines(Path(g) / "traces.jsonl")}
    verdicts = {(v["teacher"], v["problem_id"], v["method"]): v["correct"]
                for v in raw_lines(Path(world["verdicts"]) / "verdicts.jsonl")}
    problems = {p["id"]: p for p in raw_lines(Path(world["gens"][0]) / "problems.jsonl")}
    return {"traces": traces, "verdicts": verdicts, "problems": problems}


def expected_kept(world: dict, methods: tuple[str, ...]) -> list[str]:
    v = truth(world)["verdicts"]
    pids = sorted(truth(world)["problems"])
    return [p for p in pids if all(v[(t, p, m)] for t in TEACHERS for m in methods)]



def test_generate_runs_came_from_the_registered_embedded_backend(world, backend_calls):
    """Nothing is patched into the registry: `generate` resolved "embedded" itself, and the traces are
    exactly the embedded teacher's (write_trace with generate's default seed 0)."""
    assert backend_calls == [("embedded", "EmbeddedTeacherBackend")] * 2
    problems = {p.id: p for p in generate_problems(WORLD, "train")}
    rows = truth(world)["traces"]
    assert {t for t, _ in rows} == set(TEACHERS) and len(rows) == 2 * len(problems)
    for (teacher, pid), row in rows.items():
        cfg = TeacherConfig(style=teacher, error_rate=[0.2, 0.3, 0.4])
        assert row["text"] == write_trace(problems[pid], cfg, 0, row["sample_idx"])[0]

def curate(world: dict, out: Path, **kw) -> Path:
    kw.setdefault("generations", world["gens"])
    return run(CurateConfig(out=str(out), verdicts=world["verdicts"], **kw))


@pytest.fixture(scope="module")
def both(world, tmp_path_factory) -> Path:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRACEWISE_NO_PROGRESS", "1")
        return curate(world, tmp_path_factory.mktemp("curate"))


def test_kept_is_exactly_the_all_teachers_correct_intersection(world, both):
    kept = json.loads((both / "kept.json").read_text())["problem_ids"]
    assert kept == expected_kept(world, ("math_verify", "judge"))
    v = truth(world)["verdicts"]
    alone = {t: [p for p in truth(world)["problems"] if v[(t, p, "math_verify")] and v[(t, p, "judge")]]
             for t in TEACHERS}
    # A real filter: each teacher fails somewhere the other does not, so the intersection is smaller than either.
    assert 0 < len(kept) < min(len(a) for a in alone.values()) < 60


def test_teacher_datasets_hold_the_same_problems_with_each_teachers_trace(world, both):
    kept = json.loads((both / "kept.json").read_text())["problem_ids"]
    t = truth(world)
    for teacher in TEACHERS:
        ds = load_from_disk(str(dataset_path(both, teacher)))
        assert ds["problem_id"] == kept and set(ds["teacher"]) == {teacher}
        for row in ds:
            trace, problem = t["traces"][(teacher, row["problem_id"])], t["problems"][row["problem_id"]]
            assert row["prompt"] == [{"role": "user", "content": problem["question"]}]
            assert row["completion"] == [
                {"role": "assistant", "content": student_completion(trace["thinking"], trace["answer_text"])}
            ]
            assert (row["answer"], row["level"]) == (problem["answer"], problem["level"])
            assert (row["n_tokens"], row["n_thinking_tokens"]) == (trace["n_tokens"], trace["n_thinking_tokens"])
    with pytest.raises(ValueError, match=r"no dataset 'qwen'; found \['gpt-oss', 'mix', 'r1'\]"):
        dataset_path(both, "qwen")


def test_mix_takes_each_problem_once_by_a_stable_hash(world, both, tmp_path):
    kept = json.loads((both / "kept.json").read_text())["problem_ids"]
    mix = load_from_disk(str(dataset_path(both, "mix")))
    assert mix["problem_id"] == kept
    counts = {t: mix["teacher"].count(t) for t in TEACHERS}
    assert min(counts.values()) >= len(kept) // 4  # both teachers really present, roughly half each
    t = truth(world)
    for row in mix:
        assert row["teacher"] == mix_teacher(0, row["problem_id"], list(TEACHERS))
        trace = t["traces"][(row["teacher"], row["problem_id"])]
        assert row["completion"][0]["content"] == student_completion(trace["thinking"], trace["answer_text"])
    table = json.loads((both / "table.json").read_text())
    assert table["mix"]["counts"] == counts
    # Inputs listed the other way round (and teachers named explicitly): same mix, row for row.
    again = curate(world, tmp_path, generations=world["gens"][::-1], teachers=["r1", "gpt-oss"])
    assert load_from_disk(str(dataset_path(again, "mix"))).to_list() == mix.to_list()
    # The pick depends on (seed, id) only: not on teacher order, and it moves with the seed.
    assert mix_teacher(0, "x", ["r1", "gpt-oss"]) == mix_teacher(0, "x", ["gpt-oss", "r1"])
    assert any(mix_teacher(1, p, list(TEACHERS)) != mix_teacher(0, p, list(TEACHERS)) for p in kept)


@pytest.mark.parametrize("name,methods", [("none", ()), ("math_verify", ("math_verify",)), ("judge", ("judge",))])
def test_filter_variants_keep_what_their_methods_accept(world, tmp_path, name, methods):
    run_dir = curate(world, tmp_path, filter=name, mix=False)
    kept = json.loads((run_dir / "kept.json").read_text())["problem_ids"]
    assert kept == expected_kept(world, methods)
    if name == "none":
        assert len(kept) == 60
    else:
        assert len(expected_kept(world, ("math_verify", "judge"))) <= len(kept) < 60
    # The judge accepts wrong answers (fp 0.4), so its kept set is not math-verify's.
    assert expected_kept(world, ("judge",)) != expected_kept(world, ("math_verify",))
    assert not (run_dir / "datasets" / "mix").exists()


@pytest.mark.parametrize("name", ["both", "judge", "none"])
def test_table_numbers_match_an_independent_count(world, both, tmp_path, name):
    run_dir = both if name == "both" else curate(world, tmp_path, filter=name)
    table = json.loads((run_dir / "table.json").read_text())
    kept = set(json.loads((run_dir / "kept.json").read_text())["problem_ids"])
    t = truth(world)
    assert (table["problems_in"], table["kept"]) == (60, len(kept))
    assert table["kept_pct"] == pytest.approx(100 * len(kept) / 60)
    for teacher in TEACHERS:
        row = table["per_teacher"][teacher]
        errors = {p for (tt, p), tr in t["traces"].items() if tt == teacher and tr["meta"]["teacher_error"]}
        assert (row["wrong_let_through"], row["known_wrong"]) == (len(errors & kept), len(errors))
        mv = [t["verdicts"][(teacher, p, "math_verify")] for p in t["problems"]]
        assert row["math_verify_accuracy"] == pytest.approx(sum(mv) / 60)
        toks = [t["traces"][(teacher, p)]["n_tokens"] for p in kept]
        assert row["mean_tokens_kept"] == pytest.approx(sum(toks) / len(toks))
    if name == "judge":  # the lenient judge lets known mistakes through; math-verify on top stops most
        assert sum(table["per_teacher"][x]["wrong_let_through"] for x in TEACHERS) > 0
    if name == "none":
        assert all(table["per_teacher"][x]["wrong_let_through"] == table["per_teacher"][x]["known_wrong"] > 0
                   for x in TEACHERS)
    ratio = table["token_ratio"]
    assert (ratio["longest"], ratio["shortest"]) == ("r1", "gpt-oss") and ratio["ratio"] == pytest.approx(
        table["per_teacher"]["r1"]["mean_tokens_kept"] / table["per_teacher"]["gpt-oss"]["mean_tokens_kept"])
    agree = [t["verdicts"][("r1", p, "math_verify")] == t["verdicts"][("gpt-oss", p, "math_verify")]
             for p in t["problems"]]
    assert table["teacher_agreement"]["math_verify_agree"] == pytest.approx(sum(agree) / 60)
    assert f"{len(kept)} of 60 problems kept" in (run_dir / "table.md").read_text()


def test_malformed_verdict_line_names_file_and_line_and_leaves_no_run_dir(world, tmp_path):
    bad = tmp_path / "bad-verify"
    shutil.copytree(world["verdicts"], bad)
    lines = (bad / "verdicts.jsonl").read_text().splitlines(keepends=True)
    lines[4] = lines[4].replace('"correct": ', '"correct": "yes", "x": ', 1)
    (bad / "verdicts.jsonl").write_text("".join(lines))
    out = tmp_path / "runs"
    with pytest.raises(ValueError, match=r"verdicts.jsonl:5: field 'correct' should be"):
        run(CurateConfig(out=str(out), generations=world["gens"], verdicts=str(bad)))
    assert not out.exists() or not any(out.iterdir())


def test_bad_config_and_inconsistent_inputs_are_refused_before_any_output(world, tmp_path):
    out = tmp_path / "runs"
    with pytest.raises(ValueError, match=r"unknown filter 'strict'; valid: \['both', 'judge', 'math_verify', 'none'\]"):
        build(CurateConfig, {"generations": world["gens"], "verdicts": world["verdicts"], "filter": "strict"})
    with pytest.raises(ValueError, match=r"\['qwen'\] not found in the generate runs; found: \['gpt-oss', 'r1'\]"):
        curate(world, out, teachers=["r1", "qwen"])
    with pytest.raises(ValueError, match=r"mix_name: 'r1' is also a teacher name"):
        curate(world, out, mix_name="r1")
    mv_only = verify_run(VerifyConfig(out=str(tmp_path / "v"), generations=world["gens"], methods=["math_verify"]))
    with pytest.raises(ValueError, match=r"no 'judge' verdict for 120 trace\(s\)"):
        run(CurateConfig(out=str(out), generations=world["gens"], verdicts=str(mv_only), filter="both"))
    conflicting = tmp_path / "conflict"
    shutil.copytree(world["gens"][1], conflicting)
    rows = (conflicting / "problems.jsonl").read_text().splitlines(keepends=True)
    p = json.loads(rows[2])
    rows[2] = json.dumps({**p, "answer": "999"}) + "\n"
    (conflicting / "problems.jsonl").write_text("".join(rows))
    with pytest.raises(ValueError, match=rf"problems.jsonl:3: problem '{p['id']}' conflicts with .*different problem"):
        curate(world, out, generations=[world["gens"][0], str(conflicting)])
    assert not out.exists() or not any(out.iterdir())
    # math_verify verdicts alone are enough for a math_verify filter; the judge columns say n/a.
    only = run(CurateConfig(out=str(out), generations=world["gens"], verdicts=str(mv_only), filter="math_verify"))
    assert json.loads((only / "table.json").read_text())["per_teacher"]["r1"]["judge_accuracy"] is None


def test_single_teacher_builds_no_mix_and_rerun_is_a_noop(world, both, tmp_path):
    solo = curate(world, tmp_path, teachers=["r1"])
    assert sorted(p.name for p in (solo / "datasets").iterdir()) == ["r1"]
    assert json.loads((solo / "kept.json").read_text())["problem_ids"] == [
        p for p in sorted(truth(world)["problems"])
        if truth(world)["verdicts"][("r1", p, "math_verify")] and truth(world)["verdicts"][("r1", p, "judge")]
    ]
    files = sorted(p for p in both.rglob("*") if p.is_file())
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}
    assert curate(world, both.parent) == both
    assert sorted(p for p in both.rglob("*") if p.is_file()) == files
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files} == before
