"""eval stage: samples and summary.json contract, resume to identical bytes, bad input."""

from __future__ import annotations

import json
import random

import pytest

from tracewise.backends.base import SamplingParams
from tracewise.evaluate.stage import EvalConfig, run
from tracewise.evaluate.metrics import read_summary
from tracewise.data.sources import ProblemsConfig
from tracewise.core.records import Sample, SampleTiming, read_records
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


def test_eval_writes_timings_beside_unchanged_samples(tmp_path, student_path):
    # 6 problems × 3 samples = 18 rows decoded 8 at a time: batches of 8, 8 and 2 rows (hf backend)
    timed = run(_cfg(tmp_path / "a", student_path, batch_size=8))
    plain = run(_cfg(tmp_path / "b", student_path, batch_size=8, timings=False))
    assert timed.name == plain.name  # not part of the run dir's hash
    assert (timed / "samples.jsonl").read_bytes() == (plain / "samples.jsonl").read_bytes()
    assert not (plain / "timings.jsonl").exists() and not list(timed.glob("*.partial.jsonl"))
    samples = {s.key: s for s in read_records(timed / "samples.jsonl", Sample)}
    rows = read_records(timed / "timings.jsonl", SampleTiming)
    assert [r.key for r in rows] == sorted(samples)  # one row per sample, keyed as in samples.jsonl
    for r in rows:
        assert r.clock == "batch" and r.output_tokens == samples[r.key].n_tokens
        assert 0 < r.ttft_s <= r.latency_s
    # Rows of one batch share its first decode step: three batches, of 8, 8 and 2 rows ...
    by_batch: dict = {}
    for r in rows:
        by_batch.setdefault(r.ttft_s, []).append(r)
    assert sorted(len(b) for b in by_batch.values()) == [2, 8, 8]
    # ... and within a batch a row that wrote more tokens finished at a later step.
    for b in by_batch.values():
        for x in b:
            assert all(x.latency_s < y.latency_s for y in b if y.output_tokens > x.output_tokens)
    # Measurements, not content: the run dir's digest does not see them.
    from tracewise.core.fingerprint import path_digest

    before = path_digest(timed)
    (timed / "timings.jsonl").rename(tmp_path / "moved.jsonl")
    assert path_digest(timed) == before


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


def _bench_files(tmp_path, monkeypatch):
    """Tiny stand-ins for gsm8k and aime24 (TRACEWISE_DATA) and a benchmark given as a JSONL file."""
    data = tmp_path / "data"
    data.mkdir()
    rows = {"gsm8k_test.jsonl": [("g0", "Ann has 2 pens and gets 3. How many?", "5"), ("g1", "1+1?", "2"),
                                 ("g2", "4-1?", "3")],
            "aime2024.jsonl": [("a0", "2+2?", "4"), ("a1", "3+3?", "6")]}
    for name, problems in rows.items():
        (data / name).write_text("".join(json.dumps({"id": i, "problem": q, "answer": a}) + "\n" for i, q, a in problems))
    extra = tmp_path / "extra.jsonl"
    extra.write_text('{"id": "e0", "question": "5+1?", "answer": "6"}\n{"id": "e1", "question": "7-5?", "answer": "2"}\n')
    monkeypatch.setenv("TRACEWISE_DATA", str(data))
    return str(extra)


def test_eval_several_benchmarks_in_one_command(tmp_path, student_path, monkeypatch):
    """`eval --benchmark a,b,c`: one run dir and one summary row per benchmark; finished benchmarks are
    reused (also from a plain single-benchmark eval), the model is loaded once for the rest."""
    from typer.testing import CliRunner

    import tracewise.backends as backends
    import tracewise.evaluate.stage as ev
    from tracewise.cli import app

    extra = _bench_files(tmp_path, monkeypatch)
    out = tmp_path / "out"
    common = [f"model={student_path}", f"out={out}", "experiment=tiny", "sampling.n=2", "sampling.max_tokens=8",
              "n_boot=10", "threads=1", "verify_workers=0"]
    loads = []
    real_get = backends.get_backend
    monkeypatch.setattr(backends, "get_backend", lambda *a, **k: loads.append(a[0]) or real_get(*a, **k))
    runner = CliRunner()

    # The README's one-benchmark-at-a-time form first.
    res = runner.invoke(app, ["eval", *common, "problems.source=gsm8k", "benchmark=gsm8k"])
    assert res.exit_code == 0, res.output
    (gsm_dir,) = out.glob("eval-*")
    gsm_done = (gsm_dir / "DONE").stat().st_mtime_ns

    # A run of the set that dies on its second benchmark, after the first is reused...
    real_run_one = ev._run_one

    def dies_on_aime(cfg, problems, shared):
        if cfg.benchmark == "aime24":
            raise KeyboardInterrupt
        return real_run_one(cfg, problems, shared)

    monkeypatch.setattr(ev, "_run_one", dies_on_aime)
    res = runner.invoke(app, ["eval", "--benchmark", f"gsm8k,aime24,{extra}", *common])
    assert res.exit_code != 0 and not list(out.glob("benchmarks-*"))
    monkeypatch.setattr(ev, "_run_one", real_run_one)
    loads.clear()

    # ... and its rerun: finishes the other two with one model load.
    res = runner.invoke(app, ["eval", "--benchmark", f"gsm8k,aime24,{extra}", *common])
    assert res.exit_code == 0, res.output
    assert loads == ["hf"]
    assert (gsm_dir / "DONE").stat().st_mtime_ns == gsm_done  # not redone
    (set_dir,) = out.glob("benchmarks-*")
    rows = read_summary(set_dir / "summary.json")
    assert [(r["benchmark"], r["n"], r["experiment"]) for r in rows] == [("gsm8k", 3, "tiny"), ("aime24", 2, "tiny"),
                                                                        ("extra", 2, "tiny")]
    runs = json.loads((set_dir / "runs.json").read_text())
    assert list(runs) == ["gsm8k", "aime24", "extra"] and runs["gsm8k"] == gsm_dir.name
    assert len(list(out.glob("eval-*"))) == 3
    for row in rows:  # each row is its run dir's own summary
        assert read_summary(out / runs[row["benchmark"]] / "summary.json") == [row]
        samples = read_records(out / runs[row["benchmark"]] / "samples.jsonl", Sample)
        assert len(samples) == row["n"] * 2 and {s.benchmark for s in samples} == {row["benchmark"]}

    # Everything finished: a rerun loads no model and changes nothing.
    loads.clear()
    done = {p: p.stat().st_mtime_ns for p in out.glob("*/DONE")}
    res = runner.invoke(app, ["eval", "--benchmark", f"gsm8k,aime24,{extra}", *common])
    assert res.exit_code == 0 and loads == [] and {p: p.stat().st_mtime_ns for p in out.glob("*/DONE")} == done


def test_eval_benchmarks_bad_name_is_exit_2_with_no_output(tmp_path, student_path, monkeypatch):
    from typer.testing import CliRunner

    from tracewise.cli import app

    _bench_files(tmp_path, monkeypatch)
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["eval", "--benchmark", "gsm8k,gsm8kk", f"model={student_path}", f"out={out}"])
    assert res.exit_code == 2 and "gsm8kk" in res.output and "neither a benchmark" in res.output
    res = CliRunner().invoke(app, ["eval", "--benchmark", "gsm8k,gsm8k", f"model={student_path}", f"out={out}"])
    assert res.exit_code == 2 and "twice" in res.output
    assert not out.exists() or not any(out.iterdir())
