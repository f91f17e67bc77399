"""SPDY/3.1 as the kubelet speaks it (the server side of Go's moby/spdystream).

No maintained SPDY library exists on PyPI, so the framing is here: control frames (SYN_STREAM,
SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE) and data frames, with
header blocks in one zlib stream per direction primed with the SPDY/3 dictionary.

What kubectl, client-go and the apiserver need, and no more:
- The client opens every stream (odd ids); each is answered with SYN_REPLY at once, or refused
  with RST_STREAM when ``accept`` says no (for instance a port-forward stream without a port).
- Data is relayed as it comes; a FIN is the peer closing its side (stdin's end for exec).
- PINGs from the client are echoed (the apiserver pings every 5 s).
- Flow control is not enforced in either direction, as spdystream does not: it never sends
  WINDOW_UPDATE and ignores the ones it gets. Back-pressure comes from bounded per-stream
  queues and TCP, as with spdystream's blocking channels.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from vmlet_facade.kubeletapi.transport import ByteStream

__all__ = ["DICTIONARY", "SpdySession", "SpdyStream", "decode_headers", "encode_headers"]

log = logging.getLogger(__name__)

_VERSION = 3
SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = (
    1, 2, 3, 4, 6, 7, 8, 9)
FLAG_FIN = 0x01
RST_PROTOCOL_ERROR, RST_INVALID_STREAM, RST_REFUSED_STREAM, RST_CANCEL = 1, 2, 3, 5
_MAX_CHUNK = 32 * 1024
_MAX_FRAME = 1 << 24


def _dictionary() -> bytes:
    """The header-compression dictionary of the SPDY/3 draft (section 2.6.10.1)."""
    words = (
        "options head post put delete trace accept accept-charset accept-encoding "
        "accept-language accept-ranges age allow authorization cache-control connection "
        "content-base content-encoding content-language content-length content-location "
        "content-md5 content-range content-type date etag expect expires from host if-match "
        "if-modified-since if-none-match if-range if-unmodified-since last-modified location "
        "max-forwards pragma proxy-authenticate proxy-authorization range referer retry-after "
        "server te trailer transfer-encoding upgrade user-agent vary via warning "
        "www-authenticate method get status 200_OK version HTTP/1.1 url public set-cookie "
        "keep-alive origin"
    )
    entries = [w.replace("_", " ") for w in words.split()]
    out = b"".join(struct.pack(">I", len(w)) + w.encode() for w in entries)
    return out + (
        b"100101201202205206300302303304305306307402405406407408409410411412413414415416417"
        b"502504505203 Non-Authoritative Information204 No Content301 Moved Permanently"
        b"400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error"
        b"501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct "
        b"Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,"
        b"image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,"
        b"text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8"
        b"charset=iso-8859-1,utf-,*,enq=0."
    )


DICTIONARY = _dictionary()


def encode_headers(headers: dict[str, list[str]]) -> bytes:
    """An uncompressed SPDY/3 name/value block (names lower-case, values NUL-joined)."""
    out = [struct.pack(">I", len(headers))]
    for name, values in headers.items():
        key, value = name.lower().encode(), "\x00".join(values).encode()
        out += [struct.pack(">I", len(key)), key, struct.pack(">I", len(value)), value]
    return b"".join(out)


def decode_headers(block: bytes) -> dict[str, list[str]]:
    """The inverse of `encode_headers`; raises ValueError on a malformed block."""
    try:
        (count,), pos = struct.unpack_from(">I", block), 4
        out: dict[str, list[str]] = {}
        for _ in range(count):
            (size,) = struct.unpack_from(">I", block, pos)
            name = block[pos + 4:pos + 4 + size].decode().lower()
            pos += 4 + size
            (size,) = struct.unpack_from(">I", block, pos)
            value = block[pos + 4:pos + 4 + size].decode()
            pos += 4 + size
            out.setdefault(name, []).extend(value.split("\x00"))
    except (struct.error, UnicodeDecodeError) as err:
        raise ValueError(f"malformed SPDY header block: {err}") from None
    return out


_BACKLOG = 64


@dataclass(eq=False)
class SpdyStream:
    """One stream the client opened."""

    id: int
    headers: dict[str, list[str]]
    _session: SpdySession
    _inbox: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    _room: asyncio.Event = field(default_factory=asyncio.Event)
    remote_closed: bool = False
    local_closed: bool = False

    def __post_init__(self) -> None:
        self._room.set()

    def header(self, name: str) -> str:
        values = self.headers.get(name.lower())
        return values[0] if values else ""

    async def read(self) -> bytes:
        """The next data the client sent; b"" once it closed its side or reset the stream."""
        data = await self._inbox.get()
        if self._inbox.qsize() < _BACKLOG:
            self._room.set()
        if data is None:
            self._inbox.put_nowait(None)  # later reads see the end too
            return b""
        return data

    async def write(self, data: bytes) -> None:
        if self.local_closed:
            raise ConnectionError(f"stream {self.id} is closed")
        for start in range(0, len(data), _MAX_CHUNK):
            await self._session.send_data(self.id, data[start:start + _MAX_CHUNK])

    async def close(self) -> None:
        """Close our side (FIN); what the client still sends is dropped."""
        if not self.local_closed:
            self.local_closed = True
            self._room.set()
            await self._session.send_data(self.id, b"", fin=True)

    async def reset(self, status: int = RST_CANCEL) -> None:
        if not (self.local_closed and self.remote_closed):
            self.local_closed = True
            self._remote_end()
            await self._session.send_rst(self.id, status)

    def _deliver(self, data: bytes) -> asyncio.Event | None:
        """Queue ``data``; the event to wait for when the reader is behind."""
        if self.remote_closed or self.local_closed or not data:
            return None
        self._inbox.put_nowait(data)
        if self._inbox.qsize() >= _BACKLOG:
            self._room.clear()
            return self._room
        return None

    def _remote_end(self) -> None:
        if not self.remote_closed:
            self.remote_closed = True
            self._inbox.put_nowait(None)
        self._room.set()


class SpdySession:
    """The server side of one SPDY/3.1 connection.

    ``serve`` reads frames until the client goes away; streams it accepts come out of
    ``accept_stream``. ``accept`` decides from a new stream's headers whether to take it.
    """

    def __init__(self, stream: ByteStream, *,
                 accept: Callable[[dict[str, list[str]]], bool] = lambda headers: True) -> None:
        self._io = stream
        self._accept = accept
        self._buffer = bytearray()
        self._inflate = zlib.decompressobj(zdict=DICTIONARY)
        self._deflate = zlib.compressobj(zlib.Z_BEST_COMPRESSION, zlib.DEFLATED, 15, 8,
                                         zlib.Z_DEFAULT_STRATEGY, zdict=DICTIONARY)
        self._write_lock = asyncio.Lock()
        self._streams: dict[int, SpdyStream] = {}
        self._new: asyncio.Queue[SpdyStream | None] = asyncio.Queue()
        self._last_id = 0
        self._going_away = False
        self.closed = asyncio.Event()

    def refuse_new_streams(self) -> None:
        """Refuse the streams the client opens from now on (the session has all it needs)."""
        self._accept = lambda headers: False

    # -- writing -----------------------------------------------------------------------------

    async def _write(self, frame: bytes) -> None:
        async with self._write_lock:
            await self._io.write(frame)

    @staticmethod
    def _control(kind: int, flags: int, payload: bytes) -> bytes:
        return struct.pack(">HHI", 0x8000 | _VERSION, kind, (flags << 24) | len(payload)) \
            + payload

    async def send_data(self, stream_id: int, data: bytes, *, fin: bool = False) -> None:
        if self.closed.is_set():
            raise ConnectionError("SPDY connection is closed")
        flags = FLAG_FIN if fin else 0
        await self._write(struct.pack(">II", stream_id & 0x7FFFFFFF, (flags << 24) | len(data))
                          + data)

    async def send_rst(self, stream_id: int, status: int) -> None:
        if not self.closed.is_set():
            await self._write(self._control(RST_STREAM, 0, struct.pack(">II", stream_id,
                                                                         status)))
        self._streams.pop(stream_id, None)

    async def _send_reply(self, stream_id: int) -> None:
        async with self._write_lock:  # compress and send in one order
            block = self._deflate.compress(encode_headers({})) \
                + self._deflate.flush(zlib.Z_SYNC_FLUSH)
            await self._io.write(self._control(SYN_REPLY, 0,
                                               struct.pack(">I", stream_id) + block))

    async def goaway(self) -> None:
        """Tell the client no more streams will be taken."""
        if not self._going_away and not self.closed.is_set():
            self._going_away = True
            try:
                await self._write(self._control(GOAWAY, 0, struct.pack(">II", self._last_id, 0)))
            except (ConnectionError, OSError):
                pass

    # -- reading -----------------------------------------------------------------------------

    async def _read_exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            chunk = await self._io.read(max(65536, size - len(self._buffer)))
            if not chunk:
                raise EOFError
            self._buffer += chunk
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    async def accept_stream(self) -> SpdyStream | None:
        """The next stream the client opened; None once the connection is gone."""
        item = await self._new.get()
        if item is None:
            self._new.put_nowait(None)
        return item

    async def serve(self) -> None:
        """Read frames until the client closes the connection or breaks the protocol."""
        try:
            while True:
                head = await self._read_exactly(8)
                word, flags_length = struct.unpack(">II", head)
                flags, length = flags_length >> 24, flags_length & 0xFFFFFF
                payload = await self._read_exactly(length) if length else b""
                if word & 0x80000000:
                    version, kind = (word >> 16) & 0x7FFF, word & 0xFFFF
                    if version != _VERSION:
                        log.info("SPDY version %d frame refused", version)
                        break
                    await self._control_frame(kind, flags, payload)
                else:
                    await self._data_frame(word & 0x7FFFFFFF, flags, payload)
        except (EOFError, ConnectionError, OSError):
            pass
        except (ValueError, zlib.error, struct.error) as err:
            log.info("SPDY protocol error: %s", err)
        finally:
            self.closed.set()
            for stream in list(self._streams.values()):
                stream._remote_end()
            self._streams.clear()
            self._new.put_nowait(None)

    async def _data_frame(self, stream_id: int, flags: int, payload: bytes) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            return  # reset or finished: dropped, as spdystream does
        room = stream._deliver(payload)
        if room is not None:
            await room.wait()  # a slow reader slows the connection: back-pressure
        if flags & FLAG_FIN:
            stream._remote_end()
            if stream.local_closed:
                self._streams.pop(stream_id, None)

    async def _control_frame(self, kind: int, flags: int, payload: bytes) -> None:
        if kind == SYN_STREAM:
            stream_id = struct.unpack_from(">I", payload)[0] & 0x7FFFFFFF
            headers = decode_headers(self._inflate.decompress(payload[10:]))
            if stream_id % 2 == 0 or stream_id <= self._last_id:
                await self.send_rst(stream_id, RST_PROTOCOL_ERROR)
                return
            self._last_id = stream_id
            if self._going_away or not self._accept(headers):
                await self.send_rst(stream_id, RST_REFUSED_STREAM)
                return
            stream = SpdyStream(stream_id, headers, self)
            self._streams[stream_id] = stream
            await self._send_reply(stream_id)
            if flags & FLAG_FIN:
                stream._remote_end()
            self._new.put_nowait(stream)
        elif kind == RST_STREAM:
            stream_id = struct.unpack_from(">I", payload)[0] & 0x7FFFFFFF
            gone = self._streams.pop(stream_id, None)
            if gone is not None:
                gone.local_closed = True
                gone._remote_end()
        elif kind == PING:
            (ping_id,) = struct.unpack_from(">I", payload)
            if ping_id % 2 == 1:  # the client's: answer it; ours would be even (we send none)
                await self._write(self._control(PING, 0, payload[:4]))
        elif kind == GOAWAY:
            self._going_away = True
        elif kind == HEADERS:
            self._inflate.decompress(payload[4:])  # keeps the zlib stream in step; ignored
        elif kind in (SETTINGS, WINDOW_UPDATE, SYN_REPLY):
            pass  # no flow control (see the module docstring); we open no streams
        else:
            log.debug("SPDY control frame %d ignored", kind)

    async def close(self) -> None:
        """GOAWAY, then close the connection."""
        await self.goaway()
        self.closed.set()
        await self._io.close()
