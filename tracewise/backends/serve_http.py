"""How ``tracewise serve`` runs uvicorn: its server config, and an HTTP protocol with header and body deadlines.

uvicorn has no timeout on reading a request head or body (checked in its h11 and httptools protocols,
0.54): ``timeout_keep_alive`` runs only between requests and any byte received cancels it,
``h11_max_incomplete_event_size`` bounds the head's size but not its duration, and
``limit_concurrency`` counts connections without ever closing one. A slowloris client that sends its
headers one byte every few seconds, or sends them at once and then trickles (or never sends) the body
its Content-Length promised, therefore holds a connection for as long as it likes, a body reader holds a
place in the server's queue (``--max-queue``) too, and ``limit_concurrency`` of them lock everyone else
out (503).

``deadline_protocol`` closes that hole below ASGI, in uvicorn's own h11 protocol:

* a connection must deliver a complete request head within ``header_timeout_s`` of its first byte (or
  of connecting), else it is closed (no answer: a client this slow is not reading one either);
* a request's whole body must arrive within ``body_timeout_s`` of the end of its head, else the client
  gets 408 (when no answer has started yet) and the connection is closed; the app sees a disconnect,
  so its read ends and the request's place in the server is given back at once.

The h11 protocol is used whatever else is installed (uvicorn would pick httptools when present), so the
deadlines hold on every install; it is the protocol plain ``uvicorn`` ships.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

log = logging.getLogger("tracewise.backends.serve")


def _cancel(timer: asyncio.TimerHandle | None) -> None:
    if timer is not None:
        timer.cancel()


def deadline_protocol(header_timeout_s: float, body_timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's ``H11Protocol``, closing a connection whose request head is not complete within
    ``header_timeout_s`` seconds (counted from the connection, or from the first byte of a later
    request on a kept-alive connection; the idle time between requests is uvicorn's keep-alive), and
    answering 408 and closing one whose request body is not complete within ``body_timeout_s`` of the
    end of its head."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    from tracewise.backends.serve_api import error_body

    timed_out = json.dumps(error_body(408, f"request body not received within {body_timeout_s:g} s",
                                      "invalid_request_error")).encode()

    class DeadlineProtocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None
        _body_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            # A client that connects and sends nothing is a slowloris too.
            self._header_timer = self.loop.call_later(header_timeout_s, self._header_timed_out)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._watch(new_bytes=True)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._watch(new_bytes=False)  # a pipelined request may just have been parsed from the buffer

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_clocks()
            super().connection_lost(exc)

        def _stop_clocks(self) -> None:
            _cancel(self._header_timer)
            _cancel(self._body_timer)
            self._header_timer = self._body_timer = None

        def _watch(self, new_bytes: bool) -> None:
            """Start or stop the clocks from h11's view of the client: IDLE until a whole request head has
            been parsed, SEND_BODY until its whole body has."""
            if self.transport.is_closing():
                self._stop_clocks()
                return
            state = self.conn.their_state
            if state is h11.IDLE:
                if new_bytes and self._header_timer is None:  # the first byte of a new request starts its clock
                    self._header_timer = self.loop.call_later(header_timeout_s, self._header_timed_out)
            else:
                _cancel(self._header_timer)
                self._header_timer = None
            if state is h11.SEND_BODY:
                if self._body_timer is None:  # the end of the head starts the body's clock
                    self._body_timer = self.loop.call_later(body_timeout_s, self._body_timed_out)
            else:
                _cancel(self._body_timer)
                self._body_timer = None

        def _header_timed_out(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                log.debug("serve: closing a connection that sent no complete request head in %g s", header_timeout_s)
                self.transport.close()  # no 408: a client this slow is not reading answers either

        def _body_timed_out(self) -> None:
            self._body_timer = None
            if self.transport.is_closing() or self.conn.their_state is not h11.SEND_BODY:
                return
            log.debug("serve: 408 for a request whose body was not complete in %g s", body_timeout_s)
            cycle = self.cycle
            if cycle is not None and not cycle.response_started and not cycle.disconnected:
                cycle.response_started = True
                headers = [(b"content-type", b"application/json"), (b"content-length", str(len(timed_out)).encode()),
                           (b"connection", b"close")]
                for event in (h11.Response(status_code=408, headers=headers, reason=b"Request Timeout"),
                              h11.Data(data=timed_out), h11.EndOfMessage()):
                    self.transport.write(self.conn.send(event))
            if cycle is not None and not cycle.response_complete:
                # What uvicorn does when a client leaves: the app's receive() says http.disconnect (its body
                # read ends, its place in the server is given back) and whatever it sends is dropped.
                cycle.disconnected = True
                cycle.message_event.set()
            self.transport.close()  # after the 408 is flushed

    return DeadlineProtocol


def server_config(app: Any, host: str, port: int, *, header_timeout_s: float, body_timeout_s: float, max_queue: int,
                  log_level: str = "info", shutdown_timeout: float = 5.0) -> Any:
    """The ``uvicorn.Config`` ``tracewise serve`` runs ``app`` with."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level=log_level.lower(), access_log=False,
                          http=deadline_protocol(header_timeout_s, body_timeout_s),
                          timeout_graceful_shutdown=max(1, int(shutdown_timeout)),
                          limit_concurrency=4 * max_queue + 64)  # beyond: uvicorn says 503
