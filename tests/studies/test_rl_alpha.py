"""Study ``rl-alpha``: the reading is computed from numbers, bad configs fail early, a tiny sweep end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tracewise.core.config import load_config
from tracewise.studies import rl_alpha
from tracewise.studies.rl_alpha import RLAlphaConfig, reading

ROOT = Path(__file__).resolve().parents[2]


def _row(alpha, tokens, p1):
    return {"alpha": alpha, "mean_tokens": tokens, "pass@1": p1}


def test_reading_holds_only_with_enough_savings_and_accuracy():
    rows = [_row(None, 210, 0.40), _row(0.0, 200, 0.40), _row(0.1, 150, 0.395), _row(0.2, 130, 0.385),
            _row(0.4, 100, 0.30)]
    # 0.2: 35% fewer tokens, -1.5 points -> holds; 0.4 cuts 50% but loses 10 points.
    line = reading(rows)
    assert line.startswith("**Holds:** α = 0.2 uses 35% fewer tokens") and "-1.5 points" in line
    rows[3]["pass@1"] = 0.37  # now -3 points: nothing qualifies; the largest cut is reported
    line = reading(rows)
    assert line.startswith("**Does not hold:**") and "largest cut is 50% at α = 0.4 (pass@1 -10.0 points)" in line
    assert reading(rows, token_cut=0.2, max_drop=3.0).startswith("**Holds:** α = 0.2")


@pytest.mark.parametrize("overrides, match", [
    (["alphas=[0.1,0.2]"], "must include 0"),
    (["rl={model: x}"], "rl.model is set by the study"),
    (["rl={rewards: [{name: correctness}]}"], "exactly one arora_zanette"),
    (["rl={rewards: [{name: arora_zanette}], num_generations: 1, per_device_train_batch_size: 8}"], "num_generations"),
    (["rl={rewards: [{name: arora_zanette}, {name: kimi}], learning_rate: -1}"], "learning_rate"),
    (["target_token_cut=1.5"], "target_token_cut"),
])
def test_bad_study_config_fails_before_training(overrides, match):
    with pytest.raises(ValueError, match=match):
        load_config(RLAlphaConfig, None, overrides)


def test_missing_student_is_a_clear_error(tmp_path):
    cfg = RLAlphaConfig(quickstart=str(tmp_path))
    with pytest.raises(ValueError, match="expected one finished SFT run labelled 'r1'"):
        rl_alpha.run(cfg)


def test_shipped_sweep_config_loads():
    cfg = load_config(RLAlphaConfig, ROOT / "configs/rl/alpha_sweep.yaml")
    assert sorted(cfg.alphas) == [0.0, 0.05, 0.1, 0.2, 0.4] and cfg.student == "r1" and cfg.rl["learning_rate"] == 1e-4
    rl_cfg = cfg.rl_config(0.2, "gpt2")
    assert rl_cfg.rewards == [{"name": "arora_zanette", "alpha": 0.2}] and rl_cfg.experiment == "r1-rl-a0.2"
    assert (rl_cfg.num_generations, rl_cfg.beta, rl_cfg.temperature) == (8, 1e-3, 0.6)
    assert rl_cfg.problems.world.n_train == 4000 and cfg.eval_problems.split == "test"


def test_tiny_sweep_writes_the_section_and_reruns_as_a_no_op(tmp_path, student_path):
    # The plumbing only (the tiny untrained student mostly scores 0; test_rl covers learning).
    overrides = [f"model={student_path}", f"out={tmp_path}", "alphas=[0,0.4]", "threads=1",
                 "rl={problems: {world: {n_train: 8, n_test: 0}}, rewards: [{name: arora_zanette}], "
                 "num_generations: 8, per_device_train_batch_size: 16, max_steps: 1, max_completion_length: 24, "
                 "learning_rate: 1.0e-3, save_steps: 1}",
                 "eval_problems.world.n_train=8", "eval_problems.world.n_test=4", "eval_sampling.n=2",
                 "eval_sampling.max_tokens=24"]
    cfg = load_config(RLAlphaConfig, None, overrides)
    section = rl_alpha.run(cfg)
    assert section == tmp_path / "sections" / "rl_length_penalty.json"
    data = json.loads(section.read_text())
    assert data["title"] == "RL length penalty" and (section.parent / data["images"][0]).stat().st_size > 0
    rows = json.loads((section.parent / "rl_length_penalty_rows.json").read_text())
    assert [r["alpha"] for r in rows] == [None, 0.0, 0.4] and all(r["steps"] == 1 for r in rows[1:])
    md = data["markdown"]
    for r in rows:
        assert f"| {r['label']} | {r['mean_tokens']:.1f} |" in md
    assert reading(rows) in md  # the reading line is the one computed from these rows
    start = rows[0]
    assert 0 <= start["all_correct_frac"] <= start["two_plus_correct_frac"] <= 1
    assert f"solves {start['all_correct_frac']:.0%} of held-out problems in all 2 samples" in md
    runs = sorted(p.name for p in tmp_path.glob("*-*"))
    assert sum(n.startswith("rl-") for n in runs) == 2 and sum(n.startswith("eval-") for n in runs) == 3
    stamps = {p: (p / "DONE").stat().st_mtime for p in tmp_path.glob("*-*")}
    assert rl_alpha.run(cfg) == section  # rerun: every stage is a no-op
    assert {p: (p / "DONE").stat().st_mtime for p in tmp_path.glob("*-*")} == stamps


def _tiny_overrides(tmp_path, student_path):
    return [f"model={student_path}", f"out={tmp_path}", "alphas=[0,0.4]", "threads=1",
            "rl={problems: {world: {n_train: 8, n_test: 0}}, rewards: [{name: arora_zanette}], "
            "num_generations: 8, per_device_train_batch_size: 16, max_steps: 1, max_completion_length: 24, "
            "learning_rate: 1.0e-3, save_steps: 1}",
            "eval_problems.world.n_train=8", "eval_problems.world.n_test=4", "eval_sampling.n=2",
            "eval_sampling.max_tokens=24"]


def test_start_models_per_seed_of_a_multi_seed_quickstart(tmp_path):
    for seed in (0, 1):
        d = tmp_path / f"sft-r1-s{seed}"
        (d / "model").mkdir(parents=True)
        (d / "experiment.txt").write_text("r1")
        (d / "config.yaml").write_text(f"experiment: r1\nseed: {seed}\n")
        (d / "DONE").write_text("{}")
    cfg = RLAlphaConfig(quickstart=str(tmp_path), seeds=[1, 0])
    assert cfg.start_models() == [str(tmp_path / "sft-r1-s1" / "model"), str(tmp_path / "sft-r1-s0" / "model")]
    with pytest.raises(ValueError, match=r"one finished SFT run labelled 'r1' per seed \[0, 1, 2\]"):
        RLAlphaConfig(quickstart=str(tmp_path), seeds=3).start_models()
    with pytest.raises(ValueError, match="rl.seed"):
        load_config(RLAlphaConfig, None, ["seeds=2", "rl={seed: 3, rewards: [{name: arora_zanette}]}"])


def test_tiny_sweep_two_seeds(tmp_path, student_path):
    import yaml

    cfg = load_config(RLAlphaConfig, None, [*_tiny_overrides(tmp_path, student_path), "seeds=2"])
    section = rl_alpha.run(cfg)
    rl_cfgs = [yaml.safe_load((d / "config.yaml").read_text()) for d in tmp_path.glob("rl-*")]
    assert sorted((c["experiment"], c["seed"]) for c in rl_cfgs) == [("r1-rl-a0", 0), ("r1-rl-a0", 1),
                                                                      ("r1-rl-a0.4", 0), ("r1-rl-a0.4", 1)]
    a0 = [{k: v for k, v in c.items() if k != "seed"} for c in rl_cfgs if c["experiment"] == "r1-rl-a0"]
    assert a0[0] == a0[1]  # the RL replicates differ in their seed alone
    evals = [yaml.safe_load((d / "config.yaml").read_text()) for d in tmp_path.glob("eval-*")]
    assert sorted(e["sampling"]["seed"] for e in evals) == [0, 0, 0, 1, 1, 1]
    rows = json.loads((section.parent / "rl_length_penalty_rows.json").read_text())
    assert all(r["seeds"] == 2 and r["sd"]["pass@1"] is not None for r in rows)
    assert all(len(r["rl_dirs"]) == 2 for r in rows[1:])
    md = json.loads(section.read_text())["markdown"]
    assert "Paired: r1-rl-a0.4 uses" in md and f"({rows[0]['n']} problems × 2 seeds)" in md
    assert "in all 2 samples" in md  # samples per problem of one seed, not of all seeds together
    assert "Baseline check, SFT start vs α = 0:" in md and "pass@1: r1 − r1-rl-a0 = " in md
    assert "Each α against α = 0, paired" in md and "\n| 0.4 | " in md and "\n| 0 | " not in md
    stamps = {p: (p / "DONE").stat().st_mtime for p in tmp_path.glob("*-*")}
    assert rl_alpha.run(cfg) == section and {p: (p / "DONE").stat().st_mtime for p in tmp_path.glob("*-*")} == stamps


@pytest.mark.parametrize("estimate, ci, verdict", [
    (0.12, (0.05, 0.20), "**α = 0 lost accuracy**"),          # start − α=0 > 0: RL drifted down
    (-0.08, (-0.15, -0.01), "α = 0 gained accuracy"),
    (0.01, (-0.03, 0.05), "α = 0 held the SFT start's accuracy"),
])
def test_baseline_note_reads_the_start_vs_alpha0_interval(estimate, ci, verdict):
    from tracewise.evaluate.replicates import Comparison

    c = Comparison("pass@1", "r1", "r1-rl-a0", estimate, ci, 0.0, 100, 3)
    note = rl_alpha.baseline_note([c])
    assert note.startswith(f"Baseline check, SFT start vs α = 0: {verdict}")
    assert f"[95% CI {ci[0] * 100:+.1f}, {ci[1] * 100:+.1f}]" in note and "(100 problems × 3 seeds)" in note
    assert rl_alpha.baseline_note([]) == ""


def test_paired_table_shows_alpha_minus_alpha0_from_hand_values():
    from tracewise.evaluate.replicates import Comparison

    # (α=0) − α = +11.4 points [+2.6, +19.6]: the table shows α − (α=0) = −11.4 [−19.6, −2.6]
    comps = [Comparison("token_ratio", "a0", "a0.4", 0.68, (0.63, 0.73), 1.0, 100, 3),
             Comparison("pass@1", "a0", "a0.4", 0.114, (0.026, 0.196), 0.0, 100, 3)]
    flat = [Comparison("token_ratio", "a0", "a0.1", 0.99, (0.95, 1.03), 1.0, 100, 3),
            Comparison("pass@1", "a0", "a0.1", 0.01, (-0.02, 0.04), 0.0, 100, 3)]
    lines = rl_alpha.paired_table({0.4: comps, 0.1: flat})
    assert lines[2] == "| 0.1 | 0.99× [0.95, 1.03] | -1.0 [-4.0, +2.0] | not distinguishable |"
    assert lines[3] == "| 0.4 | 0.68× [0.63, 0.73] | -11.4 [-19.6, -2.6] | distinguishable |"
