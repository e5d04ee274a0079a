"""The ``vllm`` backend: lazy import and config checks on CPU; real generation on a GPU (requires_gpu)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from tracewise.backends import BACKENDS, get_backend
from tracewise.backends.base import Request, SamplingParams
from tracewise.backends.vllm import import_vllm
from tracewise.core.config import load_config
from tracewise.generate.stage import GenerateConfig, backend_options


@pytest.fixture()
def no_vllm(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` now raises ImportError, installed or not


def test_backend_is_registered_and_importing_tracewise_does_not_import_vllm() -> None:
    assert BACKENDS["vllm"] == "tracewise.backends.vllm:VLLMBackend"
    import tracewise.backends.vllm  # noqa: F401  (the module itself must import without vllm)


def test_missing_vllm_is_a_clear_error(no_vllm) -> None:
    with pytest.raises(ValueError, match=r"pip install 'tracewise\[vllm\]'"):
        import_vllm()
    with pytest.raises(ValueError, match="not installed"):
        get_backend("vllm", model="some/model")


def test_generate_with_vllm_missing_exits_with_the_install_hint(no_vllm, student_path: str, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tracewise.cli import app

    res = CliRunner().invoke(app, ["generate", "backend=vllm", "model=some/model", f"tokenizer={student_path}",
                                   f"out={tmp_path}", "problems.world.n_train=2"])
    assert res.exit_code == 2 and "tracewise[vllm]" in res.output
    assert not list(tmp_path.glob("generate-*"))  # nothing written before the backend exists


@pytest.mark.parametrize("override, needle", [
    ("vllm.tensor_parallel_size=0", "vllm.tensor_parallel_size"),
    ("vllm.data_parallel_size=-1", "vllm.data_parallel_size"),
    ("vllm.gpu_memory_utilization=1.5", "vllm.gpu_memory_utilization"),
    ("vllm.dtype=int3", "vllm.dtype"),
    ("vllm.max_model_len=0", "vllm.max_model_len"),
    ("vllm.chunk_size=0", "vllm.chunk_size"),
])
def test_bad_vllm_settings_are_rejected_before_import(no_vllm, student_path: str, override: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        load_config(GenerateConfig, None, ["backend=vllm", "model=m", f"tokenizer={student_path}", override])
    with pytest.raises(ValueError, match=needle):  # the backend checks them too, before importing vllm
        key, value = override.split("=")
        get_backend("vllm", model="m", **{key.split(".")[1]: yaml.safe_load(value)})


def test_generate_passes_parallel_settings_to_the_backend(student_path: str) -> None:
    cfg = load_config(GenerateConfig, None, ["backend=vllm", "model=m", f"tokenizer={student_path}",
                                             "vllm.tensor_parallel_size=4", "vllm.data_parallel_size=2"])
    opts = backend_options(cfg)
    assert opts["tensor_parallel_size"] == 4 and opts["data_parallel_size"] == 2


# ---- on a GPU ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, student_path: str) -> str:
    """A tiny random Llama with vLLM-friendly shapes (head_dim 64) and the student tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(student_path)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                         max_position_embeddings=512, eos_token_id=tok.eos_token_id,
                                         bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id))
    out = tmp_path_factory.mktemp("vllm-tiny")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.mark.requires_gpu
def test_vllm_generates_seeded_samples_and_continues_prefixes(tiny_model_dir: str) -> None:
    backend = get_backend("vllm", model=tiny_model_dir, gpu_memory_utilization=0.3, max_model_len=512,
                          enforce_eager=True, chunk_size=3)
    requests = [Request(id=f"q{i}", messages=[{"role": "user", "content": f"What is {i}+{i}?"}]) for i in range(4)]
    sampling = SamplingParams(n=2, temperature=1.0, max_tokens=16, seed=3)
    batches = list(backend.generate(requests, sampling))
    assert len(batches) == 3  # 8 samples in chunks of 3, each handed back on its own
    got = {(c.request_id, c.sample_idx): c for b in batches for c in b}
    assert len(got) == 8
    assert all(c.finish_reason in ("stop", "length") and 1 <= c.n_tokens <= 16 for c in got.values())
    # Seeds are per sample: a different chunking and a resumed subset give the same samples.
    backend.cfg.chunk_size = 8
    again = {(c.request_id, c.sample_idx): c.text for b in backend.generate(requests, sampling) for c in b}
    assert again == {k: c.text for k, c in got.items()}
    part = [Request(id="q2", messages=requests[2].messages, sample_idxs=[1])]
    (only,) = [c for b in backend.generate(part, sampling) for c in b]
    assert only.text == got[("q2", 1)].text
    # A prefix is continued (test-time controls).
    (cont,) = next(backend.generate([Request(id="p", messages=requests[0].messages, prefix="<think>")],
                                    SamplingParams(n=1, temperature=0.0, max_tokens=8)))
    assert cont.n_tokens >= 1


@pytest.mark.requires_gpu
def test_vllm_data_parallel_replicas_match_a_single_engine(tiny_model_dir: str) -> None:
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("data parallel needs 2 GPUs")
    requests = [Request(id=f"q{i}", prompt=f"Count to {i}:") for i in range(6)]
    sampling = SamplingParams(n=2, temperature=1.0, max_tokens=12, seed=5)
    kw = dict(model=tiny_model_dir, gpu_memory_utilization=0.3, max_model_len=512, enforce_eager=True, chunk_size=4)
    dp = get_backend("vllm", data_parallel_size=2, **kw)
    texts_dp = {(c.request_id, c.sample_idx): c.text for b in dp.generate(requests, sampling) for c in b}
    dp.close()
    single = get_backend("vllm", **kw)
    texts = {(c.request_id, c.sample_idx): c.text for b in single.generate(requests, sampling) for c in b}
    assert texts_dp == texts and len(texts) == 12
