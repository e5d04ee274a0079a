"""``seeds`` in the curation studies: one student per variant and seed, rows over seeds, paired readings."""

from __future__ import annotations

import json

import pytest
import yaml

from tracewise.curate.decontam import DecontamConfig
from tracewise.curate.strategies import SelectionConfig
from tracewise.evaluate.replicates import Comparison
from tracewise.studies import curation_ablation, judge_bias
from tracewise.studies.common import StudyEval, TrainSettings
from tracewise.studies.curation_ablation import CurationStudyConfig
from tracewise.studies.judge_bias import JudgeBiasConfig
from tracewise.evaluate.replicates import cell
from tracewise.world.problems import WorldConfig
from tracewise.world.teachers import TeacherConfig

TINY = dict(world=WorldConfig(n_train=40, n_test=4), decontam=DecontamConfig(benchmarks=[]),
            train=TrainSettings(max_steps=2, batch_size=4), eval=StudyEval(samples=2, max_tokens=8), parallel=1)


def _row(variant, p1, tokens=50.0, wrong=0, kept=50):
    return {"variant": variant, "filter": variant, "judge": "–", "kept": kept, "pool": 100, "known_wrong": 30,
            "wrong_let_through": wrong, "mean_tokens_kept": 40.0, "pass@1": p1, "pass@8": p1, "mean_tokens": tokens,
            "seeds": 2, "sd": {"pass@1": 0.02, "pass@8": 0.0, "mean_tokens": 1.5},
            "ci95": {"pass@1": [p1 - 0.1, p1 + 0.1], "pass@8": [p1, p1], "mean_tokens": [tokens - 3, tokens + 3]}}


def test_cell_shows_mean_sd_and_interval():
    r = _row("x", 0.5)
    assert cell(r, "pass@1") == "0.500 ± 0.020 [0.400, 0.600]"
    assert cell(r, "mean_tokens", 1) == "50.0 ± 1.5 [47.0, 53.0]"
    assert cell({"pass@1": 0.25, "sd": {"pass@1": None}, "ci95": {}}, "pass@1") == "0.250"  # one seed, no interval


def test_judge_bias_reading_says_when_a_difference_is_not_distinguishable():
    rows = [_row("math_verify", 0.60, wrong=0, kept=70), _row("none", 0.55, wrong=30, kept=100)]
    assert judge_bias.contrasts(rows) == [("math_verify", "none")]  # best/worst is also clean/dirty: once
    spans_zero = Comparison("pass@1", "math_verify", "none", 0.05, (-0.03, 0.13), 0.0, 40, 2)
    line = judge_bias.reading(rows, [spans_zero])
    assert line.endswith("Paired pass@1: math_verify − none = +5.0 points [95% CI -3.0, +13.0]: not distinguishable "
                         "from zero at this size (40 problems × 2 seeds).")
    excludes_zero = Comparison("pass@1", "math_verify", "none", 0.05, (0.01, 0.09), 0.0, 40, 2)
    assert "math_verify is higher, distinguishable from zero (40 problems × 2 seeds)" in judge_bias.reading(
        rows, [excludes_zero])
    assert "| 0.600 ± 0.020 [0.500, 0.700] |" in judge_bias.render(rows)


def test_curation_contrast_is_best_vs_random_else_the_runner_up():
    def r(s, p1):
        return {"strategy": s, "pass@1": p1, "mean_tokens": 10.0}
    assert curation_ablation.contrast([r("random", 0.5), r("s1", 0.6), r("limo", 0.55)]) == ("s1", "random")
    assert curation_ablation.contrast([r("random", 0.7), r("s1", 0.6), r("limo", 0.65)]) == ("random", "limo")
    assert curation_ablation.contrast([r("random", 0.7)]) is None


def _sft_seeds(out):
    """{train seed: config} of every SFT run under ``out`` but the reference student's."""
    cfgs = [yaml.safe_load((d / "config.yaml").read_text()) for d in sorted(out.glob("sft-*"))]
    return [c for c in cfgs if c["experiment"] != "reference"]


def test_judge_bias_two_seeds_runs_differ_in_seed_only_and_rerun_reuses_them(tmp_path, student_path):
    cfg = JudgeBiasConfig(out=str(tmp_path), base_model=student_path, filters=["math_verify", "none"], judge_sweep=[],
                          teacher=TeacherConfig(style="gpt-oss", error_rate=[0.5]), seeds=2, **TINY)
    judge_bias.run(cfg)
    sfts = _sft_seeds(tmp_path)
    assert sorted((c["experiment"], c["seed"]) for c in sfts) == [("math_verify", 0), ("math_verify", 1),
                                                                   ("none", 0), ("none", 1)]
    mv = [{k: v for k, v in c.items() if k != "seed"} for c in sfts if c["experiment"] == "math_verify"]
    assert mv[0] == mv[1]  # a replicate differs in its seed alone
    evals = [yaml.safe_load((d / "config.yaml").read_text()) for d in tmp_path.glob("eval-*")]
    assert sorted(e["sampling"]["seed"] for e in evals) == [0, 0, 1, 1]
    out = json.loads((tmp_path / "judge_bias" / "judge_bias.json").read_text())
    for r in out["results"]:
        assert r["seeds"] == 2 and set(r["sd"]) >= {"pass@1", "mean_tokens"} and len(r["ci95"]["pass@1"]) == 2
    assert {(c["a"], c["b"]) for c in out["comparisons"]} <= {("math_verify", "none"), ("none", "math_verify")}
    assert all(c["seeds"] == 2 and c["n_problems"] == 4 for c in out["comparisons"])
    stamps = {d: (d / "DONE").stat().st_mtime_ns for d in tmp_path.glob("*-*")}
    judge_bias.run(cfg)
    assert {d: (d / "DONE").stat().st_mtime_ns for d in tmp_path.glob("*-*")} == stamps  # nothing retrained


def test_curation_two_seeds_rows_are_means_over_seeds(tmp_path, student_path):
    cfg = CurationStudyConfig(out=str(tmp_path), base_model=student_path, strategies=["random", "limo"],
                              target_size=8, reference_steps=0, selection=SelectionConfig(), seeds=[3, 4], **TINY)
    section = json.loads(curation_ablation.run(cfg).read_text())
    assert sorted(c["seed"] for c in _sft_seeds(tmp_path)) == [3, 3, 4, 4]
    out = json.loads((tmp_path / "curation" / "curation.json").read_text())
    per_seed = {}
    for d in tmp_path.glob("eval-*"):
        c = yaml.safe_load((d / "config.yaml").read_text())
        per_seed[(c["experiment"], c["sampling"]["seed"])] = json.loads((d / "summary.json").read_text())["rows"][0]
    for r in out["results"]:
        a, b = per_seed[(r["strategy"], 3)], per_seed[(r["strategy"], 4)]
        assert r["seeds"] == 2 and r["pass@1"] == pytest.approx((a["pass@1"] + b["pass@1"]) / 2)
        assert r["sd"]["mean_tokens"] == pytest.approx(abs(a["mean_tokens"] - b["mean_tokens"]) / 2 ** 0.5)
    assert "Paired 95% intervals" in section["markdown"] and "4 problems × 2 seeds" in section["markdown"]


def test_study_evals_keep_their_run_dirs():
    """The studies' evals, now built by StudyEval.eval_config and run beside training, keep the run dirs of the
    configs eval_students built before replicates (threads are not hashed), so finished studies are reused."""
    from dataclasses import replace

    from tracewise.backends.base import SamplingParams
    from tracewise.core.store import stage_dir
    from tracewise.data.sources import ProblemsConfig
    from tracewise.evaluate import EvalConfig

    test = ProblemsConfig(source="world", split="test", world=WorldConfig(n_train=1500, n_test=100))
    before = EvalConfig(out="r", experiment="none", model="m", problems=test, threads=2,
                        sampling=SamplingParams(n=8, temperature=0.6, max_tokens=200, seed=0))
    now = replace(StudyEval(max_tokens=200).eval_config("r", "none", test, 0), model="m", threads=1)
    assert stage_dir("r", "eval", now) == stage_dir("r", "eval", before)
