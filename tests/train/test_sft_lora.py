"""train sft on a real-student recipe: LoRA trains only the adapter, the merged model is base + B·A,
packing runs, QLoRA and bad settings fail clearly, global batch derives grad_accum."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tracewise.core.config import build
from tracewise.train.sft import LoRASpec, SFTRunConfig, adapter_dir, grad_accum_for, model_dir, run
from conftest import save_pens_dataset

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, student_path):
    return save_pens_dataset(tmp_path_factory.mktemp("ds") / "ds", repeats=4)


@pytest.fixture(scope="module")
def llama(tmp_path_factory, student_path) -> str:
    """A tiny random Llama (the student's tokenizer and chat template). initializer_range 0.2, not
    0.02: at the default scale a frozen random LM head turns any hidden state into near-uniform
    logits, so a LoRA on the body could barely move the loss in a few steps."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(student_path)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, initializer_range=0.2,
                      max_position_embeddings=256, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("llama")
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def _cfg(out, model, dataset, **kw):
    base = dict(out=str(out), experiment="lora", model=model, dataset=dataset, max_steps=20, batch_size=8,
                learning_rate=2e-2, logging_steps=5, save_steps=100, threads=1)
    base.update(kw)
    return SFTRunConfig(**base)


def test_lora_trains_adapter_only_and_merged_model_is_base_plus_update(tmp_path, llama, dataset):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    lora = LoRASpec(r=8, alpha=16, dropout=0.0, target_modules=["all-linear"])
    run_dir = run(_cfg(tmp_path, llama, dataset, lora=lora, learning_rate=1e-2))
    losses = [h["loss"] for h in json.loads((run_dir / "log_history.json").read_text()) if "loss" in h]
    assert losses[-1] < 0.5 * losses[0], losses

    # The adapter file holds LoRA weights only, and every B moved off its zero init.
    from safetensors.torch import load_file

    saved = load_file(str(adapter_dir(run_dir) / "adapter_model.safetensors"))
    assert saved and all("lora_A" in k or "lora_B" in k for k in saved)
    assert all(v.abs().max() > 0 for k, v in saved.items() if "lora_B" in k)

    base = AutoModelForCausalLM.from_pretrained(llama).state_dict()
    merged = AutoModelForCausalLM.from_pretrained(model_dir(run_dir)).state_dict()
    assert merged.keys() == base.keys()
    scale = lora.alpha / lora.r
    adapted = 0
    for name, w in base.items():
        mod = name.removesuffix(".weight")
        a = next((v for k, v in saved.items() if k.endswith(f"{mod}.lora_A.weight")), None)
        if a is None:  # not adapted: the frozen base is bit-for-bit unchanged
            assert torch.equal(merged[name], w), name
        else:
            b = next(v for k, v in saved.items() if k.endswith(f"{mod}.lora_B.weight"))
            torch.testing.assert_close(merged[name], w + scale * b @ a)
            assert not torch.equal(merged[name], w)
            adapted += 1
    # all-linear: q, k, v, o, gate, up, down in every layer (never the LM head).
    assert adapted == 7 * AutoModelForCausalLM.from_pretrained(llama).config.num_hidden_layers

    # The adapter also loads on its own over the base and gives the merged model's logits.
    ids = torch.tensor([[1, 5, 9, 12, 7]])
    with torch.no_grad():
        via_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(llama),
                                                str(adapter_dir(run_dir))).eval()(ids).logits
        via_merged = AutoModelForCausalLM.from_pretrained(model_dir(run_dir)).eval()(ids).logits
    torch.testing.assert_close(via_adapter, via_merged, atol=1e-4, rtol=1e-4)
    done = json.loads((run_dir / "DONE").read_text())
    assert done["lora_r"] == 8 and done["global_batch"] == 8


def test_packing_chat_template_and_unmerged_adapter(tmp_path, llama, dataset):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    template = REPO / "configs" / "paper" / "chat_template.jinja"  # the paper recipes' template for base models
    cfg = _cfg(tmp_path, llama, dataset, packing=True, max_length=64, batch_size=2, max_steps=12,
               lora=LoRASpec(r=4, merge=False), logging_steps=4, chat_template=str(template))
    run_dir = run(cfg)
    losses = [h["loss"] for h in json.loads((run_dir / "log_history.json").read_text()) if "loss" in h]
    assert losses[-1] < losses[0], losses
    # model/ holds just the adapter; transformers' PEFT integration loads it over its base.
    assert (model_dir(run_dir) / "adapter_config.json").exists() and not adapter_dir(run_dir).exists()
    assert AutoModelForCausalLM.from_pretrained(model_dir(run_dir)) is not None
    tok = AutoTokenizer.from_pretrained(model_dir(run_dir))
    assert tok.apply_chat_template([{"role": "user", "content": "1+1?"}], tokenize=False,
                                   add_generation_prompt=True).endswith("User: 1+1?\n\nAssistant:\n")


def test_global_batch_and_bad_settings(tmp_path, llama, dataset):
    assert grad_accum_for(_cfg(tmp_path, llama, dataset, global_batch=64, batch_size=4), 8) == 2
    assert grad_accum_for(_cfg(tmp_path, llama, dataset, grad_accum=3), 8) == 3
    with pytest.raises(ValueError, match="global_batch=64 is not a multiple of batch_size × processes = 3 × 2"):
        grad_accum_for(_cfg(tmp_path, llama, dataset, global_batch=64, batch_size=3), 2)
    with pytest.raises(ValueError, match="qlora trains a LoRA on a 4-bit base: set lora.r > 0"):
        build(SFTRunConfig, {"model": llama, "dataset": dataset, "qlora": True})
    with pytest.raises(ValueError, match="model_dtype"):
        build(SFTRunConfig, {"model": llama, "dataset": dataset, "model_dtype": "int8"})
    with pytest.raises(ValueError, match="lora: r must be >= 0"):
        build(SFTRunConfig, {"model": llama, "dataset": dataset, "lora": {"r": -1}})
    import shutil

    from transformers import AutoTokenizer

    bare = tmp_path / "base-model"  # a base model: weights and a tokenizer without a chat template
    shutil.copytree(llama, bare)
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    tok = AutoTokenizer.from_pretrained(bare)
    tok.chat_template = None
    tok.save_pretrained(bare)
    with pytest.raises(ValueError, match="has no chat template.*chat_template=configs/paper/chat_template.jinja"):
        run(_cfg(tmp_path / "b", str(bare), dataset))
    assert not (tmp_path / "b").exists()
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="qlora needs a CUDA GPU"):
            run(_cfg(tmp_path / "q", llama, dataset, qlora=True, lora=LoRASpec(r=4)))
        assert not (tmp_path / "q").exists()  # refused before any output


@pytest.mark.requires_gpu
def test_qlora_step_on_gpu(tmp_path, llama, dataset):
    run_dir = run(_cfg(tmp_path, llama, dataset, qlora=True, lora=LoRASpec(r=4), max_steps=5, bf16=True))
    assert (model_dir(run_dir) / "config.json").exists() and (adapter_dir(run_dir) / "adapter_config.json").exists()
