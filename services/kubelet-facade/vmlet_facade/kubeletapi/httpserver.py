"""HTTP/1.1 over a `ByteStream` with h11: requests in, responses (whole, streamed, or 101) out.

The kubelet API needs three kinds of answer: a whole body (stats, pods), a body streamed for as
long as the client stays (followed logs), and a protocol switch (SPDY or WebSocket for exec,
attach and port-forward). h11 does the parsing and framing; this module adds keep-alive, the
upgrade hand-over (bytes read past the request go to the new protocol first), and noticing a
client that went away in the middle of a streamed body.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import h11

from vmlet_facade.kubeletapi import metrics
from vmlet_facade.kubeletapi.transport import ByteStream, Prefixed

__all__ = ["Headers", "HttpConnection", "Request"]

_MAX_BODY = 1 << 20
_REASONS = {200: "OK", 101: "Switching Protocols", 400: "Bad Request", 401: "Unauthorized",
            403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
            413: "Content Too Large", 422: "Unprocessable Entity",
            431: "Request Header Fields Too Large", 500: "Internal Server Error",
            503: "Service Unavailable", 504: "Gateway Timeout"}


class Headers:
    """Request headers: case-insensitive, every value of a repeated header kept."""

    def __init__(self, raw: Iterable[tuple[bytes, bytes]]) -> None:
        self._items = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in raw]

    def get(self, name: str, default: str = "") -> str:
        name = name.lower()
        for key, value in self._items:
            if key == name:
                return value
        return default

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, comma-separated lists split, blanks dropped."""
        name = name.lower()
        return [part.strip() for key, value in self._items if key == name
                for part in value.split(",") if part.strip()]

    def has_token(self, name: str, token: str) -> bool:
        return token.lower() in (v.lower() for v in self.get_all(name))


@dataclass
class Request:
    """One HTTP request, its body read."""

    method: str
    target: str
    headers: Headers
    body: bytes = b""
    path: str = field(init=False)
    query: dict[str, list[str]] = field(init=False)

    def __post_init__(self) -> None:
        parts = urlsplit(self.target)
        self.path = unquote(parts.path)
        self.query = parse_qs(parts.query, keep_blank_values=True)

    def param(self, name: str, default: str = "") -> str:
        values = self.query.get(name)
        return values[0] if values else default

    def params(self, name: str) -> list[str]:
        return list(self.query.get(name, []))

    @property
    def upgrade(self) -> str:
        """The protocol asked for with Connection: Upgrade, lower-case; "" when none."""
        if not self.headers.has_token("connection", "upgrade"):
            return ""
        return self.headers.get("upgrade").strip().lower()


class HttpConnection:
    """The server side of one HTTP/1.1 connection.

    A request head over ``max_header_bytes`` is answered 431 and ends the connection;
    ``on_authorized`` hears that a request of the connection was authorized (`authorized`)."""

    def __init__(self, stream: ByteStream, *, max_header_bytes: int = 64 * 1024,
                 on_authorized: Callable[[], None] | None = None) -> None:
        self.stream = stream
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=max_header_bytes)
        self._max_header_bytes = max_header_bytes
        self._switched = False
        self._on_authorized = on_authorized

    def authorized(self) -> None:
        """A request on this connection was authorized: its peer is no stranger."""
        if self._on_authorized is not None:
            self._on_authorized()

    async def _event(self) -> Any:
        while True:
            event = self._h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            self._h11.receive_data(await self.stream.read())

    async def next_request(self) -> Request | None:
        """The next request, or None once the client is done with the connection."""
        if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
            self._h11.start_next_cycle()
        elif self._h11.our_state is not h11.IDLE:
            return None
        try:
            event = await self._event()
        except h11.RemoteProtocolError as err:
            await self._reject(err)
            return None
        if not isinstance(event, h11.Request):
            return None
        # h11 bounds the head while it is incomplete; one that arrived whole is measured here.
        head = len(event.method) + len(event.target) + 12 \
            + sum(len(name) + len(value) + 4 for name, value in event.headers)
        if head > self._max_header_bytes:
            metrics.CONNECTIONS_CLOSED.labels("header_too_large").inc()
            await self.respond(431, b"request header fields too large\n", keep_alive=False)
            return None
        body = bytearray()
        while True:
            try:
                more = await self._event()
            except h11.RemoteProtocolError as err:
                await self._reject(err)
                return None
            if isinstance(more, h11.Data):
                body += more.data
                if len(body) > _MAX_BODY:
                    await self.respond(413, b"request body too large\n")
                    return None
            elif isinstance(more, h11.EndOfMessage) or more is h11.PAUSED:
                break
            else:
                return None
        return Request(event.method.decode(), event.target.decode("latin-1"),
                       Headers(event.headers), bytes(body))

    async def _reject(self, err: h11.RemoteProtocolError) -> None:
        if err.error_status_hint == 431:
            metrics.CONNECTIONS_CLOSED.labels("header_too_large").inc()
        if self._h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            await self.respond(err.error_status_hint, f"{err}\n".encode(), keep_alive=False)

    async def _send(self, event: Any) -> None:
        data = self._h11.send(event)
        if data:
            await self.stream.write(data)

    @staticmethod
    def _headers(content_type: str, extra: Iterable[tuple[str, str]] | None,
                 keep_alive: bool) -> list[tuple[str, str]]:
        headers = [("Content-Type", content_type), *(extra or [])]
        if not keep_alive:
            headers.append(("Connection", "close"))
        return headers

    async def respond(self, status: int, body: bytes, *, content_type: str = "text/plain",
                      headers: Iterable[tuple[str, str]] | None = None,
                      keep_alive: bool = True) -> None:
        """A whole response."""
        all_headers = [*self._headers(content_type, headers, keep_alive),
                       ("Content-Length", str(len(body)))]
        await self._send(h11.Response(status_code=status, headers=all_headers,
                                      reason=_REASONS.get(status, "").encode()))
        if body:
            await self._send(h11.Data(data=body))
        await self._send(h11.EndOfMessage())

    async def respond_json(self, status: int, doc: Any) -> None:
        await self.respond(status, json.dumps(doc).encode(), content_type="application/json")

    async def start(self, status: int, *, content_type: str = "text/plain",
                    headers: Iterable[tuple[str, str]] | None = None) -> None:
        """The head of a streamed response; the body follows with `send` and `end`."""
        await self._send(h11.Response(status_code=status,
                                      headers=self._headers(content_type, headers, True),
                                      reason=_REASONS.get(status, "").encode()))

    async def send(self, data: bytes) -> None:
        if data:
            await self._send(h11.Data(data=data))

    async def end(self) -> None:
        await self._send(h11.EndOfMessage())

    async def wait_gone(self) -> None:
        """Return once the client has closed its side (used while a body is streamed).

        Anything the client sends meanwhile is kept for the next request."""
        while True:
            data = await self.stream.read()
            self._h11.receive_data(data)
            if not data:
                return

    async def switch(self, headers: Iterable[tuple[str, str]]) -> ByteStream:
        """Answer 101 Switching Protocols; the connection then belongs to the new protocol."""
        await self._send(h11.InformationalResponse(status_code=101, headers=list(headers),
                                                   reason=b"Switching Protocols"))
        self._switched = True
        trailing, _closed = self._h11.trailing_data
        return Prefixed(self.stream, bytes(trailing))

    @property
    def reusable(self) -> bool:
        return not self._switched and self._h11.our_state is h11.DONE \
            and self._h11.their_state is h11.DONE

    async def close(self) -> None:
        await self.stream.close()


async def wait_first(*aws: asyncio.Future[Any] | asyncio.Task[Any]) -> None:
    """Wait until one of ``aws`` is done; cancel and reap the others."""
    _done, pending = await asyncio.wait(aws, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
