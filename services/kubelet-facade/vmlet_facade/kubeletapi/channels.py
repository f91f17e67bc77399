"""Kubernetes' channel protocols over an ASGI WebSocket (Starlette's, served by uvicorn).

``channel.k8s.io`` (and ``v4.``/``v5.``) prefix every binary message with one byte, the
channel: 0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize for exec and attach; 2n data and 2n+1
error for the n-th port of a port-forward. ``base64.channel.k8s.io`` sends text messages with
the channel as an ASCII digit and base64 data. v5 adds the CLOSE signal: a message on channel
255 whose byte names the channel the client closed (stdin's end).

uvicorn (wsproto) does the handshake, framing, pings and the close handshake, and reads no
further until the app takes a message: a slow reader here slows the socket.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging

from starlette.websockets import WebSocket

__all__ = ["CLOSE_CHANNEL", "ChannelSocket", "negotiate"]

log = logging.getLogger(__name__)

CLOSE_CHANNEL = 255
_BACKLOG = 64


def negotiate(websocket: WebSocket, supported: tuple[str, ...]) -> str | None:
    """The first protocol the client asks for that we support ("" when it asks for none)."""
    asked: list[str] = list(websocket.scope.get("subprotocols", []))
    wanted = [p.strip() for p in asked if p.strip()] or [""]
    for protocol in wanted:
        if protocol in supported:
            return protocol
    return None


class ChannelSocket:
    """An accepted server WebSocket speaking one of the channel protocols."""

    def __init__(self, websocket: WebSocket, protocol: str, channels: int,
                 readable: set[int]) -> None:
        self.protocol = protocol
        self.base64 = "base64." in protocol
        self.stream_close = protocol.startswith("v5.")
        self._ws = websocket
        self._inbox: list[asyncio.Queue[bytes | None]] = [asyncio.Queue()
                                                          for _ in range(channels)]
        self._readable = readable  # what the client sends on other channels is dropped
        self._room = asyncio.Event()
        self._room.set()
        self._ended = [False] * channels
        self._write_lock = asyncio.Lock()
        self._close_sent = False
        self.closed = asyncio.Event()  # the client is gone or closed the socket

    async def send(self, channel: int, data: bytes) -> None:
        """Send ``data`` on ``channel`` (an empty message is allowed: it opens the channel)."""
        async with self._write_lock:
            if self._close_sent or self.closed.is_set():
                raise ConnectionError("WebSocket is closed")
            try:
                if self.base64:
                    await self._ws.send_text(chr(ord("0") + channel)
                                             + base64.b64encode(data).decode())
                else:
                    await self._ws.send_bytes(bytes([channel]) + data)
            except (RuntimeError, OSError) as err:  # uvicorn: the socket is gone
                raise ConnectionError(f"WebSocket is closed: {err}") from None

    async def read(self, channel: int) -> bytes:
        """What the client sent on ``channel``; b"" once it closed it or the socket ended."""
        queue = self._inbox[channel]
        data = await queue.get()
        if queue.qsize() < _BACKLOG:
            self._room.set()
        if data is None:
            queue.put_nowait(None)
            return b""
        return data

    def _end(self, channel: int) -> None:
        if 0 <= channel < len(self._ended) and not self._ended[channel]:
            self._ended[channel] = True
            self._inbox[channel].put_nowait(None)

    async def _message(self, raw: bytes) -> None:
        # Text and binary frames alike: the protocol, not the frame type, says how to read them.
        if not raw:
            return
        if self.base64:
            channel, body = raw[0] - ord("0"), raw[1:]
            try:
                data = base64.b64decode(body, validate=True)
            except binascii.Error:
                log.info("WebSocket message with invalid base64 dropped")
                return
        else:
            channel, data = raw[0], raw[1:]
        if self.stream_close and channel == CLOSE_CHANNEL:
            if len(data) == 1:
                self._end(data[0])
            return
        if channel not in self._readable or self._ended[channel] or not data:
            return
        queue = self._inbox[channel]
        queue.put_nowait(data)
        if queue.qsize() >= _BACKLOG:
            self._room.clear()
            await self._room.wait()  # a slow reader slows the socket: back-pressure

    async def serve(self) -> None:
        """Read messages until the client closes the socket."""
        try:
            while True:
                message = await self._ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                raw = message.get("bytes")
                if raw is None:
                    raw = (message.get("text") or "").encode()
                await self._message(raw)
        except (ConnectionError, OSError, RuntimeError) as err:
            log.debug("WebSocket ended: %s", err)
        finally:
            self.closed.set()
            self._room.set()
            for channel in range(len(self._inbox)):
                self._end(channel)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame and hang up."""
        async with self._write_lock:
            if self._close_sent or self.closed.is_set():
                return
            self._close_sent = True
            try:
                await self._ws.close(code, reason)
            except (RuntimeError, OSError):  # the peer may already be gone
                pass
