"""``eval seeds=N``: one ordinary eval run per sampling seed and their rows combined over seeds."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from tracewise.cli import app
from tracewise.core.records import Sample, write_records
from tracewise.evaluate.metrics import read_summary, summarize, write_summary
from tracewise.evaluate.replicates import combine_runs

runner = CliRunner()
WORLD = ["problems.world.n_train=10", "problems.world.n_test=3"]


def _s(pid: str, i: int, correct: bool, tokens: int) -> Sample:
    return Sample(experiment="e", benchmark="b", problem_id=pid, sample_idx=i, text="", thinking="", answer_text="",
                  pred="1" if correct else "2", correct=correct, reason="", n_tokens=tokens,
                  n_thinking_tokens=tokens, n_answer_tokens=0)


def _run_dir(path, samples):
    path.mkdir()
    write_records(path / "samples.jsonl", samples)
    write_summary(path / "summary.json", [summarize(samples, "e", "b", n_boot=10).to_row()])
    return path


def test_combine_runs_hand_values(tmp_path):
    # seed 0: p1 right twice, p2 wrong twice → pass@1 0.5, 10 tokens each; seed 1: all right, 30 tokens each.
    s0 = _run_dir(tmp_path / "s0", [_s(p, i, p == "p1", 10) for p in ("p1", "p2") for i in range(2)])
    s1 = _run_dir(tmp_path / "s1", [_s(p, i, True, 30) for p in ("p1", "p2") for i in range(2)])
    (row,) = combine_runs([[s0], [s1]], n_boot=400)
    assert (row["experiment"], row["benchmark"], row["seeds"], row["n"], row["n_samples"]) == ("e", "b", 2, 2, 8)
    assert row["pass@1"] == pytest.approx(0.75) and row["mean_tokens"] == pytest.approx(20.0)
    assert row["sd"]["pass@1"] == pytest.approx(0.5 / 2 ** 0.5)  # SD of (0.5, 1.0), ddof 1
    assert row["sd"]["mean_tokens"] == pytest.approx(20 / 2 ** 0.5)  # SD of (10, 30)
    # Tokens are constant within a seed, so a draw's mean is 10 (seed 0 twice, p = 1/4), 20 or 30 (p = 1/4):
    # the 2.5% and 97.5% points are exactly 10 and 30.
    assert row["ci95"]["mean_tokens"] == [10.0, 30.0]
    lo, hi = row["ci95"]["pass@1"]
    assert 0.0 <= lo < 0.75 < hi <= 1.0
    broken = _run_dir(tmp_path / "other", [_s("p1", 0, True, 1)])
    (broken / "summary.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match="no row or samples in replicate"):
        combine_runs([[s0], [broken]])


def test_cli_eval_seeds_two_runs_combined_and_reused(tmp_path, student_path):
    torch.set_num_threads(1)
    args = ["eval", f"model={student_path}", f"out={tmp_path}", "experiment=tiny", "sampling.n=2",
            "sampling.max_tokens=8", "sampling.temperature=1.0", "n_boot=50", "threads=1", "seeds=2", *WORLD]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    runs = sorted(tmp_path.glob("eval-*"))
    assert len(runs) == 2
    configs = [yaml.safe_load((d / "config.yaml").read_text()) for d in runs]
    assert sorted(c["sampling"].pop("seed") for c in configs) == [0, 1] and configs[0] == configs[1]
    (combined,) = tmp_path.glob("replicates-*")
    by_seed = {int(s): tmp_path / names[0] for s, names in json.loads((combined / "runs.json").read_text()).items()}
    assert sorted(by_seed.values()) == runs
    (row,) = read_summary(combined / "summary.json")
    per_seed = [read_summary(by_seed[s] / "summary.json")[0] for s in (0, 1)]
    assert row["seeds"] == 2 and row["experiment"] == "tiny"
    for m in ("pass@1", "mean_tokens"):
        assert row[m] == pytest.approx((per_seed[0][m] + per_seed[1][m]) / 2)
        assert row["sd"][m] == pytest.approx(abs(per_seed[0][m] - per_seed[1][m]) / 2 ** 0.5)
        assert row["ci95"][m][0] <= row[m] <= row["ci95"][m][1]
    stamps = {d: (d / "DONE").stat().st_mtime_ns for d in [*runs, combined]}
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and {d: (d / "DONE").stat().st_mtime_ns for d in stamps} == stamps  # all reused
    one = runner.invoke(app, [*args[:-3], "seeds=[1]", *WORLD])  # one seed: that seed's run dir, as alone
    assert one.exit_code == 0 and str(by_seed[1]) in " ".join(one.output.split())
    assert len(list(tmp_path.glob("replicates-*"))) == 1
