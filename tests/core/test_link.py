"""Readable run names: `--link NAME` points <out>/NAME at a stage's hashed run directory, so the next
stage (and a pasted script) can name it instead of its hash."""

from __future__ import annotations

import json
import os

import pytest

from tracewise.core.store import link_run


def test_link_run_points_a_readable_name_at_the_run_dir(tmp_path):
    a, b = tmp_path / "ingest-0123456789ab", tmp_path / "ingest-ba9876543210"
    for d in (a, b):
        d.mkdir()
        (d / "DONE").write_text(d.name)
    link = link_run(a, "traces-r1")
    assert link == tmp_path / "traces-r1" and os.readlink(link) == a.name  # relative: the tree can move
    assert (link / "DONE").read_text() == a.name
    link_run(b, "traces-r1")  # a rerun with another config re-points it
    assert (tmp_path / "traces-r1" / "DONE").read_text() == b.name
    assert sorted(p.name for p in tmp_path.iterdir()) == [a.name, b.name, "traces-r1"]  # no temp files left
    for bad, needle in [("ingest-r1", "looks like a run directory.*here ingest"), ("../x", "letters, digits"),
                        ("", "letters, digits"), ("eval-0123456789ab", "run directory")]:
        with pytest.raises(ValueError, match=needle):
            link_run(a, bad)
    (tmp_path / "real").mkdir()
    with pytest.raises(ValueError, match="exists and is not a link"):
        link_run(a, "real")


def test_cli_link_option(tmp_path, student_path):
    from typer.testing import CliRunner

    from tracewise.cli import app

    rows = tmp_path / "t.jsonl"
    rows.write_text(json.dumps({"id": "p1", "problem": "1+1?", "answer": "2", "completion": "<think>1+1=2</think>2"})
                    + "\n")
    args = ["ingest", f"path={rows}", f"tokenizer={student_path}", f"out={tmp_path / 'runs'}", "--link", "traces-x"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    link = tmp_path / "runs" / "traces-x"
    assert os.readlink(link).startswith("ingest-") and (link / "traces.jsonl").is_file()
    res = CliRunner().invoke(app, args[:-1] + ["ingest-x"])
    assert res.exit_code == 2 and "looks like a run directory" in res.output
