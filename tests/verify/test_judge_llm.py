"""LLM judge: verdict parsing, prompt filling, batching, raw outputs kept, disagreements listed by curate.

The end-to-end judge is a tiny random Llama through the real ``hf`` backend: its verdicts are
garbage, which is the point — the plumbing must store whatever it says and curate must list where
it disagrees with math-verify.
"""

from __future__ import annotations

import json

import pytest

from tracewise.backends.base import Completion
from tracewise.verify.llm_judge import JudgeItem, LLMJudge, LLMJudgeConfig, excerpt, parse_verdict, render_prompt
from tracewise.core.records import Problem, Trace, Verdict, read_records
from tracewise.verify.stage import VerifyConfig, verdicts_for_batch

WORLD_N = 12


@pytest.mark.parametrize("raw, expected", [
    ("Verdict: YES", True),
    ("verdict: no", False),
    ("The final answers agree.\n\n**Verdict:** Yes", True),
    ("Verdict: CORRECT", True),
    ("Verdict: INCORRECT", False),
    ("Verdict: not equivalent", False),
    ("<think>Yes... wait, no. Verdict: YES?</think>\nVerdict: NO", False),  # only outside the thinking
    ("compare 1/2 and 0.5, same value.</think>Verdict: YES", True),  # template opened <think> in the prompt
    ("<think>the reference is 5 and the response says 5 so Verdict: YES", None),  # never left thinking
    ("Verdict: YES\nHmm, re-reading: 12 vs 21.\nVerdict: NO", False),  # last restatement wins
    ("\\boxed{\\text{yes}}", True),
    ("The answer is \\boxed{no}.", False),
    ("Final answer: no", False),
    ("Yes, both equal 42.", True),
    ("NO", False),
    ("<|channel|>analysis<|message|>Verdict: NO maybe<|end|><|start|>assistant<|channel|>final<|message|>"
     "Verdict: YES<|return|>", True),
    ("<|channel|>analysis<|message|>still thinking, Verdict: YES", None),  # harmony without a final channel
    ("I cannot tell.", None),
    ("", None),
    ("lorem ipsum 17 dolor", None),
])
def test_parse_verdict(raw, expected):
    assert parse_verdict(raw) is expected


def test_render_prompt_fills_placeholders_and_keeps_latex_braces():
    t = "Q: {question}\nGold: $\\boxed{{gold}}$ vs {response} ({pred}) {unknown} \\frac{1}{2}"
    out = render_prompt(t, question="2+2?", gold="4", response="so \\boxed{4}", pred=None)
    assert out == "Q: 2+2?\nGold: $\\boxed{4}$ vs so \\boxed{4} ((none extracted)) {unknown} \\frac{1}{2}"
    assert excerpt("<think>" + "x" * 500 + "</think>  Verdict:\n YES ") == "Verdict: YES"
    assert len(excerpt("y" * 500)) == 160


def test_config_validation(tmp_path):
    with pytest.raises(ValueError, match="unknown judge backend 'gpt5'"):
        LLMJudgeConfig(backend="gpt5", model="m").validate()
    with pytest.raises(ValueError, match="judge.model is required"):
        LLMJudgeConfig(backend="hf").validate()
    with pytest.raises(ValueError, match="must contain \\{gold\\}"):
        LLMJudgeConfig(backend="hf", model="m", template="Is {response} right?").validate()
    with pytest.raises(ValueError, match="shows"):
        LLMJudgeConfig(backend="hf", model="m", shows="thinking").validate()
    with pytest.raises(ValueError, match="template_file"):
        LLMJudgeConfig(backend="hf", model="m", template_file=str(tmp_path / "none.txt")).validate()
    f = tmp_path / "t.txt"
    f.write_text("gold {gold} pred {pred}")
    assert LLMJudgeConfig(backend="hf", model="m", template_file=str(f)).template_text() == "gold {gold} pred {pred}"


class Scripted:
    """A backend answering from a script by request id; records the batches it was sent."""

    name = "scripted"

    def __init__(self, script: dict[str, str]):
        self.script, self.calls = script, []

    def generate(self, requests, sampling, progress=None):
        self.calls.append([r.id for r in requests])
        yield [Completion(r.id, 0, self.script[r.id.split("|")[1]], 3, "stop") for r in requests]


def _trace(pid: str, text: str, answer: str, finish: str = "stop") -> Trace:
    return Trace(problem_id=pid, teacher="t", text=text, thinking="", answer_text=answer, finish_reason=finish)


def test_batch_verdicts_reasons_raw_and_one_backend_call():
    probs = {p: Problem(id=p, question=f"q{p}", answer="4") for p in "abcdef"}
    pairs = [
        (_trace("a", "<think>x</think>\\boxed{4}", "\\boxed{4}"), probs["a"]),
        (_trace("b", "<think>x</think>\\boxed{5}", "\\boxed{5}"), probs["b"]),
        (_trace("c", "<think>x</think>four", "four"), probs["c"]),  # math-verify: wrong; the judge knows better
        (_trace("d", "<think>x</think>\\boxed{4}", "\\boxed{4}"), probs["d"]),
        (_trace("e", "<think>x x x", "", finish="length"), probs["e"]),  # truncated: never asked
        (_trace("f", "<think>so it is 4</think>", ""), probs["f"]),  # no answer to extract: the LLM judge still reads it
    ]
    backend = Scripted({"a": "Verdict: YES", "b": "<think>yes?</think>Verdict: NO", "c": "Verdict: YES",
                        "d": "<think>never closed", "f": "no"})
    judge = LLMJudge(LLMJudgeConfig(backend="hf", model="m", shows="answer"), backend=backend)
    out = verdicts_for_batch(pairs, ["math_verify", "judge"], judge)
    assert len(backend.calls) == 1 and sorted(k.split("|")[1] for k in backend.calls[0]) == list("abcdf")
    by = {(v.method, v.problem_id): v for v in out}
    assert [by["judge", p].reason for p in "abcdef"] == ["correct", "wrong", "correct", "judge_unparseable",
                                                          "truncated", "wrong"]
    assert [by["judge", p].correct for p in "abcdef"] == [True, False, True, False, False, False]
    assert [by["math_verify", p].reason for p in "cf"] == ["wrong", "no_answer"] and by["judge", "f"].pred is None
    assert by["judge", "b"].raw == "<think>yes?</think>Verdict: NO" and by["judge", "e"].raw is None
    assert by["judge", "a"].meta == {"judge_model": "m", "judge_tokens": 3, "judge_finish": "stop"}
    # The prompt carries the trace's answer span and the gold (shows='answer').
    req = judge.request(JudgeItem("t|b|0", "qb", "4", "5", "\\boxed{5}", "full text"))
    assert "\\boxed{5}" in req.messages[0]["content"] and "Reference answer:\n4" in req.messages[0]["content"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """Two tiny generate runs and a tiny random Llama (with chat template) to serve as the judge."""
    from tracewise.generate.stage import GenerateConfig
    from tracewise.generate.stage import run as generate
    from tracewise.data.sources import ProblemsConfig
    from tracewise.world.problems import WorldConfig, generate_problems
    from tracewise.world.student import StudentConfig, init_student
    from tracewise.world.teachers import TeacherConfig, write_trace

    root = tmp_path_factory.mktemp("judge")
    world_cfg = WorldConfig(n_train=WORLD_N, n_test=2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRACEWISE_NO_PROGRESS", "1")
        problems = generate_problems(world_cfg, "train")
        corpus = [p.question for p in problems] + [write_trace(p, TeacherConfig(style="r1"), 0)[0] for p in problems]
        model = init_student(root / "judge-model", corpus,
                             StudentConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2))
        gens = [str(generate(GenerateConfig(out=str(root), tokenizer=str(model), problems=ProblemsConfig(world=world_cfg),
                                            teacher=TeacherConfig(style=s, error_rate=[0.3, 0.3, 0.3]))))
                for s in ("r1", "gpt-oss")]
    return {"root": root, "model": str(model), "gens": gens}


def test_hf_judge_end_to_end_raw_outputs_batches_and_curate_disagreements(world, tmp_path, monkeypatch):
    import torch

    from tracewise.backends.hf import HFBackend
    from tracewise.cli import app
    from tracewise.curate.stage import CurateConfig
    from tracewise.curate.stage import run as curate
    from tracewise.verify.stage import run as verify

    torch.set_num_threads(1)
    batches = []
    real = HFBackend.generate

    def spy(self, requests, sampling, progress=None):
        batches.append(len(requests))
        return real(self, requests, sampling, progress)

    monkeypatch.setattr(HFBackend, "generate", spy)
    cfg = VerifyConfig(out=str(tmp_path), generations=world["gens"],
                       judge=LLMJudgeConfig(backend="hf", model=world["model"], max_tokens=6, flush_every=10,
                                            temperature=1.0))
    run_dir = verify(cfg)
    verdicts = read_records(run_dir / "verdicts.jsonl", Verdict)
    judged = [v for v in verdicts if v.method == "judge"]
    assert len(judged) == 2 * WORLD_N
    asked = [v for v in judged if v.reason != "truncated"]
    # One backend call per 10 traces (flush_every), never one per trace.
    assert len(batches) == 3 and max(batches) <= 10 and sum(batches) == len(asked)
    for v in asked:  # whatever the random model said is stored verbatim, with its token count
        assert isinstance(v.raw, str) and v.meta["judge_tokens"] <= 6 and v.meta["judge_model"] == world["model"]
        assert v.reason == {True: "correct", False: "wrong", None: "judge_unparseable"}[parse_verdict(v.raw)]
    # Rerun is a no-op; the CLI shortcut --judge/--judge-model builds the same config (same run dir).
    assert verify(cfg) == run_dir
    from typer.testing import CliRunner

    res = CliRunner().invoke(app, ["verify", "--judge", "hf", "--judge-model", world["model"], f"out={tmp_path}",
                                   f"generations=[{','.join(world['gens'])}]", "judge.max_tokens=6",
                                   "judge.flush_every=10", "judge.temperature=1.0"])
    assert res.exit_code == 0, res.output
    assert str(run_dir.name) in res.output.replace("\n", "")

    cur = curate(CurateConfig(out=str(tmp_path), generations=world["gens"], verdicts=str(run_dir),
                              filter="math_verify"))
    rows = [json.loads(line) for line in (cur / "disagreements.jsonl").read_text().splitlines()]
    by = {(v.method, v.teacher, v.problem_id): v for v in verdicts if v.sample_idx == 0}
    expected = sorted((t, p) for (m, t, p), v in by.items() if m == "judge" and v.correct != by["math_verify", t, p].correct)
    assert sorted((r["teacher"], r["problem_id"]) for r in rows) == expected and expected
    for r in rows:
        jd = by["judge", r["teacher"], r["problem_id"]]
        assert r["raw"] == jd.raw and r["judge"] == jd.correct and r["gold"] == jd.gold
        assert r["raw_excerpt"] == excerpt(jd.raw)
    table = json.loads((cur / "table.json").read_text())
    assert table["disagreements"]["n"] == len(rows) and table["disagreements"]["of"] == 2 * WORLD_N
    md = (cur / "table.md").read_text()
    assert f"Judge and math-verify disagree on {len(rows)} of {2 * WORLD_N} traces" in md
    shown = [line for line in md.splitlines() if line.startswith("| arith-")]
    assert len(shown) == min(10, len(rows)) and rows[0]["problem_id"] in shown[0]
    agree = {t: r["judge_mv_agreement"] for t, r in table["per_teacher"].items()}
    for t, rate in agree.items():
        n_dis = sum(r["teacher"] == t for r in rows)
        assert rate == pytest.approx(1 - n_dis / WORLD_N)


def test_requests_the_backend_gave_up_on_are_retried_by_a_rerun(world, tmp_path, monkeypatch):
    from tracewise.backends.hf import HFBackend
    from tracewise.core.store import is_done
    from tracewise.verify.stage import run as verify

    real = HFBackend.generate
    asked: list[list[str]] = []

    def dropping(self, requests, sampling, progress=None):  # like the openai backend after its retries
        asked.append([r.id for r in requests])
        for batch in real(self, requests, sampling, progress):
            yield [c for c in batch if not c.request_id.endswith("|arith-train-00003|0")]

    monkeypatch.setattr(HFBackend, "generate", dropping)
    cfg = VerifyConfig(out=str(tmp_path), generations=world["gens"],
                       judge=LLMJudgeConfig(backend="hf", model=world["model"], max_tokens=2))
    with pytest.raises(ValueError, match=r"gave no answer for 2 trace\(s\).*rerun verify"):
        verify(cfg)
    (run_dir,) = tmp_path.glob("verify-*")
    assert not is_done(run_dir)
    monkeypatch.setattr(HFBackend, "generate", lambda self, r, s, p=None: (asked.append([x.id for x in r]), real(self, r, s, p))[1])
    assert verify(cfg) == run_dir and is_done(run_dir)
    assert sorted(asked[-1]) == ["gpt-oss|arith-train-00003|0", "r1|arith-train-00003|0"]  # only those were asked again
    assert len(read_records(run_dir / "verdicts.jsonl", Verdict)) == 4 * WORLD_N
