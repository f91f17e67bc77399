"""The kubelet HTTPS listener: certificates, connections, and their requests.

One listener serves every node of the facade (they share its address and port). It starts
once a serving certificate is there (files, or an approved CSR), and keeps trying to bind when
the port is taken instead of taking the facade down: nodes and pods work without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vmlet_facade.kube import KubeClient
from vmlet_facade.kubeletapi.auth import ApiReviews, Authenticator, Authorizer, Reviews
from vmlet_facade.kubeletapi.certs import CsrCertificates, FileCertificates, ServingNames
from vmlet_facade.kubeletapi.directory import Directory, NodeIndex, PodIndex
from vmlet_facade.kubeletapi.httpserver import HttpConnection
from vmlet_facade.kubeletapi.listener import listen
from vmlet_facade.kubeletapi.routes import Router
from vmlet_facade.kubeletapi.tls import ClientCertVerifier, ServerTls

__all__ = ["KubeletApi", "KubeletApiConfig"]

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 10.0
IDLE_TIMEOUT = 300.0  # a connection with no request for this long is closed


@dataclass(frozen=True)
class KubeletApiConfig:
    """How the kubelet API is served (port 0: not at all)."""

    port: int = 10250
    address: str = "0.0.0.0"
    netns: str | None = None
    node_ip: str | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    client_ca_file: Path | None = None
    cert_dir: Path | None = None


class KubeletApi:
    """Serves the kubelet API of the facade's nodes until cancelled."""

    def __init__(self, config: KubeletApiConfig, client: KubeClient, pods: PodIndex,
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
        self.router = Router(self.directory, Authenticator(reviews, verifier),
                             Authorizer(reviews), secrets=client)
        self._client = client
        self._connections: set[asyncio.Task[None]] = set()
        self.port = 0  # the bound port, once listening
        self.listening = asyncio.Event()

    def serving_names(self) -> ServingNames | None:
        """The SANs the serving certificate needs; None until the nodes are known."""
        names = self.directory.node_names()
        if not names:
            return None
        dns, ips = self.directory.addresses()
        if self.config.node_ip and self.config.node_ip not in ips:
            ips.append(self.config.node_ip)
        return ServingNames(node=names[0], dns_names=tuple(dns), ips=tuple(sorted(ips)))

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
            server = await asyncio.start_server(self._accept, sock=sock)
            self.port = sock.getsockname()[1]
            log.info("kubelet API listening on %s:%d", config.address, self.port)
            self.listening.set()
            async with server:
                await asyncio.gather(server.serve_forever(), certs)
        finally:
            certs.cancel()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(certs, *self._connections, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            # Shutting down. Ending quietly: asyncio's stream callback logs a cancelled handler
            # task as an error.
            pass
        finally:
            self._connections.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stream = self.tls.wrap(reader, writer)
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                await stream.handshake()
        except (ConnectionError, OSError, TimeoutError) as err:
            log.debug("TLS handshake with %s failed: %s", writer.get_extra_info("peername"),
                      err)
            await stream.close()
            return
        http = HttpConnection(stream)
        peer = stream.peer_certificate()
        try:
            while True:
                async with asyncio.timeout(IDLE_TIMEOUT):
                    request = await http.next_request()
                if request is None:
                    break
                await self.router.handle(http, request, peer)
                if not http.reusable:
                    break
        except (ConnectionError, OSError, TimeoutError) as err:
            log.debug("kubelet API connection ended: %s", err)
        except Exception:
            log.exception("kubelet API connection failed")
        finally:
            with contextlib.suppress(ConnectionError, OSError):
                await http.close()
