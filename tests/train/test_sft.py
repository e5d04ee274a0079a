"""train sft: the loss falls, parameters change, the model saves loadable, resume continues."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tracewise.train.sft import SFTRunConfig, model_dir, run
from conftest import save_pens_dataset


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory, student_path):
    return save_pens_dataset(tmp_path_factory.mktemp("ds") / "ds", repeats=8)


def _cfg(out, student_path, dataset, **kw):
    base = dict(out=str(out), experiment="t", model=student_path, dataset=dataset, max_steps=30, batch_size=8,
                learning_rate=1e-2, logging_steps=5, save_steps=10, threads=1)
    base.update(kw)
    return SFTRunConfig(**base)


def test_sft_learns_and_saves(tmp_path, student_path, tiny_dataset):
    from transformers import AutoModelForCausalLM

    before = AutoModelForCausalLM.from_pretrained(student_path).state_dict()
    run_dir = run(_cfg(tmp_path, student_path, tiny_dataset))
    losses = [h["loss"] for h in json.loads((run_dir / "log_history.json").read_text()) if "loss" in h]
    assert losses[-1] < 0.5 * losses[0], losses
    after = AutoModelForCausalLM.from_pretrained(model_dir(run_dir)).state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) >= len(before) // 2
    assert (run_dir / "DONE").exists() and (run_dir / "experiment.txt").read_text() == "t"


def test_sft_rerun_is_noop_and_resume_continues(tmp_path, student_path, tiny_dataset, caplog):
    cfg = _cfg(tmp_path, student_path, tiny_dataset, max_steps=20)
    run_dir = run(cfg)
    mtime = (run_dir / "DONE").stat().st_mtime
    assert run(cfg) == run_dir and (run_dir / "DONE").stat().st_mtime == mtime
    # Simulate a crash after the step-10 checkpoint: drop the final artifacts and the later checkpoint.
    (run_dir / "DONE").unlink()
    shutil.rmtree(model_dir(run_dir))
    shutil.rmtree(run_dir / "checkpoints" / "checkpoint-20")
    ckpt_history = json.loads((run_dir / "checkpoints" / "checkpoint-10" / "trainer_state.json").read_text())["log_history"]
    with caplog.at_level("INFO", logger="tracewise.train.sft"):
        run(cfg)
    assert any("resuming from" in r.message and "checkpoint-10" in r.message for r in caplog.records)
    history = json.loads((run_dir / "log_history.json").read_text())
    steps = [h["step"] for h in history if "loss" in h]
    assert steps == [5, 10, 15, 20], steps  # no step repeated or lost
    assert history[: len(ckpt_history)] == ckpt_history  # steps 1-10 were not retrained
    assert (model_dir(run_dir) / "config.json").exists()


def test_sft_bad_input(tmp_path, student_path, tiny_dataset):
    with pytest.raises(ValueError, match="dataset"):
        run(_cfg(tmp_path, student_path, str(tmp_path / "missing")))
    with pytest.raises(ValueError, match="max_steps"):
        run(_cfg(tmp_path, student_path, tiny_dataset, max_steps=0))
    with pytest.raises(ValueError, match="not a dataset"):
        (tmp_path / "empty").mkdir()
        run(_cfg(tmp_path, student_path, str(tmp_path / "empty")))
