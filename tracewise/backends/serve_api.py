"""The OpenAI wire format of ``tracewise serve``: request validation, responses and SSE chunks.

Validation messages are fixed per kind (they name the field and the allowed range, never echo what
the client sent), so an error can never carry another client's text or a server path.
"""

from __future__ import annotations

import json
import math
import random
import secrets
import time
from dataclasses import dataclass
from typing import Any

from tracewise.backends.base import Request, SamplingParams
from tracewise.backends.serve_engine import Pending, ServeError

ROLES = ("system", "user", "assistant", "developer")


@dataclass
class ServeLimits:
    """What one request, and the server as a whole, may use."""

    max_tokens_cap: int = 4096  # most new tokens one sample may ask for (and prompt + max_tokens <= context)
    max_n: int = 16
    max_messages: int = 256
    max_stop: int = 4
    max_stop_chars: int = 64
    max_body_bytes: int = 2 * 2**20
    max_queue: int = 256  # requests in the server at once (reading, encoding, queued, decoding); more get 429
    max_batch: int = 64  # samples decoded together
    max_batch_tokens: int = 65536  # KV-cache positions reserved over all live batches
    max_live_batches: int = 4
    batch_wait_ms: float = 50.0
    header_timeout_s: float = 10.0  # a connection's request head must arrive within this (slowloris; serve_http)
    body_timeout_s: float = 30.0  # and a request's whole body within this of its head, else 408 (serve_http)

    def validate(self) -> None:
        for name in ("max_tokens_cap", "max_n", "max_messages", "max_body_bytes", "max_queue", "max_batch",
                     "max_batch_tokens", "max_live_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.max_n > self.max_batch:
            raise ValueError(f"max_n ({self.max_n}) cannot exceed --max-batch ({self.max_batch})")
        if not 0 <= self.batch_wait_ms <= 10_000:
            raise ValueError(f"--batch-wait-ms must be in [0, 10000], got {self.batch_wait_ms}")
        if not 0 < self.header_timeout_s <= 3600:
            raise ValueError(f"--header-timeout must be in (0, 3600] seconds, got {self.header_timeout_s}")
        if not 0 < self.body_timeout_s <= 3600:
            raise ValueError(f"--body-timeout must be in (0, 3600] seconds, got {self.body_timeout_s}")


def error_body(status: int, message: str, kind: str) -> dict:
    return {"error": {"message": message, "type": kind, "code": status}}


def bad(message: str) -> ServeError:
    return ServeError(400, message, "invalid_request_error")


def loads(raw: bytes) -> Any:
    def no_constants(name: str) -> Any:
        raise ValueError(name)

    try:
        body = json.loads(raw, parse_constant=no_constants)  # NaN / Infinity are not JSON
    except (ValueError, RecursionError):
        raise bad("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise bad("request body must be a JSON object")
    return body


@dataclass
class Parsed:
    request: Request
    sampling: SamplingParams
    stop: list[str]
    stream: bool
    include_usage: bool


def _int(body: dict, key: str, default: Any, lo: int, hi: int, message: str) -> Any:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise bad(message)
    return value


def _float(body: dict, key: str, default: float, ok: Any, message: str) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
        raise bad(message)
    return float(value)


def _content(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(part, dict) and part.get("type") == "text"
                                       and isinstance(part.get("text"), str) for part in value):
        return "".join(part["text"] for part in value)  # OpenAI content parts, text only
    return None


def parse_body(body: dict, chat: bool, model_name: str, limits: ServeLimits) -> Parsed:
    """Validate every field; messages are fixed per kind (nothing the client sent is echoed)."""
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad("'model' must be a string")
    if model not in (None, model_name):
        raise ServeError(404, f"the model does not exist; this server serves {model_name!r}", "not_found_error")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise bad("'stream' must be true or false")
    options = body.get("stream_options")
    if options is not None and (not isinstance(options, dict) or not stream
                                or not isinstance(options.get("include_usage", False), bool)):
        raise bad("'stream_options' must be an object {include_usage: bool}, and only with stream=true")
    for key, default in (("echo", False), ("logprobs", None), ("top_logprobs", None), ("best_of", 1),
                         ("suffix", None), ("tools", None), ("logit_bias", None)):
        if body.get(key) not in (default, None, False, [], {}, "") and not (key == "best_of" and body[key] == 1):
            raise bad(f"'{key}' is not supported by tracewise serve")
    n = _int(body, "n", 1, 1, limits.max_n, f"'n' must be an integer in [1, {limits.max_n}]")
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _int(body, key, 16, 1, limits.max_tokens_cap,
                      f"'{key}' must be an integer in [1, {limits.max_tokens_cap}]")
    temperature = _float(body, "temperature", 1.0, lambda v: 0 <= v <= 2, "'temperature' must be a number in [0, 2]")
    top_p = _float(body, "top_p", 1.0, lambda v: 0 < v <= 1, "'top_p' must be a number in (0, 1]")
    seed = _int(body, "seed", None, -(2**63), 2**64 - 1, "'seed' must be a 64-bit integer")
    stop = body.get("stop")
    stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > limits.max_stop or not all(
            isinstance(s, str) and 0 < len(s) <= limits.max_stop_chars for s in stop):
        raise bad(f"'stop' must be a string or a list of at most {limits.max_stop} non-empty strings of at most "
                   f"{limits.max_stop_chars} characters")
    seed = random.getrandbits(63) if seed is None else seed
    req = Request(id=str(seed), sample_idxs=list(range(n)))
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not 1 <= len(messages) <= limits.max_messages or not all(
                isinstance(m, dict) and m.get("role") in ROLES and _content(m.get("content")) is not None
                for m in messages):
            raise bad(f"'messages' must be a list of 1 to {limits.max_messages} objects with a role "
                       f"({', '.join(ROLES)}) and text content")
        req.messages = [{"role": "system" if m["role"] == "developer" else m["role"], "content": _content(m["content"])}
                        for m in messages]
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise bad("'prompt' must be one non-empty string (token-id and batched prompts are not supported)")
        req.prompt = prompt
    # seed=0 in SamplingParams: each sample is seeded by (0, request id = the client's seed, index).
    sampling = SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=0)
    return Parsed(req, sampling, stop, bool(stream), bool(options and options.get("include_usage")))


def strip_bos(backend: Any, request: Request) -> Request:
    tok = backend.tokenizer
    bos = getattr(tok, "bos_token", None)
    # Only when the tokenizer adds it back: SmolLM2's BOS <|im_start|> opens every chat turn and is never added.
    if request.prompt is not None and bos and request.prompt.startswith(bos) \
            and tok("x")["input_ids"][:1] == [tok.bos_token_id]:
        # A client that applied the chat template already wrote the BOS; the backend adds one too.
        request.prompt = request.prompt[len(bos):]
    return request


def response(choices: list[dict], usage: dict, *, chat: bool, model_name: str) -> dict:
    out = []
    for c in choices:
        if chat:
            out.append({"index": c["index"], "message": {"role": "assistant", "content": c["text"]},
                        "finish_reason": c["finish_reason"], "logprobs": None})
        else:
            out.append({"index": c["index"], "text": c["text"], "finish_reason": c["finish_reason"], "logprobs": None})
    return {"id": ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12),
            "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "model": model_name, "choices": out, "usage": usage}


async def sse(p: Pending, parsed: Parsed, model_name: str, chat: bool, release: Any):
    """Server-Sent Events in OpenAI's chunk format. ``release()`` when it ends, however it ends (a client
    that leaves early cancels the request)."""
    rid = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
    created = int(time.time())
    base = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion", "created": created,
            "model": model_name}
    extra = {"usage": None} if parsed.include_usage else {}

    def chunk(idx: int, text: str | None, finish: str | None, first: bool = False) -> str:
        if chat:
            delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
            choice = {"index": idx, "delta": delta, "finish_reason": finish, "logprobs": None}
        else:
            choice = {"index": idx, "text": text or "", "finish_reason": finish, "logprobs": None}
        return "data: " + json.dumps({**base, "choices": [choice], **extra}) + "\n\n"

    try:
        if chat:
            for i in range(p.n):
                yield chunk(i, None, None, first=True)
        while True:
            event = await p.events.get()
            if event[0] == "delta":
                yield chunk(event[1], event[2], None)
            elif event[0] == "finish":
                yield chunk(event[1], event[2], event[3])
            elif event[0] == "end":
                if parsed.include_usage:
                    yield "data: " + json.dumps({**base, "choices": [], "usage": event[1]}) + "\n\n"
                break
            else:  # ("error", ServeError)
                err = event[1]
                yield "data: " + json.dumps(error_body(err.status, err.message, err.kind)) + "\n\n"
                break
        yield "data: [DONE]\n\n"
    finally:
        release()  # also cancels the request if the client left early
