"""uvicorn's HTTP/1.1 protocol with what a kubelet needs beside ASGI: the SPDY/3.1 upgrade.

ASGI knows HTTP and WebSocket; exec, attach and port-forward from the apiserver arrive as
``Upgrade: SPDY/3.1``. The request runs through the app like any other (authentication,
authorization, routing, errors as HTTP answers); once a route has decided to take it, it calls
`Connection.switch` and gets the raw connection as a `ByteStream` for `spdy.SpdySession`:
the 101 is written here with h11, the bytes read past the request go first, and the protocol
stops parsing HTTP. Everything else (keep-alive, bodies, streaming, WebSocket) is uvicorn's.

The protocol also tells the connection's supervisor (`serving`) when it is waiting for a
request, which is when the first-request and idle deadlines run, and answers a request head
over the limit with 431 as the hand-written server did.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from vmlet_facade.kubeletapi import metrics
from vmlet_facade.kubeletapi.tls import PeerCertificate

__all__ = ["Connection", "KubeletH11Protocol", "UpgradeRefused", "UpgradedStream"]

_BACKLOG = 64


class UpgradeRefused(Exception):
    """The request cannot be switched: it declared a body (an upgrade request carries none),
    which has not all arrived."""


@dataclass
class Connection:
    """What the app may know of the connection a request came on (``request.state.kubelet``)."""

    peer: PeerCertificate | None
    local: str | None
    authorize: Callable[[], None]
    protocol: KubeletH11Protocol | None = field(default=None, repr=False)

    async def switch(self, headers: Iterable[tuple[str, str]]) -> UpgradedStream:
        """Answer 101 with ``headers``; the connection's bytes from now on."""
        if self.protocol is None:
            raise RuntimeError("no protocol to switch")
        return self.protocol.switch(headers)


class UpgradedStream:
    """The raw connection after a 101 (a `ByteStream`), fed by the protocol."""

    def __init__(self, protocol: KubeletH11Protocol, prefix: bytes) -> None:
        self._protocol = protocol
        self._inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self._pending = b""
        if prefix:
            self._inbox.put_nowait(prefix)

    def feed(self, data: bytes) -> None:
        self._inbox.put_nowait(data)
        if data and self._inbox.qsize() >= _BACKLOG:
            self._protocol.transport.pause_reading()

    async def read(self, max_bytes: int = 65536) -> bytes:
        if not self._pending:
            data = await self._inbox.get()
            if not data:
                self._inbox.put_nowait(b"")  # the end, for later reads too
                return b""
            if self._inbox.qsize() < _BACKLOG // 2:
                self._protocol.transport.resume_reading()
            self._pending = data
        data, self._pending = self._pending[:max_bytes], self._pending[max_bytes:]
        return data

    async def write(self, data: bytes) -> None:
        transport = self._protocol.transport
        if transport.is_closing():
            raise ConnectionError("connection is closed")
        transport.write(data)
        await self._protocol.flow.drain()

    async def close(self) -> None:
        self._protocol.transport.close()


class KubeletH11Protocol(H11Protocol):
    """`H11Protocol` with the SPDY hand-over, phase signals, and 431 for oversized heads."""

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.changed = asyncio.Event()  # the phase may have changed (see `waiting`)
        self.upgraded = False
        self.answered = 0  # responses completed: each starts a new wait for a request
        self._stream: UpgradedStream | None = None
        self._max_head = config.h11_max_incomplete_event_size or 64 * 1024
        connection = app_state.get("kubelet")
        if isinstance(connection, Connection):
            connection.protocol = self

    @property
    def waiting(self) -> bool:
        """Whether the connection waits for (the rest of) a request: no answer pending."""
        if self.upgraded or self.transport is None or self.transport.is_closing():
            return False
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            return True
        return self.conn.their_state in (h11.IDLE, h11.SEND_BODY)

    def data_received(self, data: bytes) -> None:
        if self._stream is not None:
            self._stream.feed(data)
            return
        if self.conn.their_state is h11.IDLE and self._head_too_large(data):
            self._refuse_head()
            return
        super().data_received(data)
        self.changed.set()

    def _head_too_large(self, data: bytes) -> bool:
        """Whether the request head arriving (with ``data``) is over the limit; h11 bounds
        only heads still incomplete, this one also those that arrive whole."""
        pending = self.conn.trailing_data[0] + data
        end = pending.find(b"\r\n\r\n")
        return (end if end >= 0 else len(pending)) > self._max_head

    def connection_lost(self, exc: Exception | None) -> None:
        if self._stream is not None:
            self._stream.feed(b"")
        super().connection_lost(exc)
        self.changed.set()

    def on_response_complete(self) -> None:
        self.answered += 1
        super().on_response_complete()
        self.changed.set()

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self.upgraded = True
        self.changed.set()
        super().handle_websocket_upgrade(event)

    def _unsupported_upgrade_warning(self) -> None:
        if self._get_upgrade() != b"spdy/3.1":  # ours: the route switches it (`switch`)
            super()._unsupported_upgrade_warning()

    def send_400_response(self, msg: str) -> None:
        pending, _closed = self.conn.trailing_data
        if len(pending) <= self._max_head:
            super().send_400_response(msg)
            return
        self._refuse_head()

    def _refuse_head(self) -> None:
        """Answer 431 and close: the request head is over the limit."""
        metrics.CONNECTIONS_CLOSED.labels("header_too_large").inc()
        body = b"request header fields too large\n"
        # Written as bytes: h11 may already be in its error state for this connection.
        self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                             b"Content-Type: text/plain\r\nConnection: close\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        self.transport.close()

    def switch(self, headers: Iterable[tuple[str, str]]) -> UpgradedStream:
        """Answer the current request 101; the connection is the caller's from now on.
        Raises `UpgradeRefused` while the request's body has not all arrived (h11 switches
        only after the end of the request)."""
        if self.conn.their_state is h11.SEND_BODY:
            raise UpgradeRefused("an upgrade request carries no body")
        answer = h11.InformationalResponse(
            status_code=101, reason=b"Switching Protocols",
            headers=[(k.encode(), v.encode()) for k, v in headers])
        self.transport.write(self.conn.send(answer))
        trailing, _closed = self.conn.trailing_data
        self._stream = UpgradedStream(self, bytes(trailing))
        self.upgraded = True
        self._unset_keepalive_if_required()
        if self.cycle is not None:
            # What the app answers once the upgraded session is over goes nowhere.
            self.cycle.disconnected = True
        self.flow.resume_reading()
        self.transport.resume_reading()
        self.changed.set()
        return self._stream
