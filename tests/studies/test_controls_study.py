"""Budget sweeps through the eval stage and the CLI, the controls report section, and the study."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from tracewise.backends.base import SamplingParams
from tracewise.cli import app
from tracewise.evaluate.controls import ControlConfig
from tracewise.evaluate.stage import EvalConfig, run
from tracewise.evaluate.metrics import ROW_FIELDS, read_summary
from tracewise.data.sources import ProblemsConfig
from tracewise.core.records import Sample, read_records
from tracewise.report import controls as cr
from tracewise.world.problems import WorldConfig

runner = CliRunner()
WORLD = ["problems.world.n_train=10", "problems.world.n_test=4"]


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def _cfg(out, model, **kw):
    base = dict(out=str(out), experiment="tiny", model=model, threads=1, n_boot=20,
                problems=ProblemsConfig(split="test", world=WorldConfig(n_train=10, n_test=4)),
                sampling=SamplingParams(n=2, temperature=1.0, max_tokens=20, seed=3))
    base.update(kw)
    return EvalConfig(**base)


def _by_key(run_dir, label):
    return {(s.problem_id, s.sample_idx): (s.text, s.n_tokens, s.n_thinking_tokens, s.finish_reason, s.correct, s.budget)
            for s in read_records(run_dir / "samples.jsonl", Sample) if s.experiment == label}


# ---- the eval stage ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["budget_force", "truncate"])
def test_eval_sweep_equals_separate_runs(tmp_path, student_path, name):
    """One `eval` with control.budgets gives, per budget, the samples of a separate run at that budget."""
    swept = run(_cfg(tmp_path / "sweep", student_path, control=ControlConfig(name=name, budgets=[6, 3], answer_tokens=4)))
    rows = read_summary(swept / "summary.json")
    assert [(r["control"], r["budget"], r["student"]) for r in rows] == [(name, 3, "tiny"), (name, 6, "tiny")]
    assert all(set(ROW_FIELDS) <= set(r) for r in rows)  # the summary.json contract still holds
    for budget in (3, 6):
        label = f"tiny [{name}@{budget}]"
        alone = run(_cfg(tmp_path / f"alone{budget}", student_path,
                         control=ControlConfig(name=name, budget=budget, answer_tokens=4)))
        separate = _by_key(alone, label)
        assert len(separate) == 8 and _by_key(swept, label) == separate
        assert read_summary(alone / "summary.json")[0]["pass@1"] == next(r["pass@1"] for r in rows if r["budget"] == budget)
    thinking = {b: [s.n_thinking_tokens for s in read_records(swept / "samples.jsonl", Sample) if s.budget == b]
                for b in (3, 6)}
    assert max(thinking[3]) <= 3 and max(thinking[6]) <= 6
    assert run(_cfg(tmp_path / "sweep", student_path, control=ControlConfig(name=name, budgets=[6, 3], answer_tokens=4))) == swept


def test_eval_sweep_resumes_from_a_partial_log(tmp_path, student_path):
    cfg = _cfg(tmp_path, student_path, control=ControlConfig(budgets=[3, 5], answer_tokens=4))
    full = run(cfg)
    lines = (full / "samples.jsonl").read_text().splitlines(keepends=True)
    other = _cfg(tmp_path / "b", student_path, control=ControlConfig(budgets=[3, 5], answer_tokens=4))
    from tracewise.core.store import stage_dir

    part = stage_dir(other.out, "eval", other, inputs=[student_path])
    part.mkdir(parents=True)
    (part / "samples.partial.jsonl").write_text("".join(lines[:5]))  # some budgets of some samples done
    assert run(other) == part
    assert (part / "samples.jsonl").read_bytes() == (full / "samples.jsonl").read_bytes()


def test_cli_budget_sweep_and_bad_budgets(tmp_path, student_path):
    ok = runner.invoke(app, ["eval", "--budget", "4,2", f"model={student_path}", f"out={tmp_path}", "sampling.n=1",
                             "sampling.max_tokens=8", "n_boot=10", "threads=1", "control.answer_tokens=3", *WORLD])
    assert ok.exit_code == 0, ok.output
    (run_dir,) = tmp_path.glob("eval-*")
    rows = read_summary(run_dir / "summary.json")
    assert [(r["control"], r["budget"]) for r in rows] == [("budget_force", 2), ("budget_force", 4)]
    for bad, needle in [("0", "budget"), ("-4", "budget"), ("16.5", "integer"), ("abc", "int"), ("8,8", "twice")]:
        res = runner.invoke(app, ["eval", "--budget", bad, f"model={student_path}", f"out={tmp_path / 'bad'}"])
        assert res.exit_code == 2 and needle in res.stderr and "Traceback" not in res.output, (bad, res.output)
    res = runner.invoke(app, ["eval", "--control", "think_free", "--budget", "8", f"model={student_path}"])
    assert res.exit_code == 2 and "no budget to sweep" in res.stderr
    res = runner.invoke(app, ["eval", "--control", "wait_extend", "control.min_thinking=4", "control.max_waits=-1",
                              f"model={student_path}"])
    assert res.exit_code == 2 and "max_waits" in res.stderr
    res = runner.invoke(app, ["eval", "--budget", "600", "--control", "wait_extend", f"model={student_path}"])
    assert res.exit_code == 2 and "below sampling.max_tokens" in res.stderr
    assert not (tmp_path / "bad").exists()


class NoPrefix:
    """Declares on the class that it cannot continue a prefix; constructing it is a test failure."""

    name = "noprefix"
    supports_prefix = False

    def __init__(self, **kwargs):
        raise AssertionError("model loaded before the control was checked")


class PerEndpoint:
    """Decides prefix support per instance (as the OpenAI backend does per endpoint)."""

    name = "per-endpoint"

    def __init__(self, **kwargs):
        self.supports_prefix = False
        self.tokenizer = object()

    def generate(self, requests, sampling, progress=None):
        raise AssertionError("generated before the control was checked")


def test_control_on_a_backend_that_cannot_continue_fails_before_generating(tmp_path, monkeypatch):
    from tracewise import backends

    monkeypatch.setitem(backends.BACKENDS, "noprefix", f"{__name__}:NoPrefix")
    monkeypatch.setitem(backends.BACKENDS, "per-endpoint", f"{__name__}:PerEndpoint")
    for control in (ControlConfig(budgets=[8]), ControlConfig(name="think_free"),
                    ControlConfig(name="wait_extend", min_thinking=4, max_waits=1)):
        for backend in ("noprefix", "per-endpoint"):
            with pytest.raises(ValueError, match="supports_prefix"):
                run(_cfg(tmp_path, "some/model", backend=backend, control=control))
    _cfg(tmp_path, "some/model", backend="noprefix", control=ControlConfig(name="truncate", budget=8)).validate()
    assert not list(tmp_path.glob("eval-*"))


# ---- the report section ------------------------------------------------------------------------


def test_normalized_auc_on_a_hand_computed_table():
    # (tokens, pass@1): (10, .2) (30, .6) (50, .6) (90, 1.0)
    # trapezoids: 20*(.2+.6)/2 = 8, 20*(.6+.6)/2 = 12, 40*(.6+1)/2 = 32 → 52 over a range of 80 = 0.65
    assert cr.normalized_auc([50, 10, 90, 30], [0.6, 0.2, 1.0, 0.6]) == pytest.approx(0.65)
    assert cr.normalized_auc([40], [0.3]) == pytest.approx(0.3)  # one point: its pass@1
    assert cr.normalized_auc([40, 40], [0.2, 0.4]) == pytest.approx(0.3)  # no range: the mean
    # On [30, 70]: .6 at 30 and 50, .8 at 70 (interpolated) → (20*.6 + 20*.7) / 40 = 0.65
    assert cr.auc_on_range([10, 30, 50, 90], [0.2, 0.6, 0.6, 1.0], 30, 70) == pytest.approx(0.65)
    assert cr.auc_on_range([10, 30], [0.2, 0.6], 30, 70) is None  # does not reach 70
    with pytest.raises(ValueError, match="non-empty"):
        cr.normalized_auc([], [])


def _row(student, control, budget, tokens, acc):
    label = student if control == "none" else f"{student} [{control}@{budget}]"
    return {"experiment": label, "benchmark": "world", "n": 10, "pass@1": acc, "pass@8": acc, "maj@8": acc,
            "mean_tokens": tokens, "mean_thinking_tokens": tokens, "mean_answer_tokens": 0.0,
            "ci95": {"pass@1": [acc, acc]}, "student": student, "control": control, "budget": budget}


ROWS = [
    _row("r1", "none", None, 200.0, 0.40),
    _row("gpt-oss", "none", None, 50.0, 0.45),
    _row("r1", "budget_force", 16, 40.0, 0.10), _row("r1", "budget_force", 64, 100.0, 0.30),
    _row("r1", "budget_force", 128, 160.0, 0.38),
    _row("gpt-oss", "truncate", 16, 16.0, 0.0), _row("gpt-oss", "truncate", 64, 45.0, 0.42),
    _row("gpt-oss", "truncate", 128, 50.0, 0.45),
]


def test_section_table_reading_and_plot(tmp_path):
    curves, trained = cr.split_rows(ROWS)
    assert [(c.student, c.control, len(c.points)) for c in curves] == [("r1", "budget_force", 3), ("gpt-oss", "truncate", 3)]
    assert [r["student"] for r in trained] == ["r1", "gpt-oss"]
    section = cr.write_controls_section(ROWS, tmp_path)
    data = json.loads(section.read_text())
    assert data["title"] == "Test-time controls" and (tmp_path / data["images"][0]).is_file()
    md = data["markdown"]
    # r1 + budget_force: (60*(.1+.3)/2 + 60*(.3+.38)/2) / 120 = 0.27
    assert "| r1 | budget_force | 16, 64, 128 | 40–160 | 0.100–0.380 | 0.270 |" in md
    # The common range is [40, 50]; the reading names the cheapest setting within 90% of the best (0.45).
    assert "AUC on [40, 50] tokens" in md
    reading = md.splitlines()[0]
    assert reading.startswith("Reading: gpt-oss + truncate@64 is the cheapest setting within 90% of the best pass@1")
    assert "0.420 at 45 mean tokens" in reading and "largest area on the common range 40–50 tokens is gpt-oss + truncate" in reading
    # Numbers change → the reading changes (it is computed, not fixed text).
    cheaper = [*ROWS, _row("r1", "think_free", None, 30.0, 0.44)]
    assert cr.reading(*cr.split_rows(cheaper)).startswith("Reading: r1 + think_free is the cheapest")
    tie = [*ROWS, _row("gpt-oss", "budget_force", 64, 45.0, 0.42), _row("gpt-oss", "none", None, 45.0, 0.42)][2:]
    assert cr.reading(*cr.split_rows(tie)).startswith("Reading: gpt-oss as trained (no control) is the cheapest")


def test_report_adds_the_section_for_control_rows(tmp_path):
    from tracewise.evaluate.metrics import write_summary
    from tracewise.report.stage import ReportConfig
    from tracewise.report.stage import run as report

    write_summary(tmp_path / "summary_in.json", ROWS)
    report(ReportConfig(out=str(tmp_path / "rep"), summaries=[str(tmp_path / "summary_in.json")]))
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Test-time controls" in md and "normalised AUC" in md
    assert read_summary(tmp_path / "rep" / "summary.json")[2]["budget"] == 16  # fields survive the merge


# ---- the study ---------------------------------------------------------------------------------


def test_controls_study_over_discovered_students(tmp_path, student_path):
    from tracewise.studies.common import discover_students
    from tracewise.studies.controls import ControlsStudyConfig
    from tracewise.studies.controls import run as study

    qs = tmp_path / "qs"
    sft = qs / "sft-000000000001"
    sft.mkdir(parents=True)
    (sft / "model").symlink_to(student_path, target_is_directory=True)
    (sft / "experiment.txt").write_text("tiny")
    (sft / "DONE").write_text("")
    (qs / "sft-000000000002").mkdir()  # unfinished: ignored
    assert discover_students(qs) == {"tiny": sft / "model"}
    cfg = ControlsStudyConfig(out=str(tmp_path / "study"), run_dir=str(qs), budgets=[2, 4], min_thinking=[3],
                              max_waits=1, answer_tokens=3, threads=1,
                              problems=ProblemsConfig(split="test", world=WorldConfig(n_train=10, n_test=3)),
                              sampling=SamplingParams(n=1, temperature=1.0, max_tokens=8, seed=0))
    section = study(cfg)
    rows = read_summary(tmp_path / "study" / "summary.json")
    assert sorted((r["control"], r["budget"]) for r in rows) == [
        ("budget_force", 2), ("budget_force", 4), ("none", None), ("think_free", None), ("truncate", 2),
        ("truncate", 4), ("wait_extend", 3)]
    assert "Test-time controls" in section.read_text()
    twin = qs / "rl-000000000003"  # a second finished run with the same label is named by its dir
    twin.mkdir()
    (twin / "model").symlink_to(student_path, target_is_directory=True)
    (twin / "experiment.txt").write_text("tiny")
    (twin / "DONE").write_text("")
    assert discover_students(qs) == {"tiny": twin / "model", "tiny (sft-000000000001)": sft / "model"}
    with pytest.raises(ValueError, match="unknown or empty"):
        ControlsStudyConfig(run_dir=str(qs), controls=["beam"]).validate()
    with pytest.raises(ValueError, match="not found"):
        ControlsStudyConfig(run_dir=str(qs), students=["nobody"]).student_replicates()
