"""Cost study: ratio arithmetic against hand values, and one real run behind `tracewise serve`."""

import json

import pytest

from tracewise.evaluate.latency import Timing, load_stats, money, t_interval
from tracewise.studies.cost import CostStudyConfig, run
from tracewise.studies.cost_report import ratio_rows, reading


def test_load_stats_hand_case():
    ts = [Timing(0, True, 1.0, 0.25, 10, 100), Timing(1, True, 3.0, 0.75, 10, 300), Timing(2, False, 9.0, None, 0, 0, "x")]
    s = load_stats(ts, wall_s=4.0)
    assert s["failed"] == 1 and s["p50_latency_s"] == 2.0
    assert s["requests_per_s"] == 0.5 and s["output_tokens_per_s"] == 100.0
    assert s["mean_output_tokens"] == 200.0 and s["mean_ttft_s"] == 0.5 and s["ttft_share"] == 0.25
    # $2 / 1M in, $8 / 1M out: 1000 × (10·2 + 200·8) / 1e6 = 1.62 ; $3.6 / h at 0.5 req/s → 1000·0.001/0.5 = 2.0
    m = money(s, 2.0, 8.0, 3.6)
    assert m["usd_per_1k_problems_tokens"] == pytest.approx(1.62)
    assert m["usd_per_1k_problems_machine"] == pytest.approx(2.0)
    assert money(s) == {}


def test_t_interval_hand_case():
    mean, ci = t_interval([1.0, 2.0, 3.0])  # sd 1, t(2) = 4.303 → half-width 4.303/√3 = 2.484
    assert mean == 2.0 and ci == pytest.approx([2.0 - 2.4843, 2.0 + 2.4843], abs=1e-3)
    assert t_interval([5.0]) == (5.0, None)


def _stat(lat, tok, rps, ttft=0.1):
    return {"p50_latency_s": lat, "p99_latency_s": lat * 2, "mean_latency_s": lat, "mean_ttft_s": ttft,
            "ttft_share": ttft / lat, "requests_per_s": rps, "output_tokens_per_s": rps * tok,
            "mean_output_tokens": tok, "mean_prompt_tokens": 20}


def test_ratio_rows_and_reading_hand_case():
    # concise: 1/4 the tokens but only 1/2 the latency in each repeat → the reading must say it saves less time.
    summary = {"config": {"baseline": "r1", "concurrency": [1], "n_problems": 4, "repeats": 2, "max_tokens": 10,
                          "stream": True, "threads": 1, "cpu_count": 2},
               "stats": {"r1": {"1": [_stat(2.0, 200, 0.5), _stat(2.2, 200, 0.45)]},
                         "gpt-oss": {"1": [_stat(1.0, 50, 1.0), _stat(1.1, 50, 0.9)]}}}
    rows = {r["student"]: r for r in ratio_rows(summary)}
    assert rows["gpt-oss"]["token_ratio"] == (0.25, [0.25, 0.25])
    assert rows["gpt-oss"]["latency_ratio"][0] == pytest.approx(0.5)
    assert rows["gpt-oss"]["throughput_ratio"][0] == pytest.approx(2.0)
    text = reading(rows["gpt-oss"], "r1")
    assert "0.25× the tokens" in text and "0.50×" in text and "saves less time than tokens" in text


def test_cost_study_runs_behind_a_real_server(student_path, tmp_path):
    # a and b are the same model: the study starts ONE server for both (one `tracewise serve` start is most
    # of this test's time), and equal seeds must give equal tokens.
    cfg = CostStudyConfig(out=str(tmp_path / "cost"), run_dir="", models=[f"a={student_path}", f"b={student_path}"],
                          baseline="a", n_problems=4, concurrency=[1, 2], repeats=2, max_tokens=8, threads=1)
    section = run(cfg)
    assert [p.name for p in (tmp_path / "cost").glob("serve-*.log")] == ["serve-a.log"]
    summary = json.loads((tmp_path / "cost" / "summary.json").read_text())
    assert set(summary["stats"]) == {"a", "b"} and len(summary["stats"]["a"]["2"]) == 2
    assert summary["config"]["stream"] is True
    s = summary["stats"]["a"]["1"][0]
    assert s["failed"] == 0 and s["n"] == 4 and 0 < s["mean_output_tokens"] <= 8
    # `tracewise serve` streams (SSE): the first token is timed, before the last byte
    assert s["mean_ttft_s"] is not None and 0 < s["mean_ttft_s"] <= s["mean_latency_s"]
    assert all(r["ttft_share"] is not None and 0 < r["ttft_share"] <= 1 for r in ratio_rows(summary))
    # the same model with the same seeds writes the same tokens: the token ratio is exactly 1
    rows = {(r["student"], r["concurrency"]): r for r in ratio_rows(summary)}
    assert rows[("b", 1)]["token_ratio"][0] == 1.0
    lines = (tmp_path / "cost" / "timings.jsonl").read_text().splitlines()
    assert len(lines) == 2 * 2 * 2 * 4  # students × concurrencies × repeats × requests
    assert "Cost, measured" in json.loads(section.read_text())["title"]


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="repeats"):
        CostStudyConfig(repeats=0).validate()
    with pytest.raises(ValueError, match="BASE_URL"):
        CostStudyConfig(endpoints=["x=http://h"]).validate()


def test_cost_study_cli_help_and_bad_key(tmp_path):
    from typer.testing import CliRunner

    from tracewise.cli import app

    res = CliRunner().invoke(app, ["study", "--help"], terminal_width=200)
    assert res.exit_code == 0 and "cost" in res.stdout
    res = CliRunner().invoke(app, ["study", "cost", "--help"], terminal_width=200)
    out = " ".join(res.stdout.split())
    assert res.exit_code == 0, res.output
    for key in ("Config keys", "concurrency (default [1, 16])", "repeats (default 3)", "price_out_per_mtok",
                "gpu_hour", "endpoints", "problems.split"):
        assert key in out, key
    res = CliRunner().invoke(app, ["study", "cost", f"out={tmp_path / 'c'}", "run_dir=", "nonsense=1"])
    assert res.exit_code == 2 and "nonsense" in res.output
    res = CliRunner().invoke(app, ["study", "cost", f"out={tmp_path / 'c'}", "run_dir=", "repeats=0"])
    assert res.exit_code == 2 and "repeats" in res.output
    assert not (tmp_path / "c").exists()  # nothing was written
