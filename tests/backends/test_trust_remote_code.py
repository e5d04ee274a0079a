"""Code shipped with a model (HF ``auto_map``) never runs unless the user passes trust_remote_code."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

import tracewise
from tracewise.cli import app

CONFIG_PY = """
import os, pathlib
pathlib.Path(os.environ["TRACEWISE_REMOTE_CODE_MARKER"]).write_text("remote code ran")
from transformers import LlamaConfig


class EvilConfig(LlamaConfig):
    model_type = "tracewise_evil_llama"
"""
MODELING_PY = """
from transformers import LlamaForCausalLM
from .configuration_evil import EvilConfig


class EvilForCausalLM(LlamaForCausalLM):
    config_class = EvilConfig
"""


@pytest.fixture()
def remote_model(tmp_path: Path, student_path: str, monkeypatch) -> tuple[Path, Path]:
    """The tiny student, re-labelled as a model that needs its own Python code to load."""
    d = tmp_path / "remote-model"
    shutil.copytree(student_path, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(model_type="tracewise_evil_llama", auto_map={"AutoConfig": "configuration_evil.EvilConfig",
                                                            "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"})
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "configuration_evil.py").write_text(CONFIG_PY)
    (d / "modeling_evil.py").write_text(MODELING_PY)
    marker = tmp_path / "marker"
    monkeypatch.setenv("TRACEWISE_REMOTE_CODE_MARKER", str(marker))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return d, marker


def _commands(model: Path, tmp: Path) -> dict[str, list[str]]:
    from datasets import Dataset

    ds = tmp / "ds"
    Dataset.from_list([{"prompt": [{"role": "user", "content": "1+1?"}],
                        "completion": [{"role": "assistant", "content": "<think>2</think>2"}]}] * 4).save_to_disk(str(ds))
    world = ["problems.world.n_train=4", "problems.world.n_test=4"]
    return {
        "generate": ["generate", "backend=hf", f"model={model}", f"tokenizer={model}", *world],
        "eval": ["eval", f"model={model}", *world, "sampling.n=1", "sampling.max_tokens=4"],
        "train sft": ["train", "sft", f"model={model}", f"dataset={ds}", "max_steps=1"],
        "train rl": ["train", "rl", f"model={model}", *world, "max_steps=1"],
    }


def test_no_stage_runs_model_code_by_default(remote_model, tmp_path: Path) -> None:
    model, marker = remote_model
    for name, argv in _commands(model, tmp_path).items():
        result = CliRunner().invoke(app, [*argv, f"out={tmp_path / 'out'}"])
        assert result.exit_code != 0, (name, result.output)
        assert "trust_remote_code" in result.output or "custom code" in result.output, (name, result.output)
        assert not marker.exists(), f"`tracewise {name}` ran the model's own code without trust_remote_code"


def test_backend_runs_model_code_only_when_trusted(remote_model) -> None:
    from tracewise.backends.hf import HFBackend

    model, marker = remote_model
    with pytest.raises(ValueError):
        HFBackend(str(model), device="cpu")
    assert not marker.exists()
    backend = HFBackend(str(model), device="cpu", trust_remote_code=True)  # the user opted in
    assert marker.read_text() == "remote code ran" and type(backend.model).__name__ == "EvilForCausalLM"


def test_every_from_pretrained_call_passes_trust_remote_code() -> None:
    """Static audit: no ``from_pretrained`` in tracewise relies on transformers' default (which may prompt)."""
    missing = []
    for path in Path(tracewise.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "from_pretrained":
                kws = {k.arg for k in node.keywords}
                if "trust_remote_code" not in kws and None not in kws:  # None: **kwargs, which carry it
                    if not (isinstance(node.func.value, ast.Name) and node.func.value.id == "PeftModel"):
                        missing.append(f"{path.name}:{node.lineno}")
    assert missing == [], f"from_pretrained without trust_remote_code: {missing}"
