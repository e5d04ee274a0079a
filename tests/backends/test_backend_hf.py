"""HFBackend on a tiny random Llama saved to disk: counts, determinism, parity with generate, stops."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, decoders, models
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, ViTConfig

from tracewise.backends import BACKENDS, get_backend
from tracewise.backends.base import Request, SamplingParams
from tracewise.backends.hf import HFBackend, _pick_tokens, _Row

SPECIALS = ["<pad>", "<|end|>", "<|user|>", "<|assistant|>", "<think>", "</think>"]
CHARS = [chr(c) for c in range(32, 127)]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
QUESTIONS = ["What is 2+3?", "Add 17 and 25, then double it.", "Hi", "Compute 9*9-1 carefully, step by step."]


def make_tokenizer() -> PreTrainedTokenizerFast:
    """Character-level tokenizer (a BPE without merges) whose chat markers are special tokens."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS + CHARS)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    core.add_special_tokens(SPECIALS)
    core.decoder = decoders.Fuse()  # concatenate characters back without spaces
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|end|>", pad_token="<pad>", additional_special_tokens=SPECIALS[2:]
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def make_model(tok: PreTrainedTokenizerFast, seed: int = 0, **overrides) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
        **overrides,
    )
    model = LlamaForCausalLM(config)
    # Scale logits up so sampled text is peaked enough to look like a model rather than noise.
    model.lm_head.weight.data *= 20
    return model.eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matmuls gain nothing from threads, and on a busy 2-core box extra threads spin-wait
    (a 64x128 matmul measured 0.06 ms on one thread, 16 ms on two with the other core busy)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_llama")
    tok = make_tokenizer()
    make_model(tok).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def backend(model_dir):
    return HFBackend(model_dir, batch_size=16)


def chat(i: int, q: str) -> Request:
    return Request(id=f"q{i}", messages=[{"role": "user", "content": q}])


def run(backend: HFBackend, requests, sampling, progress=None) -> dict:
    out = {}
    for batch in backend.generate(requests, sampling, progress):
        for c in batch:
            out[(c.request_id, c.sample_idx)] = c
    return out


def test_n_samples_per_request_with_sample_idxs(backend):
    reqs = [chat(i, q) for i, q in enumerate(QUESTIONS)]
    reqs[1].sample_idxs = [0, 2]
    out = run(backend, reqs, SamplingParams(n=3, temperature=1.0, max_tokens=12, seed=1))
    expected = {(r.id, k) for r in reqs for k in (r.sample_idxs or range(3))}
    assert set(out) == expected
    for c in out.values():
        assert 1 <= c.n_tokens <= 12
        assert c.finish_reason in ("stop", "length")
        assert c.meta["prompt_tokens"] > 0
    # Distinct seeds give distinct samples of the same prompt (12 peaked tokens almost never collide).
    assert len({out[("q0", k)].text for k in range(3)}) > 1


def test_samples_independent_of_batch_size_order_and_neighbours(model_dir, backend):
    sampling = SamplingParams(n=4, temperature=1.0, top_p=0.9, max_tokens=24, seed=7)
    reqs = [chat(i, q) for i, q in enumerate(QUESTIONS)]
    batched = run(backend, reqs, sampling)  # 16 rows of mixed prompt lengths in one batch
    single = run(HFBackend(model_dir, batch_size=1), list(reversed(reqs)), sampling)
    assert {k: c.text for k, c in batched.items()} == {k: c.text for k, c in single.items()}
    # Asking for one sample alone (a resume) regenerates exactly the same tokens.
    lone = Request(id="q3", messages=reqs[3].messages, sample_idxs=[2])
    (c,) = run(backend, [lone], sampling).values()
    assert (c.text, c.n_tokens, c.finish_reason) == (
        batched[("q3", 2)].text,
        batched[("q3", 2)].n_tokens,
        batched[("q3", 2)].finish_reason,
    )
    # A different seed changes the samples.
    other = run(backend, reqs, SamplingParams(n=4, temperature=1.0, top_p=0.9, max_tokens=24, seed=8))
    assert any(other[k].text != batched[k].text for k in batched)


def test_absolute_position_model_is_padding_independent(tmp_path):
    """GPT-2 adds learned absolute position embeddings, so unlike RoPE (where a shift cancels
    out) a left-padded row only matches its unpadded self if positions skip the padding."""
    tok = make_tokenizer()
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tok), n_embd=64, n_layer=2, n_head=4, n_positions=256,
                        eos_token_id=tok.eos_token_id, bos_token_id=None, pad_token_id=tok.pad_token_id)
    model = GPT2LMHeadModel(config)
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach() * 20)  # untie, sharpen
    model.config.tie_word_embeddings = False
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    sampling = SamplingParams(n=2, temperature=1.0, max_tokens=16, seed=5)
    reqs = [chat(i, q) for i, q in enumerate(QUESTIONS)]
    batched = run(HFBackend(str(tmp_path), batch_size=8), reqs, sampling)
    single = run(HFBackend(str(tmp_path), batch_size=1), reqs, sampling)
    assert {k: c.text for k, c in batched.items()} == {k: c.text for k, c in single.items()}


def test_greedy_matches_hf_generate(backend):
    tok, model = backend.tokenizer, backend.model
    reqs = [chat(i, q) for i, q in enumerate(QUESTIONS[:3])]
    out = run(backend, reqs, SamplingParams(n=1, temperature=0.0, max_tokens=20))
    for req in reqs:
        ids = torch.tensor([backend.encode_prompt(req)])
        ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False)
        new = ref[0, ids.shape[1] :].tolist()
        got = out[(req.id, 0)]
        assert got.n_tokens == len(new)
        expected_text = tok.decode([t for t in new if t != tok.eos_token_id], skip_special_tokens=False)
        assert got.text == expected_text


def test_raw_prompt_equals_templated_messages(backend):
    sampling = SamplingParams(n=2, temperature=0.8, max_tokens=10)
    raw = Request(id="q0", prompt=f"<|user|>{QUESTIONS[0]}<|end|><|assistant|>")
    assert backend.encode_prompt(raw) == backend.encode_prompt(chat(0, QUESTIONS[0]))
    a = run(backend, [raw], sampling)
    b = run(backend, [chat(0, QUESTIONS[0])], sampling)
    assert {k: c.text for k, c in a.items()} == {k: c.text for k, c in b.items()}


def test_prefix_continues_greedy_generation(backend):
    greedy = SamplingParams(n=1, temperature=0.0, max_tokens=16)
    (full,) = run(backend, [chat(0, QUESTIONS[1])], greedy).values()
    assert full.finish_reason == "length" and len(full.text) == 16
    prefix = full.text[:6]
    cont_req = Request(id="q0", messages=[{"role": "user", "content": QUESTIONS[1]}], prefix=prefix)
    assert backend.encode_prompt(cont_req)[-6:] == backend.tokenizer.encode(prefix, add_special_tokens=False)
    (cont,) = run(backend, [cont_req], SamplingParams(n=1, temperature=0.0, max_tokens=10)).values()
    assert prefix + cont.text == full.text
    assert cont.n_tokens == 10


def test_finish_reason_stop_when_eos_dominates(tmp_path):
    """A residual bias in one hidden unit + an lm_head row reading it makes EOS win every step."""
    tok = make_tokenizer()
    model = make_model(tok, mlp_bias=True)
    with torch.no_grad():
        model.model.layers[-1].mlp.down_proj.bias.zero_()
        model.model.layers[-1].mlp.down_proj.bias[0] = 1e4
        model.lm_head.weight[:, 0] = 0.0
        model.lm_head.weight[tok.eos_token_id, 0] = 100.0
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    backend = HFBackend(str(tmp_path))
    out = run(backend, [chat(0, QUESTIONS[0])], SamplingParams(n=3, temperature=1.0, max_tokens=8))
    for c in out.values():
        assert (c.finish_reason, c.n_tokens, c.text) == ("stop", 1, "")


def test_generation_config_eos_ids_also_stop(model_dir, backend):
    """A token listed only in generation_config.eos_token_id (end-of-turn markers) also stops."""
    greedy = SamplingParams(n=1, temperature=0.0, max_tokens=16)
    (full,) = run(backend, [chat(0, QUESTIONS[1])], greedy).values()
    first_id = backend.tokenizer.encode(full.text[0], add_special_tokens=False)[0]
    other = HFBackend(model_dir)
    other.model.generation_config.eos_token_id = [backend.tokenizer.eos_token_id, first_id]
    other.eos_ids = other._collect_eos_ids()
    (c,) = run(other, [chat(0, QUESTIONS[1])], greedy).values()
    assert (c.finish_reason, c.n_tokens, c.text) == ("stop", 1, "")


def test_sampler_follows_softmax_and_nucleus():
    """Inverse-CDF sampling with one uniform per row reproduces softmax(logits / T), and top_p
    drops exactly the tokens outside the nucleus (probs 0.5, 0.3, 0.15, 0.05 here)."""
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = (probs.log() * 0.5).expand(40000, 4)  # temperature 0.5 undoes the 0.5 scaling
    u = torch.rand(40000, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(_pick_tokens(logits, SamplingParams(temperature=0.5), u), minlength=4) / 40000
    assert torch.allclose(freq, probs, atol=0.01)
    nucleus = _pick_tokens(logits, SamplingParams(temperature=0.5, top_p=0.8), u)
    freq = torch.bincount(nucleus, minlength=4) / 40000
    assert torch.allclose(freq, torch.tensor([0.625, 0.375, 0.0, 0.0]), atol=0.01)
    greedy = _pick_tokens(logits[:3], SamplingParams(temperature=0.0), None)
    assert greedy.tolist() == [0, 0, 0]


def test_think_tags_survive_decoding(backend):
    tok = backend.tokenizer
    ids = tok.encode("<think>a</think>b", add_special_tokens=False)
    assert len(ids) == 4  # the tags are single special tokens
    row = _Row(Request(id="x", prompt="p"), 0, prompt_ids=[1], seed=0, tokens=ids + [tok.eos_token_id])
    c = backend._completion(row)
    assert (c.text, c.n_tokens, c.finish_reason) == ("<think>a</think>b", 5, "stop")


def test_progress_counts_and_batch_limits(model_dir):
    backend = HFBackend(model_dir, batch_size=5, max_batch_tokens=60)
    calls: list[int] = []
    reqs = [chat(i, q) for i, q in enumerate(QUESTIONS)]
    batches = list(backend.generate(reqs, SamplingParams(n=3, temperature=1.0, max_tokens=6), calls.append))
    assert sum(calls) == 12 and all(k > 0 for k in calls)
    assert sum(len(b) for b in batches) == 12
    # Longest prompt is 46 tokens: 46 + 6 new tokens = 52 per row, so the budget of 60 forces
    # one row per batch for the long prompts; short ones share batches up to 5 rows.
    assert max(len(b) for b in batches) <= 5 and len(batches) > 3


def test_bad_inputs_raise_clear_errors(tmp_path, backend):
    with pytest.raises(ValueError, match="missing_model"):
        HFBackend(str(tmp_path / "missing_model"))
    vit = tmp_path / "vit"
    ViTConfig().save_pretrained(vit)
    with pytest.raises(ValueError, match="not a causal language model"):
        HFBackend(str(vit))
    with pytest.raises(ValueError, match="neither messages nor prompt"):
        list(backend.generate([Request(id="x")], SamplingParams()))
    with pytest.raises(ValueError, match="outside"):
        list(backend.generate([Request(id="x", prompt="a", sample_idxs=[3])], SamplingParams(n=2)))
    with pytest.raises(ValueError, match="top_p"):
        list(backend.generate([Request(id="x", prompt="a")], SamplingParams(top_p=0)))
    with pytest.raises(ValueError, match="batch_size"):
        HFBackend(backend.model, backend.tokenizer, batch_size=0)


def test_registry_builds_backends_lazily(model_dir):
    assert BACKENDS["hf"] == "tracewise.backends.hf:HFBackend"
    assert isinstance(get_backend("hf", model=model_dir), HFBackend)
    with pytest.raises(ValueError, match="hf"):
        get_backend("nope")


def test_generation_emits_no_deprecation_warnings(backend):
    """transformers 5.24 renamed forward()'s KV-cache keyword to ``cache``; passing ``past_key_values``
    warned (FutureWarning) once in every process, so once per quickstart student worker."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(backend, [chat(0, QUESTIONS[0])], SamplingParams(n=2, temperature=1.0, max_tokens=6, seed=0))
    bad = [f"{w.category.__name__}: {w.message}" for w in caught
           if issubclass(w.category, (FutureWarning, DeprecationWarning)) and "deprecated" in str(w.message)]
    assert not bad, bad
