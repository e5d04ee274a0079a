"""Measured serving cost: a fixed load against an OpenAI-compatible endpoint, timed per request.

Tokens are not seconds: prefill, batching, KV-cache growth and concurrency sit between them. So this
module sends the *same* prompts, at a fixed concurrency, to whatever serves a student (``tracewise
serve`` or vLLM's OpenAI server) and records for every request: wall latency (send → last byte), time
to first token (first content chunk when the server streams; ``None`` when it does not), prompt and
output tokens as the server counts them. ``load_stats`` turns one repeat into p50/p99 latency,
requests/s and output tokens/s.

Only loopback or user-given endpoints are contacted; the request count and every timeout are bounded.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class Timing:
    """One request of a load run."""

    idx: int
    ok: bool
    latency_s: float
    ttft_s: float | None
    prompt_tokens: int
    output_tokens: int
    error: str = ""


async def _one(client, url: str, body: dict, stream: bool, idx: int, timeout_s: float) -> Timing:
    t0 = time.perf_counter()
    ttft = None
    usage: dict = {}
    try:
        if not stream:
            r = await client.post(url, json=body, timeout=timeout_s)
            r.raise_for_status()
            usage = r.json().get("usage") or {}
        else:
            async with client.stream("POST", url, json={**body, "stream": True,
                                                        "stream_options": {"include_usage": True}},
                                     timeout=timeout_s) as r:
                r.raise_for_status()
                async for line in r.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    for ch in chunk.get("choices") or []:
                        piece = (ch.get("delta") or {}).get("content") or ch.get("text") or ""
                        if piece and ttft is None:
                            ttft = time.perf_counter() - t0
        return Timing(idx, True, time.perf_counter() - t0, ttft, int(usage.get("prompt_tokens", 0)),
                      int(usage.get("completion_tokens", 0)))
    except Exception as e:  # a failed request is recorded, not retried: retries would distort timings
        return Timing(idx, False, time.perf_counter() - t0, ttft, 0, 0, f"{type(e).__name__}: {str(e)[:200]}")


async def _run_load(base_url: str, model: str, prompts: list[str], concurrency: int, max_tokens: int,
                    temperature: float, seed: int, stream: bool, timeout_s: float, api_key: str | None) -> tuple[list[Timing], float]:
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = base_url.rstrip("/") + "/chat/completions"
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(headers=headers, limits=httpx.Limits(max_connections=concurrency)) as client:
        async def go(i: int, prompt: str) -> Timing:
            body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                    "temperature": temperature, "seed": seed + i}
            async with sem:
                return await _one(client, url, body, stream, i, timeout_s)

        t0 = time.perf_counter()
        out = await asyncio.gather(*(go(i, p) for i, p in enumerate(prompts)))
        return list(out), time.perf_counter() - t0


def run_load(base_url: str, model: str, prompts: list[str], concurrency: int, max_tokens: int = 400,
             temperature: float = 0.6, seed: int = 0, stream: bool = True, timeout_s: float = 600.0,
             api_key: str | None = None) -> tuple[list[Timing], float]:
    """Send every prompt once with at most ``concurrency`` in flight; returns (timings, wall seconds).

    Request ``i`` carries ``seed + i``, so two repeats (and two students) see identical requests.
    """
    if concurrency < 1 or not prompts:
        raise ValueError(f"run_load: need concurrency >= 1 and at least one prompt (got {concurrency}, {len(prompts)})")
    return asyncio.run(_run_load(base_url, model, prompts, concurrency, max_tokens, temperature, seed, stream,
                                 timeout_s, api_key))


def load_stats(timings: list[Timing], wall_s: float) -> dict:
    """p50/p99 latency, mean TTFT and prefill share, requests/s and output tokens/s of one load run."""
    ok = [t for t in timings if t.ok]
    if not ok:
        raise RuntimeError(f"every request failed; first error: {timings[0].error if timings else 'none sent'}")
    lat = np.array([t.latency_s for t in ok])
    ttft = [t.ttft_s for t in ok if t.ttft_s is not None]
    out_tok = sum(t.output_tokens for t in ok)
    return {
        "n": len(timings), "failed": len(timings) - len(ok), "wall_s": wall_s,
        "p50_latency_s": float(np.percentile(lat, 50)), "p99_latency_s": float(np.percentile(lat, 99)),
        "mean_latency_s": float(lat.mean()),
        "mean_ttft_s": float(np.mean(ttft)) if ttft else None,
        # share of a request's time spent before its first token (prefill + queueing)
        "ttft_share": float(np.mean([t.ttft_s / t.latency_s for t in ok if t.ttft_s is not None and t.latency_s > 0]))
        if ttft else None,
        "requests_per_s": len(ok) / wall_s, "output_tokens_per_s": out_tok / wall_s,
        "mean_output_tokens": out_tok / len(ok), "mean_prompt_tokens": sum(t.prompt_tokens for t in ok) / len(ok),
    }


def timings_to_rows(timings: list[Timing]) -> list[dict]:
    return [asdict(t) for t in timings]


def money(stats: dict, price_in_per_mtok: float = 0.0, price_out_per_mtok: float = 0.0,
          gpu_hour: float = 0.0) -> dict:
    """Dollars per 1,000 problems from user-given prices (never defaults): per-token API prices, and/or a
    machine price per hour divided by the *measured* throughput (problems/s at this load)."""
    out: dict = {}
    if price_in_per_mtok or price_out_per_mtok:
        out["usd_per_1k_problems_tokens"] = 1000 * (stats["mean_prompt_tokens"] * price_in_per_mtok
                                                    + stats["mean_output_tokens"] * price_out_per_mtok) / 1e6
    if gpu_hour:
        out["usd_per_1k_problems_machine"] = 1000 * gpu_hour / 3600 / stats["requests_per_s"]
    return out


# two-sided 95% Student-t quantiles by degrees of freedom (scipy is not a dependency)
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def t_interval(values: list[float]) -> tuple[float, list[float] | None]:
    """Mean and 95% t-interval of repeat-level values (None with one repeat)."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return float(x.mean()), None
    half = _T975.get(len(x) - 1, 1.96) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean()), [float(x.mean() - half), float(x.mean() + half)]
