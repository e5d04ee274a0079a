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
