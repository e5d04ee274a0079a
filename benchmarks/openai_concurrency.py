"""Throughput of the ``openai`` backend against a real ``tracewise serve``: concurrency 1 vs 32.

    python benchmarks/openai_concurrency.py [--prompts 128] [--max-tokens 64] [--concurrency 1,32]

Builds the tiny random Llama of ``benchmarks/backends.py`` (mixed prompt lengths; the EOS row of
the output head is scaled up so that output lengths spread over 1..max_tokens), saves it, starts
``tracewise serve`` on a free 127.0.0.1 port in its own process, and sends the same chat requests
through ``OpenAIBackend`` at each concurrency. The server batches requests that arrive together,
so throughput should grow with concurrency; every sample is seeded by its own identity, so runs
return the same texts, up to rare flips where float noise from a different batch shape moves a
sampled token (counted and printed).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backends import build_requests, build_tokenizer  # noqa: E402  (benchmarks/backends.py)
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from tracewise.backends.base import SamplingParams  # noqa: E402
from tracewise.backends.openai_http import OpenAIBackend  # noqa: E402

logger = logging.getLogger("benchmarks.openai_concurrency")


def save_model(out: Path, eos_scale: float) -> None:
    tok = build_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(5)
        # A saved Llama head has no bias; a longer EOS row makes EOS likely on some steps instead.
        model.lm_head.weight[tok.eos_token_id].mul_(eos_scale)
    model.save_pretrained(out)
    tok.save_pretrained(out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir: Path, port: int, threads: int, max_batch: int, batch_wait_ms: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "tracewise.cli", "serve", "--model", str(model_dir),
                             "--port", str(port), "--served-model-name", "bench", "--threads", str(threads),
                             "--max-batch", str(max_batch), "--batch-wait-ms", str(batch_wait_ms),
                             "--log-level", "WARNING"],
                            env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"tracewise serve exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("tracewise serve did not start in 180 s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", default="1,32")
    parser.add_argument("--eos-scale", type=float, default=1.5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--batch-wait-ms", type=float, default=50.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("tracewise").setLevel(logging.WARNING)

    requests = build_requests(args.prompts)
    sampling = SamplingParams(n=1, temperature=1.0, max_tokens=args.max_tokens, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        save_model(Path(tmp), args.eos_scale)
        port = free_port()
        proc = start_server(Path(tmp), port, args.threads, args.max_batch, args.batch_wait_ms)
        try:
            url = f"http://127.0.0.1:{port}/v1"
            # Warm-up (first-call allocations) outside the timings.
            warm = OpenAIBackend("bench", base_url=url, tokenizer=tmp, concurrency=4)
            list(warm.generate(requests[:4], sampling))
            results = {}
            for conc in [int(c) for c in args.concurrency.split(",")]:
                backend = OpenAIBackend("bench", base_url=url, tokenizer=tmp, concurrency=conc)
                start = time.perf_counter()
                done = [c for batch in backend.generate(requests, sampling) for c in batch]
                elapsed = time.perf_counter() - start
                tokens = sum(c.n_tokens for c in done)
                texts = {(c.request_id, c.sample_idx): c.text for c in done}
                results[conc] = (elapsed, tokens, texts)
                lengths = sorted(c.n_tokens for c in done)
                logger.info("concurrency %3d: %d requests, %d tokens (outputs %d..%d, median %d) in %.1f s: "
                            "%.1f req/s, %.0f tok/s", conc, len(done), tokens, lengths[0], lengths[-1],
                            lengths[len(lengths) // 2], elapsed, len(done) / elapsed, tokens / elapsed)
        finally:
            proc.terminate()
            proc.wait(30)
    first = min(results)
    for conc, (elapsed, tokens, texts) in results.items():
        same = sum(texts[k] == results[first][2].get(k) for k in texts)
        logger.info("concurrency %d vs %d: %.2fx throughput; identical samples: %d/%d",
                    conc, first, results[first][0] / elapsed, same, len(texts))


if __name__ == "__main__":
    main()
