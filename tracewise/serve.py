"""``tracewise serve``: an OpenAI-compatible server for a local HF model or the embedded student.

Endpoints: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions`` (no
streaming). Any OpenAI client can talk to a tracewise student, and the ``openai`` backend is tested
against this real server instead of a mock.

Requests that arrive together are decoded together: a batcher collects what is queued (up to
``max_batch`` samples; it waits, at most ``batch_wait_ms``, for as many as the last round had, so a
lone client never waits and concurrent clients share batches), groups it by sampling settings and hands each group to ``HFBackend.generate`` on one worker thread (the model is not
thread-safe). Each sample is seeded by the request's ``seed`` and its index only (``HFBackend``
seeds from ``(seed, request id, idx)`` and the request id here is the seed), so what a client gets
does not depend on which other requests shared its batch.

Safe defaults: binds 127.0.0.1 (exposing it takes an explicit ``--host``), ``trust_remote_code``
off unless passed, and an optional API key read from the environment variable ``--api-key-env``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracewise.backends.base import Completion, Request, SamplingParams
from tracewise.redact import check_env_name, register_secret

try:  # module level: FastAPI resolves the handlers' (string) annotations in this module's globals
    from fastapi import Request as HTTPRequest
except ImportError:  # the `serve` extra is optional; serve() says how to install it
    HTTPRequest = None

log = logging.getLogger(__name__)


def resolve_model_path(path: str) -> str:
    """A model directory, or an ``init-student`` run directory (whose model lives in ``model/``)."""
    p = Path(path)
    if p.is_dir() and not (p / "config.json").exists() and (p / "model" / "config.json").exists():
        return str(p / "model")
    return path


@dataclass
class _Pending:
    request: Request  # id = the seed as text; sample_idxs = 0..n-1
    sampling: SamplingParams
    future: asyncio.Future


def _samples(items: list[_Pending]) -> int:
    return sum(len(p.request.sample_idxs or []) for p in items)


class Batcher:
    """Collects concurrent requests into batches for one backend running on one thread."""

    def __init__(self, backend: Any, max_batch: int = 64, batch_wait_ms: float = 50.0):
        self.backend = backend
        self.max_batch = max_batch
        self.batch_wait = batch_wait_ms / 1000
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tracewise-serve")
        self._task: asyncio.Task | None = None
        self._owner: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Start the batching task on the running loop (again, if the app moved to a new loop)."""
        loop = asyncio.get_running_loop()
        if self._task is not None and self._owner is loop and not self._task.done():
            return
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._owner, self._task = loop, loop.create_task(self._loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, request: Request, sampling: SamplingParams) -> list[Completion]:
        self.start()  # a no-op once running; ASGI transports without lifespan events start it here
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put(_Pending(request, sampling, fut))
        return await fut

    async def _loop(self) -> None:
        carry: list[_Pending] = []
        # Expect as many samples as were in the system last round (the last batch plus what queued up
        # while it decoded): a lone client never waits, and many concurrent clients, whose next
        # requests trickle in as their answers arrive, are decoded together instead of in fragments.
        # Waiting is capped at batch_wait (measurements in docs/backends.md).
        target = 1
        while True:
            items = carry or [await self.queue.get()]
            carry = []
            deadline = time.monotonic() + self.batch_wait
            while _samples(items) < min(target, self.max_batch):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    items.append(await asyncio.wait_for(self.queue.get(), left))
                except asyncio.TimeoutError:
                    break
            while _samples(items) < self.max_batch and not self.queue.empty():
                items.append(self.queue.get_nowait())
            groups: dict[tuple, list[_Pending]] = {}
            for p in items:
                key = (p.sampling.temperature, p.sampling.top_p, p.sampling.max_tokens)
                group = groups.setdefault(key, [])
                # Two requests with one seed would be indistinguishable in the output: one waits.
                if any(q.request.id == p.request.id for q in group):
                    carry.append(p)
                else:
                    group.append(p)
            for group in groups.values():
                await self._run_group(group)
            target = _samples(items) + self.queue.qsize()

    async def _run_group(self, group: list[_Pending]) -> None:
        first = group[0].sampling
        sampling = SamplingParams(n=max(p.sampling.n for p in group), temperature=first.temperature,
                                  top_p=first.top_p, max_tokens=first.max_tokens, seed=0)
        requests = [p.request for p in group]

        def work() -> list[Completion]:
            return [c for batch in self.backend.generate(requests, sampling) for c in batch]

        try:
            done = await asyncio.get_running_loop().run_in_executor(self.executor, work)
        except Exception as e:  # one bad request must not take the server down
            for p in group:
                if not p.future.done():
                    p.future.set_exception(e)
            return
        by_id: dict[str, list[Completion]] = {}
        for c in done:
            by_id.setdefault(c.request_id, []).append(c)
        for p in group:
            if not p.future.done():
                p.future.set_result(sorted(by_id.get(p.request.id, []), key=lambda c: c.sample_idx))


def build_app(backend: Any, model_name: str, *, api_key: str | None = None, max_batch: int = 64,
              batch_wait_ms: float = 50.0):
    """The FastAPI app serving ``backend`` (anything with the Backend protocol and a ``tokenizer``)."""
    from contextlib import asynccontextmanager

    try:
        from fastapi import FastAPI
        from fastapi.responses import JSONResponse
    except ImportError as e:
        raise ValueError("tracewise serve needs fastapi and uvicorn: pip install 'tracewise[serve]'") from e

    batcher = Batcher(backend, max_batch=max_batch, batch_wait_ms=batch_wait_ms)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(_app):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="tracewise serve", lifespan=lifespan)

    def error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)

    @app.middleware("http")
    async def check_key(request: HTTPRequest, call_next):
        if api_key is not None:
            sent = request.headers.get("authorization", "")
            if not secrets.compare_digest(sent.encode(), f"Bearer {api_key}".encode()):
                return error(401, "invalid or missing API key", "authentication_error")
        return await call_next(request)

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "tracewise"}]}

    async def handle(http: HTTPRequest, chat: bool) -> Any:
        try:
            body = await http.json()
        except ValueError:
            return error(400, "request body is not valid JSON")
        if not isinstance(body, dict):
            return error(400, "request body must be a JSON object")
        try:
            request, sampling, stop = _parse_body(body, chat, model_name, backend.tokenizer)
        except _NotFound as e:
            return error(404, str(e), "not_found_error")
        except ValueError as e:
            return error(400, str(e))
        try:
            done = await batcher.submit(request, sampling)
        except ValueError as e:
            return error(400, str(e))
        return _response(done, chat, model_name, backend.tokenizer, stop)

    @app.post("/v1/completions")
    async def completions(http: HTTPRequest) -> Any:
        return await handle(http, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(http: HTTPRequest) -> Any:
        return await handle(http, chat=True)

    return app


class _NotFound(ValueError):
    pass


def _number(body: dict, key: str, default: Any, kind: type) -> Any:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise ValueError(f"'{key}' must be a {kind.__name__}, got {value!r}")
    return kind(value)


def _parse_body(body: dict, chat: bool, model_name: str, tokenizer: Any) -> tuple[Request, SamplingParams, list[str]]:
    model = body.get("model")
    if model not in (None, model_name):
        raise _NotFound(f"the model {model!r} does not exist; this server serves {model_name!r}")
    if body.get("stream"):
        raise ValueError("streaming is not supported by tracewise serve")
    n = _number(body, "n", 1, int)
    max_tokens = _number(body, "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens", 16, int)
    temperature = _number(body, "temperature", 1.0, float)
    top_p = _number(body, "top_p", 1.0, float)
    seed = _number(body, "seed", None, int)
    if not 1 <= n <= 128 or max_tokens < 1 or temperature < 0 or not 0 < top_p <= 1:
        raise ValueError("need 1 <= n <= 128, max_tokens >= 1, temperature >= 0 and 0 < top_p <= 1")
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise ValueError("'stop' must be a string or a list of non-empty strings")
    seed = random.getrandbits(63) if seed is None else seed
    req = Request(id=str(seed), sample_idxs=list(range(n)))
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages):
            raise ValueError("'messages' must be a non-empty list of {role, content} objects with text content")
        req.messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise ValueError("'prompt' must be one non-empty string (token-id and batched prompts are not supported)")
        # A client that applied the chat template already wrote the BOS; the backend adds one too.
        bos = getattr(tokenizer, "bos_token", None)
        # Only when the tokenizer adds it back: SmolLM2's BOS <|im_start|> opens every chat turn and is never added.
        if bos and prompt.startswith(bos) and tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]:
            prompt = prompt[len(bos):]
        req.prompt = prompt
    return req, SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed), stop


def _response(done: list[Completion], chat: bool, model_name: str, tokenizer: Any, stop: list[str]) -> dict:
    choices, completion_tokens, prompt_tokens = [], 0, 0
    for i, c in enumerate(done):
        text, finish, n_tok = c.text, c.finish_reason, c.n_tokens
        cut = min((text.find(s) for s in stop if s in text), default=-1)
        if cut >= 0:  # stop strings are applied after decoding; the count is of the text kept
            text, finish = text[:cut], "stop"
            n_tok = len(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0
        completion_tokens += n_tok
        prompt_tokens = int(c.meta.get("prompt_tokens", prompt_tokens))
        if chat:
            choices.append({"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
                            "logprobs": None})
        else:
            choices.append({"index": i, "text": text, "finish_reason": finish, "logprobs": None})
    return {
        "id": ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12),
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model_name,
        "choices": choices,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


def serve(model: str, port: int = 8000, host: str = "127.0.0.1", *, served_model_name: str = "",
          trust_remote_code: bool = False, api_key_env: str = "", device: str = "auto", dtype: str = "auto",
          max_batch: int = 64, batch_wait_ms: float = 50.0, threads: int = 0, log_level: str = "info") -> None:
    """Load ``model`` with the ``hf`` backend and serve it until interrupted."""
    try:
        import uvicorn
    except ImportError as e:
        raise ValueError("tracewise serve needs fastapi and uvicorn: pip install 'tracewise[serve]'") from e
    from tracewise.backends.hf import HFBackend

    if not 0 < port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {port}")
    check_env_name(api_key_env, "--api-key-env")
    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise ValueError(f"--api-key-env {api_key_env}: the environment variable is not set")
        register_secret(api_key)
    if threads:
        import torch

        torch.set_num_threads(threads)
    path = resolve_model_path(model)
    logging.getLogger("tracewise.backends.hf").setLevel(logging.WARNING)  # no log line per batch
    backend = HFBackend(path, device=device, dtype=dtype, batch_size=max_batch, trust_remote_code=trust_remote_code)
    name = served_model_name or Path(model.rstrip("/")).name
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serve: listening on %s exposes the model beyond this machine%s", host,
                    "" if api_key else " without an API key (--api-key-env)")
    app = build_app(backend, name, api_key=api_key, max_batch=max_batch, batch_wait_ms=batch_wait_ms)
    log.info("serve: %s as %r on http://%s:%d/v1", path, name, host, port)
    uvicorn.run(app, host=host, port=port, log_level=log_level.lower(), access_log=False)
