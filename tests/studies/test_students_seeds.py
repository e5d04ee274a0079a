"""``seeds`` in the studies of a quickstart run's students (controls, few-shot): replicate s evaluates the
student trained with seed s, sampled with seed s; rows are means over seeds with sd and ci95."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from tracewise.backends.base import SamplingParams
from tracewise.data.sources import ProblemsConfig
from tracewise.evaluate.metrics import read_summary
from tracewise.studies import few_shot
from tracewise.studies.common import discover_replicates
from tracewise.studies.controls import ControlsStudyConfig
from tracewise.studies.controls import run as controls
from tracewise.world.problems import WorldConfig

PROBLEMS = ProblemsConfig(split="test", world=WorldConfig(n_train=10, n_test=3))
SAMPLING = SamplingParams(n=2, temperature=1.0, max_tokens=8, seed=0)


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def _quickstart(root, student_path, names=("r1", "gpt-oss"), seeds=(0, 1)):
    """A run dir shaped like `quickstart seeds=2`: one finished sft run per student and train seed."""
    for name in names:
        for seed in seeds:
            d = root / f"sft-{name}-s{seed}"
            d.mkdir(parents=True)
            (d / "model").symlink_to(student_path, target_is_directory=True)
            (d / "experiment.txt").write_text(name)
            (d / "config.yaml").write_text(f"experiment: {name}\nseed: {seed}\n")
            (d / "DONE").write_text("")
    return root


def _eval_configs(out):
    return {d: yaml.safe_load((d / "config.yaml").read_text()) for d in out.glob("eval-*")}


def test_discover_replicates_groups_a_students_train_seeds(tmp_path, student_path):
    qs = _quickstart(tmp_path, student_path, names=("r1",))
    twin = tmp_path / "sft-r1-t"  # a later run of r1 with seed 0 again: another student, named by its dir
    twin.mkdir()
    (twin / "model").symlink_to(student_path, target_is_directory=True)
    (twin / "experiment.txt").write_text("r1")
    (twin / "config.yaml").write_text("experiment: r1\nseed: 0\n")
    (twin / "DONE").write_text("")
    assert discover_replicates(qs) == {"r1": {0: qs / "sft-r1-s0" / "model", 1: qs / "sft-r1-s1" / "model"},
                                       "r1 (sft-r1-t)": {0: twin / "model"}}


def test_controls_two_seeds(tmp_path, student_path):
    qs = _quickstart(tmp_path / "qs", student_path)
    cfg = ControlsStudyConfig(out=str(tmp_path / "study"), run_dir=str(qs), students=["r1"], controls=["truncate"],
                              budgets=[2, 4], threads=1, problems=PROBLEMS, sampling=SAMPLING, seeds=2)
    section = json.loads(controls(cfg).read_text())
    configs = _eval_configs(tmp_path / "study")
    assert sorted((c["control"]["name"], c["sampling"]["seed"], c["model"]) for c in configs.values()) == [
        (name, s, str(qs / f"sft-r1-s{s}" / "model")) for name in ("none", "truncate") for s in (0, 1)]
    rows = read_summary(tmp_path / "study" / "summary.json")
    assert [(r["experiment"], r["budget"]) for r in rows] == [("r1", None), ("r1 [truncate@2]", 2),
                                                             ("r1 [truncate@4]", 4)]
    for r in rows:
        per_seed = [next(x for x in read_summary(d / "summary.json") if x["experiment"] == r["experiment"])
                    for d, c in sorted(configs.items(), key=lambda dc: dc[1]["sampling"]["seed"])
                    if c["control"]["name"] == ("none" if r["budget"] is None else "truncate")]
        assert r["seeds"] == 2 and r["pass@1"] == pytest.approx((per_seed[0]["pass@1"] + per_seed[1]["pass@1"]) / 2)
        assert r["sd"]["mean_tokens"] == pytest.approx(abs(per_seed[0]["mean_tokens"] - per_seed[1]["mean_tokens"])
                                                       / 2 ** 0.5)
        assert r["ci95"]["pass@1"][0] <= r["pass@1"] <= r["ci95"]["pass@1"][1]
    assert "Over 2 seeds" in section["markdown"]
    stamps = {d: (d / "DONE").stat().st_mtime_ns for d in configs}
    controls(cfg)
    assert {d: (d / "DONE").stat().st_mtime_ns for d in configs} == stamps  # every eval reused
    with pytest.raises(ValueError, match=r"student 'r1': trained with seeds \[0, 1\], not \[5\]"):
        controls(ControlsStudyConfig(out=str(tmp_path / "x"), run_dir=str(qs), students=["r1"], seeds=[5]))


def _exemplars(path, teacher, completion):
    from datasets import Dataset

    Dataset.from_list([{"prompt": [{"role": "user", "content": f"Q{i}: 7 take 1?"}],
                        "completion": [{"role": "assistant", "content": completion}], "teacher": teacher}
                       for i in range(2)]).save_to_disk(str(path))
    return f"{teacher}={path}"


def test_few_shot_two_seeds_rows_and_paired_reading(tmp_path, student_path):
    qs = _quickstart(tmp_path / "qs", student_path)
    exemplars = [_exemplars(tmp_path / "r1", "r1", "<think>Wait, 7 - 1 = 6. Let me check: 6.</think>\\boxed{6}"),
                 _exemplars(tmp_path / "oss", "gpt-oss", "<think>7-1=6.</think>Answer: 6")]
    cfg = few_shot.FewShotStudyConfig(out=str(tmp_path / "out"), run_dir=str(qs), exemplars=exemplars, k=1,
                                      threads=1, problems=PROBLEMS, sampling=SAMPLING, seeds=2)
    section = json.loads(few_shot.run(cfg).read_text())
    assert len(_eval_configs(tmp_path / "out")) == 2 * 3 * 2  # students × (zero-shot + 2 styles) × seeds
    rows = read_summary(tmp_path / "out" / "summary.json")
    assert sorted((r["student"], r.get("few_shot_style", "")) for r in rows) == [
        ("gpt-oss", ""), ("gpt-oss", "gpt-oss"), ("gpt-oss", "r1"), ("r1", ""), ("r1", "gpt-oss"), ("r1", "r1")]
    assert all(r["seeds"] == 2 and r["sd"]["pass@1"] is not None for r in rows)
    md = section["markdown"]
    assert "Paired 95% intervals" in md and "3 problems × 2 seeds" in md and "Paired:" in md.split("\n")[0]


def test_controls_contrast_is_the_readings_two_settings():
    from tracewise.report.controls import reading, split_rows
    from tracewise.studies.controls import contrast

    def row(label, control, tokens, acc, budget=None):
        return {"experiment": label, "student": "s", "control": control, "budget": budget, "mean_tokens": tokens,
                "pass@1": acc}
    rows = [row("s [truncate@16]", "truncate", 16.0, 0.20, 16), row("s [truncate@64]", "truncate", 45.0, 0.42, 64),
            row("s", "none", 50.0, 0.45), row("s [truncate@128]", "truncate", 50.0, 0.45, 128)]
    # best: the trained student (a tie with truncate@128 goes to it); cheapest within 90% of 0.45: truncate@64
    assert contrast(rows) == ("s", "s [truncate@64]")
    assert reading(*split_rows(rows)).startswith("Reading: s + truncate@64 is the cheapest setting")
    assert contrast([row("s", "none", 50.0, 0.45)]) is None  # the best is also the cheapest
    assert contrast([row("s", "none", 50.0, 0.0)]) is None  # nothing answered
