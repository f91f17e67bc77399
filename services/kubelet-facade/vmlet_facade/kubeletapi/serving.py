"""One handshaken kubelet API connection served by uvicorn, under the connection's deadlines.

The listener (`server`) accepts, admits and handshakes; from there uvicorn's protocol (ours,
`h11protocol`) runs the ASGI app over the TLS connection (`tlstransport`). What uvicorn has no
notion of stays here: a connection not yet authorized must deliver each whole request within
``first_request_timeout`` (after the handshake and after each answer), an authorized one may wait
``idle_timeout`` for its next; a request being answered (a followed log, exec, attach,
port-forward) has no deadline. A stranger that times out is dropped at once, an authorized
connection is closed cleanly.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from vmlet_facade.kubeletapi import metrics
from vmlet_facade.kubeletapi.admission import ConnectionLimits, Slot
from vmlet_facade.kubeletapi.h11protocol import Connection, KubeletH11Protocol
from vmlet_facade.kubeletapi.tls import TlsStream
from vmlet_facade.kubeletapi.tlstransport import TlsTransport

__all__ = ["UvicornServing"]


class UvicornServing:
    """uvicorn's configuration for the app, and the serving of single connections."""

    def __init__(self, app: Any, limits: ConnectionLimits) -> None:
        self.limits = limits
        # The keep-alive deadline is ours (see the module docstring): uvicorn's never fires first.
        self.config = uvicorn.Config(
            app, http=KubeletH11Protocol, ws="wsproto", lifespan="off", access_log=False,
            log_config=None, proxy_headers=False, server_header=False, date_header=False,
            timeout_keep_alive=int(max(limits.idle_timeout, limits.first_request_timeout)) * 10,
            h11_max_incomplete_event_size=limits.max_header_bytes, ws_max_size=16 << 20,
            ws_ping_interval=None, ws_ping_timeout=None)
        self.config.load()
        self.state = ServerState()

    async def serve(self, conn: socket.socket, stream: TlsStream, slot: Slot,
                    local: str | None) -> bool:
        """Serve ``stream`` until it ends; whether it ended cleanly."""
        connection = Connection(peer=stream.peer_certificate(), local=local,
                                authorize=slot.authorize)
        protocol = KubeletH11Protocol(self.config, self.state, {"kubelet": connection})
        transport = TlsTransport(stream, protocol, extra={
            "peername": _address(conn.getpeername), "sockname": _address(conn.getsockname),
            "sslcontext": True})
        protocol.connection_made(transport)
        graceful = True
        try:
            graceful = await self._supervise(protocol, transport, slot)
        except asyncio.CancelledError:
            graceful = False
            raise
        finally:
            if not graceful:
                transport.abort()
            await asyncio.shield(transport.finish(graceful=graceful))
        return graceful

    async def _supervise(self, protocol: KubeletH11Protocol, transport: TlsTransport,
                         slot: Slot) -> bool:
        loop = asyncio.get_running_loop()
        done = asyncio.ensure_future(transport.done.wait())
        try:
            while not transport.done.is_set():
                protocol.changed.clear()
                if not protocol.waiting:
                    changed = asyncio.ensure_future(protocol.changed.wait())
                    await asyncio.wait({changed, done}, return_when=asyncio.FIRST_COMPLETED)
                    changed.cancel()
                    continue
                authorized, answered = slot.authorized, protocol.answered
                deadline = loop.time() + (self.limits.idle_timeout if authorized
                                          else self.limits.first_request_timeout)
                while protocol.waiting and protocol.answered == answered \
                        and not transport.done.is_set():
                    protocol.changed.clear()
                    remaining = deadline - loop.time()
                    changed = asyncio.ensure_future(protocol.changed.wait())
                    finished, _ = await asyncio.wait({changed, done}, timeout=max(remaining, 0),
                                                     return_when=asyncio.FIRST_COMPLETED)
                    changed.cancel()
                    if not finished:
                        metrics.CONNECTIONS_CLOSED.labels(
                            "idle_timeout" if authorized else "request_timeout").inc()
                        if authorized:
                            transport.close()
                        return authorized
            return True
        finally:
            done.cancel()


def _address(get: Any) -> Any:
    try:
        return get()
    except OSError:
        return None
