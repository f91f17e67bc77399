"""The byte stream the SPDY code speaks over, whatever carries it.

`spdy.SpdySession` only knows `ByteStream`: the connection a SPDY/3.1 upgrade switched
(`h11protocol.UpgradedStream`) implements it, and so do tests with in-memory pipes.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["ByteStream"]


class ByteStream(Protocol):
    """A full-duplex byte stream; ``read`` returns b"" once the peer is gone."""

    async def read(self, max_bytes: int = 65536) -> bytes: ...

    async def write(self, data: bytes) -> None: ...

    async def close(self) -> None: ...
