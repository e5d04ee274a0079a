"""``tracewise serve`` over a real socket: SSE streaming tested with the official ``openai`` client,
disconnects stopping generation, and SIGTERM ending a busy server within seconds."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from live_server import free_port, uvicorn_in_thread
from tracewise.backends.serve import build_app

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

NAME = "tiny"
KEY = "stream-test-key-0123456789"
PROMPT = "Eva has 2 apples."


@pytest.fixture(scope="module")
def live(backend):
    """The app on a real 127.0.0.1 socket (uvicorn in a thread), so disconnects are real ones."""
    app = build_app(backend, NAME, api_key=KEY)
    port = free_port()
    with uvicorn_in_thread(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")):
        yield SimpleNamespace(url=f"http://127.0.0.1:{port}/v1", backend=backend, engine=app.state.engine,
                              client=openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY,
                                                   max_retries=0))


def test_completions_stream_with_the_openai_client(live) -> None:
    kw = dict(model=NAME, prompt=PROMPT, max_tokens=12, n=2, seed=5, temperature=1.0)
    whole = live.client.completions.create(**kw)
    texts, finish, usage, chunks = {0: "", 1: ""}, {}, None, 0
    for chunk in live.client.completions.create(**kw, stream=True, stream_options={"include_usage": True}):
        chunks += 1
        for c in chunk.choices:
            texts[c.index] += c.text
            if c.finish_reason:
                finish[c.index] = c.finish_reason
        if chunk.usage is not None:
            usage = chunk.usage
    assert chunks > 3  # it really came in pieces
    assert [texts[i] for i in (0, 1)] == [c.text for c in sorted(whole.choices, key=lambda c: c.index)]
    assert [finish[i] for i in (0, 1)] == [c.finish_reason for c in sorted(whole.choices, key=lambda c: c.index)]
    assert usage is not None and usage.model_dump() == whole.usage.model_dump()


def test_chat_stream_with_the_openai_client(live) -> None:
    kw = dict(model=NAME, messages=[{"role": "user", "content": "What is 2+3?"}], max_tokens=10, seed=3)
    whole = live.client.chat.completions.create(**kw)
    roles, text, finish = [], "", None
    stream = live.client.chat.completions.create(**kw, stream=True)
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk" and chunk.usage is None  # no include_usage: no usage
        (c,) = chunk.choices
        roles += [c.delta.role] if c.delta.role else []
        text += c.delta.content or ""
        finish = c.finish_reason or finish
    assert roles == ["assistant"] and text == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason


def test_stream_wire_format_and_stop_strings(live) -> None:
    full = live.client.completions.create(model=NAME, prompt=PROMPT, max_tokens=16, seed=8).choices[0].text
    stop = full[5:7]
    body = {"model": NAME, "prompt": PROMPT, "max_tokens": 16, "seed": 8, "stop": [stop], "stream": True}
    with httpx.stream("POST", f"{live.url}/completions", json=body, headers={"Authorization": f"Bearer {KEY}"},
                      timeout=30) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        events = [line for line in resp.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == full[:full.find(stop)]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert not any(stop in c["choices"][0]["text"] for c in chunks)  # held back, never sent


def test_a_stream_the_client_abandons_stops_generating(live) -> None:
    backend, engine = live.backend, live.engine
    real = backend.model.forward
    eos = sorted(backend.eos_ids)

    def slow(*args, **kwargs):  # 400 steps would take >= 6 s; EOS never wins
        time.sleep(0.015)
        out = real(*args, **kwargs)
        out.logits[..., eos] = -1e4
        return out

    backend.model.forward = slow
    cancelled = engine.stats["cancelled_rows"]
    body = {"model": NAME, "prompt": PROMPT, "max_tokens": 400, "stream": True, "temperature": 0}
    try:
        with httpx.stream("POST", f"{live.url}/completions", json=body, headers={"Authorization": f"Bearer {KEY}"},
                          timeout=30) as resp:
            lines = resp.iter_lines()
            got = [next(lines) for _ in range(6)]
        assert sum(line.startswith("data: ") for line in got) >= 3
        deadline = time.monotonic() + 3
        while engine.stats["cancelled_rows"] == cancelled:
            assert time.monotonic() < deadline, "the abandoned stream kept generating"
            time.sleep(0.02)
        steps = engine.stats["steps"]
        time.sleep(0.3)
        assert engine.stats["steps"] == steps and steps < 1000
    finally:
        del backend.model.forward
    # And the server is free for the next client at once.
    t0 = time.monotonic()
    assert live.client.completions.create(model=NAME, prompt=PROMPT, max_tokens=2).choices
    assert time.monotonic() - t0 < 2


_SLOW_SERVER = """
import sys, time
import tracewise.backends.hf as hf

real_init = hf.HFBackend.__init__

def init(self, *args, **kwargs):  # every step takes >= 20 ms and EOS never wins: max_tokens=400 is >= 8 s
    real_init(self, *args, **kwargs)
    forward, eos = self.model.forward, sorted(self.eos_ids)

    def slow(*a, **kw):
        time.sleep(0.02)
        out = forward(*a, **kw)
        out.logits[..., eos] = -1e4
        return out

    self.model.forward = slow

hf.HFBackend.__init__ = init
from tracewise.cli import app
app(args=sys.argv[1:])
"""


def test_sigterm_stops_a_busy_server_within_seconds(student_run_dir: Path) -> None:
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_SERVER, "serve", "--model", str(student_run_dir),
                             "--port", str(port), "--threads", "1", "--log-level", "WARNING"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "serve did not start"
            time.sleep(0.2)
        answers: list = []

        def ask(i: int) -> None:
            try:
                answers.append(httpx.post(f"{url}/completions", json={"prompt": f"{PROMPT} {i}", "max_tokens": 400,
                                                                      "seed": i}, timeout=60).status_code)
            except httpx.HTTPError as e:
                answers.append(type(e).__name__)

        clients = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
        for t in clients:
            t.start()
        time.sleep(1.5)  # well into decoding
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        took = time.monotonic() - t0
        for t in clients:
            t.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert took < 6, f"SIGTERM took {took:.1f} s"
    assert len(answers) == 3 and 200 not in answers, answers  # in-flight work was cancelled, not finished
