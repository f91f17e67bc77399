"""Kubernetes' channel protocols over WebSocket, as the kubelet serves them.

``channel.k8s.io`` (and ``v4.``/``v5.``) prefix every binary message with one byte, the
channel: 0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize for exec and attach; 2n data and 2n+1
error for the n-th port of a port-forward. ``base64.channel.k8s.io`` sends text messages with
the channel as an ASCII digit and base64 data. v5 adds the CLOSE signal: a message on channel
255 whose byte names the channel the client closed (stdin's end).

wsproto does the WebSocket framing; this module does the handshake answer and the channels.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging

from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Event, Ping, TextMessage
from wsproto.utilities import generate_accept_token

from vmlet_facade.kubeletapi.httpserver import Request
from vmlet_facade.kubeletapi.transport import ByteStream

__all__ = ["CLOSE_CHANNEL", "ChannelSocket", "handshake_headers", "is_websocket", "negotiate"]

log = logging.getLogger(__name__)

CLOSE_CHANNEL = 255
_MAX_MESSAGE = 16 << 20
_BACKLOG = 64


def is_websocket(request: Request) -> bool:
    return request.upgrade == "websocket"


def negotiate(request: Request, supported: tuple[str, ...]) -> str | None:
    """The first protocol the client asks for that we support ("" when it asks for none)."""
    wanted = request.headers.get_all("sec-websocket-protocol") or [""]
    for protocol in wanted:
        if protocol in supported:
            return protocol
    return None


def handshake_headers(request: Request, protocol: str) -> list[tuple[str, str]]:
    """The headers of the 101 answer to ``request``."""
    key = request.headers.get("sec-websocket-key")
    if not key:
        raise ValueError("Sec-WebSocket-Key is missing")
    headers = [("Upgrade", "websocket"), ("Connection", "Upgrade"),
               ("Sec-WebSocket-Accept", generate_accept_token(key.encode()).decode())]
    if protocol:
        headers.append(("Sec-WebSocket-Protocol", protocol))
    return headers


class ChannelSocket:
    """A server WebSocket speaking one of the channel protocols."""

    def __init__(self, stream: ByteStream, protocol: str, channels: int,
                 readable: set[int]) -> None:
        self.protocol = protocol
        self.base64 = "base64." in protocol
        self.stream_close = protocol.startswith("v5.")
        self._io = stream
        self._ws = Connection(ConnectionType.SERVER)
        self._inbox: list[asyncio.Queue[bytes | None]] = [asyncio.Queue()
                                                          for _ in range(channels)]
        self._readable = readable  # what the client sends on other channels is dropped
        self._room = asyncio.Event()
        self._room.set()
        self._ended = [False] * channels
        self._write_lock = asyncio.Lock()
        self._partial = bytearray()
        self._close_sent = False
        self.closed = asyncio.Event()  # the client is gone or closed the socket

    async def _send(self, event: Event) -> None:
        async with self._write_lock:
            if self._close_sent or (self.closed.is_set() and not isinstance(event,
                                                                            CloseConnection)):
                raise ConnectionError("WebSocket is closed")
            data = self._ws.send(event)
            if isinstance(event, CloseConnection):
                self._close_sent = True
            await self._io.write(data)

    async def send(self, channel: int, data: bytes) -> None:
        """Send ``data`` on ``channel`` (an empty message is allowed: it opens the channel)."""
        if self.base64:
            await self._send(TextMessage(data=chr(ord("0") + channel)
                                         + base64.b64encode(data).decode()))
        else:
            await self._send(BytesMessage(data=bytes([channel]) + data))

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
        # Text and binary frames alike: the protocol, not the frame type, says how to read them
        # (clients send raw channel data in text frames too).
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
                chunk = await self._io.read()
                self._ws.receive_data(chunk or None)
                for event in self._ws.events():
                    if isinstance(event, (BytesMessage, TextMessage)):
                        self._partial += (event.data if isinstance(event, BytesMessage)
                                          else event.data.encode())
                        if len(self._partial) > _MAX_MESSAGE:
                            raise ValueError("WebSocket message too large")
                        if event.message_finished:
                            whole = bytes(self._partial)
                            self._partial.clear()
                            await self._message(whole)
                    elif isinstance(event, Ping):
                        await self._send(event.response())
                    elif isinstance(event, CloseConnection):
                        try:
                            await self._send(event.response())
                        except Exception:  # the peer may already be gone
                            pass
                        return
                if not chunk:
                    return
        except (ConnectionError, OSError, ValueError) as err:
            log.debug("WebSocket ended: %s", err)
        except Exception as err:  # wsproto's LocalProtocolError / RemoteProtocolError
            log.info("WebSocket protocol error: %s", err)
        finally:
            self.closed.set()
            self._room.set()
            for channel in range(len(self._inbox)):
                self._end(channel)

    async def close(self, code: int = 1000, reason: str = "", linger: float = 2.0) -> None:
        """Send a close frame, give the client ``linger`` seconds to answer, then hang up."""
        if not self._close_sent and not self.closed.is_set():
            try:
                await self._send(CloseConnection(code=code, reason=reason))
            except Exception:  # the peer may already be gone
                pass
        try:
            await asyncio.wait_for(self.closed.wait(), linger)
        except TimeoutError:
            pass
        await self._io.close()
