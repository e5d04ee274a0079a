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


# ---- DeepSpeed configs: Nemotron-H under ZeRO-3 ------------------------------------------------------

def _tiny_nemotron_h():
    from transformers import NemotronHConfig, NemotronHForCausalLM

    cfg = NemotronHConfig(vocab_size=300, hidden_size=64, layers_block_type=["mamba", "attention", "mlp"],
                          num_attention_heads=2, num_key_value_heads=2, head_dim=32, intermediate_size=128,
                          ssm_state_size=16, mamba_num_heads=4, mamba_head_dim=16, n_groups=1, conv_kernel=4,
                          expand=1, chunk_size=16, max_position_embeddings=256)
    return NemotronHForCausalLM(cfg)


def _launch_env(config_file: Path) -> dict:
    """The environment `accelerate launch --config_file F` gives a DeepSpeed run (what the
    DeepSpeedPlugin reads in each process), computed as accelerate's own launcher does."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    args = launch_command_parser().parse_args(["--config_file", str(config_file), "-m", "tracewise.cli"])
    args, defaults, mp_from_config = _validate_launch_command(args)
    assert args.use_deepspeed
    args.deepspeed_fields_from_accelerate_config = ",".join(
        list(defaults.deepspeed_config) + (["mixed_precision"] if mp_from_config else []))
    _, env = prepare_deepspeed_cmd_env(args)
    return env


def _recipe_accelerate_config(recipe: Path) -> Path:
    words = recipe.read_text().splitlines()[0].split()
    return REPO / words[words.index("--config_file") + 1]


def test_nemotron_recipes_gather_the_mamba_mixer_as_one_zero3_leaf():
    """NemotronHMamba2Mixer hands conv1d/norm/out_proj weights straight to its kernel; under ZeRO-3
    those are partitioned (size 0) unless the mixer is a leaf module, and `.squeeze(1)` raises."""
    from accelerate.utils.dataclasses import get_module_class_from_name

    model = _tiny_nemotron_h()
    for recipe in sorted((REPO / "configs/paper").glob("sft_nemotron-nano_*.yaml")):
        env = _launch_env(_recipe_accelerate_config(recipe))
        stage = env["ACCELERATE_DEEPSPEED_ZERO_STAGE"]
        if stage == "3":
            names = env.get("ACCELERATE_DEEPSPEED_MOE_LAYER_CLS_NAMES", "").split(",")
            assert "NemotronHMamba2Mixer" in names, f"{recipe.name}: ZeRO-3 without the mixer as a leaf"
            # accelerate resolves every listed name in the model, or refuses to start.
            assert all(get_module_class_from_name(model, n) is not None for n in names)
        else:
            assert stage in ("0", "1", "2"), (recipe.name, stage)
    # The Mistral recipes' ZeRO-3 config must not list it: accelerate raises when a class is not in the model.
    for recipe in sorted((REPO / "configs/paper").glob("sft_mistral-nemo_*.yaml")):
        assert "ACCELERATE_DEEPSPEED_MOE_LAYER_CLS_NAMES" not in _launch_env(_recipe_accelerate_config(recipe))


def test_why_the_mixer_must_be_a_leaf():
    """What ZeRO-3 leaves in a parameter whose own module's forward has not run: an empty tensor.
    The mixer reads conv1d.weight without running conv1d, so its training forward fails."""
    import torch

    model = _tiny_nemotron_h().train()
    ids = torch.randint(0, 300, (1, 12))
    assert torch.isfinite(model(input_ids=ids, labels=ids).loss)
    mixer = next(m for m in model.modules() if type(m).__name__ == "NemotronHMamba2Mixer")
    mixer.conv1d.weight.data = torch.empty(0)  # partitioned, not gathered
    with pytest.raises(IndexError):
        model(input_ids=ids, labels=ids)


# ---- on a GPU: tiny SFT runs under DeepSpeed ZeRO-2 / ZeRO-3 -----------------------------------------

@pytest.mark.requires_gpu
@pytest.mark.parametrize("config", ["zero2.yaml", "zero3.yaml"])
def test_tiny_sft_under_deepspeed(tmp_path, student_path, config):
    run_dir = _ds_run(tmp_path, config, student_path)
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(run_dir / "model").num_parameters() > 0


@pytest.mark.requires_gpu
def test_tiny_nemotron_h_sft_under_zero3_with_the_mixer_as_a_leaf(tmp_path, student_path):
    from transformers import AutoTokenizer

    model_dir = tmp_path / "nemotron-h"
    _tiny_nemotron_h().save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(student_path).save_pretrained(model_dir)
    run_dir = _ds_run(tmp_path, "zero3_nemotron_h.yaml", str(model_dir))
    assert (run_dir / "model" / "config.json").is_file()


def _ds_run(tmp_path: Path, config: str, model: str) -> Path:
    import torch

    pytest.importorskip("deepspeed", reason="pip install 'tracewise[deepspeed]'")
    from conftest import save_pens_dataset

    dataset = save_pens_dataset(tmp_path / "ds", 4)
    n = min(2, torch.cuda.device_count())
    env = dict(os.environ, TRACEWISE_NO_PROGRESS="1", COLUMNS="400")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", f"configs/accelerate/{config}",
           "--num_processes", str(n), "--main_process_port", str(_free_port()),
           "-m", "tracewise.cli", "train", "sft", f"out={tmp_path / 'runs'}", f"model={model}",
           f"dataset={dataset}", "max_steps=2", "batch_size=2", "logging_steps=1", "save_steps=100",
           "bf16=true", "experiment=ds"]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    (run_dir,) = (tmp_path / "runs").glob("sft-*")
    assert json.loads((run_dir / "DONE").read_text())["steps"] == 2
    return run_dir
