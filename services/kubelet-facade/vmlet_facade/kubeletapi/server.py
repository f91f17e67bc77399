"""The kubelet HTTPS listener: certificates, connections, and their requests.

One listener serves every node of the facade: on one address they share (--node-ip), or on
all the addresses of a pool (--node-ip-pool), each node's own, where the router tells the node
by the local address a connection arrived on. It starts once a serving certificate is there
(files, or an approved CSR, whose SANs are every node's name and address), and keeps trying to
bind when the port is taken instead of taking the facade down: nodes and pods work without it.

What a peer may cost before it is authorized is bounded (`admission`): the accept loop refuses
connections over the caps before anything is made for them, a connection holds no TLS state
until its peer sends something, and each phase has its deadline: the handshake, every request
of a connection not yet authorized, and the keep-alive wait of an authorized one. Requests in
progress (followed logs, exec, attach, port-forward) have none. The accept loop, admission and
TLS are ours (see docs/architecture.md, "The kubelet API's HTTP server"); from the handshake on a
connection is uvicorn's, running the FastAPI app of `app` (`serving`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vmlet_facade.kube import KubeClient
from vmlet_facade.kubeletapi import metrics
from vmlet_facade.kubeletapi.addressing import local_address
from vmlet_facade.kubeletapi.admission import Admission, ConnectionLimits, Slot, Stage
from vmlet_facade.kubeletapi.app import kubelet_app
from vmlet_facade.kubeletapi.auth import ApiReviews, Authenticator, Authorizer, Reviews
from vmlet_facade.kubeletapi.certs import CsrCertificates, FileCertificates, ServingNames
from vmlet_facade.kubeletapi.directory import Directory, NodeIndex, PodDirectory
from vmlet_facade.kubeletapi.listener import listen, raise_nofile
from vmlet_facade.kubeletapi.serving import UvicornServing
from vmlet_facade.kubeletapi.tls import ClientCertVerifier, ServerTls, TlsStream

__all__ = ["KubeletApi", "KubeletApiConfig"]

log = logging.getLogger(__name__)

_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST, leaves no TIME_WAIT
_ACCEPT_RETRY = 0.5  # seconds to wait when accept(2) fails for want of descriptors or memory
_ACCEPT_BATCH = 64  # connections accepted without yielding to the rest of the loop


@dataclass(frozen=True)
class KubeletApiConfig:
    """How the kubelet API is served (port 0: not at all)."""

    port: int = 10250
    address: str = "0.0.0.0"
    netns: str | None = None
    node_ip: str | None = None
    node_ip_pool: str | None = None  # a network: each node advertises an address of its own
    cert_file: Path | None = None
    key_file: Path | None = None
    client_ca_file: Path | None = None
    cert_dir: Path | None = None
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)


class KubeletApi:
    """Serves the kubelet API of the facade's nodes until cancelled."""

    def __init__(self, config: KubeletApiConfig, client: KubeClient, pods: PodDirectory,
                 nodes: Sequence[NodeIndex], *, reviews: Reviews | None = None) -> None:
        self.config = config
        self.tls = ServerTls()
        self.directory = Directory(pods, nodes)
        reviews = reviews or ApiReviews(client)
        # Without --client-ca-file, client certificates of the cluster's CA are accepted (where
        # kubeadm-style clusters sign the apiserver's kubelet client certificate).
        ca = config.client_ca_file
        if ca is None and client is not None and client.config.ca_file:
            ca = Path(client.config.ca_file)
            log.info("kubelet API accepts client certificates of the cluster CA %s", ca)
        verifier = ClientCertVerifier(ca) if ca else None
        app = kubelet_app(self.directory, Authenticator(reviews, verifier), Authorizer(reviews),
                          secrets=client)
        self.serving = UvicornServing(app, config.limits)
        self._client = client
        self.admission = Admission(config.limits)
        self._connections: set[asyncio.Task[None]] = set()
        self.port = 0  # the bound port, once listening
        self.listening = asyncio.Event()

    def serving_names(self) -> ServingNames | None:
        """The SANs the serving certificate needs; None until the nodes are known."""
        names = self.directory.serving_node_names()
        if not names:
            return None
        _dns, ips = self.directory.addresses()
        # The hypervisor hosts' names are not the facade's: the node names only. A pool's
        # fallback is named only while some node advertises it (an approver checks that).
        if self.config.node_ip and not self.config.node_ip_pool \
                and self.config.node_ip not in ips:
            ips.append(self.config.node_ip)
        return ServingNames(node=names[0], dns_names=tuple(names), ips=tuple(sorted(ips)))

    async def run(self) -> None:
        config = self.config
        if config.cert_file and config.key_file:
            source = FileCertificates(config.cert_file, config.key_file, self.tls)
            certs = asyncio.create_task(source.run(), name="kubelet-certs")
        else:
            csr = CsrCertificates(self._client, self.tls, self.serving_names,
                                  cert_dir=config.cert_dir)
            certs = asyncio.create_task(csr.run(), name="kubelet-certs")
        try:
            await self.tls.installed.wait()
            sock = None
            while sock is None:
                try:
                    sock = listen(config.address, config.port, config.netns)
                except OSError as err:
                    log.error("kubelet API cannot listen on %s:%d%s: %s; retrying",
                              config.address, config.port,
                              f" in netns {config.netns}" if config.netns else "", err)
                    await asyncio.sleep(10)
            raise_nofile(config.limits.max_connections)
            self.port = sock.getsockname()[1]
            log.info("kubelet API listening on %s:%d", config.address, self.port)
            self.listening.set()
            with sock:
                await asyncio.gather(self._accept_loop(sock), certs)
        finally:
            certs.cancel()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(certs, *self._connections, return_exceptions=True)
            answering = list(self.serving.state.tasks)  # requests in progress (streams) end too
            for task in answering:
                task.cancel()
            await asyncio.gather(*answering, return_exceptions=True)

    async def _accept_loop(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        warned = 0.0
        while True:
            try:
                self._admit(*await loop.sock_accept(sock))
                # Drain what else the backlog holds, a batch at a time: refusing is cheap, and
                # a full backlog would make the kernel drop everyone's SYNs, the apiserver's too.
                for _ in range(_ACCEPT_BATCH):
                    self._admit(*sock.accept())
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                pass
            except OSError as err:  # EMFILE, ENFILE, ENOBUFS, ENOMEM: open ones keep working
                if time.monotonic() - warned > 10:
                    warned = time.monotonic()
                    log.warning("kubelet API cannot accept connections: %s; retrying", err)
                await asyncio.sleep(_ACCEPT_RETRY)
                continue
            # Let the connections just admitted notice their first bytes (a stranger that
            # has sent something is evicted after the silent ones).
            await asyncio.sleep(0)

    def _admit(self, conn: socket.socket, address: object) -> None:
        conn.setblocking(False)
        # As Go does: asyncio sets TCP_NODELAY only on sockets made with IPPROTO_TCP, and with
        # Nagle's algorithm a streamed response's small records wait for the peer's delayed ACK
        # (40 ms each time on Linux).
        with contextlib.suppress(OSError):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = address[0] if isinstance(address, tuple) else str(address)
        slot = self.admission.admit(client)
        if slot is None:
            _refuse(conn)
            return
        task = asyncio.create_task(self._connection(conn, slot))
        slot.closer = task.cancel
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def _connection(self, conn: socket.socket, slot: Slot) -> None:
        """Serve one accepted connection until it ends, is evicted or the server stops."""
        writer: asyncio.StreamWriter | None = None
        stream: TlsStream | None = None
        graceful = False
        try:
            limits = self.config.limits
            try:
                async with asyncio.timeout(limits.handshake_timeout):
                    await _readable(conn)  # no TLS state for a peer that sends nothing
                    slot.advance(Stage.HANDSHAKE)
                    reader, writer = await _streams(conn)
                    stream = self.tls.wrap(reader, writer)
                    await stream.handshake()
                    slot.advance(Stage.HANDSHAKEN)
            except TimeoutError:
                metrics.CONNECTIONS_CLOSED.labels("handshake_timeout").inc()
                return
            except (ConnectionError, OSError) as err:
                log.debug("TLS handshake with %s failed: %s", slot.address, err)
                return
            graceful = await self.serving.serve(conn, stream, slot, _local_address(conn))
        except asyncio.CancelledError:
            # Evicted, or shutting down. Ending quietly: the task is ours and nobody awaits it.
            pass
        except Exception:
            log.exception("kubelet API connection failed")
        finally:
            slot.release()
            if graceful and stream is not None:
                with contextlib.suppress(ConnectionError, OSError):
                    await stream.close()
            elif writer is not None:
                writer.transport.abort()
            else:
                _refuse(conn)


def _local_address(conn: socket.socket) -> str | None:
    """The address ``conn`` arrived at (which node it dialed, when each has its own)."""
    try:
        return local_address(str(conn.getsockname()[0]))
    except (OSError, IndexError):
        return None


async def _readable(sock: socket.socket) -> None:
    """Return once ``sock`` has something to read (data, or the peer's close)."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


async def _streams(sock: socket.socket) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """An asyncio stream pair over an accepted socket, as `asyncio.start_server` makes."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock=sock)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


def _refuse(conn: socket.socket) -> None:
    """Close an accepted socket at once, with a reset."""
    with contextlib.suppress(OSError):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
    conn.close()
