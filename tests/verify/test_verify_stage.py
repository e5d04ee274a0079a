"""Verify stage: a verdict per trace × method that matches the checkers, audit numbers, resume, validation."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from unittest import mock
from pathlib import Path

import pytest

import tracewise.verify.stage as vs
from tracewise.core.config import build
from tracewise.generate.stage import GenerateConfig
from tracewise.generate.stage import run as generate
from tracewise.data.sources import ProblemsConfig
from tracewise.core.records import Problem, Trace, Verdict, read_records
from tracewise.verify.answer import verify
from tracewise.verify.stage import VerifyConfig, build_audit, make_judge, run, verdicts_for
from tracewise.world.judge import JudgeConfig, procedural_judge
from tracewise.world.problems import WorldConfig, generate_problems
from tracewise.world.student import StudentConfig, init_student
from tracewise.world.teachers import TeacherConfig, write_trace

WORLD = WorldConfig(n_train=60, n_test=10)
# Error rates well above the defaults so that 60 problems contain mistakes and missing answers.
TEACHER = dict(error_rate=[0.2, 0.3, 0.4], format_error_rate=0.05)


@pytest.fixture(scope="module")
def gens(tmp_path_factory, backend_calls) -> list[str]:
    """Two finished generate runs (r1, gpt-oss) over the same 60 world problems."""
    root = tmp_path_factory.mktemp("gen")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRACEWISE_NO_PROGRESS", "1")
        problems = generate_problems(WORLD, "train")
        corpus = [p.question for p in problems] + [
            write_trace(p, TeacherConfig(style=s), 0)[0] for p in problems for s in ("r1", "gpt-oss")
        ]
        tiny = StudentConfig(hidden_size=32, intermediate_size=64, num_layers=1)  # only its tokenizer is used
        student = init_student(root / "student", corpus, tiny)
        return [
            str(generate(GenerateConfig(out=str(root), tokenizer=str(student), problems=ProblemsConfig(world=WORLD),
                                        teacher=TeacherConfig(style=s, **TEACHER))))
            for s in ("r1", "gpt-oss")
        ]


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("TRACEWISE_NO_PROGRESS", "1")


def traces_of(gens: list[str]) -> list[Trace]:
    return [t for g in gens for t in read_records(Path(g) / "traces.jsonl", Trace)]


def golds_of(gens: list[str]) -> dict[str, str]:
    return {p.id: p.answer for g in gens for p in read_records(Path(g) / "problems.jsonl", Problem)}


def test_every_trace_gets_a_verdict_per_method_matching_the_checkers(gens, tmp_path):
    run_dir = run(VerifyConfig(out=str(tmp_path), generations=gens))
    verdicts = {v.key: v for v in read_records(run_dir / "verdicts.jsonl", Verdict)}
    traces, golds = traces_of(gens), golds_of(gens)
    assert len(verdicts) == 2 * len(traces) == 240
    judge_cfg = JudgeConfig()
    for t in traces:
        expected = verify(t.text, golds[t.problem_id], truncated=t.finish_reason == "length")
        mv = verdicts[f"math_verify|{t.key}"]
        assert (mv.correct, mv.reason, mv.pred, mv.gold) == (expected.correct, expected.reason, expected.pred,
                                                               golds[t.problem_id])
        jd = verdicts[f"judge|{t.key}"]
        assert jd.pred == expected.pred
        if expected.pred is None:
            assert (jd.correct, jd.reason, jd.raw) == (False, expected.reason, None)
        else:
            ok, raw = procedural_judge(t.key, expected.pred, golds[t.problem_id], judge_cfg)
            assert (jd.correct, jd.reason, jd.raw) == (ok, "correct" if ok else "wrong", raw)
    reasons = Counter(v.reason for v in verdicts.values() if v.method == "math_verify")
    # A dropped answer ("I am not sure.") is still read as a (wrong) bare answer, so the judge sees it.
    assert reasons["wrong"] > 0 and reasons["correct"] > 60 and set(reasons) == {"correct", "wrong"}


def test_judge_passes_through_truncated_and_unanswered_traces():
    problem = Problem(id="p1", question="q", answer="7")
    judge = make_judge("embedded", JudgeConfig(false_positive_rate=1.0, false_negative_rate=1.0))
    cut = Trace(problem_id="p1", teacher="r1", text="<think>7+0=7</think>\\boxed{7}", thinking="7+0=7",
                answer_text="\\boxed{7}", finish_reason="length")
    blank = Trace(problem_id="p1", teacher="r1", text="<think>hmm</think>", thinking="hmm", answer_text="")
    for trace, reason in ((cut, "truncated"), (blank, "no_answer")):
        mv, jd = verdicts_for(trace, problem, ["math_verify", "judge"], judge)
        assert (mv.reason, jd.reason, jd.correct, jd.raw) == (reason, reason, False, None)
    # A judge that always flips proves the judge is really consulted when there is an answer.
    good = Trace(problem_id="p1", teacher="r1", text="<think>x</think>\\boxed{7}", thinking="x",
                 answer_text="\\boxed{7}")
    mv, jd = verdicts_for(good, problem, ["math_verify", "judge"], judge)
    assert mv.correct and not jd.correct and jd.reason == "wrong" and "INCORRECT" in jd.raw
    assert [v.method for v in verdicts_for(good, problem, ["judge"], judge)] == ["judge"]


def test_audit_numbers_match_an_independent_count(gens, tmp_path):
    noisy = JudgeConfig(false_positive_rate=0.6, false_negative_rate=0.4, seed=3)
    run_dir = run(VerifyConfig(out=str(tmp_path), generations=gens, judge_cfg=noisy))
    audit = json.loads((run_dir / "audit.json").read_text())
    verdicts = read_records(run_dir / "verdicts.jsonl", Verdict)
    by = {(v.teacher, v.method, v.problem_id): v for v in verdicts}
    for teacher in ("r1", "gpt-oss"):
        for method in ("math_verify", "judge"):
            mine = [v.correct for (t, m, _), v in by.items() if (t, m) == (teacher, method)]
            assert audit["accuracy"][teacher][method]["accuracy"] == pytest.approx(sum(mine) / len(mine))
        pids = {p for (t, _, p) in by if t == teacher}
        agree = sum(by[(teacher, "math_verify", p)].correct == by[(teacher, "judge", p)].correct for p in pids)
        assert audit["agreement"][teacher]["rate"] == pytest.approx(agree / len(pids))
    n_disagree = sum(by[(t, "math_verify", p)].correct != by[(t, "judge", p)].correct
                     for (t, m, p) in by if m == "judge")
    assert audit["n_disagreements"] == n_disagree > 50
    assert len(audit["disagreements"]) == 50  # capped
    for d in audit["disagreements"]:
        assert d["mv"] == by[(d["teacher"], "math_verify", d["problem_id"])].correct != d["judge"]
    # teacher_error is ground truth: math-verify accepts a known mistake only if it lands on the gold.
    traces = {(t.teacher, t.problem_id): t for t in traces_of(gens)}
    accepted = sum(v.correct and traces[(v.teacher, v.problem_id)].meta["teacher_error"]
                   for v in verdicts if v.method == "judge" and v.teacher == "r1")
    assert audit["accuracy"]["r1"]["judge"]["known_wrong_accepted"] == accepted > 0


def test_rerun_is_a_noop_and_input_order_does_not_matter(gens, tmp_path):
    run_dir = run(VerifyConfig(out=str(tmp_path), generations=gens))
    out = run_dir / "verdicts.jsonl"
    before = (out.read_bytes(), out.stat().st_mtime_ns, (run_dir / "audit.json").stat().st_mtime_ns)
    assert run(VerifyConfig(out=str(tmp_path), generations=gens[::-1])) == run_dir
    assert (out.read_bytes(), out.stat().st_mtime_ns, (run_dir / "audit.json").stat().st_mtime_ns) == before
    other = run(VerifyConfig(out=str(tmp_path), generations=gens, judge_cfg=JudgeConfig(seed=1)))
    assert other != run_dir


def test_resume_after_a_crash_is_byte_identical(gens, tmp_path, monkeypatch):
    reference = run(VerifyConfig(out=str(tmp_path / "ref"), generations=gens)) / "verdicts.jsonl"
    calls = {"n": 0}

    def crashing_verify_many(items, workers=None, timeout_s=None):
        out = []
        for text, gold, truncated in items:
            calls["n"] += 1
            if calls["n"] > 50:
                raise KeyboardInterrupt
            out.append(verify(text, gold, truncated=truncated))
        return out

    monkeypatch.setattr(vs, "BATCH", 16)
    monkeypatch.setattr(vs, "verify_many", crashing_verify_many)
    cfg = VerifyConfig(out=str(tmp_path / "resume"), generations=gens)
    with pytest.raises(KeyboardInterrupt):
        run(cfg)
    (run_dir,) = (tmp_path / "resume").iterdir()
    partial = run_dir / "verdicts.partial.jsonl"
    assert not (run_dir / "DONE").exists() and len(partial.read_text().splitlines()) == 3 * 16 * 2
    with open(partial, "a") as fh:
        fh.write('{"_kind": "verdict", "problem_')  # a line torn by the crash
    calls["n"] = -10_000  # no more crashes; count what the resumed run still verifies
    assert run(cfg) == run_dir
    assert calls["n"] == -10_000 + 120 - 48
    assert (run_dir / "verdicts.jsonl").read_bytes() == reference.read_bytes()
    assert not partial.exists() and (run_dir / "DONE").exists()


@pytest.mark.parametrize("name,lineno", [("traces.jsonl", 3), ("problems.jsonl", 7)])
def test_malformed_input_line_names_file_and_line_and_leaves_no_run_dir(gens, tmp_path, name, lineno):
    bad = tmp_path / "bad-gen"
    shutil.copytree(gens[1], bad)
    lines = (bad / name).read_text().splitlines(keepends=True)
    lines[lineno - 1] = lines[lineno - 1][: len(lines[lineno - 1]) // 2] + "\n"
    (bad / name).write_text("".join(lines))
    out = tmp_path / "runs"
    with pytest.raises(ValueError, match=rf"{name}:{lineno}: malformed JSON"):
        run(VerifyConfig(out=str(out), generations=[gens[0], str(bad)]))
    assert not out.exists() or not any(out.iterdir())


def test_trace_without_its_problem_and_duplicate_teachers_are_refused(gens, tmp_path):
    bad = tmp_path / "orphan"
    shutil.copytree(gens[0], bad)
    lines = (bad / "problems.jsonl").read_text().splitlines(keepends=True)
    (bad / "problems.jsonl").write_text("".join(lines[1:]))
    with pytest.raises(ValueError, match=r"traces.jsonl:1: trace for problem 'arith-train-00000', which is not in"):
        run(VerifyConfig(out=str(tmp_path / "a"), generations=[str(bad)]))
    twin = tmp_path / "twin"
    shutil.copytree(gens[0], twin)
    (twin / "config.yaml").write_text("copied\n")
    with pytest.raises(ValueError, match=r"trace 'r1\|arith-train-00000\|0' also at .*generate.name"):
        run(VerifyConfig(out=str(tmp_path / "b"), generations=[gens[0], str(twin)]))


def test_config_and_input_validation(gens, tmp_path):
    with pytest.raises(ValueError, match=r"unknown judge backend 'qwen3'; valid: \[.*'embedded'.*'hf'"):
        build(VerifyConfig, {"generations": gens, "judge": {"backend": "qwen3"}})
    with pytest.raises(ValueError, match=r"verify.judge.model is required for judge backend 'hf'"):
        build(VerifyConfig, {"generations": gens, "judge": {"backend": "hf"}})
    with pytest.raises(ValueError, match=r"verify.methods"):
        build(VerifyConfig, {"generations": gens, "methods": ["math_verify", "vibes"]})
    with pytest.raises(ValueError, match=r"judge.false_positive_rate"):
        build(VerifyConfig, {"generations": gens, "judge_cfg": {"false_positive_rate": 2}})
    with pytest.raises(ValueError, match=r"at least one generate run"):
        run(VerifyConfig(out=str(tmp_path)))
    unfinished = tmp_path / "unfinished"
    shutil.copytree(gens[0], unfinished)
    (unfinished / "DONE").unlink()
    with pytest.raises(ValueError, match=r"not finished \(no DONE marker\)"):
        run(VerifyConfig(out=str(tmp_path), generations=[str(unfinished)]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unfinished"]


def test_math_verify_only_run_and_audit_without_agreement(gens, tmp_path):
    run_dir = run(VerifyConfig(out=str(tmp_path), generations=gens[:1], methods=["math_verify"]))
    verdicts = read_records(run_dir / "verdicts.jsonl", Verdict)
    assert {v.method for v in verdicts} == {"math_verify"} and len(verdicts) == 60
    audit = json.loads((run_dir / "audit.json").read_text())
    assert set(audit["accuracy"]) == {"r1"} and "agreement" not in audit
    assert build_audit(verdicts, [], ["math_verify"])["accuracy"]["r1"]["math_verify"]["n"] == 60


def test_generate_runs_came_from_the_registered_embedded_backend(gens, backend_calls):
    """The fixture patches nothing into the registry: `generate` resolved "embedded" itself, and the
    traces are exactly the embedded teacher's (write_trace with generate's default seed 0)."""
    assert backend_calls == [("embedded", "EmbeddedTeacherBackend")] * 2
    problems = {p.id: p for p in generate_problems(WORLD, "train")}
    traces = traces_of(gens)
    assert {t.teacher for t in traces} == {"r1", "gpt-oss"}
    for t in traces:
        assert t.text == write_trace(problems[t.problem_id], TeacherConfig(style=t.teacher, **TEACHER), 0,
                                     t.sample_idx)[0]


# Hand table: (problem id, gold, completion text, finish_reason) -> the verdicts a person reads off.
# math_verify: (correct, reason, pred); judge (procedural, no errors: compares the LAST NUMBER of pred and gold
# as strings, so 1/2 vs 0.5 is "wrong" to it while math-verify sees the same number).
HAND = [
    ("h1", "7", "<think>3+4=7</think>So the answer is \\boxed{7}.", "stop", (True, "correct", "7"), True),
    ("h2", "7", "<think>3+4=8</think>So the answer is \\boxed{8}.", "stop", (False, "wrong", "8"), False),
    ("h3", "0.5", "<think>half</think>The answer is \\boxed{\\frac{1}{2}}.", "stop",
     (True, "correct", "\\frac{1}{2}"), False),
    ("h4", "12", "<think>3*4</think>Answer: 12", "stop", (True, "correct", "12"), True),
    ("h5", "9", "<think>hmm, let me think</think>", "stop", (False, "no_answer", None), False),
    # Truncated: never credited, whatever was boxed before the cut (pred is not part of the contract here).
    ("h6", "5", "<think>2+3 is 5 so \\boxed{5}", "length", (False, "truncated", mock.ANY), False),
]


def test_verdicts_match_a_hand_table(tmp_path):
    """Independent expected values: written by hand, not computed by `verify()`."""
    gen = tmp_path / "gen"
    gen.mkdir()
    from tracewise.core.records import to_json_line

    (gen / "problems.jsonl").write_text("".join(to_json_line(Problem(id=pid, question="q?", answer=gold))
                                                for pid, gold, *_ in HAND))
    (gen / "traces.jsonl").write_text("".join(
        to_json_line(Trace(problem_id=pid, teacher="hand", text=text, thinking="", answer_text="",
                           finish_reason=finish)) for pid, _, text, finish, *_ in HAND))
    (gen / "DONE").write_text("{}\n")
    run_dir = run(VerifyConfig(out=str(tmp_path / "out"), generations=[str(gen)],
                               judge_cfg=JudgeConfig(false_positive_rate=0.0, false_negative_rate=0.0)))
    got = {(v.method, v.problem_id): v for v in read_records(run_dir / "verdicts.jsonl", Verdict)}
    for pid, gold, _text, _finish, mv, judge_ok in HAND:
        v = got[("math_verify", pid)]
        assert (v.correct, v.reason, v.pred, v.gold) == (*mv, gold), pid
        assert got[("judge", pid)].correct is judge_ok, pid
    audit = json.loads((run_dir / "audit.json").read_text())
    assert audit["accuracy"]["hand"]["math_verify"]["accuracy"] == pytest.approx(3 / 6)  # h1, h3, h4
    assert audit["accuracy"]["hand"]["judge"]["accuracy"] == pytest.approx(2 / 6)  # h1, h4
    assert audit["agreement"]["hand"]["rate"] == pytest.approx(5 / 6)  # all but h3
