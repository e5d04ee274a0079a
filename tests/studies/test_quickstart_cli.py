"""``tracewise quickstart --help`` documents its config keys, as every stage command's help does."""

from __future__ import annotations

from typer.testing import CliRunner

from tracewise.cli import app


def test_quickstart_help_lists_config_keys_with_the_quickstart_defaults() -> None:
    res = CliRunner().invoke(app, ["quickstart", "--help"], terminal_width=200)
    assert res.exit_code == 0, res.output
    out = " ".join(res.stdout.split())  # rich wraps long lines
    for key in ("Config keys", "out (default 'runs/quickstart')", "train.max_steps (default 1000)",
                "train.batch_size (default 16)", "student.hidden_size", "eval_samples (default 8)", "teachers",
                "parallel (default 2)", "--config"):
        assert key in out, key
    # The quickstart's own world (4000 train / 100 test problems), not WorldConfig's class defaults.
    assert "world.n_train (default 4000)" in out and "world.n_test (default 100)" in out


def test_quickstart_print_config_prints_the_resolved_yaml_and_runs_nothing(tmp_path, monkeypatch) -> None:
    """README: every command's ``--print-config`` shows the resolved config (quickstart lacked the option)."""
    import yaml

    from tracewise.studies import quickstart as qs

    monkeypatch.setattr(qs, "run", lambda cfg: (_ for _ in ()).throw(AssertionError("quickstart ran")))
    out = tmp_path / "qs"
    res = CliRunner().invoke(app, ["quickstart", "--print-config", "train.batch_size=8", "--out", str(out)])
    assert res.exit_code == 0, res.output
    cfg = yaml.safe_load(res.stdout)  # YAML on stdout, reusable as -c
    assert cfg["out"] == str(out) and cfg["train"]["batch_size"] == 8
    assert cfg["train"]["max_steps"] == 1000 and cfg["world"]["n_train"] == 4000  # the quickstart's own defaults
    assert not out.exists()
    again = tmp_path / "printed.yaml"
    again.write_text(res.stdout)
    res2 = CliRunner().invoke(app, ["quickstart", "--print-config", "-c", str(again)])
    assert res2.exit_code == 0 and res2.stdout == res.stdout
