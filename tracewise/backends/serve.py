"""``tracewise serve``: an OpenAI-compatible server for a local HF model or the embedded student.

Endpoints: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions`` (with or without
``stream``: Server-Sent Events in OpenAI's chunk format, ``data: [DONE]`` last, usage in a final chunk
with ``stream_options.include_usage``), ``GET /health``. Any OpenAI client can talk to a tracewise
student, and the ``openai`` backend is tested against this real server instead of a mock.

Built to survive hostile clients, like the servers users trust (vLLM's OpenAI server, TGI):

* every field is validated against the model: prompt + max_tokens within the context, max_tokens <=
  ``max_tokens_cap``, n and the message count bounded, finite temperature in [0, 2], at most 4 stop
  strings of at most 64 characters; JSON only (``Content-Type: application/json``, else 415; no NaN);
* each request is encoded when it arrives, on a worker thread (never on the event loop), so a bad one
  fails alone; a batch that fails is retried one request at a time (``serve_engine``);
* a bounded number of requests in the server (more: 429 with Retry-After), a body cap (413), bounded
  KV memory (``max_batch_tokens``); a client that disconnects cancels its work; a connection whose
  request head is not complete within ``header_timeout_s`` (slowloris) is closed, one whose body is not
  complete within ``body_timeout_s`` of its head gets 408 and is closed (``serve_http``);
* errors are fixed messages per kind: never another client's text, never a server path;
* Host is checked on loopback binds (no DNS rebinding), /docs and /openapi.json are off, a
  non-loopback bind needs an API key of >= 16 characters (or an explicit ``--insecure``);
* SIGTERM/SIGINT stop the model thread after its current step, fail what is in flight with 503 and
  exit within seconds.

Each sample is seeded by the request's ``seed`` and its index only, so what a client gets does not
depend on which other requests shared its batch.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tracewise.backends.base import Request
from tracewise.core.redact import check_env_name, register_secret
from tracewise.backends.serve_api import ServeLimits, bad, error_body, loads, parse_body, response, sse, strip_bos
from tracewise.backends.serve_engine import SHUTTING_DOWN, Engine, Pending, ServeError
from tracewise.backends.serve_http import server_config

__all__ = ["ServeLimits", "build_app", "resolve_model_path", "serve"]

try:  # module level: FastAPI resolves the handlers' (string) annotations in this module's globals
    from fastapi import Request as HTTPRequest
except ImportError:  # the `serve` extra is optional; serve() says how to install it
    HTTPRequest = None

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
MIN_KEY_CHARS = 16


def resolve_model_path(path: str) -> str:
    """A model directory, or an ``init-student`` run directory (whose model lives in ``model/``)."""
    p = Path(path)
    if p.is_dir() and not (p / "config.json").exists() and (p / "model" / "config.json").exists():
        return str(p / "model")
    return path


def _host_name(value: str) -> str:
    value = value.strip().lower()
    if value.startswith("["):  # [::1]:8000
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class _Guard:
    """ASGI middleware run before routing: Host check (loopback binds) and the API key."""

    def __init__(self, app: Any, api_key: str | None, allowed_hosts: frozenset[str] | None):
        self.app, self.api_key, self.allowed_hosts = app, api_key, allowed_hosts
        self.state = app.state

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = {k.lower(): v for k, v in scope.get("headers", [])}
            err = None
            if self.allowed_hosts is not None and \
                    _host_name(headers.get(b"host", b"").decode("latin-1")) not in self.allowed_hosts:
                err = ServeError(400, "invalid Host header", "invalid_request_error")
            elif self.api_key is not None and scope.get("path") != "/health":
                sent = headers.get(b"authorization", b"")
                if not secrets.compare_digest(sent, f"Bearer {self.api_key}".encode()):
                    err = ServeError(401, "invalid or missing API key", "authentication_error")
            if err is not None:
                from fastapi.responses import JSONResponse

                resp = JSONResponse(error_body(err.status, err.message, err.kind), status_code=err.status)
                return await resp(scope, receive, send)
        await self.app(scope, receive, send)


def build_app(backend: Any, model_name: str, *, api_key: str | None = None, max_batch: int | None = None,
              batch_wait_ms: float | None = None, limits: ServeLimits | None = None,
              allowed_hosts: frozenset[str] | None = LOOPBACK_HOSTS):
    """The ASGI app serving ``backend`` (an ``HFBackend``). ``allowed_hosts=None`` skips the Host check
    (non-loopback binds, where the API key is the guard)."""
    from contextlib import asynccontextmanager

    try:
        from fastapi import FastAPI
        from fastapi.responses import JSONResponse, StreamingResponse
        from starlette.requests import ClientDisconnect
    except ImportError as e:
        raise ValueError("tracewise serve needs fastapi and uvicorn: pip install 'tracewise[serve]'") from e

    limits = limits or ServeLimits()
    if max_batch is not None:
        limits.max_batch, limits.max_n = max_batch, min(limits.max_n, max_batch)
    if batch_wait_ms is not None:
        limits.batch_wait_ms = batch_wait_ms
    limits.validate()
    context = _context_length(backend)
    engine = Engine(backend, max_batch=limits.max_batch, max_batch_tokens=limits.max_batch_tokens,
                    max_live_batches=limits.max_live_batches, batch_wait_ms=limits.batch_wait_ms)
    encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tracewise-serve-encode")
    created = int(time.time())
    state = {"inflight": 0}

    @asynccontextmanager
    async def lifespan(_app):
        engine.start()
        yield
        engine.close()
        encoder.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="tracewise serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine, app.state.limits, app.state.context, app.state.counts = engine, limits, context, state

    def error(err: ServeError, headers: dict | None = None) -> JSONResponse:
        return JSONResponse(error_body(err.status, err.message, err.kind), status_code=err.status, headers=headers)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok" if not engine.closing else "shutting down"}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "tracewise", "max_model_len": context}]}

    async def handle(http: HTTPRequest, chat: bool) -> Any:
        ctype = http.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            return error(ServeError(415, "Content-Type must be application/json", "invalid_request_error"))
        if state["inflight"] >= limits.max_queue or engine.closing:
            err = SHUTTING_DOWN if engine.closing else ServeError(429, "the server is busy; retry later",
                                                                   "rate_limit_error")
            return error(err, {"Retry-After": "1"})
        engine.start()  # a no-op once running; ASGI transports without lifespan events start it here
        state["inflight"] += 1
        handed_off = False
        try:
            raw = await _read_body(http, limits.max_body_bytes)
            parsed = parse_body(loads(raw), chat, model_name, limits)
            loop = asyncio.get_running_loop()
            ids = await loop.run_in_executor(encoder, _encode, backend, strip_bos(backend, parsed.request))
            if len(ids) + parsed.sampling.max_tokens > context:
                raise bad(f"the prompt ({len(ids)} tokens) plus max_tokens ({parsed.sampling.max_tokens}) exceed "
                           f"the model's context of {context} tokens")
            p = Pending(loop, parsed.request, ids, parsed.sampling, parsed.stop, parsed.stream)
            engine.submit(p)
            if parsed.stream:
                handed_off = True
                release = _releaser(p, state)
                gen = sse(p, parsed, model_name, chat, release)
                # A stream dropped before its first chunk never runs its finally: release it when collected too.
                weakref.finalize(gen, release)
                return StreamingResponse(gen, media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            result = await _wait_or_disconnect(p, http)
            if result is None:  # the client went away; nobody reads this
                return JSONResponse({}, status_code=499)
            return response(*result, chat=chat, model_name=model_name)
        except ClientDisconnect:  # gone mid-body (or cut off by the body deadline: 408 already sent)
            return JSONResponse({}, status_code=499)  # nobody reads this
        except ServeError as e:
            return error(e, {"Retry-After": "1"} if e.status in (429, 503) else None)
        finally:
            if not handed_off:
                state["inflight"] -= 1

    @app.post("/v1/completions")
    async def completions(http: HTTPRequest) -> Any:
        return await handle(http, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(http: HTTPRequest) -> Any:
        return await handle(http, chat=True)

    return _Guard(app, api_key, allowed_hosts) if (api_key is not None or allowed_hosts is not None) else app


def _releaser(p: Pending, state: dict) -> Any:
    """Once (however the stream ends): the request leaves the server's count and its work is cancelled
    (a no-op for a request that finished)."""
    done = []

    def release() -> None:
        if not done:
            done.append(True)
            state["inflight"] -= 1
            p.cancel()

    return release


def _context_length(backend: Any) -> int:
    config = getattr(getattr(backend, "model", None), "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


async def _read_body(http: HTTPRequest, cap: int) -> bytes:
    """The body, at most ``cap`` bytes (413 beyond). A too-large body is drained (up to 64 MiB, without
    keeping it) before the 413, so the client reads the answer instead of a reset connection."""
    too_big = ServeError(413, f"request body larger than {cap} bytes", "invalid_request_error")
    declared = http.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > max(cap, 64 * 2**20)):
        raise too_big
    chunks, size = [], 0
    async for chunk in http.stream():
        size += len(chunk)
        if size <= cap:
            chunks.append(chunk)
        elif size > max(cap, 64 * 2**20):
            break
    if size > cap:
        raise too_big
    return b"".join(chunks)


def _encode(backend: Any, request: Request) -> list[int]:
    """On the encoder thread. Whatever goes wrong is this request's fixed-message 400."""
    try:
        ids = backend.encode_prompt(request)
    except Exception as e:
        log.debug("serve: encoding failed: %s", type(e).__name__)
        raise bad("the prompt could not be encoded (empty, or not valid for this model's chat template)") from None
    return ids


async def _wait_or_disconnect(p: Pending, http: HTTPRequest) -> Any:
    """The request's result, or None as soon as the client disconnects (its work is then cancelled)."""
    async def disconnected() -> None:
        while (await http.receive())["type"] != "http.disconnect":
            pass

    watch = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({p.future, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not p.future.done():
            p.cancel()
    if not p.future.done():
        return None
    return p.future.result()  # raises the request's ServeError


def serve(model: str, port: int = 8000, host: str = "127.0.0.1", *, served_model_name: str = "",
          trust_remote_code: bool = False, api_key_env: str = "", device: str = "auto", dtype: str = "auto",
          max_batch: int = 64, batch_wait_ms: float = 50.0, threads: int = 0, log_level: str = "info",
          limits: ServeLimits | None = None, insecure: bool = False, shutdown_timeout: float = 5.0) -> None:
    """Load ``model`` with the ``hf`` backend and serve it until SIGINT/SIGTERM."""
    try:
        import uvicorn
    except ImportError as e:
        raise ValueError("tracewise serve needs fastapi and uvicorn: pip install 'tracewise[serve]'") from e
    from tracewise.backends.hf import HFBackend

    limits = limits or ServeLimits()
    limits.max_batch, limits.batch_wait_ms = max_batch, batch_wait_ms
    limits.max_n = min(limits.max_n, max_batch)
    limits.validate()
    if not 0 < port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {port}")
    check_env_name(api_key_env, "--api-key-env")
    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise ValueError(f"--api-key-env {api_key_env}: the environment variable is not set")
        if len(api_key) < MIN_KEY_CHARS and not insecure:
            raise ValueError(f"--api-key-env {api_key_env}: the key has {len(api_key)} characters; use at least "
                             f"{MIN_KEY_CHARS} (e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')")
        register_secret(api_key)
    from tracewise.core.threads import use_threads
    loopback = host in LOOPBACK_HOSTS or host.startswith("127.")
    if not loopback and api_key is None:
        if not insecure:
            raise ValueError(f"--host {host} exposes the model beyond this machine: set an API key with "
                             f"--api-key-env (>= {MIN_KEY_CHARS} characters), or pass --insecure to serve it "
                             "to anyone who can reach this port")
        log.warning("serve: --insecure: listening on %s without an API key", host)

    use_threads(threads)
    path = resolve_model_path(model)
    logging.getLogger("tracewise.backends.hf").setLevel(logging.WARNING)  # no log line per batch
    backend = HFBackend(path, device=device, dtype=dtype, batch_size=max_batch,
                        max_batch_tokens=limits.max_batch_tokens, trust_remote_code=trust_remote_code)
    name = served_model_name or Path(model.rstrip("/")).name
    app = build_app(backend, name, api_key=api_key, limits=limits,
                    allowed_hosts=(LOOPBACK_HOSTS | {host}) if loopback else None)
    log.info("serve: %s as %r on http://%s:%d/v1", path, name, host, port)
    engine = app.state.engine

    class Server(uvicorn.Server):
        """uvicorn's server, except that a signal stops the model thread at once: in-flight requests get
        503 and their connections close, so the graceful shutdown has nothing left to wait for."""

        def handle_exit(self, sig: int, frame: Any) -> None:
            engine.close()  # a plain flag: safe in a signal handler
            super().handle_exit(sig, frame)

    Server(server_config(app, host, port, header_timeout_s=limits.header_timeout_s,
                         body_timeout_s=limits.body_timeout_s, max_queue=limits.max_queue, log_level=log_level,
                         shutdown_timeout=shutdown_timeout)).run()
