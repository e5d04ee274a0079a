"""train sft in a multi-process launch: only rank 0 takes the run dir's lock, and no rank touches the run
dir before rank 0 holds it (``train.common.claim_run_dir``). A real multi-rank launch needs several
processes with a process group; here each rank's side runs alone, with rank 0's answer handed in."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import HOLD_LOCK, save_pens_dataset
from tracewise.core.store import unlock_run_dir
from tracewise.train import common, sft



@pytest.fixture()
def other_process(tmp_path: Path):
    """Another process holding ``tmp_path/run``'s lock, as a running stage does; yields its pid."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path / "run" / ".lock")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder.pid
    finally:
        holder.stdin.close()
        holder.wait(10)


def _write(run_dir: Path, calls: list):
    def write() -> None:
        calls.append("write")
        sft.save_config(run_dir, {"a": 1})

    return write


def test_rank0_tells_every_rank_that_the_run_dir_is_in_use(tmp_path: Path, other_process: int) -> None:
    run_dir, calls, shared = tmp_path / "run", [], []
    with pytest.raises(ValueError, match=f"run dir in use by pid {other_process}"):
        common.claim_run_dir(run_dir, True, _write(run_dir, calls), share=lambda v: shared.append(v) or v)
    assert calls == ["write"]
    # The value every other rank receives names the holder, so they stop too (and do not hang).
    assert len(shared) == 1 and f"run dir in use by pid {other_process}" in shared[0]
    assert not (run_dir / "config.yaml").exists()


def test_other_ranks_stop_on_rank0s_error_without_touching_the_run_dir(tmp_path: Path) -> None:
    run_dir, calls = tmp_path / "run", []
    rank0 = f"ValueError: {run_dir}: run dir in use by pid 4242 (another tracewise process ...)"
    with pytest.raises(ValueError, match="rank 0 could not claim the run dir.*run dir in use by pid 4242"):
        common.claim_run_dir(run_dir, False, _write(run_dir, calls), share=lambda v: rank0)
    assert calls == [] and not run_dir.exists()  # no lock taken, no file written by this rank


def test_when_rank0_holds_the_lock_every_rank_goes_on(tmp_path: Path) -> None:
    run_dir, calls, shared = tmp_path / "run", [], []
    common.claim_run_dir(run_dir, True, _write(run_dir, calls), share=lambda v: shared.append(v) or v)
    try:
        assert calls == ["write"] and shared == [None]
        assert (run_dir / "config.yaml").exists()
        assert (run_dir / ".lock").read_text().strip() == str(os.getpid())  # rank 0 holds it
    finally:
        unlock_run_dir(run_dir)
    common.claim_run_dir(run_dir, False, _write(run_dir, []), share=lambda v: None)  # rank 1: no error


def test_a_non_main_rank_of_sft_waits_for_rank0_before_preparing_the_trainer(
        tmp_path: Path, student_path: str, monkeypatch) -> None:
    """``sft.run`` on rank 1 of 2 asks rank 0 before ``prepare_trainer`` (which deletes torn checkpoints) and
    stops with rank 0's error; the trainer itself is a stand-in (nothing is trained)."""
    dataset = save_pens_dataset(tmp_path / "ds", repeats=1)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(sft, "build_trainer", lambda *a, **kw: object())
    prepared = []
    monkeypatch.setattr(sft, "prepare_trainer", lambda *a, **kw: prepared.append(a) or pytest.fail("prepared"))
    monkeypatch.setattr(common, "from_main_rank", lambda v: "ValueError: run dir in use by pid 4242", raising=False)
    cfg = sft.SFTRunConfig(out=str(tmp_path / "out"), experiment="t", model=student_path, dataset=dataset,
                           max_steps=2, batch_size=2, threads=1)
    with pytest.raises(ValueError, match="run dir in use by pid 4242"):
        sft.run(cfg)
    assert prepared == []
    assert not list((tmp_path / "out").glob("sft-*/config.yaml"))  # rank 1 wrote nothing


def test_a_two_process_launch_into_a_run_dir_in_use_stops_every_rank(tmp_path: Path, student_path: str) -> None:
    """The real thing, as tests/train/test_accelerate.py launches it (two CPU ranks, gloo): another process
    holds the run dir and is mid-way through saving a checkpoint. Both ranks stop with its pid, promptly
    (no rank left waiting in a collective), and no rank prunes the other process's checkpoint."""
    import socket

    from tracewise.core.config import load_config

    dataset = save_pens_dataset(tmp_path / "ds", repeats=1)
    overrides = [f"out={tmp_path / 'runs'}", f"model={student_path}", f"dataset={dataset}", "max_steps=2",
                 "batch_size=2", "save_steps=100", "threads=1", "experiment=ddp"]
    run_dir = sft.run_dir_of(load_config(sft.SFTRunConfig, None, overrides))
    torn = run_dir / "checkpoints" / "checkpoint-3"  # the other process's save in progress: no trainer_state.json
    torn.mkdir(parents=True)
    (torn / "model.safetensors").write_bytes(b"partial")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_dir / ".lock")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = dict(os.environ, OMP_NUM_THREADS="1", TRACEWISE_NO_PROGRESS="1", COLUMNS="400", CUDA_VISIBLE_DEVICES="")
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "configs/accelerate/ddp.yaml",
               "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(port),
               "-m", "tracewise.cli", "train", "sft", *overrides]
        res = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[2], env=env, capture_output=True, text=True,
                             timeout=300)
    finally:
        holder.stdin.close()
        holder.wait(10)
    out = " ".join((res.stdout + res.stderr).split())
    assert res.returncode != 0, out[-3000:]
    assert f"run dir in use by pid {holder.pid}" in out, out[-3000:]
    assert (torn / "model.safetensors").exists(), "a rank pruned the other process's checkpoint"
    assert not (run_dir / "config.yaml").exists()
    assert "train sft [ddp]: rank" not in out  # no rank got as far as training
