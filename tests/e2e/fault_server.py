"""A misbehaving OpenAI-compatible HTTP server on 127.0.0.1, for fault-injection tests.

Raw asyncio HTTP/1.1 (keep-alive), not a web framework, because the faults live below what a
framework lets a handler do: closing a connection halfway through a body, or never answering.
Each POST gets one outcome drawn from ``rates`` by a RNG seeded with (request key, attempt number),
so a run is reproducible and a retried request gets a fresh draw:

  500           HTTP 500 with a JSON error (echoing the client's API key if ``echo_key``)
  429           HTTP 429 with ``Retry-After: <retry_after>``
  hang          read the request, then say nothing for ``hang_s`` seconds and close
  close_mid_body  headers promise a body, half of it is sent, the connection closes
  malformed     HTTP 200 whose body is not JSON
  empty         HTTP 200 with ``"choices": []``
  reset         close the connection without any response

Otherwise it answers with ``answer_for(seed)``, a text that depends only on the request's seed, so a
test can check that every stored sample is the answer to its own request. ``usage`` is left out of
every third success to exercise the client's tokenizer fallback. ``events`` records every outcome
with its time; ``successes`` counts answers per key.

``FaultServerProcess`` runs it in a child process (what the 2,000-request test uses); by hand:
``python tests/e2e/fault_server.py --port 8001 --rate 0.05``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import subprocess
import sys
import threading
import time
from collections import Counter

FAULTS = ("500", "429", "hang", "close_mid_body", "malformed", "empty", "reset")


def answer_for(seed: int) -> str:
    return f"<think>Working on case {seed % 9973}.</think>The answer is \\boxed{{{seed % 97}}}."


class FaultServer:
    def __init__(self, rates: dict[str, float] | None = None, *, seed: int = 0, retry_after: str = "1",
                 hang_s: float = 3.0, api_key: str | None = None, echo_key: bool = False, model: str = "fault-model"):
        self.rates = dict(rates or {})
        unknown = set(self.rates) - set(FAULTS)
        assert not unknown, f"unknown faults {unknown}"
        self.seed, self.retry_after, self.hang_s = seed, retry_after, hang_s
        self.api_key, self.echo_key, self.model = api_key, echo_key, model
        self.events: list[tuple[int, str, int, str, float]] = []  # (seed, key, attempt, outcome, time)
        self.successes: Counter = Counter()
        self._attempts: Counter = Counter()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # ---- lifecycle ------------------------------------------------------------------------------

    def start(self, port: int = 0) -> "FaultServer":
        ready = threading.Event()

        def main() -> None:
            self._loop = asyncio.new_event_loop()
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._handle, "127.0.0.1", port, backlog=1024))
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=main, daemon=True, name="fault-server")
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is None:
            return

        async def shutdown() -> None:
            self._server.close()
            for task in [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]:
                task.cancel()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> "FaultServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- HTTP -----------------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                if not await self._respond(method, path, headers, body, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            return  # CancelledError: stop() cancels hanging handlers; swallowing it keeps shutdown quiet
        finally:
            writer.close()

    async def _send(self, writer: asyncio.StreamWriter, status: int, payload: bytes | dict,
                    extra: dict[str, str] | None = None) -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        reason = {200: "OK", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests"}.get(status, "Error")
        head = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json", f"Content-Length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in (extra or {}).items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        await writer.drain()

    async def _respond(self, method: str, path: str, headers: dict, raw: bytes, writer) -> bool:
        """Answer one request; False = the connection is closed now."""
        if path.startswith("/admin/"):  # test control: read the event log, change the fault rates
            if method == "POST" and path == "/admin/rates":
                self.rates = json.loads(raw)
            await self._send(writer, 200, {"events": self.events, "successes": dict(self.successes)})
            return True
        auth = headers.get("authorization", "")
        if self.api_key is not None and auth != f"Bearer {self.api_key}":
            await self._send(writer, 401, {"error": {"message": f"Incorrect API key provided: {auth[7:]}"}})
            return True
        if method == "GET" and path.endswith("/models"):
            await self._send(writer, 200, {"object": "list", "data": [{"id": self.model, "object": "model"}]})
            return True
        if method != "POST" or not path.endswith("/completions"):
            await self._send(writer, 404, {"error": {"message": f"no route {method} {path}"}})
            return True
        body = json.loads(raw)
        seed = int(body.get("seed", 0))
        prompt = body.get("prompt") or json.dumps(body.get("messages"))
        key = f"{seed}|{hashlib.sha256(prompt.encode()).hexdigest()[:12]}"
        attempt = self._attempts[key]
        self._attempts[key] += 1
        outcome = self._draw(key, attempt)
        self.events.append((seed, key, attempt, outcome, time.monotonic()))
        if outcome == "500":
            echo = f" (key {auth[7:]})" if self.echo_key else ""  # some APIs echo (part of) the key
            await self._send(writer, 500, {"error": {"message": f"internal error{echo}"}})
        elif outcome == "429":
            await self._send(writer, 429, {"error": {"message": "rate limited"}}, {"Retry-After": self.retry_after})
        elif outcome == "hang":
            await asyncio.sleep(self.hang_s)
            return False
        elif outcome == "close_mid_body":
            body_bytes = json.dumps(self._success(body, seed)).encode()
            writer.write(f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body_bytes)}"
                         "\r\n\r\n".encode() + body_bytes[: len(body_bytes) // 2])
            await writer.drain()
            return False
        elif outcome == "malformed":
            await self._send(writer, 200, b'{"id": "cmpl-1", "choices": [{"text": "unterminated')
        elif outcome == "empty":
            await self._send(writer, 200, {"id": "cmpl-1", "object": "text_completion", "choices": []})
        elif outcome == "reset":
            return False
        else:
            self.successes[key] += 1
            await self._send(writer, 200, self._success(body, seed))
        return True

    def _draw(self, key: str, attempt: int) -> str:
        r = random.Random(f"{self.seed}|{key}|{attempt}").random()
        for fault in FAULTS:
            r -= self.rates.get(fault, 0.0)
            if r < 0:
                return fault
        return "ok"

    def _success(self, body: dict, seed: int) -> dict:
        text = answer_for(seed)
        chat = "messages" in body
        choice = {"index": 0, "finish_reason": "stop", "logprobs": None}
        choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
        out = {"id": "cmpl-x", "object": "chat.completion" if chat else "text_completion", "created": 0,
               "model": self.model, "choices": [choice]}
        if seed % 3:
            out["usage"] = {"prompt_tokens": 7, "completion_tokens": len(text) // 2, "total_tokens": 7 + len(text) // 2}
        return out


class FaultServerProcess:
    """The same server in its own process, so that it does not share a GIL (and a core) with the
    client under test; ``events`` and ``rates`` go over the ``/admin/`` endpoints."""

    def __init__(self, rates: dict[str, float] | None = None, **options):
        self.config = {"rates": rates or {}, **options}
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> "FaultServerProcess":
        self.proc = subprocess.Popen([sys.executable, __file__, "--port", "0", "--config", json.dumps(self.config)],
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()  # "fault server on http://127.0.0.1:PORT/v1"
        assert line.startswith("fault server on"), line
        self.port = int(line.rsplit(":", 1)[1].split("/")[0])
        return self

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(10)

    def _admin(self, path: str, body: dict | None = None) -> dict:
        import httpx

        url = f"http://127.0.0.1:{self.port}/admin/{path}"
        resp = httpx.post(url, json=body, timeout=30) if body is not None else httpx.get(url, timeout=30)
        return resp.json()

    @property
    def events(self) -> list[tuple]:
        return [tuple(e) for e in self._admin("events")["events"]]

    def set_rates(self, rates: dict[str, float]) -> None:
        self._admin("rates", rates)


if __name__ == "__main__":  # pragma: no cover - run by FaultServerProcess, or by hand
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8001)
    ap.add_argument("--rate", type=float, default=0.0, help="rate of each fault (when no --config)")
    ap.add_argument("--config", default="", help="JSON: {rates: {...}, retry_after, hang_s, api_key, ...}")
    args = ap.parse_args()
    cfg = json.loads(args.config) if args.config else {"rates": {f: args.rate for f in FAULTS}}
    srv = FaultServer(cfg.pop("rates"), **cfg).start(args.port)
    print(f"fault server on {srv.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        srv.stop()
