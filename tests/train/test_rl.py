"""Stage ``train rl``: GRPO/RLOO on CPU from a tiny SFT student, config errors, resume and extension."""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import pytest

from tracewise.core.config import load_config
from tracewise.data.sources import ProblemsConfig
from tracewise.train import rl
from tracewise.train.rl import RLRunConfig
from tracewise.world.problems import WorldConfig

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sft_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny student after a few SFT steps on a curate-format dataset: it answers "Answer: d" after a
    thinking span of 0-3 words, so a group of 8 mixes right and wrong answers and lengths (a random
    init never stops or answers, so every reward is 0 and nothing would change)."""
    import torch

    from tracewise.curate.stage import save_dataset
    from tracewise.core.tokens import student_completion
    from tracewise.train.sft import SFTRunConfig, model_dir
    from tracewise.train.sft import run as sft_run
    from tracewise.world.init_stage import InitStudentConfig, model_path
    from tracewise.world.init_stage import run as init_run
    from tracewise.world.problems import generate_problems
    from tracewise.world.student import StudentConfig

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("rl_student")
    student = init_run(InitStudentConfig(out=str(root), pretrain_steps=0, student=StudentConfig(
        hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, vocab_size=300)))
    rows = [{"prompt": [{"role": "user", "content": p.question}],
             "completion": [{"role": "assistant", "content": student_completion("ok " * (i % 4), f"Answer: {p.answer}")}],
             "problem_id": p.id, "teacher": "gpt-oss", "level": p.level, "answer": p.answer,
             "n_tokens": 0, "n_thinking_tokens": 0}
            for i, p in enumerate(generate_problems(WorldConfig(n_train=64, n_test=0), "train"))]
    save_dataset(rows, root / "ds")
    run_dir = sft_run(SFTRunConfig(out=str(root), experiment="tiny", model=str(model_path(student)),
                                   dataset=str(root / "ds"), max_steps=60, batch_size=16, learning_rate=1e-2,
                                   save_steps=1000, logging_steps=100))
    return str(model_dir(run_dir))


def _cfg(out: Path, model: str, **kw) -> RLRunConfig:
    base = dict(out=str(out), experiment="t", model=model,
                problems=ProblemsConfig(world=WorldConfig(n_train=16, n_test=0)),
                num_generations=8, per_device_train_batch_size=16, max_steps=2, max_completion_length=32,
                learning_rate=1e-3, save_steps=1, threads=1)
    base.update(kw)
    return RLRunConfig(**base)


def _weights(path: str | Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model.safetensors"))


def _steps(history: list[dict]) -> list[int]:
    return [h["step"] for h in history if "reward" in h]


# ---------------------------------------------------------------- training


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_rl_trains_on_cpu_and_logs_rewards_and_lengths(tmp_path, sft_model, algorithm):
    run_dir = rl.run(_cfg(tmp_path, sft_model, algorithm=algorithm, max_steps=2 if algorithm == "grpo" else 1))
    assert run_dir.name.startswith("rl-") and (run_dir / "DONE").exists()
    before, after = _weights(sft_model), _weights(rl.model_dir(run_dir))
    assert any(not (before[k] == after[k]).all() for k in before), "no parameter changed"
    history = json.loads((run_dir / "log_history.json").read_text())
    logged = [h for h in history if "reward" in h]
    assert logged and all(math.isfinite(h["reward"]) for h in logged)
    assert all(math.isfinite(h["rewards/arora_zanette/mean"]) for h in logged)
    assert all(1 <= h["completions/mean_length"] <= 32 for h in logged)
    assert max(h["reward"] for h in logged) > 0  # some completion was scored correct (see SpecialTokenText)
    done = json.loads((run_dir / "DONE").read_text())
    assert done["steps"] == (2 if algorithm == "grpo" else 1) and done["algorithm"] == algorithm
    assert (run_dir / "experiment.txt").read_text() == "t"
    assert "arora_zanette" in (run_dir / "config.yaml").read_text()


def test_resume_from_checkpoint_and_extend_a_finished_run(tmp_path, sft_model, caplog):
    first = rl.run(_cfg(tmp_path, sft_model, max_steps=2))
    ckpts = sorted(p.name for p in (first / "checkpoints").glob("checkpoint-*"))
    assert ckpts == ["checkpoint-1", "checkpoint-2"]
    (first / "DONE").unlink()
    shutil.rmtree(first / "model")
    with caplog.at_level(logging.INFO, logger="tracewise.train.rl"):
        again = rl.run(_cfg(tmp_path, sft_model, max_steps=3))  # max_steps is not in the hash: same dir
    assert again == first
    assert any("resuming from" in r.message and r.message.endswith("checkpoint-2") for r in caplog.records)
    history = json.loads((again / "log_history.json").read_text())
    assert _steps(history) == [1, 2, 3]  # steps 1-2 restored from the checkpoint, only step 3 trained
    assert json.loads((again / "DONE").read_text())["steps"] == 3
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tracewise.train.rl"):
        assert rl.run(_cfg(tmp_path, sft_model, max_steps=3)) == first  # finished: a no-op
    assert any("nothing to do" in r.message for r in caplog.records)
    longer = rl.run(_cfg(tmp_path, sft_model, max_steps=4))  # a larger max_steps extends the finished run
    assert longer == first and _steps(json.loads((longer / "log_history.json").read_text())) == [1, 2, 3, 4]
    assert json.loads((longer / "DONE").read_text())["steps"] == 4


def test_a_shorter_max_steps_than_the_run_holds_is_refused(tmp_path, sft_model):
    """max_steps is out of the hash (so runs extend and resume); asking for fewer steps than the run dir holds
    must not hand back the longer-trained policy as if it were the shorter one."""
    first = rl.run(_cfg(tmp_path, sft_model, max_steps=2))
    trained = _weights(rl.model_dir(first))
    with pytest.raises(ValueError, match=r"already holds 2 training steps, more than max_steps=1.*another out="):
        rl.run(_cfg(tmp_path, sft_model, max_steps=1))
    # Interrupted after its step-2 checkpoint (no DONE): resuming with max_steps=1 would train 0 steps and
    # save the 2-step policy; refused too.
    (first / "DONE").unlink()
    shutil.rmtree(first / "model")
    with pytest.raises(ValueError, match="already holds 2 training steps"):
        rl.run(_cfg(tmp_path, sft_model, max_steps=1))
    assert not (first / "model").exists()
    assert rl.run(_cfg(tmp_path, sft_model, max_steps=2)) == first  # the same max_steps still resumes
    after = _weights(rl.model_dir(first))
    assert all((trained[k] == after[k]).all() for k in trained)  # restored from checkpoint-2, nothing retrained


# ---------------------------------------------------------------- pieces


def test_report_to_reaches_the_trainer_args(tmp_path):
    for algorithm in ("grpo", "rloo"):
        cfg = _cfg(tmp_path, "gpt2", algorithm=algorithm, report_to=["tensorboard"])
        assert rl.trainer_args(cfg, str(tmp_path / "ck"), [1.0]).report_to == ["tensorboard"]
    assert rl.trainer_args(_cfg(tmp_path, "gpt2"), str(tmp_path / "ck"), [1.0]).report_to == []
    with pytest.raises(ValueError, match="train.rl.report_to: unknown tracker 'tensorbord'"):
        load_config(RLRunConfig, None, [f"out={tmp_path}", f"model={tmp_path}", "report_to=[tensorbord]"])


def test_trainer_args_follow_the_config(tmp_path):
    cfg = _cfg(tmp_path, "gpt2", rewards=[{"name": "correctness"}, {"name": "kimi", "weight": 0.5}], loss_type="dr_grpo")
    args = rl.trainer_args(cfg, str(tmp_path / "ck"), [1.0, 0.5])
    assert type(args).__name__ == "GRPOConfig"
    assert (args.num_generations, args.beta, args.temperature, args.max_completion_length) == (8, 1e-3, 0.6, 32)
    assert args.reward_weights == [1.0, 0.5] and args.loss_type == "dr_grpo"
    assert args.generation_batch_size == 16 and args.steps_per_generation == 1
    assert args.use_cpu and not args.bf16 and not args.gradient_checkpointing and not args.use_vllm
    rloo = rl.trainer_args(_cfg(tmp_path, "gpt2", algorithm="rloo"), str(tmp_path / "ck"), [1.0])
    assert type(rloo).__name__ == "RLOOConfig" and rloo.beta == 1e-3


def test_bf16_on_a_cpu_without_bf16_units_warns_in_train_rl_too(tmp_path, monkeypatch, caplog):
    import logging

    from tracewise.train import common

    monkeypatch.setattr(common, "cpu_has_native_bf16", lambda: False)
    with caplog.at_level(logging.WARNING):
        assert rl.trainer_args(_cfg(tmp_path, "gpt2"), str(tmp_path / "ck"), [1.0]).bf16 is False
    assert caplog.text == ""  # default bf16=None: off on a CPU, nothing to warn about
    with caplog.at_level(logging.WARNING):
        assert rl.trainer_args(_cfg(tmp_path, "gpt2", bf16=True), str(tmp_path / "ck"), [1.0]).bf16 is True
    assert "train.rl: bf16 on a CPU without avx512_bf16/AMX" in caplog.text


def test_rewards_get_eos_ids_and_see_think_tags(sft_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(sft_model)
    eos = tok.eos_token_id
    funcs, weights = rl.build_reward_funcs([{"name": "arora_zanette", "alpha": 0.2},
                                            {"name": "dapo_overlong", "max_len": 32, "cache_len": 8, "weight": 0.5}],
                                           [eos], num_generations=2)
    assert funcs[0].eos_token_ids == {eos} and funcs[0].expected_group_size == 2 and weights == [1.0, 0.5]
    # TRL decodes with skip_special_tokens=True, which drops <think></think> (special tokens here) and
    # leaves "ok Answer: 7" — no answer at a line start, so a correct completion would score 0.
    ids = tok("<think>ok </think>Answer: 7", add_special_tokens=False)["input_ids"] + [eos]
    stripped = tok.decode(ids, skip_special_tokens=True)
    assert "<think>" not in stripped
    prompt = [{"role": "user", "content": "q"}]
    wrapped = rl.SpecialTokenText(funcs[0], tok, [eos])
    assert wrapped.__name__ == "arora_zanette" and wrapped.requires_group
    assert wrapped.texts([ids]) == ["<think>ok </think>Answer: 7"]
    assert funcs[0]([prompt], [stripped], [ids], answer=["7"]) == [0.0]
    assert wrapped([prompt], [stripped], [ids], answer=["7"]) == [pytest.approx(0.9)]
    assert wrapped([prompt], [stripped], [ids[:-1]], answer=["7"]) == [0.0]  # truncated: no EOS


# ---------------------------------------------------------------- config errors


@pytest.mark.parametrize("overrides, match", [
    (["rewards=[{name: brevity}]"], "unknown name 'brevity'"),
    (["rewards=[{name: arora_zanette, alpha: -0.1}]"], "alpha must be >= 0"),
    (["num_generations=1", "per_device_train_batch_size=8"], r"need num_generations >= 2"),
    (["rewards=[{name: correctness}]", "num_generations=1", "per_device_train_batch_size=8"], "num_generations must be >= 2"),
    (["per_device_train_batch_size=12"], "multiple of num_generations"),
    (["model=/nonexistent/sft-x/model"], "not found"),
    (["model="], "model is required"),
    (["algorithm=ppo"], "algorithm"),
    (["algorithm=rloo", "loss_type=dapo"], "'grpo' only"),
])
def test_bad_config_is_a_clear_error(tmp_path, overrides, match):
    base = [f"out={tmp_path}", f"model={tmp_path}"]
    with pytest.raises(ValueError, match=match):
        load_config(RLRunConfig, None, base + overrides)


@pytest.mark.parametrize("model", ["gpt2\n", "Qwen/Qwen2.5-0.5B\n", "gpt2\nrm -rf"])
def test_a_hub_id_with_a_newline_is_not_a_hub_id(tmp_path, model):
    import dataclasses

    cfg = load_config(RLRunConfig, None, [f"out={tmp_path}", f"model={tmp_path}"])
    dataclasses.replace(cfg, model=model.rstrip("\n").split("\n")[0]).validate()  # the bare id is accepted
    with pytest.raises(ValueError, match="not found"):
        dataclasses.replace(cfg, model=model).validate()


def test_problem_without_gold_fails_before_training(tmp_path, sft_model):
    bad = tmp_path / "problems.jsonl"
    bad.write_text('{"id": "a", "question": "1+1?", "answer": "2"}\n{"id": "b", "question": "2+2?", "answer": ""}\n')
    with pytest.raises(ValueError, match="row 1: missing gold"):
        rl.run(_cfg(tmp_path / "out", sft_model, problems=ProblemsConfig(source=str(bad))))
    assert not (tmp_path / "out").exists()  # nothing written


def test_sft_run_dir_resolves_to_its_model(sft_model):
    run_dir = str(Path(sft_model).parent)
    assert rl.resolve_model(run_dir) == sft_model and rl.resolve_model(sft_model) == sft_model


# ---------------------------------------------------------------- shipped configs


def test_shipped_rl_configs_load(tmp_path):
    cfg = load_config(RLRunConfig, ROOT / "configs/rl/grpo_embedded.yaml", [f"model={tmp_path}"])
    assert cfg.rewards == [{"name": "arora_zanette", "alpha": 0.1}] and cfg.num_generations == 8
    assert (ROOT / "configs/rl/grpo_embedded.yaml").read_text().startswith("# tracewise train rl -c ")
    # configs/rl/alpha_sweep.yaml is the rl-alpha study's config: tests/test_rl_alpha.py



def test_tiny_rl_run_emits_no_library_warnings(tmp_path, sft_model):
    """TRL's GRPO read model.is_gradient_checkpointing on every step: a transformers FutureWarning per step
    between the progress bars (pyproject's filterwarnings hides it in pytest; "always" sees it)."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rl.run(_cfg(tmp_path, sft_model, max_steps=1))
    libs = ("transformers", "trl", "accelerate", "peft", "tracewise")
    bad = [f"{w.category.__name__} {w.filename}:{w.lineno}: {w.message}" for w in caught
           if issubclass(w.category, (FutureWarning, UserWarning, DeprecationWarning))
           and any(f"/{lib}/" in w.filename for lib in libs)]
    assert not bad, bad
