"""An asyncio Transport over a `TlsStream`, so uvicorn's protocols run on our TLS.

uvicorn takes an ``ssl.SSLContext``, and the standard library cannot ask for a client
certificate without verifying it in the handshake (see `tls`): a kubelet lets any certificate
through and answers 401 afterwards. So the TLS stays pyOpenSSL's over memory BIOs, and this
transport hands its plaintext to a protocol (uvicorn's `H11Protocol`, then whatever it switches
to) the way asyncio's own SSL transport would: ``data_received`` as bytes arrive, reading paused
and resumed on demand, writes encrypted and handed to the socket at once (a writer task costs a
third of the throughput), ``pause_writing`` while the socket has too much unsent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from vmlet_facade.kubeletapi.tls import PeerCertificate, TlsStream

__all__ = ["TlsTransport"]

log = logging.getLogger(__name__)

_HIGH_WATER = 256 * 1024  # bytes the socket has not sent yet before the protocol is paused


class TlsTransport(asyncio.Transport):
    """Plaintext side of one TLS connection, driving ``protocol`` until it closes."""

    def __init__(self, stream: TlsStream, protocol: asyncio.Protocol, *,
                 extra: dict[str, Any]) -> None:
        super().__init__(extra)
        self._stream = stream
        self._protocol = protocol
        self._readable = asyncio.Event()
        self._readable.set()
        self._closing = False
        self._aborted = False
        self._paused_writing = False
        self._draining: asyncio.Task[None] | None = None
        self._close_requested = asyncio.Event()
        self.done = asyncio.Event()  # the connection is over (closed or lost)
        self._reader = asyncio.create_task(self._read_loop(), name="kubelet-tls-read")
        self._closer = asyncio.create_task(self._close_when_asked(), name="kubelet-tls-close")

    @property
    def peer(self) -> PeerCertificate | None:
        return self._stream.peer_certificate()

    # -- asyncio.Transport -------------------------------------------------------------------

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.Protocol)
        self._protocol = protocol

    def is_reading(self) -> bool:
        return self._readable.is_set()

    def pause_reading(self) -> None:
        self._readable.clear()

    def resume_reading(self) -> None:
        self._readable.set()

    def is_closing(self) -> bool:
        return self._closing

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt and send at once; past ``_HIGH_WATER`` unsent, the protocol is paused
        until the socket has drained."""
        if self._closing or not data:
            return
        try:
            unsent = self._stream.write_nowait(bytes(data))
        except (ConnectionError, OSError) as err:
            log.debug("kubelet API write failed: %s", err)
            self.abort()
            return
        if unsent > _HIGH_WATER and not self._paused_writing:
            self._paused_writing = True
            self._protocol.pause_writing()
            self._draining = asyncio.create_task(self._drain(), name="kubelet-tls-drain")

    async def _drain(self) -> None:
        try:
            await self._stream.drain()
        except (ConnectionError, OSError):
            self.abort()
        finally:
            if self._paused_writing:
                self._paused_writing = False
                with contextlib.suppress(Exception):
                    self._protocol.resume_writing()

    def get_write_buffer_size(self) -> int:
        return 0

    def can_write_eof(self) -> bool:
        return False

    def close(self) -> None:
        """Let what was written drain, then end the connection."""
        if not self._closing:
            self._closing = True
            self._close_requested.set()

    def abort(self) -> None:
        """Drop the connection at once."""
        self._closing = self._aborted = True
        self._close_requested.set()
        self._reader.cancel()

    # -- pumps -------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        error: Exception | None = None
        try:
            while not self._closing:
                await self._readable.wait()
                data = await self._stream.read()
                if not data:
                    break
                self._protocol.data_received(data)
        except (ConnectionError, OSError) as err:
            error = err
        except asyncio.CancelledError:
            pass
        except Exception as err:  # the protocol failed on what it read: drop the connection
            log.exception("kubelet API protocol failed")
            error = err
            self.abort()
        if not self._closing:
            with contextlib.suppress(Exception):
                self._protocol.eof_received()
            self._closing = True
            self._close_requested.set()
        self._lost(error)

    async def _close_when_asked(self) -> None:
        await self._close_requested.wait()
        if not self._aborted:
            with contextlib.suppress(ConnectionError, OSError):
                await self._stream.drain()
        self._reader.cancel()
        self._lost(None)

    def _lost(self, error: Exception | None) -> None:
        if self.done.is_set():
            return
        self.done.set()
        if self._paused_writing:
            self._paused_writing = False
            with contextlib.suppress(Exception):
                self._protocol.resume_writing()
        try:
            self._protocol.connection_lost(error)
        except Exception:
            log.exception("kubelet API protocol failed on connection loss")

    async def finish(self, *, graceful: bool) -> None:
        """Wait for the pumps; close TLS cleanly (close_notify) or drop the socket."""
        self.close()
        await asyncio.gather(self._reader, self._closer, return_exceptions=True)
        if self._draining is not None:
            self._draining.cancel()
        if graceful and not self._aborted:
            with contextlib.suppress(ConnectionError, OSError):
                await self._stream.close()
        else:
            self._stream.abort()
