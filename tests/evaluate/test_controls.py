"""Test-time controls on a tiny random HF Llama whose </think> logit carries a tunable bias."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from tokenizers import Tokenizer, decoders, models
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from tracewise.evaluate import controls
from tracewise.evaluate.controls import continuation
from tracewise.backends.base import Request, SamplingParams
from tracewise.backends.hf import HFBackend
from tracewise.evaluate.controls import (
    ControlConfig,
    budget_force,
    budget_sweep,
    control_sweep,
    run_control,
    think_free,
    truncate,
    wait_extend,
)
from tracewise.core.tokens import THINK_CLOSE
from tracewise.evaluate.few_shot import few_shot_messages, load_exemplars
from tracewise.core.text import parse_completion
from tracewise.verify.answer import verify

SPECIALS = ["<pad>", "<|end|>", "<|user|>", "<|assistant|>", "<think>", "</think>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
QUESTIONS = ["What is 2+3?", "Add 17 and 25, then double it.", "Hi", "Compute 9*9-1 carefully, step by step."]
SAMPLING = SamplingParams(n=4, temperature=1.0, max_tokens=48, seed=0)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    """Character-level tokenizer (as in test_backend_hf): token counts are character counts, with
    <think>/</think> as single special tokens."""
    vocab = {t: i for i, t in enumerate(SPECIALS + [chr(c) for c in range(32, 127)])}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    core.add_special_tokens(SPECIALS)
    core.decoder = decoders.Fuse()
    out = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|end|>", pad_token="<pad>", additional_special_tokens=SPECIALS[2:]
    )
    out.chat_template = CHAT_TEMPLATE
    return out


def make_backend(tok, close_bias: float) -> HFBackend:
    """Random Llama with sharpened logits plus ``close_bias`` on </think>: 4 gives thinking spans
    of a few to 70 tokens at temperature 1, 6 makes most samples close within a few tokens."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None)
    model = LlamaForCausalLM(config).eval()
    head = torch.nn.Linear(config.hidden_size, config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight * 20)
        head.bias.zero_()
        head.bias[tok.convert_tokens_to_ids(THINK_CLOSE)] = close_bias
    model.lm_head = head
    # No `supports_prefix` set here: every control below runs on what HFBackend itself declares.
    return HFBackend(model, tok, device="cpu", batch_size=64)


@pytest.fixture(scope="module")
def mixed(tok) -> HFBackend:
    return make_backend(tok, 4.0)


@pytest.fixture(scope="module")
def early(tok) -> HFBackend:
    return make_backend(tok, 6.0)


def requests() -> list[Request]:
    return [Request(id=f"q{i}", messages=[{"role": "user", "content": q}]) for i, q in enumerate(QUESTIONS)]


def plain(backend, reqs, sampling) -> dict:
    return {(c.request_id, c.sample_idx): c for batch in backend.generate(reqs, sampling) for c in batch}


def count(tok, text: str) -> int:
    return len(tok(text, add_special_tokens=False)["input_ids"])


def assert_accounting(tok, c) -> None:
    """Text tokens = generated tokens (EOS is not in the text) + inserted tokens."""
    assert count(tok, c.text) == c.n_tokens - (c.finish_reason == "stop") + c.meta["n_forced_tokens"]
    assert 0 <= c.meta["n_thinking_tokens"] <= c.n_tokens


def as_tuple(c):
    return (c.request_id, c.sample_idx, c.text, c.n_tokens, c.finish_reason, c.meta)


# ---- the claim budget_sweep rests on ------------------------------------------------------------


def test_first_tokens_of_a_seeded_sample_do_not_depend_on_max_tokens(tok, mixed):
    """Per-sample uniforms are torch.rand(max_tokens) from the sample's own generator, and a longer
    draw starts with the shorter one; so a max_tokens=B run is the first B tokens of a longer run."""
    g = lambda: torch.Generator().manual_seed(123)  # noqa: E731
    assert torch.equal(torch.rand(200, generator=g())[:7], torch.rand(7, generator=g()))
    long = plain(mixed, requests(), SAMPLING)
    for budget in (1, 5, 17):
        short = plain(mixed, requests(), dataclasses.replace(SAMPLING, max_tokens=budget))
        for key, c in short.items():
            ids = tok(long[key].text, add_special_tokens=False)["input_ids"]
            if long[key].n_tokens <= budget:
                assert as_tuple(c) == as_tuple(long[key])
            else:
                assert c.finish_reason == "length" and c.n_tokens == budget
                assert c.text == tok.decode(ids[:budget], skip_special_tokens=False)


# ---- budget forcing -----------------------------------------------------------------------------


def test_budget_force_stops_thinking_at_budget_and_still_answers(tok, mixed):
    budget, answer_tokens = 8, 12
    out = budget_force(mixed, requests(), SAMPLING, budget, answer_tokens=answer_tokens)
    assert [(c.request_id, c.sample_idx) for c in out] == [(f"q{i}", k) for i in range(4) for k in range(4)]
    reference = plain(mixed, requests(), SAMPLING)
    phase1 = plain(mixed, requests(), dataclasses.replace(SAMPLING, max_tokens=budget))
    kinds = set()
    for c in out:
        assert_accounting(tok, c)
        assert c.meta["control"] == "budget_force" and c.meta["budget"] == budget
        assert c.meta["n_thinking_tokens"] <= budget
        ref = reference[(c.request_id, c.sample_idx)]
        cut = c.text.find(THINK_CLOSE)
        if c.meta["forced"]:
            kinds.add("forced")
            # Exactly B generated thinking tokens (counted with the tokenizer), the sample's own first B.
            assert count(tok, c.text[:cut]) == budget == c.meta["n_thinking_tokens"]
            assert c.text[:cut] == tok.decode(tok(ref.text, add_special_tokens=False)["input_ids"][:budget])
            assert c.text[cut:].startswith(THINK_CLOSE + "Final Answer:")
            assert c.meta["n_forced_tokens"] == count(tok, THINK_CLOSE + "Final Answer:") == 14
            assert budget < c.n_tokens <= budget + answer_tokens  # an answer phase was generated
            parsed = parse_completion(c.text)
            assert not parsed.truncated and parsed.answer.startswith("Final Answer:")
        elif cut < 0:  # ended (EOS) within the budget without closing: left alone
            assert c.finish_reason == "stop" and as_tuple(c)[2:5] == as_tuple(ref)[2:5]
        else:
            assert c.meta["n_forced_tokens"] == 0
            # Thinking closed by the model within the budget (</think> counted as thinking).
            assert count(tok, c.text[: cut + len(THINK_CLOSE)]) == c.meta["n_thinking_tokens"]
            assert c.n_tokens - c.meta["n_thinking_tokens"] <= answer_tokens + (c.finish_reason == "stop")
            assert c.text.startswith(phase1[(c.request_id, c.sample_idx)].text)
            kinds.add("closed")
    assert kinds == {"forced", "closed"}


def test_budget_force_continues_an_answer_the_budget_cut(tok, mixed):
    """A sample whose model closed thinking inside the budget but whose answer the budget cut gets
    the rest of its answer_tokens, with nothing inserted."""
    budget = 12
    phase1 = plain(mixed, requests(), dataclasses.replace(SAMPLING, max_tokens=budget))
    cut_answers = {k for k, c in phase1.items() if THINK_CLOSE in c.text and c.finish_reason == "length"}
    assert cut_answers
    out = {(c.request_id, c.sample_idx): c for c in budget_force(mixed, requests(), SAMPLING, budget, answer_tokens=30)}
    for key in cut_answers:
        c = out[key]
        assert not c.meta["forced"] and c.text.startswith(phase1[key].text) and c.n_tokens > budget
        assert c.n_tokens - c.meta["n_thinking_tokens"] <= 30 + (c.finish_reason == "stop")


def _record_sampling(backend, monkeypatch) -> list[SamplingParams]:
    """Wrap ``backend.generate`` so each call's sampling params are recorded (in the returned list)."""
    calls: list[SamplingParams] = []
    real = backend.generate

    def spy(reqs, sampling, progress=None):
        calls.append(sampling)
        return real(reqs, sampling, progress)

    monkeypatch.setattr(backend, "generate", spy)
    return calls


def test_budget_sweep_equals_separate_runs_and_generates_phase1_once(tok, mixed, monkeypatch):
    budgets = [20, 3, 8]
    calls = _record_sampling(mixed, monkeypatch)
    swept = budget_sweep(mixed, requests(), SAMPLING, budgets)
    first_phase = [s for s in calls if s.seed == SAMPLING.seed]
    assert [s.max_tokens for s in first_phase] == [20]  # one phase-1 generation, at the largest budget
    assert sorted(swept) == [3, 8, 20]
    for budget in budgets:
        separate = budget_force(mixed, requests(), SAMPLING, budget)
        assert [as_tuple(c) for c in swept[budget]] == [as_tuple(c) for c in separate]
    assert any(c.meta["forced"] for c in swept[3]) and not all(c.meta["forced"] for c in swept[20])
    # Samples whose token ids cannot be recovered from the text regenerate phase 1: same result.
    monkeypatch.setattr(continuation, "_token_ids", lambda c, tokenizer: None)
    again = budget_sweep(mixed, requests(), SAMPLING, [8, 20])
    assert [as_tuple(c) for c in again[8]] == [as_tuple(c) for c in swept[8]]


def test_truncate_and_wait_sweeps_equal_separate_runs(tok, early, mixed, monkeypatch):
    calls = _record_sampling(mixed, monkeypatch)
    swept = control_sweep(ControlConfig(name="truncate", budgets=[12, 4]), mixed, requests(), SAMPLING)
    assert [s.max_tokens for s in calls] == [12]  # one generation, cut for the smaller budget
    for budget in (4, 12):
        assert [as_tuple(c) for c in swept[budget]] == [as_tuple(c) for c in truncate(mixed, requests(), SAMPLING, budget)]
    sampling = dataclasses.replace(SAMPLING, max_tokens=40)
    waits = control_sweep(ControlConfig(name="wait_extend", budgets=[12, 6], max_waits=2), early, requests(), sampling)
    for m in (6, 12):
        assert [as_tuple(c) for c in waits[m]] == [as_tuple(c) for c in wait_extend(early, requests(), sampling, m, 2)]
    assert sum(c.meta["waits"] for c in waits[12]) > sum(c.meta["waits"] for c in waits[6])


def test_continuations_in_one_call_equal_calls_per_limit(mixed):
    """_continue batches samples with different max_tokens into one call and cuts each to its limit."""
    jobs = [(r, i, "<think>so", limit) for r, limit in zip(requests(), (3, 9, 20, 40)) for i in (0, 1)]
    together = continuation._continue(mixed, jobs, SAMPLING, "answer")
    cut = 0
    for r, i, text, limit in jobs:
        alone = continuation._continue(mixed, [(r, i, text, limit)], SAMPLING, "answer")[(r.id, i)]
        assert as_tuple(together[(r.id, i)]) == as_tuple(alone)
        cut += alone.finish_reason == "length" and limit < 40
    assert cut >= 2  # some samples really were cut from the longer call


def test_control_config_budgets():
    sweep = ControlConfig(budgets=[64, 16])
    assert sweep.name == "budget_force"  # a sweep without a named control is s1 budget forcing
    sweep.validate()
    assert [(c.label, c.swept_value, c.budgets) for c in sweep.points] == [
        ("budget_force@16", 16, []), ("budget_force@64", 64, [])]
    assert ControlConfig(name="wait_extend", budgets=[8], max_waits=1).points[0].label == "wait_extend@8x1"
    for bad, needle in [(dict(budgets=[0]), "budgets"), (dict(budgets=[4, 4]), "twice"), (dict(budgets=[2.5]), "budgets"),
                        (dict(name="think_free", budgets=[4]), "no budget to sweep"),
                        (dict(name="truncate", budget=8, budgets=[4]), "not both")]:
        with pytest.raises(ValueError, match=needle):
            ControlConfig(**bad).validate()
    with pytest.raises(ValueError, match="control_sweep"):
        run_control(ControlConfig(budgets=[4]), None, requests(), SAMPLING)


# ---- wait extension ----------------------------------------------------------------------------


def test_wait_extends_early_closed_thinking(tok, early):
    sampling = dataclasses.replace(SAMPLING, max_tokens=64)
    reference = plain(early, requests(), sampling)
    none = wait_extend(early, requests(), sampling, min_thinking=12, max_waits=0)
    for c in none:  # max_waits=0: the uncontrolled samples
        ref = reference[(c.request_id, c.sample_idx)]
        assert (c.text, c.n_tokens, c.finish_reason, c.meta["waits"]) == (ref.text, ref.n_tokens, ref.finish_reason, 0)
    out = wait_extend(early, requests(), sampling, min_thinking=12, max_waits=3)
    grew = 0
    for c, base in zip(out, none):
        assert_accounting(tok, c)
        ref_cut = base.text.find(THINK_CLOSE)
        thinking = parse_completion(c.text).thinking
        if ref_cut >= 0 and count(tok, base.text[:ref_cut]) < 12:
            assert 1 <= c.meta["waits"] <= 3 and c.meta["forced"]
            assert thinking.count("Wait") == c.meta["waits"]
            head = base.text[:ref_cut]
            assert c.text.startswith(head + ("" if not head or head[-1].isspace() else " ") + "Wait")
            assert c.meta["n_thinking_tokens"] > base.meta["n_thinking_tokens"]
            assert c.meta["n_discarded_tokens"] > 0
            generated_thinking = c.meta["n_thinking_tokens"] - (THINK_CLOSE in c.text)
            assert generated_thinking >= 12 or c.meta["waits"] == 3
            assert c.n_tokens <= 64
            grew += 1
        else:
            assert as_tuple(c)[2:5] == as_tuple(base)[2:5] and c.meta["waits"] == 0
    assert grew >= 8  # most of the 16 samples close early under this bias


# ---- ThinkFree, truncation, dispatch ------------------------------------------------------------


def test_think_free_outputs_have_empty_thinking(tok, mixed):
    reqs = think_free(requests())
    assert all(r.prefix == "<think></think>" for r in reqs) and requests()[0].prefix == ""
    ids = mixed.encode_prompt(reqs[0])
    assert ids[-2:] == tok.convert_tokens_to_ids(["<think>", "</think>"])
    out = run_control("think_free", mixed, requests(), SAMPLING)
    for c in out:
        assert_accounting(tok, c)
        assert c.text.startswith("<think></think>") and parse_completion(c.text).thinking == ""
        assert c.meta["n_thinking_tokens"] == 0 and c.meta["n_forced_tokens"] == 2 and c.n_tokens >= 1
    with pytest.raises(ValueError, match="already has a prefix"):
        think_free([Request(id="x", prompt="p", prefix="<think>so")])


def test_truncate_is_plain_generation_cut_at_budget(tok, mixed):
    out = truncate(mixed, requests(), SAMPLING, 10)
    reference = plain(mixed, requests(), dataclasses.replace(SAMPLING, max_tokens=10))
    for c in out:
        ref = reference[(c.request_id, c.sample_idx)]
        assert (c.text, c.n_tokens, c.finish_reason) == (ref.text, ref.n_tokens, ref.finish_reason)
        assert c.n_tokens <= 10 and not c.meta["forced"]
        if c.finish_reason == "length":
            assert not verify(c.text + "\\boxed{1}", "1", truncated=True).correct
    assert any(c.finish_reason == "length" for c in out)


def test_run_control_dispatches(mixed):
    via = run_control(ControlConfig(name="budget_force", budget=5, answer_tokens=6), mixed, requests()[:2], SAMPLING)
    direct = budget_force(mixed, requests()[:2], SAMPLING, 5, answer_tokens=6)
    assert [as_tuple(c) for c in via] == [as_tuple(c) for c in direct]
    none = run_control("none", mixed, requests()[:1], SAMPLING)
    assert [c.text for c in none] == [c.text for c in plain(mixed, requests()[:1], SAMPLING).values()]
    assert ControlConfig(name="wait_extend", min_thinking=64, max_waits=2).label == "wait_extend@64x2"


class NoPrefixBackend:
    """Has a tokenizer but no prefix support; generating at all is a test failure."""

    name = "noprefix"

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def generate(self, requests, sampling, progress=None):
        raise AssertionError("generated before validation finished")


def test_bad_inputs_raise_before_generating(tok, mixed, monkeypatch):
    monkeypatch.setattr(mixed, "generate", NoPrefixBackend.generate.__get__(mixed))
    reqs = requests()
    for bad in (0, -3, 2.5, True, "8", None):
        with pytest.raises(ValueError, match="budget"):
            budget_force(mixed, reqs, SAMPLING, bad)
        with pytest.raises(ValueError, match="budget"):
            truncate(mixed, reqs, SAMPLING, bad)
        with pytest.raises(ValueError, match="budget"):
            budget_sweep(mixed, reqs, SAMPLING, [4, bad])
    with pytest.raises(ValueError, match="budgets"):
        budget_sweep(mixed, reqs, SAMPLING, [])
    with pytest.raises(ValueError, match="answer_tokens"):
        budget_force(mixed, reqs, SAMPLING, 4, answer_tokens=0)
    with pytest.raises(ValueError, match="max_waits"):
        wait_extend(mixed, reqs, SAMPLING, 4, -1)
    with pytest.raises(ValueError, match="min_thinking"):
        wait_extend(mixed, reqs, SAMPLING, SAMPLING.max_tokens, 1)
    with pytest.raises(ValueError, match="wait"):
        wait_extend(mixed, reqs, SAMPLING, 4, 1, wait="</think>Wait")
    with pytest.raises(ValueError, match="unknown control 'beam'"):
        run_control("beam", mixed, reqs, SAMPLING)
    with pytest.raises(ValueError, match="unknown control"):
        ControlConfig(name="beam").validate()
    with pytest.raises(ValueError, match="unknown control parameters"):
        run_control("budget_force", mixed, reqs, SAMPLING, budgte=4)
    with pytest.raises(ValueError, match="duplicate request id"):
        budget_force(mixed, reqs + reqs[:1], SAMPLING, 4)
    with pytest.raises(ValueError, match="outside"):
        budget_force(mixed, [dataclasses.replace(reqs[0], sample_idxs=[4])], SAMPLING, 4)
    no_prefix = NoPrefixBackend(tok)
    for call in (
        lambda: budget_force(no_prefix, reqs, SAMPLING, 4),
        lambda: budget_sweep(no_prefix, reqs, SAMPLING, [4]),
        lambda: wait_extend(no_prefix, reqs, SAMPLING, 4, 1),
        lambda: run_control("think_free", no_prefix, reqs, SAMPLING),
    ):
        with pytest.raises(ValueError, match="supports_prefix"):
            call()
    assert not controls.supports_prefix(object())
    # Plain truncation needs no prefix support (it only fails here because generate is a stub).
    with pytest.raises(AssertionError, match="before validation"):
        truncate(no_prefix, reqs, SAMPLING, 4)


def test_hf_backend_declares_prefix_support_on_the_class(mixed):
    """The controls and `eval` (which checks the class before loading a model) rely on HFBackend's own
    declaration; no test may set it on an instance."""
    assert "supports_prefix" in vars(HFBackend) and HFBackend.supports_prefix is True
    assert "supports_prefix" not in vars(mixed) and controls.supports_prefix(mixed)
    forced = budget_force(mixed, requests()[:1], dataclasses.replace(SAMPLING, n=1), 3)  # needs a prefix
    assert len(forced) == 1


# ---- few-shot style transfer --------------------------------------------------------------------


def test_exemplars_load_and_render_as_prior_turns(tmp_path, mixed):
    good = [{"question": "1+1?", "completion": "<think>one and one</think>2", "id": "a"},
            {"question": "2+2?", "completion": "<think>two twos</think>4"},
            {"question": "What is 2+3?", "completion": "<think>leak</think>5"}]
    path = tmp_path / "ex.jsonl"
    path.write_text("\n".join(json.dumps(e) for e in good) + "\n\n")
    ex = load_exemplars(path)
    assert ex == good
    msgs = few_shot_messages("What is 2+3?", ex, 2)
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant", "user"]
    assert msgs[1]["content"] == good[0]["completion"] and msgs[-1]["content"] == "What is 2+3?"
    assert few_shot_messages("What is 2+3?", ex, 0) == [{"role": "user", "content": "What is 2+3?"}]
    with pytest.raises(ValueError, match="only 2 available"):
        few_shot_messages("What is 2+3?", ex, 3)  # the exemplar with the problem's own question is skipped
    with pytest.raises(ValueError, match="exemplar 1"):
        few_shot_messages("q", [good[0], {"question": "x"}], 1)
    prompt = mixed.tokenizer.decode(mixed.encode_prompt(Request(id="f", messages=msgs)))
    assert prompt.startswith("<|user|>1+1?<|end|><|assistant|><think>one and one</think>2<|end|>")
    for body, line in (('{"question": "q"}', 2), ("[1, 2]", 2), ("{nope", 2), ('{"question": "q", "completion": 3}', 2)):
        bad = tmp_path / "bad.jsonl"
        bad.write_text(json.dumps(good[0]) + "\n" + body + "\n")
        with pytest.raises(ValueError, match=f"bad.jsonl:{line}"):
            load_exemplars(bad)
    with pytest.raises(ValueError, match="cannot read"):
        load_exemplars(tmp_path / "missing.jsonl")
