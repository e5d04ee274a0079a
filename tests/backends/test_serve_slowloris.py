"""``tracewise serve`` against slow clients (slowloris), on a real 127.0.0.1 socket with the uvicorn config
``serve`` runs: a request head that is not complete within ``header_timeout_s`` gets its connection closed,
a body that is not complete within ``body_timeout_s`` of its head gets 408 and its connection closed;
clients that finish in time, and slow answers, are not affected."""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from types import SimpleNamespace

import pytest
import torch

from live_server import free_port, uvicorn_in_thread
from tracewise.backends.hf import HFBackend
from tracewise.backends.serve import ServeLimits, build_app
from tracewise.backends.serve_http import server_config

uvicorn = pytest.importorskip("uvicorn")

TIMEOUT = 1.5  # header_timeout_s under test
BODY_TIMEOUT = 0.5  # body_timeout_s under test (the `live_body` server)
SLACK = 2.5  # a loaded 2-core box may run the timer late
HEAD = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
# A head that never ends: one byte every EVERY seconds would take minutes.
ENDLESS = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 4000
EVERY = 0.25


@pytest.fixture(scope="module")
def live(student_path: str):
    torch.set_num_threads(1)
    backend = HFBackend(student_path, device="cpu")
    app = build_app(backend, "tiny", limits=ServeLimits(header_timeout_s=TIMEOUT))
    port = free_port()
    with uvicorn_in_thread(server_config(app, "127.0.0.1", port, header_timeout_s=TIMEOUT, body_timeout_s=30.0,
                                         max_queue=256, log_level="warning")):
        yield SimpleNamespace(port=port, backend=backend)


@pytest.fixture(scope="module")
def live_body(student_path: str):
    """A server with a short body deadline and room for two requests (a stalled one must not starve the other)."""
    torch.set_num_threads(1)
    backend = HFBackend(student_path, device="cpu")
    app = build_app(backend, "tiny", limits=ServeLimits(body_timeout_s=BODY_TIMEOUT, max_queue=2))
    port = free_port()
    with uvicorn_in_thread(server_config(app, "127.0.0.1", port, header_timeout_s=TIMEOUT,
                                         body_timeout_s=BODY_TIMEOUT, max_queue=2, log_level="warning")):
        yield SimpleNamespace(port=port, backend=backend, app=app)


def _connect(live) -> socket.socket:
    return socket.create_connection(("127.0.0.1", live.port), timeout=10)


def _dribble_until_closed(sock: socket.socket, data: bytes, give_up: float) -> float | None:
    """Send ``data`` one byte every EVERY s; seconds until the server closed the connection (None: it never did)."""
    t0 = time.monotonic()
    i = 0
    while time.monotonic() - t0 < give_up:
        if i < len(data):
            try:
                sock.send(data[i:i + 1])
            except OSError:  # broken pipe / reset: closed
                return time.monotonic() - t0
            i += 1
        readable, _, _ = select.select([sock], [], [], EVERY)
        if readable:
            try:
                got = sock.recv(4096)
            except ConnectionResetError:
                return time.monotonic() - t0
            if not got:
                return time.monotonic() - t0
            raise AssertionError(f"the server answered an incomplete head: {got[:100]!r}")
    return None


def _read_response(sock: socket.socket) -> bytes:
    """One whole response (Content-Length framed: /health and JSON answers are)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        assert chunk, f"connection closed mid-response: {buf!r}"
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += sock.recv(4096)
    return head + b"\r\n\r\n" + body


def test_a_head_dribbled_one_byte_at_a_time_is_closed_at_the_deadline(live) -> None:
    with _connect(live) as sock:
        closed = _dribble_until_closed(sock, ENDLESS, give_up=TIMEOUT + SLACK + 5)
    assert closed is not None, "a slowloris client kept its connection"
    assert TIMEOUT - 0.3 <= closed <= TIMEOUT + SLACK, closed  # the deadline closed it, not something else


def test_a_connection_that_sends_nothing_is_closed_at_the_deadline(live) -> None:
    with _connect(live) as sock:
        closed = _dribble_until_closed(sock, b"", give_up=TIMEOUT + SLACK + 5)
    assert closed is not None and TIMEOUT - 0.3 <= closed <= TIMEOUT + SLACK, closed


def test_the_deadline_restarts_for_each_request_on_a_kept_alive_connection(live) -> None:
    with _connect(live) as sock:
        sock.sendall(HEAD)
        assert _read_response(sock).startswith(b"HTTP/1.1 200")
        time.sleep(TIMEOUT * 0.6)  # idle between requests: uvicorn's keep-alive (5 s), not the head deadline
        # A head sent in pieces that ends within the deadline is answered ...
        for i in range(0, len(HEAD), 8):
            sock.send(HEAD[i:i + 8])
            time.sleep(TIMEOUT * 0.6 * 8 / len(HEAD))
        assert _read_response(sock).startswith(b"HTTP/1.1 200")
        # ... and a third one that dribbles is cut at the deadline counted from its own first byte.
        closed = _dribble_until_closed(sock, ENDLESS, give_up=TIMEOUT + SLACK + 5)
    assert closed is not None and TIMEOUT - 0.3 <= closed <= TIMEOUT + SLACK, closed


def test_an_answer_slower_than_the_deadline_is_not_cut(live) -> None:
    real = live.backend.model.forward
    eos = sorted(live.backend.eos_ids)

    def slow(*args, **kwargs):  # 12 steps of >= 0.25 s: the answer takes >= 3 s, twice the head deadline
        time.sleep(0.25)
        out = real(*args, **kwargs)
        out.logits[..., eos] = -1e4
        return out

    body = json.dumps({"model": "tiny", "prompt": "Eva has 2 apples.", "max_tokens": 12}).encode()
    request = (b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    live.backend.model.forward = slow
    try:
        with _connect(live) as sock:
            t0 = time.monotonic()
            sock.sendall(request)
            response = _read_response(sock)
            took = time.monotonic() - t0
    finally:
        del live.backend.model.forward
    assert response.startswith(b"HTTP/1.1 200"), response[:200]
    assert took > TIMEOUT, took
    assert json.loads(response.partition(b"\r\n\r\n")[2])["usage"]["completion_tokens"] == 12


def _completion(max_tokens: int = 2, declared: int | None = None) -> tuple[bytes, bytes]:
    """A /v1/completions request head (its Content-Length ``declared``, default the body's length) and body."""
    body = json.dumps({"model": "tiny", "prompt": "Eva has 2 apples.", "max_tokens": max_tokens}).encode()
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body) if declared is None else declared).encode() + b"\r\n\r\n")
    return head, body


def test_a_stalled_body_gets_408_at_the_deadline_while_others_are_served(live_body) -> None:
    head, body = _completion(declared=1000)  # declares 1000 bytes, sends a few dozen, then stalls
    stalled: dict = {}

    def stall() -> None:
        with _connect(live_body) as sock:
            sock.settimeout(BODY_TIMEOUT + SLACK + 5)
            t0 = time.monotonic()
            sock.sendall(head + body[:20])
            stalled["sent"] = True
            try:
                answer = _read_response(sock)
            except (OSError, AssertionError) as e:  # no answer before the socket timeout (or a bare close)
                stalled["error"] = repr(e)
                return
            stalled["took"] = time.monotonic() - t0
            stalled["answer"] = answer
            stalled["closed"] = sock.recv(4096) == b""  # and the connection is closed after it

    thread = threading.Thread(target=stall)
    thread.start()
    while "sent" not in stalled and thread.is_alive():
        time.sleep(0.01)
    # Meanwhile a normal request on another connection is answered.
    with _connect(live_body) as sock:
        head_ok, body_ok = _completion()
        sock.sendall(head_ok + body_ok)
        ok = _read_response(sock)
    assert ok.startswith(b"HTTP/1.1 200"), ok[:200]
    assert json.loads(ok.partition(b"\r\n\r\n")[2])["choices"][0]["text"] is not None
    thread.join(BODY_TIMEOUT + SLACK + 10)
    assert "error" not in stalled, f"no 408 for a stalled body: {stalled['error']}"
    answer = stalled["answer"]
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"connection: close" in answer.lower()
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"]["code"] == 408
    assert BODY_TIMEOUT - 0.3 <= stalled["took"] <= BODY_TIMEOUT + SLACK, stalled["took"]
    assert stalled["closed"]
    # Its place in the server (--max-queue) is given back.
    deadline = time.monotonic() + 5
    while live_body.app.state.counts["inflight"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert live_body.app.state.counts["inflight"] == 0


def test_a_body_dribbled_within_the_deadline_is_answered(live_body) -> None:
    head, body = _completion()
    with _connect(live_body) as sock:
        sock.sendall(head)
        for i in range(0, len(body), len(body) // 4 + 1):  # the whole body in about half the deadline
            time.sleep(BODY_TIMEOUT / 10)
            sock.sendall(body[i:i + len(body) // 4 + 1])
        assert _read_response(sock).startswith(b"HTTP/1.1 200")


def test_header_and_body_timeouts_are_validated() -> None:
    for bad in (0, -1, 3601):
        with pytest.raises(ValueError, match="--header-timeout"):
            ServeLimits(header_timeout_s=bad).validate()
        with pytest.raises(ValueError, match="--body-timeout"):
            ServeLimits(body_timeout_s=bad).validate()
