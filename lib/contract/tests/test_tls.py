"""Mutual TLS on the provider server, with certificates made by the test: who is served, who is
refused and how, certificates rotated under a running server, and the plaintext health port."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import CollectorRegistry

from vmlet.provider.v1 import node_provider_service_pb2 as np
from vmlet.provider.v1 import node_provider_service_pb2_grpc as np_grpc
from vmlet_contract import (
    READINESS_SERVICE,
    ProviderServer,
    Readiness,
    TlsConfig,
    add_server_arguments,
    channel_credentials,
    serve_from_args,
)

pytestmark = pytest.mark.timeout(60)

Pki = Any  # conftest.Pki: ca, server_cert/key, client_cert/key (facade), other_* (tenant), rogue_*

PING = "/vmlet.provider.v1.NodeProviderService/Ping"


async def _ping(port: int, creds: grpc.ChannelCredentials) -> str:
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds) as ch:
        reply = await np_grpc.NodeProviderServiceStub(ch).Ping(np.PingRequest(), timeout=5)
        return str(reply.provider)


async def _refused(port: int, creds: grpc.ChannelCredentials) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _ping(port, creds)
    return info.value


def _client(pki: Pki, cert: Path, key: Path) -> grpc.ChannelCredentials:
    return channel_credentials(ca_file=pki.ca, cert_file=cert, key_file=key)


def _started(registry: CollectorRegistry, method: str) -> float:
    value = registry.get_sample_value(
        "grpc_server_started_total",
        {"grpc_service": "vmlet.provider.v1.NodeProviderService", "grpc_method": method,
         "grpc_type": "unary"},
    )
    return value or 0.0


def _mutual(pki: Pki, identity: str = "facade") -> TlsConfig:
    return TlsConfig(
        str(pki.server_cert), str(pki.server_key), client_ca_file=str(pki.ca),
        client_identity=identity,
    )


async def test_mutual_tls_serves_the_facade_identity_only(
    make_servicers: Any, toy: Any, pki: Pki
) -> None:
    registry = CollectorRegistry()
    async with ProviderServer(
        make_servicers(toy), address="127.0.0.1:0", provider="toy", tls=_mutual(pki),
        registry=registry,
    ) as server:
        assert await _ping(server.port, _client(pki, pki.client_cert, pki.client_key)) == "toy"
        assert _started(registry, "Ping") == 1

        # No client certificate, or one of another CA: the handshake fails.
        for creds in (
            channel_credentials(ca_file=pki.ca),
            _client(pki, pki.rogue_cert, pki.rogue_key),
        ):
            err = await _refused(server.port, creds)
            assert err.code() is grpc.StatusCode.UNAVAILABLE, err

        # Same CA, another identity: refused before anything is served, reflection and health
        # included.
        other = _client(pki, pki.other_cert, pki.other_key)
        err = await _refused(server.port, other)
        assert err.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "serves only facade" in (err.details() or "") and "tenant" in (err.details() or "")
        async with grpc.aio.secure_channel(f"127.0.0.1:{server.port}", other) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as health_info:
                await health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(), timeout=5)
            assert health_info.value.code() is grpc.StatusCode.PERMISSION_DENIED
            with pytest.raises(grpc.aio.AioRpcError) as listing:
                async for _ in reflection_pb2_grpc.ServerReflectionStub(
                    ch
                ).ServerReflectionInfo(
                    iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
                ):
                    pass
            assert listing.value.code() is grpc.StatusCode.PERMISSION_DENIED

        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            with pytest.raises(grpc.aio.AioRpcError) as plain:
                await np_grpc.NodeProviderServiceStub(ch).Ping(np.PingRequest(), timeout=5)
            assert plain.value.code() is grpc.StatusCode.UNAVAILABLE

        # Nothing but the facade's call reached the servicer.
        assert _started(registry, "Ping") == 1


async def test_rotated_certificates_are_reloaded_without_a_restart(
    make_servicers: Any, toy: Any, tmp_path: Path, pki_writer: Callable[[Path], Pki]
) -> None:
    old = pki_writer(tmp_path)
    saved = {p: p.read_bytes() for p in (old.client_cert, old.client_key)}
    old_ca = old.ca.read_bytes()
    old_client = channel_credentials(
        ca_file=old.ca, cert_file=old.client_cert, key_file=old.client_key)
    async with ProviderServer(
        make_servicers(toy), address="127.0.0.1:0", provider="toy", tls=_mutual(old),
        registry=CollectorRegistry(),
    ) as server:
        assert await _ping(server.port, old_client) == "toy"
        async with grpc.aio.secure_channel(f"127.0.0.1:{server.port}", old_client) as kept:
            stub = np_grpc.NodeProviderServiceStub(kept)
            await stub.Ping(np.PingRequest(), timeout=5)

            # A new CA, a new serving pair and a new client pair, written over the old files.
            new = pki_writer(tmp_path)
            assert new.ca.read_bytes() != old_ca
            new_client = channel_credentials(
                ca_file=new.ca, cert_file=new.client_cert, key_file=new.client_key)
            assert await _ping(server.port, new_client) == "toy"

            # The old CA is no longer trusted for new connections (its client pair, kept aside,
            # is refused in the handshake; so is the old server certificate by a new client)...
            (tmp_path / "old").mkdir()
            for path, data in saved.items():
                (tmp_path / "old" / path.name).write_bytes(data)
            stale = channel_credentials(
                ca_file=new.ca, cert_file=tmp_path / "old" / old.client_cert.name,
                key_file=tmp_path / "old" / old.client_key.name)
            assert (await _refused(server.port, stale)).code() is grpc.StatusCode.UNAVAILABLE

            # ...while a connection made before the rotation keeps its session.
            assert (await stub.Ping(np.PingRequest(), timeout=5)).provider == "toy"


async def test_unreadable_rotation_keeps_serving_with_the_current_files(
    make_servicers: Any, toy: Any, tmp_path: Path, pki_writer: Callable[[Path], Pki]
) -> None:
    pki = pki_writer(tmp_path)
    async with ProviderServer(
        make_servicers(toy), address="127.0.0.1:0", provider="toy", tls=_mutual(pki),
        registry=CollectorRegistry(),
    ) as server:
        pki.server_key.unlink()  # a rotation caught half-way
        assert await _ping(server.port, _client(pki, pki.client_cert, pki.client_key)) == "toy"


async def test_health_port_is_plaintext_and_serves_health_only(
    make_servicers: Any, toy: Any, pki: Pki
) -> None:
    readiness = Readiness(True, "answers")
    async with ProviderServer(
        dataclasses.replace(make_servicers(toy), readiness=readiness), address="127.0.0.1:0",
        provider="toy", tls=_mutual(pki), registry=CollectorRegistry(),
        health_address="127.0.0.1:0",
    ) as server:
        assert server.health_port and server.health_port != server.port
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.health_port}") as ch:
            reply = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await np_grpc.NodeProviderServiceStub(ch).Ping(np.PingRequest(), timeout=5)
            assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED
            # Readiness, on the same port with the same statuses as the mutual TLS one.
            readiness.set(False, "the IaaS went away")
            request = health_pb2.HealthCheckRequest(service=READINESS_SERVICE)
            for _ in range(100):
                reply = await health_pb2_grpc.HealthStub(ch).Check(request, timeout=5)
                if reply.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    break
                await asyncio.sleep(0.02)
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
            reply = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_server_only_tls(make_servicers: Any, toy: Any, pki: Pki) -> None:
    tls = TlsConfig(str(pki.server_cert), str(pki.server_key))
    assert not tls.mutual
    async with ProviderServer(
        make_servicers(toy),
        address="127.0.0.1:0",
        provider="toy",
        tls=tls,
        registry=CollectorRegistry(),
    ) as server:
        assert await _ping(server.port, channel_credentials(ca_file=str(pki.ca))) == "toy"


def test_an_identity_needs_a_client_ca(pki: Pki) -> None:
    with pytest.raises(ValueError):
        TlsConfig(str(pki.server_cert), str(pki.server_key),
                  client_identity="facade").server_credentials()


def test_client_credentials_need_cert_and_key_together(pki: Pki) -> None:
    with pytest.raises(ValueError):
        channel_credentials(ca_file=str(pki.ca), cert_file=str(pki.client_cert))


async def test_plaintext_flag_warns_at_start(
    make_servicers: Any, toy: Any, caplog: pytest.LogCaptureFixture
) -> None:
    parser = argparse.ArgumentParser()
    add_server_arguments(parser)
    args = parser.parse_args(["--listen", "127.0.0.1:0", "--insecure-plaintext"])
    ready = asyncio.Event()
    with caplog.at_level(logging.WARNING, logger="vmlet_contract"):
        task = asyncio.create_task(
            serve_from_args(args, make_servicers(toy), provider="toy", ready=ready))
        await asyncio.wait_for(ready.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("PLAINTEXT" in r.getMessage() for r in warnings), caplog.text
