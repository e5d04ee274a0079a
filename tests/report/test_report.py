"""Report: run on synthetic summaries/samples/logs; self-contained HTML; numbers-driven prose."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tracewise.core.config import build
from tracewise.evaluate.metrics import read_summary, summarize, write_summary
from tracewise.core.records import Sample, write_records
from tracewise.report.render import markdown_to_html
from tracewise.report.stage import (
    ReportConfig,
    difficulty_reading,
    headline,
    load_train_log,
    run,
)

# experiment -> (tokens on level 1, tokens on level 3, correct samples of 4 on level 1, on level 3)
PROFILES = {"r1": (3000, 5000, 4, 3), "gpt-oss": (900, 1100, 4, 0), "mix": (800, 4000, 4, 3)}


def make_samples(exp: str) -> list[Sample]:
    easy_tok, hard_tok, easy_ok, hard_ok = PROFILES[exp]
    out = []
    for pid, level, tok, n_ok in (("e1", 1, easy_tok, easy_ok), ("e2", 1, easy_tok, easy_ok),
                                  ("h1", 3, hard_tok, hard_ok), ("h2", 3, hard_tok, 0)):
        for i in range(4):
            ok = i < n_ok
            out.append(Sample(
                experiment=exp, benchmark="arith", problem_id=pid, sample_idx=i, text="", thinking="",
                answer_text="", pred="42" if ok else f"w{i}", correct=ok, reason="correct" if ok else "wrong",
                n_tokens=tok, n_thinking_tokens=tok - 20, n_answer_tokens=20, level=level,
            ))
    return out


@pytest.fixture()
def inputs(tmp_path: Path) -> dict:
    summaries, samples, logs, rows = [], [], [], {}
    for exp in PROFILES:
        row = summarize(make_samples(exp), exp, "arith", n_boot=200).to_row()
        rows[exp] = row
        summaries.append(str(write_summary(tmp_path / exp / "summary.json", [row])))
        samples.append(str(write_records(tmp_path / exp / "samples.jsonl", make_samples(exp))))
        run_dir = tmp_path / f"train-{exp}"
        run_dir.mkdir()
        (run_dir / "experiment.txt").write_text(exp + "\n")
        history = [{"step": s, "loss": 2.0 / s} for s in (1, 2, 3)] + [{"step": 3, "eval_loss": 1.0}]
        (run_dir / "log_history.json").write_text(json.dumps(history))
        logs.append(str(run_dir / "log_history.json"))
    curate = tmp_path / "curate.md"
    curate.write_text("| teacher | kept |\n|---|---|\n| r1 | 91 |\n")
    return {"summaries": summaries, "samples": samples, "train_logs": logs, "rows": rows,
            "curate": str(curate), "tmp": tmp_path}


def test_run_writes_self_contained_report(inputs: dict) -> None:
    out = inputs["tmp"] / "report"
    cfg = ReportConfig(out=str(out), summaries=inputs["summaries"], samples=inputs["samples"],
                       train_logs=inputs["train_logs"], curate_table=inputs["curate"], title="Distill study")
    html_path = run(cfg)
    assert html_path == out / "report.html"
    page = html_path.read_text()
    md = (out / "report.md").read_text()

    # every image is inline; no src points at a file
    srcs = re.findall(r'src="([^"]*)"', page)
    assert len(srcs) == 3 and all(s.startswith("data:image/png;base64,") for s in srcs)
    # the markdown refers to PNGs saved next to it
    refs = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert refs == ["accuracy_vs_tokens.png", "learning_curves.png", "solve_histogram.png"]
    assert all((out / r).read_bytes().startswith(b"\x89PNG") for r in refs)

    assert "<title>Distill study</title>" in page
    assert "<td>r1</td><td>91</td>" in page  # curate table included and rendered
    assert '<tr class="hl"><td><strong>mix</strong></td>' in page
    assert sorted(r["experiment"] for r in read_summary(out / "summary.json")) == ["gpt-oss", "mix", "r1"]

    # headline: r1 has the most tokens (4000), gpt-oss the fewest (1000); pass@8 0.75 vs 0.5
    r1, oss = inputs["rows"]["r1"], inputs["rows"]["gpt-oss"]
    ratio = r1["mean_tokens"] / oss["mean_tokens"]
    points = abs(r1["pass@8"] - oss["pass@8"]) * 100
    assert (ratio, points) == (pytest.approx(4.0), pytest.approx(25.0))
    assert f"gpt-oss used {ratio:.1f}× fewer tokens than r1" in md
    assert f"pass@8 differs by {points:.1f} points" in md
    # the pass@1 column shows the CI read from the summary
    lo, hi = r1["ci95"]["pass@1"]
    assert f"| {r1['pass@1']:.3f} [{lo:.3f}, {hi:.3f}] |" in md


def test_difficulty_reading_is_computed_from_numbers(inputs: dict) -> None:
    out = inputs["tmp"] / "report"
    run(ReportConfig(out=str(out), summaries=inputs["summaries"], samples=inputs["samples"]))
    md = (out / "report.md").read_text()
    assert "mix spends 5.00× the tokens on level 3" in md
    assert "r1 1.67×, gpt-oss 1.22×" in md
    assert "more length adaptation than any other student" in md
    assert "Learning curves" not in md  # no logs given


def test_report_of_a_run_shorter_than_its_logging_steps_says_no_loss_was_logged(inputs: dict) -> None:
    # a 3-step run with logging_steps=10 logs only HF's final summary; the report used to stop on it
    short = Path(inputs["train_logs"][0])
    short.write_text(json.dumps([{"step": 3, "train_loss": 2.0, "train_runtime": 1.0}]))
    out = inputs["tmp"] / "report"
    run(ReportConfig(out=str(out), summaries=inputs["summaries"], train_logs=inputs["train_logs"]))
    md = (out / "report.md").read_text()
    assert "No loss was logged for r1 (the run was shorter than its `logging_steps`)." in md
    assert "learning_curves.png" in md  # the other runs' curves are still drawn
    for log in inputs["train_logs"]:
        Path(log).write_text(json.dumps([{"step": 3, "train_loss": 2.0}]))
    run(ReportConfig(out=str(out), summaries=inputs["summaries"], train_logs=inputs["train_logs"]))
    assert "learning_curves.png" not in (out / "report.md").read_text()


def test_level_table_falls_back_to_summary_rows(inputs: dict) -> None:
    out = inputs["tmp"] / "report"
    run(ReportConfig(out=str(out), summaries=inputs["summaries"], mix_experiment="gpt-oss"))
    md = (out / "report.md").read_text()
    assert "| **gpt-oss** |" in md
    assert "gpt-oss spends 1.22×" in md and "less length adaptation than every other student" in md


def test_difficulty_reading_variants() -> None:
    def data(easy: float, hard: float) -> dict:
        return {"tokens_by_level": {"1": easy, "2": hard}, "pass@1_by_level": {"1": 0.9, "2": 0.5}}

    middle = difficulty_reading({"a": data(100, 300), "mix": data(100, 200), "b": data(100, 110)}, "mix")
    assert "mix spends 2.00×" in middle and "within the range" in middle
    assert "no experiment named 'mix'" in difficulty_reading({"a": data(100, 300)}, "mix")
    flat = {"mix": {"tokens_by_level": {"1": 50.0}, "pass@1_by_level": {"1": 1.0}}}
    assert "cannot be assessed" in difficulty_reading(flat, "mix")


def test_headline_is_generic_over_names() -> None:
    rows = [
        {"experiment": "alpha", "benchmark": "b", "mean_tokens": 2000.0, "pass@1": 0.5, "pass@8": 0.9},
        {"experiment": "beta", "benchmark": "b", "mean_tokens": 500.0, "pass@1": 0.4, "pass@8": 0.85},
        {"experiment": "gamma", "benchmark": "b", "mean_tokens": 1000.0, "pass@1": 0.4, "pass@8": 0.1},
    ]
    assert headline(rows).startswith("beta used 4.0× fewer tokens than alpha (500 vs 2000); pass@8 differs by 5.0")
    assert "no other experiment" in headline(rows[:1])


def test_extra_sections_embed_their_images(inputs: dict, tmp_path: Path) -> None:
    plot = inputs["tmp"] / "sweep.png"
    plot.write_bytes(b"\x89PNG\r\n\x1a\nfake")
    out = tmp_path / "rep"
    section = {"title": "RL sweep", "markdown": "Budget **matters**.\n\n- a\n- b", "images": [str(plot)]}
    run(build(ReportConfig, {"out": str(out), "summaries": inputs["summaries"][:1], "extra_sections": [section]}))
    md = (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    assert "## RL sweep" in md and "(section4-sweep.png)" in md
    assert (out / "section4-sweep.png").exists()
    assert "<p>Budget <strong>matters</strong>.</p>" in page and "<ul><li>a</li><li>b</li></ul>" in page
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 2
    assert "no other experiment" in md  # one summary → single-experiment headline


def test_config_validation(inputs: dict, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="summaries"):
        run(ReportConfig(out=str(tmp_path)))
    with pytest.raises(ValueError, match=r"extra_sections\[0\].*not found"):
        build(ReportConfig, {"out": "o", "summaries": ["s"], "extra_sections": [{"title": "t", "images": ["/no"]}]})
    with pytest.raises(ValueError, match=r"extra_sections\[0\]"):
        build(ReportConfig, {"out": "o", "summaries": ["s"], "extra_sections": [{"markdown": "x"}]})
    with pytest.raises(ValueError, match="curate_table"):
        build(ReportConfig, {"out": "o", "summaries": ["s"], "curate_table": str(tmp_path / "none.md")})
    twice = [inputs["summaries"][0], inputs["summaries"][0]]
    with pytest.raises(ValueError, match="already read"):
        run(ReportConfig(out=str(tmp_path / "o"), summaries=twice))


def test_load_train_log(tmp_path: Path) -> None:
    run_dir = tmp_path / "run-7"
    run_dir.mkdir()
    log = run_dir / "log_history.json"
    log.write_text(json.dumps([{"step": 5, "loss": 1.5}, {"step": 5, "eval_loss": 9}, {"step": 10, "loss": 1.0},
                               {"step": 10, "train_loss": 1.2}]))
    assert load_train_log(log) == ("run-7", [5.0, 10.0], [1.5, 1.0])
    (run_dir / "experiment.txt").write_text("  r1-student\n")
    assert load_train_log(log)[0] == "r1-student"
    # shorter than logging_steps: only the final summary, an empty curve rather than an error
    log.write_text(json.dumps([{"step": 3, "train_loss": 2.0}]))
    assert load_train_log(log) == ("r1-student", [], [])
    log.write_text(json.dumps([{"step": 1, "eval_loss": 2}]))
    with pytest.raises(ValueError, match="no entries"):
        load_train_log(log)
    log.write_text(json.dumps({"step": 1}))
    with pytest.raises(ValueError, match="JSON list"):
        load_train_log(log)


def test_markdown_to_html_never_links_missing_images(tmp_path: Path) -> None:
    page = markdown_to_html("# T\n\n![plot](nope.png) and <b>raw</b> `x<y`", tmp_path)
    assert "src=" not in page and "missing image" in page
    assert "&lt;b&gt;" in page and "<code>x&lt;y</code>" in page and "<h1>T</h1>" in page


def test_headline_readings_follow_the_paired_intervals(inputs: dict) -> None:
    """Hand case (4 problems, 1 seed): gpt-oss writes 900/1100 tokens where r1 writes 3000/5000, so every
    resample's ratio lies in [1100/5000, 900/3000] = [0.22, 0.30]: fewer tokens, distinguishable. pass@1 per
    problem r1 (1, 1, .75, 0) vs gpt-oss (1, 1, 0, 0): +18.8 points, but a resample without h1 (probability
    (3/4)^4 = 0.32) gives 0, so the interval reaches 0: not distinguishable."""
    out = inputs["tmp"] / "report"
    run(ReportConfig(out=str(out), summaries=inputs["summaries"], samples=inputs["samples"]))
    md = (out / "report.md").read_text()
    assert "gpt-oss uses 0.25× the tokens of r1" in md and "fewer tokens, distinguishable (4 problems × 1 seed)" in md
    assert "pass@1: r1 − gpt-oss = +18.8 points" in md
    assert "not distinguishable from zero at this size (4 problems × 1 seed)" in md
    # without samples the same rows give point estimates that say they are not findings
    run(ReportConfig(out=str(out), summaries=inputs["summaries"]))
    assert "carry no interval and are not claimed as effects" in (out / "report.md").read_text()
