"""The ``tracewise`` command line, through typer's CliRunner."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tracewise.cli import STAGES, app
from tracewise.core.records import Trace, read_records

runner = CliRunner()


def _invoke(*args: str):
    return runner.invoke(app, list(args))


def test_help_lists_every_stage() -> None:
    res = _invoke("--help")
    assert res.exit_code == 0, res.output
    for name in ("init-student", "generate", "verify", "curate", "train", "eval", "report", "quickstart", "serve"):
        assert name in res.stdout, name
    train = _invoke("train", "--help")
    assert train.exit_code == 0 and "sft" in train.stdout
    assert set(STAGES) == {"init-student", "generate", "ingest", "verify", "curate", "sft", "eval", "report",
                           "rl", "rl-alpha", "controls-study", "few-shot-study", "transfer-study",
                           "judge-bias-study", "curation-study", "cost-study", "real-base-study"}


def test_generate_help_shows_config_keys() -> None:
    res = _invoke("generate", "--help")
    assert res.exit_code == 0, res.output
    for key in ("tokenizer", "teacher.style", "teacher.error_rate", "problems.world.n_train", "sampling.n",
                "--print-config", "--config"):
        assert key in res.stdout, key


def test_generate_writes_traces(student_path: str, tmp_path: Path) -> None:
    res = _invoke("generate", f"tokenizer={student_path}", "problems.world.n_train=20", f"out={tmp_path}")
    assert res.exit_code == 0, res.output
    (run_dir,) = tmp_path.glob("generate-*")
    traces = read_records(run_dir / "traces.jsonl", Trace)
    assert len(traces) == 20 and all(t.n_tokens > 0 and t.teacher == "r1" for t in traces)
    assert (run_dir / "DONE").exists()
    assert "generate done" in res.stderr


def test_generate_with_yaml_config_file(student_path: str, tmp_path: Path) -> None:
    cfg = tmp_path / "gen.yaml"
    cfg.write_text(f"tokenizer: {student_path}\nteacher:\n  style: gpt-oss\nproblems:\n  world:\n    n_train: 5\n")
    res = _invoke("generate", "-c", str(cfg), f"out={tmp_path / 'runs'}", "sampling.n=2")
    assert res.exit_code == 0, res.output
    (run_dir,) = (tmp_path / "runs").glob("generate-*")
    traces = read_records(run_dir / "traces.jsonl", Trace)
    assert len(traces) == 10 and {t.teacher for t in traces} == {"gpt-oss"}


@pytest.mark.parametrize(
    "override, needle",
    [
        ("sampling.n=abc", "sampling.n"),
        ("nonexistent=1", "nonexistent"),
        ("teacher.style=verbose", "verbose"),
        ("problems.world.levels=[7]", "levels"),
        ("sampling.n", "expected KEY=VALUE"),
    ],
)
def test_bad_override_exits_2_with_one_line_error(override: str, needle: str, tmp_path: Path) -> None:
    res = _invoke("generate", "tokenizer=t", f"out={tmp_path}", override)
    assert res.exit_code == 2, res.output
    assert res.stdout == ""
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr  # one line, not wrapped at the terminal width
    assert lines[0].startswith("error:") and needle in lines[0], lines[0]
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert not list(tmp_path.glob("generate-*"))  # nothing ran


def test_missing_config_file_and_missing_tokenizer(tmp_path: Path) -> None:
    res = _invoke("generate", "-c", str(tmp_path / "nope.yaml"))
    assert res.exit_code == 2 and "config file not found" in res.stderr and "Traceback" not in res.output
    res = _invoke("generate", f"tokenizer={tmp_path / 'no-tokenizer'}", "problems.world.n_train=3", f"out={tmp_path}")
    assert res.exit_code == 2 and "could not load a tokenizer" in res.stderr, res.output


def test_print_config_prints_yaml_and_runs_nothing(tmp_path: Path) -> None:
    res = _invoke("generate", "--print-config", "tokenizer=tok", "sampling.n=4", "problems.world.levels=[1,2]",
                  f"out={tmp_path}")
    assert res.exit_code == 0, res.output
    cfg = yaml.safe_load(res.stdout)  # YAML on stdout, so it can be redirected into a config file
    assert cfg["tokenizer"] == "tok" and cfg["sampling"]["n"] == 4
    assert cfg["problems"]["world"]["levels"] == [1, 2] and cfg["teacher"]["style"] == "r1"
    assert not list(tmp_path.glob("generate-*"))
    again = tmp_path / "printed.yaml"
    again.write_text(res.stdout)
    res2 = _invoke("generate", "--print-config", "-c", str(again))
    assert res2.exit_code == 0 and res2.stdout == res.stdout
