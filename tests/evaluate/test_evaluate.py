"""eval stage: samples and summary.json contract, resume to identical bytes, bad input."""

from __future__ import annotations

import json
import random

import pytest

from tracewise.backends.base import SamplingParams
from tracewise.evaluate.stage import EvalConfig, run
from tracewise.evaluate.metrics import read_summary
from tracewise.data.sources import ProblemsConfig
from tracewise.core.records import Sample, read_records
from tracewise.world.problems import WorldConfig


def _cfg(out, model, **kw):
    base = dict(out=str(out), experiment="tiny", model=model,
                problems=ProblemsConfig(split="test", world=WorldConfig(n_train=10, n_test=6)),
                sampling=SamplingParams(n=3, temperature=0.8, max_tokens=24, seed=1), n_boot=50, threads=1)
    base.update(kw)
    return EvalConfig(**base)


def test_eval_writes_samples_and_summary(tmp_path, student_path, student_tokenizer):
    run_dir = run(_cfg(tmp_path, student_path))
    samples = read_records(run_dir / "samples.jsonl", Sample)
    assert len(samples) == 6 * 3
    assert {(s.problem_id, s.sample_idx) for s in samples} == {(f"arith-test-{i:05d}", j) for i in range(6) for j in range(3)}
    for s in samples:
        assert s.n_tokens == s.n_thinking_tokens + s.n_answer_tokens and 0 < s.n_tokens <= 24
        assert s.finish_reason in ("stop", "length") and s.level in (1, 2, 3)
        assert s.correct is False or s.reason == "correct"
    row = read_summary(run_dir / "summary.json")[0]
    assert row["experiment"] == "tiny" and row["benchmark"] == "world" and row["n"] == 6
    assert row["mean_tokens"] == pytest.approx(sum(s.n_tokens for s in samples) / len(samples))
    assert "pass@1" in row["ci95"]


def test_eval_resume_is_byte_identical(tmp_path, student_path):
    full = run(_cfg(tmp_path / "a", student_path))
    lines = (full / "samples.jsonl").read_text().splitlines(keepends=True)
    # An interrupted run: some samples finished (in another order) and a torn last line.
    part = _cfg(tmp_path / "b", student_path)
    from tracewise.core.store import stage_dir

    run_dir = stage_dir(part.out, "eval", part, inputs=[student_path])
    run_dir.mkdir(parents=True)
    keep = lines[:7]
    random.Random(0).shuffle(keep)
    (run_dir / "samples.partial.jsonl").write_text("".join(keep) + lines[8][: len(lines[8]) // 2])
    resumed = run(part)
    assert resumed == run_dir
    assert (resumed / "samples.jsonl").read_bytes() == (full / "samples.jsonl").read_bytes()
    assert json.loads((resumed / "summary.json").read_text()) == json.loads((full / "summary.json").read_text())


def test_eval_bad_input(tmp_path, student_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "question": "1+1?", "answer": "2"}\n{"id": "b", "question": \n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        run(_cfg(tmp_path, student_path, problems=ProblemsConfig(source=str(bad))))
    assert not list(tmp_path.glob("eval-*"))  # nothing half-written
    with pytest.raises(ValueError, match="model"):
        run(_cfg(tmp_path, ""))
    with pytest.raises(ValueError, match="sampling"):
        run(_cfg(tmp_path, student_path, sampling=SamplingParams(n=0)))


def test_eval_with_budget_forcing_caps_thinking(tmp_path, student_path):
    from tracewise.evaluate.controls import ControlConfig

    run_dir = run(_cfg(tmp_path, student_path, control=ControlConfig(name="budget_force", budget=5, answer_tokens=6)))
    samples = read_records(run_dir / "samples.jsonl", Sample)
    assert samples and all(s.control == "budget_force@5" and s.budget == 5 for s in samples)
    assert all(s.n_thinking_tokens <= 5 for s in samples)
    assert read_summary(run_dir / "summary.json")[0]["experiment"] == "tiny [budget_force@5]"
    with pytest.raises(ValueError, match="budget"):
        run(_cfg(tmp_path, student_path, control=ControlConfig(name="budget_force", budget=0)))
