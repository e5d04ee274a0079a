"""Judge-bias and curation studies: bad input refused before work, readings computed, tiny end-to-end (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tracewise.core.config import load_config
from tracewise.curate.strategies import SelectionConfig
from tracewise.curate.decontam import DecontamConfig
from tracewise.studies import curation_ablation, judge_bias
from tracewise.studies.common import StudyEval, TrainSettings, pearson
from tracewise.studies.curation_ablation import CurationStudyConfig
from tracewise.studies.judge_bias import JudgeBiasConfig
from tracewise.world.judge import JudgeConfig
from tracewise.world.problems import WorldConfig
from tracewise.world.teachers import TeacherConfig

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_configs_load():
    jb = load_config(JudgeBiasConfig, ROOT / "configs/studies/judge_bias.yaml")
    cu = load_config(CurationStudyConfig, ROOT / "configs/studies/curation.yaml")
    assert [v[0] for v in judge_bias.variants(jb)] == ["judge", "math_verify", "both", "none", "judge 0.3/0.1",
                                                        "judge 0.6/0.2"]
    assert cu.strategies == ["random", "s1", "limo", "adaptive"] and cu.target_size == 400


@pytest.mark.parametrize("cls, overrides, msg", [
    (JudgeBiasConfig, ["judge_sweep=[{false_positive_rate: 1.5}]"], "false_positive_rate must be in"),
    (JudgeBiasConfig, ["judge.false_negative_rate=-0.1"], "false_negative_rate must be in"),
    (JudgeBiasConfig, ["filters=[judge,vibes]"], "judge_bias.filters"),
    (CurationStudyConfig, ["strategies=[random,nope]"], "unknown strategy"),
    (CurationStudyConfig, ["target_size=999999"], "larger than the pool"),
    (CurationStudyConfig, ["selection.adaptive_threshold=2"], "adaptive_threshold"),
])
def test_bad_input_fails_before_any_work(tmp_path, cls, overrides, msg):
    with pytest.raises(ValueError, match=msg):
        load_config(cls, None, [f"out={tmp_path}", *overrides])
    assert list(tmp_path.iterdir()) == []


def test_judge_sweep_rates_checked_by_the_study_itself():
    cfg = JudgeBiasConfig(judge_sweep=[JudgeConfig(false_positive_rate=0.2), JudgeConfig(false_negative_rate=1.2)])
    with pytest.raises(ValueError, match=r"judge_sweep\[1\].false_negative_rate"):
        cfg.validate()


def jb_row(variant, kept, wrong, p1, tokens=50.0):
    return {"variant": variant, "filter": variant, "judge": "–", "kept": kept, "pool": 100, "known_wrong": 30,
            "wrong_let_through": wrong, "mean_tokens_kept": 40.0, "pass@1": p1, "pass@8": p1 + 0.1,
            "mean_tokens": tokens}


def test_judge_bias_reading_follows_the_numbers():
    rows = [jb_row("math_verify", 70, 0, 0.60), jb_row("none", 100, 30, 0.40), jb_row("judge", 75, 5, 0.55)]
    line = judge_bias.reading(rows)
    assert line.startswith("none let the most known-wrong traces through (30 of 100 kept, 30.0%), "
                           "math_verify the fewest (0)")
    assert "from 0.400 (none) to 0.600 (math_verify), a spread of 20.0 points" in line
    assert "goes with lower pass@1" in line
    flipped = [jb_row("math_verify", 70, 0, 0.40), jb_row("none", 100, 30, 0.60), jb_row("judge", 75, 5, 0.50)]
    assert "goes with higher pass@1" in judge_bias.reading(flipped)
    assert "| none | none | – | 100 of 100 | 30 of 30 |" in judge_bias.render(rows)


def cu_row(strategy, p1, tokens):
    return {"strategy": strategy, "selected": 10, "pool": 50, "teachers": {"r1": 10}, "levels": {"1": 10},
            "train_tokens": 100.0, "pass@1": p1, "pass@8": p1 + 0.1, "mean_tokens": tokens}


def test_curation_reading_follows_the_numbers():
    rows = [cu_row("random", 0.50, 100.0), cu_row("s1", 0.62, 250.0), cu_row("adaptive", 0.55, 80.0)]
    line = curation_ablation.reading(rows)
    assert line.startswith("s1 gives the best student pass@1 (0.620, pass@8 0.720) at 250 tokens per answer; "
                           "adaptive is cheapest (80 tokens, pass@1 0.550)")
    assert line.endswith("vs random: +12.0 points pass@1 at 2.50x random's tokens.")
    assert curation_ablation.reading([cu_row("random", 0.7, 100.0), cu_row("s1", 0.6, 50.0)]).startswith("random gives")


def test_pearson():
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert pearson([1, 1, 1], [1, 2, 3]) is None and pearson([1, 2], [1, 2]) is None


TINY_TRAIN = TrainSettings(max_steps=2, batch_size=4)
TINY_EVAL = StudyEval(samples=2, max_tokens=8)
NO_BENCH = DecontamConfig(benchmarks=[])


@pytest.mark.slow
def test_judge_bias_end_to_end_tiny(tmp_path, student_path):
    cfg = JudgeBiasConfig(out=str(tmp_path), base_model=student_path, world=WorldConfig(n_train=40, n_test=4),
                          filters=["math_verify", "none"], judge_sweep=[JudgeConfig(false_positive_rate=1.0)],
                          teacher=TeacherConfig(style="gpt-oss", error_rate=[0.5]),
                          decontam=NO_BENCH, train=TINY_TRAIN, eval=TINY_EVAL, parallel=1)
    section = json.loads(judge_bias.run(cfg).read_text())
    res = {r["variant"]: r for r in json.loads((tmp_path / "judge_bias" / "judge_bias.json").read_text())["results"]}
    assert res["math_verify"]["wrong_let_through"] == 0  # wrong embedded answers never pass math-verify
    assert res["none"]["kept"] > res["math_verify"]["kept"]
    # a judge that accepts every wrong answer lets known-wrong traces through; math-verify none
    assert res["judge 1/0.02"]["wrong_let_through"] > 0
    assert section["images"] == ["judge_bias.png"] and "**Reading:**" in section["markdown"]


@pytest.mark.slow
def test_curation_end_to_end_tiny(tmp_path, student_path):
    cfg = CurationStudyConfig(out=str(tmp_path), base_model=student_path, world=WorldConfig(n_train=40, n_test=4),
                              target_size=8, reference_steps=0, decontam=NO_BENCH, train=TINY_TRAIN, eval=TINY_EVAL,
                              parallel=1, selection=SelectionConfig())
    section = json.loads(curation_ablation.run(cfg).read_text())
    res = json.loads((tmp_path / "curation" / "curation.json").read_text())["results"]
    assert [r["strategy"] for r in res] == ["random", "s1", "limo", "adaptive"]
    assert all(r["selected"] == 8 for r in res) and res[1]["teachers"] == {"r1": 8}
    assert "| adaptive | 8 of" in section["markdown"]
