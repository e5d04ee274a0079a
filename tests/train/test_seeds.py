"""``seeds`` on the training stages: one ordinary run per seed, differing in the seed alone, reused on rerun."""

from __future__ import annotations

import pytest
import torch
import yaml
from typer.testing import CliRunner

from conftest import save_pens_dataset
from tracewise.cli import app
from tracewise.core.seeds import resolve_seeds
from tracewise.core.store import stage_dir
from tracewise.train.rl import RLRunConfig
from tracewise.train.sft import SFTRunConfig, run, run_seeds

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory, student_path):
    return save_pens_dataset(tmp_path_factory.mktemp("ds") / "ds", repeats=2)


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def test_resolve_seeds():
    assert resolve_seeds(5, 3) == [5, 6, 7]  # a count starts at seed
    assert resolve_seeds(5, [0, 9]) == [0, 9]  # a list is itself
    assert resolve_seeds(5, 1) == [5] and resolve_seeds(5, None) == [5]
    for bad in (0, [], [1, 1], True):
        with pytest.raises(ValueError):
            resolve_seeds(0, bad)


def test_a_replicate_is_the_ordinary_run_of_its_seed():
    """The run dir of seed s among seeds=N is the one `seed=s` alone gets (seeds is never hashed), and
    a single-seed config keeps its pinned run dir (tests/test_stage_hashes.py)."""
    for cls, kw in ((SFTRunConfig, {}), (RLRunConfig, {"model": "x"})):
        many = cls(seeds=[3, 4], **kw)
        assert [c.seed for c in (many.for_seed(s) for s in many.seed_values())] == [3, 4]
        assert stage_dir("r", "s", many.for_seed(4)) == stage_dir("r", "s", cls(seed=4, **kw))
        assert stage_dir("r", "s", cls(seeds=3, **kw)) == stage_dir("r", "s", cls(**kw))


def test_run_of_several_seeds_points_to_run_seeds(tmp_path, student_path, tiny_dataset):
    with pytest.raises(ValueError, match="use run_seeds"):
        run(SFTRunConfig(out=str(tmp_path), model=student_path, dataset=tiny_dataset, seeds=2))
    with pytest.raises(ValueError, match=r"train.sft.seeds: repeated seed\(s\) \[1\]"):
        SFTRunConfig(out=str(tmp_path), model=student_path, dataset=tiny_dataset, seeds=[1, 1]).validate()
    assert list(tmp_path.iterdir()) == []


def test_cli_train_sft_seeds_two_runs_differing_in_seed_then_reused(tmp_path, student_path, tiny_dataset):
    args = ["train", "sft", f"out={tmp_path}", "experiment=t", f"model={student_path}", f"dataset={tiny_dataset}",
            "max_steps=2", "batch_size=4", "save_steps=2", "threads=1", "seed=7", "seeds=2", "--link", "m"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    dirs = sorted(tmp_path.glob("sft-*"))
    assert len(dirs) == 2 and all((d / "DONE").exists() for d in dirs)
    configs = {d: yaml.safe_load((d / "config.yaml").read_text()) for d in dirs}
    assert sorted(c["seed"] for c in configs.values()) == [7, 8]  # seeds=2 from seed=7
    a, b = ({k: v for k, v in c.items() if k != "seed"} for c in configs.values())
    assert a == b  # nothing but the seed differs
    by_seed = {c["seed"]: d for d, c in configs.items()}
    assert (tmp_path / "m-s7").resolve() == by_seed[7].resolve() and (tmp_path / "m-s8").resolve() == by_seed[8].resolve()
    stamps = {d: (d / "DONE").stat().st_mtime_ns for d in dirs}
    again = run_seeds(SFTRunConfig(out=str(tmp_path), experiment="t", model=student_path, dataset=tiny_dataset,
                                   max_steps=2, batch_size=4, save_steps=2, threads=1, seed=7, seeds=2))
    assert sorted(again) == dirs and {d: (d / "DONE").stat().st_mtime_ns for d in dirs} == stamps  # no retraining


@pytest.mark.parametrize("command", [["train", "sft"], ["train", "rl"], ["eval"], ["quickstart"],
                                     *[["study", s] for s in ("judge-bias", "curation", "transfer", "rl-alpha",
                                                              "controls", "few-shot")]])
def test_help_lists_seeds(command):
    res = runner.invoke(app, [*command, "--help"], terminal_width=200)
    assert res.exit_code == 0 and "seeds (default 1): Replicates" in " ".join(res.stdout.split())
