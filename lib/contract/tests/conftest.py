"""Fixtures for the scaffold's tests: a toy provider served on loopback, and test certificates."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from prometheus_client import CollectorRegistry

from vmlet.provider.v1 import (
    node_pb2,
    node_provider_service_pb2,
    node_provider_service_pb2_grpc,
    pod_lifecycle_service_pb2_grpc,
    pod_notifier_service_pb2_grpc,
)
from vmlet_contract import ProviderServer, ProviderServicers


class ToyNodes(node_provider_service_pb2_grpc.NodeProviderServiceServicer):
    """A node provider whose ListNodes raises `error` when set, and whose node stream sends one
    node, then raises `stream_error` or waits for `release` to be set."""

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self.stream_error: BaseException | None = None
        self.abort_with: grpc.StatusCode | None = None
        self.release: Any = None

    async def ListNodes(
        self, request: node_provider_service_pb2.ListNodesRequest, context: Any
    ) -> node_provider_service_pb2.ListNodesResponse:
        if self.abort_with is not None:
            await context.abort(self.abort_with, "aborted by the servicer")
        if self.error is not None:
            raise self.error
        return node_provider_service_pb2.ListNodesResponse(nodes=[node_pb2.Node(name="toy-0")])

    async def Ping(
        self, request: node_provider_service_pb2.PingRequest, context: Any
    ) -> node_provider_service_pb2.PingResponse:
        return node_provider_service_pb2.PingResponse(provider="toy", version="1")

    async def NotifyNodeStatus(
        self, request: node_provider_service_pb2.NotifyNodeStatusRequest, context: Any
    ) -> AsyncIterator[node_provider_service_pb2.NotifyNodeStatusResponse]:
        yield node_provider_service_pb2.NotifyNodeStatusResponse(node=node_pb2.Node(name="toy-0"))
        if self.stream_error is not None:
            raise self.stream_error
        if self.release is not None:
            await self.release.wait()


def toy_servicers(
    nodes: ToyNodes, hooks: tuple[Callable[[], Awaitable[None]], ...] = ()
) -> ProviderServicers:
    """Servicers with the toy node provider; lifecycle and notifier are the unimplemented bases."""
    return ProviderServicers(
        # The generated bases answer UNIMPLEMENTED; typed as abstract, they are fine to serve.
        lifecycle=cast(Any, pod_lifecycle_service_pb2_grpc.PodLifecycleServiceServicer)(),
        notifier=cast(Any, pod_notifier_service_pb2_grpc.PodNotifierServiceServicer)(),
        nodes=nodes,
        shutdown_hooks=hooks,
    )


@pytest.fixture
def toy() -> ToyNodes:
    return ToyNodes()


ServicersFactory = Callable[..., ProviderServicers]


@pytest.fixture
def make_servicers() -> ServicersFactory:
    """`toy_servicers`, for tests that build servers of their own."""
    return toy_servicers


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
async def toy_server(toy: ToyNodes, registry: CollectorRegistry) -> AsyncIterator[ProviderServer]:
    server = ProviderServer(
        toy_servicers(toy), address="127.0.0.1:0", provider="toy", registry=registry
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop(0)


@pytest.fixture
async def channel(toy_server: ProviderServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{toy_server.port}") as ch:
        yield ch


@dataclass(frozen=True)
class Pki:
    """PEM files of a test CA, a server certificate for 127.0.0.1/localhost, a client
    certificate naming "facade" and one naming "tenant"; plus a second CA the server does not
    trust, with its own client certificate (naming "facade" too)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path
    rogue_key: Path
    other_cert: Path
    other_key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = issuer if issuer is not None else (name, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return write_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def pki_writer() -> Callable[[Path], Pki]:
    """`write_pki`, for tests that rotate certificates."""
    return write_pki


def write_pki(d: Path) -> Pki:
    """A new `Pki` in `d`; each file is replaced atomically, so a server re-reading them never
    sees half of one (the rotation tests write a second one over the first)."""

    def write(name: str, data: bytes) -> Path:
        (d / f".{name}.tmp").write_bytes(data)
        (d / f".{name}.tmp").replace(d / name)
        return d / name

    ca_key = _key()
    ca = _cert("vmlet test CA", ca_key, None, ca=True)
    server_key, client_key, rogue_ca_key, rogue_key = _key(), _key(), _key(), _key()
    other_key = _key()
    server = _cert("provider", server_key, (ca.subject, ca_key), server=True)
    client = _cert("facade", client_key, (ca.subject, ca_key))
    rogue_ca = _cert("rogue CA", rogue_ca_key, None, ca=True)
    rogue = _cert("facade", rogue_key, (rogue_ca.subject, rogue_ca_key))
    other = _cert("tenant", other_key, (ca.subject, ca_key))
    pem = serialization.Encoding.PEM
    return Pki(
        ca=write("ca.pem", ca.public_bytes(pem)),
        server_cert=write("server.pem", server.public_bytes(pem)),
        server_key=write("server-key.pem", _pem_key(server_key)),
        client_cert=write("client.pem", client.public_bytes(pem)),
        client_key=write("client-key.pem", _pem_key(client_key)),
        rogue_cert=write("rogue.pem", rogue.public_bytes(pem)),
        rogue_key=write("rogue-key.pem", _pem_key(rogue_key)),
        other_cert=write("other.pem", other.public_bytes(pem)),
        other_key=write("other-key.pem", _pem_key(other_key)),
    )
