"""Any OpenAI-compatible endpoint (vLLM, SGLang, TGI, ``tracewise serve``, hosted APIs) as a backend.

One HTTP request per sample (``n=1``, seed ``sample_seed(seed, request.id, idx)``), so a sample is
retried, resumed and recorded on its own. Requests run on an ``httpx.AsyncClient`` in a private
event loop thread with at most ``concurrency`` in flight; each finished sample is handed to the
caller as soon as it finishes, so ``generate`` appends it to the store before the next arrives and
a crash loses only what was in flight.

Failures (429, 5xx, timeouts, dropped connections, malformed or oversized bodies) are retried with
backoff by the HTTP half, ``tracewise.backends.openai_transport``. A sample that exhausts its retries (or
gets a non-retryable 4xx) becomes a ``Completion`` with ``finish_reason == FAILED`` and the reason in
``meta["error"]`` when the caller asked for that (``report_failures=True``; ``generate`` records them and
``--retry-failed`` redoes them); other callers just do not get that sample, so their own resume logic asks
again next run.

The API key is read from the environment variable *named* by ``api_key_env`` and registered with
``tracewise.core.redact`` so it never reaches a log line, a saved config or a stored failure reason. With
``api_key_env`` empty, ``$OPENAI_API_KEY`` is sent to ``api.openai.com`` only (never to a local or third-party
server by default), and no key is ever sent over plain ``http://`` to a host other than this machine.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

import httpx

from tracewise.backends.base import Completion, Request, SamplingParams
from tracewise.backends.openai_transport import FAILED, Job, Retry, Transport
from tracewise.core.seeding import sample_seed
from tracewise.core.config import doc
from tracewise.core.redact import check_env_name, redact, register_secret

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_BASE_URL", "FAILED", "OPENAI_HOST", "OpenAIBackend", "OpenAIConfig", "is_loopback"]

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
_DONE = object()
OPENAI_HOST = "api.openai.com"


def _host(url: str) -> str:
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1): traffic that never leaves this machine."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class OpenAIConfig:
    """Settings of the ``openai`` backend (``generate.openai.*``); none changes what a sample is."""

    base_url: str = doc("Endpoint root including /v1; empty = $OPENAI_BASE_URL or " + DEFAULT_BASE_URL + ".", "")
    api_key_env: str = doc("NAME of the environment variable holding the API key (never the key); an unset "
                           "variable sends no key. Empty: OPENAI_API_KEY for https://api.openai.com only, "
                           "no key for any other server.", "")
    endpoint: str = doc("'chat' (/v1/chat/completions) or 'completions' (/v1/completions: the chat template "
                        "is applied here with `tokenizer`; needed to continue a prefix).", "chat")
    tokenizer: str = doc("Tokenizer for the client-side chat template and for counting tokens when the server "
                         "reports no usage (default: the stage's tokenizer).", "")
    concurrency: int = doc("Requests in flight at once.", 64)
    max_retries: int = doc("Retries per sample after the first attempt.", 5)
    timeout: float = doc("Seconds allowed for one whole attempt (connect + wait + body).", 300.0)
    backoff_base: float = doc("First retry delay in seconds; doubles per retry, with jitter.", 1.0)
    backoff_max: float = doc("Largest retry delay in seconds (Retry-After excepted).", 60.0)
    max_retry_after: float = doc("Cap on a server's Retry-After, in seconds.", 300.0)
    extra_body: dict = doc("Extra JSON fields sent with every request (e.g. {top_k: 20}).", factory=dict)
    max_response_bytes: int = doc("Largest response body read (after decompression); a larger one is a "
                                  "failed attempt.", 16 * 2**20)

    def validate(self) -> None:
        if self.endpoint not in ("chat", "completions"):
            raise ValueError(f"openai.endpoint: expected 'chat' or 'completions', got {self.endpoint!r}")
        check_env_name(self.api_key_env, "openai.api_key_env")
        if self.concurrency < 1:
            raise ValueError(f"openai.concurrency must be >= 1, got {self.concurrency}")
        if self.max_retries < 0:
            raise ValueError(f"openai.max_retries must be >= 0, got {self.max_retries}")
        for name in ("timeout", "backoff_max", "max_retry_after"):
            if getattr(self, name) <= 0:
                raise ValueError(f"openai.{name} must be > 0, got {getattr(self, name)}")
        if self.max_response_bytes < 1024:
            raise ValueError(f"openai.max_response_bytes must be >= 1024, got {self.max_response_bytes}")
        if self.backoff_base < 0:
            raise ValueError(f"openai.backoff_base must be >= 0, got {self.backoff_base}")
        if self.base_url and not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"openai.base_url must start with http:// or https://, got {redact(self.base_url)!r}")


class OpenAIBackend:
    """Generate through an OpenAI-compatible HTTP API with bounded concurrency and retries."""

    def __init__(self, model: str, *, base_url: str = "", api_key_env: str = "",
                 endpoint: str = "chat", tokenizer: Any = None, concurrency: int = 64, max_retries: int = 5,
                 timeout: float = 300.0, backoff_base: float = 1.0, backoff_max: float = 60.0,
                 max_retry_after: float = 300.0, extra_body: dict | None = None, report_failures: bool = False,
                 check_endpoint: bool = True, batch_size: int | None = None, trust_remote_code: bool = False,
                 max_response_bytes: int = 16 * 2**20):
        if not model:
            raise ValueError("openai backend: model (the served model name) is required")
        cfg = OpenAIConfig(base_url=base_url, api_key_env=api_key_env, endpoint=endpoint,
                           tokenizer=tokenizer if isinstance(tokenizer, str) else "", concurrency=concurrency,
                           max_retries=max_retries, timeout=timeout, backoff_base=backoff_base,
                           backoff_max=backoff_max, max_retry_after=max_retry_after, extra_body=extra_body or {},
                           max_response_bytes=max_response_bytes)
        cfg.validate()
        self.cfg = cfg
        self.model = model
        self.name = f"openai:{model}"
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        # Only /v1/completions takes raw text, so only it can continue an assistant prefix.
        self.supports_prefix = endpoint == "completions"
        self.report_failures = report_failures
        self.trust_remote_code = trust_remote_code
        self._tokenizer = tokenizer if tokenizer is not None and not isinstance(tokenizer, str) else None
        host = _host(self.base_url)
        if not host:
            raise ValueError(f"{self.name}: openai.base_url {redact(self.base_url)!r} names no host")
        if not api_key_env and host == OPENAI_HOST:
            api_key_env = "OPENAI_API_KEY"
        elif not api_key_env and os.environ.get("OPENAI_API_KEY"):
            log.info("%s: not sending $OPENAI_API_KEY to %s (it goes to %s only unless openai.api_key_env names "
                     "it)", self.name, host, OPENAI_HOST)
        self.key_env = api_key_env
        self._api_key = os.environ.get(api_key_env) if api_key_env else None
        if self._api_key and self.base_url.startswith("http://") and not is_loopback(host):
            raise ValueError(f"{self.name}: refusing to send the key in ${api_key_env} in cleartext to {host} over "
                             "http://; use an https:// base_url (or a server on this machine)")
        if self._api_key and not register_secret(self._api_key):
            log.warning("%s: the key in $%s is under 4 characters and cannot be masked in logs (a placeholder "
                        "like 'EMPTY' is fine; a real key is not)", self.name, api_key_env)
        if self._api_key:
            log.info("%s: using the API key from $%s", self.name, api_key_env)
        self.stats = {"ok": 0, "failed": 0, "retries": 0}
        self._warned_no_count = False
        if self.cfg.tokenizer:
            self.tokenizer  # load now: a bad path is an error before any request, not mid-run
        if check_endpoint:
            self._preflight()

    @property
    def tokenizer(self):
        """The configured tokenizer (chat template on /v1/completions; counts when usage is missing);
        without one, the served model name, which vLLM and SGLang default to the model's path or HF id."""
        if self._tokenizer is None:
            from tracewise.core.tokens import load_tokenizer

            try:
                self._tokenizer = load_tokenizer(self.cfg.tokenizer or self.model, self.trust_remote_code)
            except ValueError as e:
                if self.cfg.tokenizer:
                    raise
                raise ValueError(f"{self.name}: no tokenizer configured (openai.tokenizer) and the model name is not "
                                 f"a loadable tokenizer ({e})") from None
        return self._tokenizer

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    # ---- request bodies --------------------------------------------------------------------

    def _body(self, request: Request, idx: int, sampling: SamplingParams) -> dict:
        body: dict[str, Any] = {
            "model": self.model, "n": 1, "max_tokens": sampling.max_tokens, "temperature": sampling.temperature,
            "top_p": sampling.top_p, "seed": sample_seed(sampling.seed, request.id, idx),
        }
        if self.cfg.endpoint == "chat":
            if request.prefix:
                raise ValueError(f"request {request.id!r}: the chat endpoint cannot continue a prefix; "
                                 "use openai.endpoint=completions")
            if request.messages is None:
                raise ValueError(f"request {request.id!r}: the chat endpoint needs messages, not a raw prompt")
            body["messages"] = request.messages
        elif request.messages is not None:
            tok = self.tokenizer
            if not getattr(tok, "chat_template", None):
                raise ValueError(f"request {request.id!r} has messages but tokenizer {self.cfg.tokenizer!r} "
                                 "has no chat template")
            body["prompt"] = tok.apply_chat_template(request.messages, add_generation_prompt=True,
                                                     tokenize=False) + request.prefix
        elif request.prompt is not None:
            body["prompt"] = request.prompt + request.prefix
        else:
            raise ValueError(f"request {request.id!r} has neither messages nor prompt")
        body.update(self.cfg.extra_body)
        return body

    # ---- the sync face of the protocol -----------------------------------------------------

    def generate(self, requests: list[Request], sampling: SamplingParams,
                 progress: Callable[[int], Any] | None = None) -> Iterator[list[Completion]]:
        """Yield completions in small batches as they finish (each batch = what finished meanwhile)."""
        sampling.validate(f"{self.name}: sampling")
        jobs = []
        for req in requests:
            for idx in req.sample_idxs if req.sample_idxs is not None else range(sampling.n):
                if not 0 <= idx < sampling.n:
                    raise ValueError(f"request {req.id!r}: sample_idx {idx} is outside 0..{sampling.n - 1}")
                jobs.append(Job(req, idx, self._body(req, idx, sampling)))
        if not jobs:
            return
        results: queue.Queue = queue.Queue()
        stop = threading.Event()
        thread = threading.Thread(target=self._thread_main, args=(jobs, results, stop), daemon=True,
                                  name="tracewise-openai")
        started = time.monotonic()
        thread.start()
        try:
            finished = False
            while not finished:
                batch = []
                item = results.get()
                while True:
                    if item is _DONE:
                        finished = True
                        break
                    if isinstance(item, BaseException):
                        raise item
                    if item is not None:
                        batch.append(item)
                    if len(batch) >= 256:
                        break
                    try:
                        item = results.get_nowait()
                    except queue.Empty:
                        break
                if batch:
                    if progress:
                        progress(len(batch))
                    yield batch
        finally:
            stop.set()  # the caller stopped early (or crashed): cancel what is in flight
            thread.join()
        log.info("%s: %d ok, %d failed, %d retries in %.1f s", self.name, self.stats["ok"], self.stats["failed"],
                 self.stats["retries"], time.monotonic() - started)

    def _preflight(self) -> None:
        """One GET /models before thousands of requests: an unreachable endpoint or a rejected key is a
        clear error now, not N failed samples later. Other answers (hosted APIs without /models) pass."""
        url = f"{self.base_url}/models"
        last: Exception | None = None
        for delay in (0.0, 0.5, 1.5):
            time.sleep(delay)
            try:
                resp = httpx.get(url, headers=self._headers(), timeout=min(self.cfg.timeout, 30.0))
            except httpx.HTTPError as e:
                last = e
                continue
            if resp.status_code in (401, 403):
                raise ValueError(f"{self.name}: {redact(self.base_url)} rejected the API key (HTTP "
                                 f"{resp.status_code}); check ${self.key_env or 'OPENAI_API_KEY'}")
            if resp.status_code == 200:
                try:
                    ids = [m.get("id") for m in resp.json().get("data", [])]
                except (ValueError, AttributeError, RecursionError):
                    ids = []
                if ids and self.model not in ids:
                    log.warning("%s: the server lists models %s, not %r", self.name, ids[:10], self.model)
            return
        raise ValueError(f"{self.name}: cannot reach the OpenAI-compatible endpoint {redact(self.base_url)} "
                         f"({type(last).__name__}: {redact(str(last))}); is the server running?")

    def _thread_main(self, jobs: list[Job], results: queue.Queue, stop: threading.Event) -> None:
        def put(c: Completion) -> None:  # None still wakes the consumer
            results.put(c if c.finish_reason != FAILED or self.report_failures else None)

        try:
            path = "/chat/completions" if self.cfg.endpoint == "chat" else "/completions"
            transport = Transport(self.cfg, self.base_url, self._headers(), self.name, self.stats)
            asyncio.run(transport.run_all(jobs, path, self._completion, put, stop))
        except BaseException as e:  # surface any bug in the caller's thread instead of hanging it
            results.put(e)
        finally:
            results.put(_DONE)

    # ---- what an answer means ---------------------------------------------------------------

    def _completion(self, job: Job, data: Any, timing: dict) -> Completion:
        """A 200 answer's decoded JSON as the sample's Completion; ``Retry`` when it holds no usable choice."""
        choices = data.get("choices") if isinstance(data, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise Retry("response has no choices")
        choice = choices[0]
        text = self._choice_text(choice)
        if text is None:
            raise Retry(f"malformed choice: {str(choice)[:120]}")
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        meta: dict[str, Any] = {"attempts": len(job.reasons) + 1}
        if isinstance(usage.get("completion_tokens"), int):
            n_tokens = usage["completion_tokens"]
            meta["n_tokens_from"] = "usage"
        elif self._tokenizer is not None or self.cfg.tokenizer:
            n_tokens = len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0
            meta["n_tokens_from"] = "tokenizer"
        else:
            if not self._warned_no_count:
                self._warned_no_count = True
                log.warning("%s: the server reports no usage and no tokenizer is configured (openai.tokenizer): "
                            "n_tokens is 0", self.name)
            n_tokens, meta["n_tokens_from"] = 0, "none"
        if isinstance(usage.get("prompt_tokens"), int):
            meta["prompt_tokens"] = usage["prompt_tokens"]
        raw_finish = choice.get("finish_reason")
        if raw_finish not in ("stop", "length"):
            meta["finish_reason_raw"] = raw_finish
        self.stats["ok"] += 1
        return Completion(job.request.id, job.sample_idx, text, n_tokens,
                          "length" if raw_finish == "length" else "stop", meta, timing)

    def _choice_text(self, choice: dict) -> str | None:
        """The sample's text; a chat reply's separate reasoning field is put back inside <think>."""
        if self.cfg.endpoint == "completions":
            text = choice.get("text")
            return text if isinstance(text, str) else None
        message = choice.get("message")
        if not isinstance(message, dict):
            return None
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            return None
        content = content or ""
        # vLLM/SGLang reasoning parsers and several APIs split the thinking off the content.
        reasoning = message.get("reasoning_content") or message.get("reasoning")
        if isinstance(reasoning, str) and reasoning and "<think>" not in content:
            return f"<think>{reasoning}</think>{content}"
        return content
