"""A uvicorn server on a real 127.0.0.1 socket in a thread, for the serve tests that need real connections
(disconnects, slow clients). A plain module, not conftest: ``from conftest import`` would be ambiguous
between tests/conftest.py and tests/backends/conftest.py."""

from __future__ import annotations

import contextlib
import socket
import threading
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def uvicorn_in_thread(config):
    """A uvicorn server for ``config`` on a real socket, in a daemon thread; stopped on exit."""
    import uvicorn

    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield server
    finally:
        server.should_exit = True
        thread.join(10)
