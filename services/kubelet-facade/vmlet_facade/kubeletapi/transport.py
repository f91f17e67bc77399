"""The byte streams the kubelet API speaks over, whatever carries them.

HTTP, SPDY and WebSocket code here only knows `ByteStream`: TLS connections implement it
(`tls.TlsStream`), and so do tests with in-memory pipes. `Prefixed` puts back bytes that the HTTP
parser read past an upgrade request, so the upgraded protocol sees them first.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["ByteStream", "Prefixed"]


class ByteStream(Protocol):
    """A full-duplex byte stream; ``read`` returns b"" once the peer is gone."""

    async def read(self, max_bytes: int = 65536) -> bytes: ...

    async def write(self, data: bytes) -> None: ...

    async def close(self) -> None: ...


class Prefixed:
    """``stream`` with ``prefix`` read first."""

    def __init__(self, stream: ByteStream, prefix: bytes) -> None:
        self._stream = stream
        self._prefix = prefix

    async def read(self, max_bytes: int = 65536) -> bytes:
        if self._prefix:
            data, self._prefix = self._prefix[:max_bytes], self._prefix[max_bytes:]
            return data
        return await self._stream.read(max_bytes)

    async def write(self, data: bytes) -> None:
        await self._stream.write(data)

    async def close(self) -> None:
        await self._stream.close()
