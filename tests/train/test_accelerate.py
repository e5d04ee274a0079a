"""`train sft` under `accelerate launch` with two CPU processes (gloo): both ranks train one DDP model
on disjoint halves of each batch, and only rank 0 writes the run directory.

configs/accelerate/ddp.yaml is the real multi-GPU config; on a machine without CUDA its torchrun
launcher starts CPU processes and Trainer picks the gloo backend, so the same file is tested here.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROWS, BATCH, STEPS = 36, 4, 4


def _free_port() -> int:
    # Not accelerate's default 29500: other test runs on the same machine may hold it.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sft_two_processes_under_accelerate_launch(tmp_path, student_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    rows = [{"prompt": [{"role": "user", "content": f"Ann has {a} pens. How many?"}],
             "completion": [{"role": "assistant", "content": f"<think>{a}+0={a}.</think>Answer: {a}"}]}
            for a in range(1, 10)] * (ROWS // 9)
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    env = dict(os.environ, OMP_NUM_THREADS="1", TRACEWISE_NO_PROGRESS="1", COLUMNS="400", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "configs/accelerate/ddp.yaml",
           "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(_free_port()),
           "-m", "tracewise.cli", "train", "sft", f"out={tmp_path / 'runs'}", f"model={student_path}",
           f"dataset={tmp_path / 'ds'}", f"max_steps={STEPS}", f"batch_size={BATCH}", "logging_steps=1",
           "save_steps=100", "threads=1", "experiment=ddp"]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    # Both ranks trained, each knowing it is one of two.
    for rank in (0, 1):
        assert f"rank {rank} of 2: batch {BATCH} × grad_accum 1 × 2 process(es) = global batch {2 * BATCH}" in out
    assert out.count("final model saved to") == 1  # rank 0 alone saved

    (run_dir,) = (tmp_path / "runs").glob("sft-*")
    done = json.loads((run_dir / "DONE").read_text())
    assert done["processes"] == 2 and done["global_batch"] == 2 * BATCH and done["steps"] == STEPS
    # Each rank's dataloader holds half the data: 36 rows / (2 × 4) → 5 steps per epoch, not 9.
    history = json.loads((run_dir / "log_history.json").read_text())
    assert [h["step"] for h in history if "loss" in h] == list(range(1, STEPS + 1))
    assert history[-1]["epoch"] == pytest.approx(STEPS / 5)
    assert sorted(p.name for p in (run_dir / "model").glob("*.safetensors")) == ["model.safetensors"]
    assert AutoModelForCausalLM.from_pretrained(run_dir / "model").num_parameters() > 0
