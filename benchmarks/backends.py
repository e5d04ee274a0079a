"""Throughput of HFBackend against plain ``model.generate`` on a tiny random Llama.

    python benchmarks/backends.py [--prompts 256] [--max-tokens 128] [--device cpu]

Compares generated tokens per second for
  (a) one prompt at a time through ``model.generate`` (timed on a subset; it is a rate, so the
      subset only shortens the run),
  (b) ``model.generate`` on left-padded batches of 64, prompts sorted by length (a fair
      hand-written baseline: it keeps finished rows in the batch until the longest one ends),
  (c) HFBackend with batch_size 64,
and reports c/b and c/a. Output lengths are mixed on purpose: a bias on the EOS logit gives each
step a few percent chance to stop, so batches hold rows that finish early and rows that run to
max tokens, which is where dropping finished rows pays.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import time

import torch
from tokenizers import Tokenizer, decoders, models
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from tracewise.backends.base import Request, SamplingParams
from tracewise.backends.hf import HFBackend

logger = logging.getLogger("benchmarks.backends")

SPECIALS = ["<pad>", "<|end|>", "<|user|>", "<|assistant|>", "<think>", "</think>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Character-level tokenizer with the student chat markers as special tokens."""
    vocab = {t: i for i, t in enumerate(SPECIALS + [chr(c) for c in range(32, 127)])}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    core.add_special_tokens(SPECIALS)
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|end|>", pad_token="<pad>")
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_model(tok: PreTrainedTokenizerFast, eos_bias: float) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
    )
    model = LlamaForCausalLM(config).eval()
    # A biased head makes EOS likely enough that output lengths spread over 1..max_tokens.
    head = torch.nn.Linear(config.hidden_size, config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight * 5)
        head.bias.zero_()
        head.bias[tok.eos_token_id] = eos_bias
    model.lm_head = head
    return model


def build_requests(n: int, seed: int = 0) -> list[Request]:
    rng = random.Random(seed)
    alphabet = "abcdefghij 0123456789+-*/=?"
    return [
        Request(id=f"p{i}", messages=[{"role": "user", "content": "".join(rng.choices(alphabet, k=rng.randint(8, 200)))}])
        for i in range(n)
    ]


def generated_length(row: list[int], eos_id: int) -> int:
    """Real generated tokens in a generate() output row: up to and including the first EOS."""
    return row.index(eos_id) + 1 if eos_id in row else len(row)


def bench_generate_single(model, prompts: list[list[int]], eos_id: int, max_tokens: int) -> tuple[int, float]:
    tokens, start = 0, time.perf_counter()
    with torch.inference_mode():
        for ids in prompts:
            x = torch.tensor([ids])
            out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=True, max_new_tokens=max_tokens)
            tokens += generated_length(out[0, len(ids) :].tolist(), eos_id)
    return tokens, time.perf_counter() - start


def bench_generate_batched(model, prompts, eos_id: int, pad_id: int, max_tokens: int, batch: int):
    prompts = sorted(prompts, key=len, reverse=True)
    tokens, start = 0, time.perf_counter()
    with torch.inference_mode():
        for b in range(0, len(prompts), batch):
            chunk = prompts[b : b + batch]
            width = max(map(len, chunk))
            x = torch.tensor([[pad_id] * (width - len(p)) + p for p in chunk])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
            out = model.generate(x, attention_mask=mask, do_sample=True, max_new_tokens=max_tokens)
            tokens += sum(generated_length(r, eos_id) for r in out[:, width:].tolist())
    return tokens, time.perf_counter() - start


def bench_backend(backend: HFBackend, requests: list[Request], sampling: SamplingParams):
    start = time.perf_counter()
    completions = [c for batch in backend.generate(requests, sampling) for c in batch]
    elapsed = time.perf_counter() - start
    return completions, sum(c.n_tokens for c in completions), elapsed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--single-subset", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--eos-bias", type=float, default=0.5)
    parser.add_argument("--device", default="cpu")
    # One intra-op thread by default: on a small shared CPU box, 2+ threads spin-wait on busy
    # cores and a 64x128 matmul went from 0.06 ms to 16 ms, swamping everything being measured.
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)

    tok = build_tokenizer()
    model = build_model(tok, args.eos_bias).to(args.device)
    requests = build_requests(args.prompts)
    sampling = SamplingParams(n=1, temperature=1.0, top_p=1.0, max_tokens=args.max_tokens, seed=0)
    backend = HFBackend(model, tok, device=args.device, dtype="float32", batch_size=args.batch_size)
    prompts = [backend.encode_prompt(r) for r in requests]
    eos, pad = tok.eos_token_id, tok.pad_token_id
    model.generation_config.pad_token_id = pad
    torch.manual_seed(0)

    completions, c_tokens, c_time = bench_backend(backend, requests, sampling)
    lengths = sorted(c.n_tokens for c in completions)
    logger.info(
        "%d prompts of %d..%d tokens; outputs %d..%d tokens (median %d), %.0f%% hit max_tokens",
        len(prompts), min(map(len, prompts)), max(map(len, prompts)), lengths[0], lengths[-1],
        lengths[len(lengths) // 2], 100 * sum(c.finish_reason == "length" for c in completions) / len(completions),
    )
    b_tokens, b_time = bench_generate_batched(model, prompts, eos, pad, args.max_tokens, args.batch_size)
    a_tokens, a_time = bench_generate_single(model, prompts[: args.single_subset], eos, args.max_tokens)
    rate = {"a": a_tokens / a_time, "b": b_tokens / b_time, "c": c_tokens / c_time}
    logger.info("(a) generate, one prompt at a time (%d prompts): %8.0f tok/s  (%d tok in %.1fs)",
                args.single_subset, rate["a"], a_tokens, a_time)
    logger.info("(b) generate, left-padded batches of %d:        %8.0f tok/s  (%d tok in %.1fs)",
                args.batch_size, rate["b"], b_tokens, b_time)
    logger.info("(c) HFBackend, batch_size %d:                    %8.0f tok/s  (%d tok in %.1fs)",
                args.batch_size, rate["c"], c_tokens, c_time)
    logger.info("c/b = %.2fx   c/a = %.2fx", rate["c"] / rate["b"], rate["c"] / rate["a"])


if __name__ == "__main__":
    main()
