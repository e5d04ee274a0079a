"""`train rl` on the paper's path: float32 master weights, GRPO/RLOO settings passed to TRL
explicitly, and the vLLM section (colocated generation) — CPU checks, plus a GPU run with vLLM."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracewise.core.config import load_config
from tracewise.data.sources import ProblemsConfig
from tracewise.train import rl
from tracewise.train.rl import RLRunConfig
from tracewise.world.problems import WorldConfig

REPO = Path(__file__).resolve().parents[2]


def _cfg(out: Path, model: str, **kw) -> RLRunConfig:
    base = dict(out=str(out), experiment="t", model=model,
                problems=ProblemsConfig(world=WorldConfig(n_train=16, n_test=0)),
                num_generations=8, per_device_train_batch_size=16, max_steps=1, max_completion_length=16,
                learning_rate=1e-3, save_steps=1, threads=1)
    base.update(kw)
    return RLRunConfig(**base)


class _Recorder:
    """Stands in for a TRL config class: records the keyword arguments it was built with."""

    def __init__(self, name: str):
        self.__name__ = name
        self.calls: list[dict] = []

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        return kwargs


def test_grpo_and_rloo_settings_are_passed_to_trl_explicitly(tmp_path, monkeypatch):
    """TRL's defaults moved between versions (GRPO loss_type bnpo -> dapo, scale_rewards True -> group,
    beta 0.04 -> 0): the recipe must not depend on them."""
    import trl

    grpo, rloo = _Recorder("GRPOConfig"), _Recorder("RLOOConfig")
    monkeypatch.setattr(trl, "GRPOConfig", grpo)
    monkeypatch.setattr(trl, "RLOOConfig", rloo)
    rl.trainer_args(_cfg(tmp_path, "gpt2"), str(tmp_path / "ck"), [1.0])
    (kw,) = grpo.calls
    assert (kw["loss_type"], kw["scale_rewards"], kw["beta"]) == ("dapo", "group", 1e-3)
    rl.trainer_args(_cfg(tmp_path, "gpt2", loss_type="grpo", scale_rewards="none"), str(tmp_path / "ck"), [1.0])
    assert (grpo.calls[1]["loss_type"], grpo.calls[1]["scale_rewards"]) == ("grpo", "none")
    rl.trainer_args(_cfg(tmp_path, "gpt2", algorithm="rloo"), str(tmp_path / "ck"), [1.0])
    (kw,) = rloo.calls
    assert kw["normalize_advantages"] is False and kw["beta"] == 1e-3
    assert "loss_type" not in kw and "scale_rewards" not in kw
    with pytest.raises(ValueError, match="scale_rewards applies to algorithm 'grpo' only"):
        _cfg(tmp_path, "gpt2", algorithm="rloo", scale_rewards="group").validate()


def test_the_recipe_config_states_each_setting():
    import yaml

    recipe = yaml.safe_load((REPO / "configs/rl/grpo_embedded.yaml").read_text())
    assert {"algorithm", "beta", "loss_type", "scale_rewards"} <= set(recipe)


def test_policy_is_trained_from_float32_master_weights(tmp_path, student_path, monkeypatch):
    """A bf16-saved SFT checkpoint must not train in pure bf16 (1e-6 updates round away)."""
    import torch
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer

    bf16_dir = tmp_path / "bf16-student"
    AutoModelForCausalLM.from_pretrained(student_path).to(torch.bfloat16).save_pretrained(bf16_dir)
    AutoTokenizer.from_pretrained(student_path).save_pretrained(bf16_dir)
    assert AutoModelForCausalLM.from_pretrained(bf16_dir).dtype == torch.bfloat16  # transformers 5: saved dtype

    class Stop(Exception):
        pass

    seen = {}

    def fake_trainer(model, **kwargs):
        seen["dtypes"] = {p.dtype for p in model.parameters()}
        raise Stop

    monkeypatch.setattr(trl, "GRPOTrainer", fake_trainer)
    with pytest.raises(Stop):
        rl.run(_cfg(tmp_path / "runs", str(bf16_dir)))
    assert seen["dtypes"] == {torch.float32}


def test_rl_has_the_vllm_section_and_sizes_the_context_from_the_data(tmp_path, student_path, monkeypatch):
    import torch
    import trl

    cfg = load_config(RLRunConfig, None, [f"model={student_path}", "vllm.max_model_len=4096",
                                          "vllm.gpu_memory_utilization=0.4", "vllm.tensor_parallel_size=2"])
    grpo = _Recorder("GRPOConfig")
    monkeypatch.setattr(trl, "GRPOConfig", grpo)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(rl.importlib.util, "find_spec", lambda name: object())  # "vllm is installed"
    rl.trainer_args(cfg, str(tmp_path / "ck"), [1.0], max_model_len=999)
    kw = grpo.calls[0]
    assert kw["use_vllm"] and kw["vllm_mode"] == "colocate"
    assert (kw["vllm_max_model_length"], kw["vllm_gpu_memory_utilization"], kw["vllm_tensor_parallel_size"]) == \
        (4096, 0.4, 2)
    # Unset: the data decides (longest templated prompt + max_completion_length), never the model config.
    cfg.vllm.max_model_len = None
    rl.trainer_args(cfg, str(tmp_path / "ck"), [1.0], max_model_len=999)
    assert grpo.calls[1]["vllm_max_model_length"] == 999
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(student_path)
    ds = rl.load_prompts(ProblemsConfig(world=WorldConfig(n_train=8, n_test=0)))
    longest = max(len(tok(tok.apply_chat_template(p, add_generation_prompt=True, tokenize=False),
                          add_special_tokens=False)["input_ids"]) for p in ds["prompt"])
    assert rl.vllm_context(cfg, tok, ds) == longest + cfg.max_completion_length
    with pytest.raises(ValueError, match=r"train.rl.vllm: \['data_parallel_size'\]"):
        load_config(RLRunConfig, None, [f"model={student_path}", "vllm.data_parallel_size=2"])


# ---- on a GPU ------------------------------------------------------------------------------------

@pytest.mark.requires_gpu
def test_rl_with_colocated_vllm_runs_two_steps(tmp_path, student_path):
    """The embedded student on the GPU with vLLM generation (colocated), bf16 autocast over fp32 weights."""
    import json

    cfg = _cfg(tmp_path, student_path, max_steps=2, use_vllm=True, bf16=True)
    cfg.vllm.gpu_memory_utilization = 0.2
    run_dir = rl.run(cfg)
    done = json.loads((run_dir / "DONE").read_text())
    assert done["steps"] == 2
    history = json.loads((run_dir / "log_history.json").read_text())
    assert any("completions/mean_length" in h for h in history)
