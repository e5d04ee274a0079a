"""How ``tracewise serve`` runs uvicorn: its server config, and an HTTP protocol with a header deadline.

uvicorn has no timeout on reading a request head (checked in its h11 and httptools protocols,
0.54): ``timeout_keep_alive`` runs only between requests and any byte received cancels it,
``h11_max_incomplete_event_size`` bounds the head's size but not its duration, and
``limit_concurrency`` counts connections without ever closing one. A slowloris client that sends its
headers one byte every few seconds therefore holds a connection for as long as it likes, and
``limit_concurrency`` of them lock everyone else out (503).

``header_timeout_protocol`` closes that hole below ASGI, in uvicorn's own h11 protocol: a connection
must deliver a complete request head within ``header_timeout_s`` of its first byte (or of connecting),
else it is closed. The h11 protocol is used whatever else is installed (uvicorn would pick httptools
when present), so the deadline holds on every install; it is the protocol plain ``uvicorn`` ships.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("tracewise.backends.serve")


def header_timeout_protocol(header_timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's ``H11Protocol``, closing a connection whose request head is not complete within
    ``header_timeout_s`` seconds (counted from the connection, or from the first byte of a later
    request on a kept-alive connection; the idle time between requests is uvicorn's keep-alive)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutProtocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()  # a client that connects and sends nothing is a slowloris too

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            # h11's view of the client: IDLE until a whole request head has been parsed.
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                if self._header_timer is None:  # the first byte of a new request starts its clock
                    self._arm()
            else:
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(header_timeout_s, self._header_timed_out)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timed_out(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                log.debug("serve: closing a connection that sent no complete request head in %g s", header_timeout_s)
                self.transport.close()  # no 408: a client this slow is not reading answers either

    return HeaderTimeoutProtocol


def server_config(app: Any, host: str, port: int, *, header_timeout_s: float, max_queue: int, log_level: str = "info",
                  shutdown_timeout: float = 5.0) -> Any:
    """The ``uvicorn.Config`` ``tracewise serve`` runs ``app`` with."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level=log_level.lower(), access_log=False,
                          http=header_timeout_protocol(header_timeout_s),
                          timeout_graceful_shutdown=max(1, int(shutdown_timeout)),
                          limit_concurrency=4 * max_queue + 64)  # beyond: uvicorn says 503
