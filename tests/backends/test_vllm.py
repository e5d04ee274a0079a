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


# ---- engine behaviour, on CPU with a stand-in vLLM (tests/fakes/vllm) ----------------------------

FAKES = Path(__file__).resolve().parents[1] / "fakes"


@pytest.fixture()
def fake_vllm(monkeypatch):
    """``import vllm`` gives tests/fakes/vllm here and in spawned replicas (they inherit sys.path)."""
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(FAKES))
    monkeypatch.setenv("FAKE_VLLM_MAX_MODEL_LEN", "64")
    monkeypatch.delenv("FAKE_VLLM_DIE_ON_GPUS", raising=False)
    import vllm

    assert vllm.__file__.startswith(str(FAKES))
    yield vllm
    # Leave no fake behind: later tests (TRL's is_vllm_available) must not find a "vllm" module.
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        del sys.modules[name]


def _within(seconds: float, fn):
    """``fn()``'s result or exception, or a test failure if it is still running after ``seconds``."""
    import threading

    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still waiting after {seconds} s: the parent hangs"
    if "error" in box:
        raise box["error"]
    return box["value"]


def _prompts(tok, lengths: dict[str, int]) -> list[Request]:
    """Raw-text requests whose prompts encode to exactly the given numbers of tokens."""
    out = []
    for rid, n in lengths.items():
        text = " ".join(["7"] * (3 * n))
        ids = tok(text, add_special_tokens=True)["input_ids"][:n]
        out.append(Request(id=rid, prompt=tok.decode(ids, skip_special_tokens=True)))
        assert len(tok(out[-1].prompt, add_special_tokens=True)["input_ids"]) in (n, n - 1, n + 1)
    return out


def test_data_parallel_replicas_may_start_engine_processes(fake_vllm, student_path, monkeypatch) -> None:
    """vLLM's engine starts child processes; a daemonic replica may not ("daemonic processes are not
    allowed to have children"). Replicas give the same samples as one engine, dealt round-robin."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    requests = [Request(id=f"q{i}", prompt=f"Count to {i}:") for i in range(3)]
    sampling = SamplingParams(n=2, temperature=1.0, max_tokens=6, seed=5)
    dp = _within(120, lambda: get_backend("vllm", model="fake", tokenizer=student_path, data_parallel_size=2,
                                          chunk_size=2))
    try:
        got = _within(60, lambda: [c for b in dp.generate(requests, sampling) for c in b])
    finally:
        dp.close()
    single = get_backend("vllm", model="fake", tokenizer=student_path)
    want = [c for b in single.generate(requests, sampling) for c in b]
    key = lambda c: (c.request_id, c.sample_idx)  # noqa: E731
    assert sorted((key(c), c.text) for c in got) == sorted((key(c), c.text) for c in want)
    assert len(got) == 6 and all(c.finish_reason in ("stop", "length") for c in got)


def test_a_replica_killed_mid_run_is_an_error_not_a_hang(fake_vllm, student_path, monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setenv("FAKE_VLLM_DIE_ON_GPUS", "1")  # replica 1 is SIGKILLed on its first step
    monkeypatch.setattr("tracewise.backends.vllm.POLL_S", 0.5, raising=False)
    dp = _within(120, lambda: get_backend("vllm", model="fake", tokenizer=student_path, data_parallel_size=2))
    requests = [Request(id=f"q{i}", prompt=f"Count to {i}:") for i in range(4)]
    with pytest.raises(RuntimeError, match=r"replica 1 died: killed by SIGKILL"):
        _within(20, lambda: [c for b in dp.generate(requests, SamplingParams(n=1, max_tokens=4)) for c in b])
    assert dp._workers == []  # the surviving replica was stopped too


def test_an_over_long_prompt_fails_alone(fake_vllm, student_tokenizer, student_path) -> None:
    backend = get_backend("vllm", model="fake", tokenizer=student_path)  # max_model_len 64
    requests = _prompts(student_tokenizer, {"short": 8, "too-long": 70, "also-short": 10})
    got = {c.request_id: c for b in backend.generate(requests, SamplingParams(n=1, max_tokens=5)) for c in b}
    assert set(got) == {"short", "too-long", "also-short"}
    bad = got["too-long"]
    assert bad.finish_reason == "error" and bad.n_tokens == 0 and bad.text == ""
    assert bad.meta["error"].startswith("prompt_too_long") and "max_model_len 64" in bad.meta["error"]
    assert got["short"].finish_reason == "length" and got["short"].n_tokens == 5  # max_tokens 5 < prompt length
    # max_tokens is capped at the room left: a 60-token prompt has 4 tokens of room, not 50.
    (near,) = _prompts(student_tokenizer, {"near": 60})
    n_prompt = len(backend.encode_prompt(near))
    (c,) = [c for b in backend.generate([near], SamplingParams(n=1, max_tokens=50)) for c in b]
    assert c.n_tokens == 64 - n_prompt and c.finish_reason == "length"  # ran into the context: cut off


def test_short_samples_are_handed_back_before_the_longest_finishes(fake_vllm, student_tokenizer,
                                                                   student_path) -> None:
    """Chunk-and-wait held every sample of a chunk until its longest one finished; the stream hands
    finished samples back while the long one is still generating."""
    backend = get_backend("vllm", model="fake", tokenizer=student_path, chunk_size=4)
    requests = _prompts(student_tokenizer, {"long": 40, **{f"s{i}": 3 for i in range(7)}})
    batches = list(backend.generate(requests, SamplingParams(n=1, max_tokens=40)))
    order = [c.request_id for b in batches for c in b]
    assert sorted(order) == sorted(r.id for r in requests)
    assert order[-1] == "long" and batches[-1] == [b for b in batches if any(c.request_id == "long" for c in b)][0]
    assert [c.request_id for c in batches[-1]] == ["long"]  # every short sample came back before it
    assert max(len(b) for b in batches) <= 4
    # Timed in the engine: "long" and s0 entered together (window 4); s0 needs 3 steps, long 40. This engine,
    # like vLLM V1 with final-only outputs, reports no partial output and no metrics: no time to first token.
    t = {c.request_id: c.timing for b in batches for c in b}
    assert all(x["clock"] == "engine" and x["latency_s"] > 0 and x["ttft_s"] is None for x in t.values())
    assert t["long"]["latency_s"] > t["s0"]["latency_s"]


def test_token_ids_are_returned_and_prefix_ids_are_continued_exactly(fake_vllm, student_path) -> None:
    backend = get_backend("vllm", model="fake", tokenizer=student_path)
    msgs = [{"role": "user", "content": "What is 2+2?"}]
    sampling = SamplingParams(n=1, temperature=1.0, max_tokens=4, seed=1)
    (c,) = [c for b in backend.generate([Request(id="q", messages=msgs)], sampling) for c in b]
    ids = c.meta["token_ids"]
    assert len(ids) == c.n_tokens == 4 and c.text == "".join(f"<{t}>" for t in ids)
    # A continuation from ids sees the template's ids + exactly those ids, whatever the text re-encodes to.
    template = backend.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    base = backend.tokenizer(template, add_special_tokens=False)["input_ids"]
    req = Request(id="q", messages=msgs, prefix=c.text, prefix_ids=ids[:3])
    assert backend.encode_prompt(req) == base + ids[:3]
    # Without ids the prefix text is tokenised with the template (the hf backend's prompt).
    plain = Request(id="q", messages=msgs, prefix="<think>")
    assert backend.encode_prompt(plain) == backend.tokenizer(template + "<think>", add_special_tokens=False)["input_ids"]


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
    # Streamed through a window of 3 samples in flight: several batches, none larger than the window.
    assert len(batches) >= 3 and max(len(b) for b in batches) <= 3
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
@pytest.mark.parametrize("devices", ["all", "one GPU twice"])
def test_vllm_data_parallel_replicas_match_a_single_engine(tiny_model_dir: str, devices: str, monkeypatch) -> None:
    """Real vLLM engines in non-daemonic replicas (their EngineCore is a child process). With one GPU,
    both replicas share it (CUDA_VISIBLE_DEVICES=0,0), which still runs the whole replica path."""
    import torch

    if devices == "all" and torch.cuda.device_count() < 2:
        pytest.skip("data parallel on separate GPUs needs 2 GPUs")
    if devices == "one GPU twice":
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,0")
    requests = [Request(id=f"q{i}", prompt=f"Count to {i}:") for i in range(6)]
    sampling = SamplingParams(n=2, temperature=1.0, max_tokens=12, seed=5)
    kw = dict(model=tiny_model_dir, gpu_memory_utilization=0.15, max_model_len=512, enforce_eager=True, chunk_size=4)
    dp = get_backend("vllm", data_parallel_size=2, **kw)
    texts_dp = {(c.request_id, c.sample_idx): c.text for b in dp.generate(requests, sampling) for c in b}
    dp.close()
    single = get_backend("vllm", **kw)
    texts = {(c.request_id, c.sample_idx): c.text for b in single.generate(requests, sampling) for c in b}
    assert texts_dp == texts and len(texts) == 12
    single.close()


@pytest.mark.requires_gpu
def test_vllm_over_long_prompt_fails_alone_and_ids_round_trip(tiny_model_dir: str) -> None:
    backend = get_backend("vllm", model=tiny_model_dir, gpu_memory_utilization=0.15, max_model_len=64,
                          enforce_eager=True, chunk_size=4)
    requests = [Request(id="ok", prompt="Count to 3:"), Request(id="long", prompt="one two " * 80)]
    got = {c.request_id: c for b in backend.generate(requests, SamplingParams(n=1, max_tokens=8)) for c in b}
    assert got["long"].finish_reason == "error" and "prompt_too_long" in got["long"].meta["error"]
    ok = got["ok"]
    assert ok.finish_reason in ("stop", "length") and len(ok.meta["token_ids"]) == ok.n_tokens >= 1
    # Continuing from the ids gives the prompt + those ids exactly; greedy continuation runs.
    cont = Request(id="ok", prompt="Count to 3:", prefix=ok.text, prefix_ids=ok.meta["token_ids"][:2])
    (c,) = [c for b in backend.generate([cont], SamplingParams(n=1, temperature=0.0, max_tokens=4)) for c in b]
    assert c.finish_reason in ("stop", "length")


# ---- stages that run vLLM take the same vllm section ----------------------------------------------

REPO = Path(__file__).resolve().parents[2]


def test_eval_passes_its_vllm_section_to_the_backend(student_path: str, monkeypatch, tmp_path) -> None:
    """Mistral-Nemo declares 1,024,000 positions: eval must be able to cap vLLM's context."""
    from tracewise import backends
    from tracewise.evaluate import EvalConfig, run

    # The recipe evaluates GSM8K: a two-problem stand-in, so the test does not need ../shared/data.
    (tmp_path / "gsm8k_test.jsonl").write_text('{"id": "g0", "problem": "1+1?", "answer": "2"}\n'
                                               '{"id": "g1", "problem": "4-1?", "answer": "3"}\n')
    monkeypatch.setenv("TRACEWISE_DATA", str(tmp_path))

    cfg = load_config(EvalConfig, REPO / "configs/paper/eval_student.yaml",
                      [f"model={student_path}", "vllm.data_parallel_size=1", "out=/nonexistent/never-written"])
    assert cfg.vllm.max_model_len == 36864  # the recipe sets it
    seen = {}

    class Stop(Exception):
        pass

    def fake_get_backend(name, **kwargs):
        seen.update(kwargs, name=name)
        raise Stop

    monkeypatch.setattr(backends, "get_backend", fake_get_backend)
    with pytest.raises(Stop):
        run(cfg)
    assert seen["name"] == "vllm" and seen["max_model_len"] == 36864 and seen["data_parallel_size"] == 1
    with pytest.raises(ValueError, match="vllm.max_model_len"):
        load_config(EvalConfig, None, [f"model={student_path}", "backend=vllm", "vllm.max_model_len=0"])


def test_engine_ttft_is_read_from_metrics_when_reported() -> None:
    from types import SimpleNamespace

    from tracewise.backends.vllm import _engine_ttft

    assert _engine_ttft(SimpleNamespace(metrics=SimpleNamespace(arrival_time=10.0, first_token_time=10.25))) == 0.25
    assert _engine_ttft(SimpleNamespace(metrics=None)) is None
    assert _engine_ttft(SimpleNamespace(metrics=SimpleNamespace(arrival_time=10.0, first_token_time=None))) is None


def test_partial_engine_outputs_time_the_first_token(fake_vllm, student_tokenizer, student_path, monkeypatch) -> None:
    # An engine that also reports unfinished requests each step (vLLM without final-only outputs): the
    # step that first shows a token is the time to first token.
    step = fake_vllm.LLMEngine.step

    def streaming_step(self):
        done = step(self)
        return done + [fake_vllm.RequestOutput(r.request_id, r.prompt_ids, [fake_vllm.CompletionOutput(
            0, "", fake_vllm._sample_tokens(r.params.seed or 0, r.done), None)], False) for r in self.running.values()]

    monkeypatch.setattr(fake_vllm.LLMEngine, "step", streaming_step)
    backend = get_backend("vllm", model="fake", tokenizer=student_path, chunk_size=4)
    got = {c.request_id: c for b in backend.generate(_prompts(student_tokenizer, {"long": 40}),
                                                     SamplingParams(n=1, max_tokens=40)) for c in b}
    t = got["long"].timing
    assert got["long"].n_tokens > 1 and 0 < t["ttft_s"] < t["latency_s"]  # token 1 at step 1 of many
