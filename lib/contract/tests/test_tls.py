"""TLS and mutual TLS on the provider server, with certificates made by the test."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

from vmlet.provider.v1 import node_provider_service_pb2 as np
from vmlet.provider.v1 import node_provider_service_pb2_grpc as np_grpc
from vmlet_contract import ProviderServer, TlsConfig, channel_credentials

pytestmark = pytest.mark.timeout(60)


async def _ping(port: int, creds: grpc.ChannelCredentials) -> str:
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds) as ch:
        reply = await np_grpc.NodeProviderServiceStub(ch).Ping(np.PingRequest(), timeout=5)
        return str(reply.provider)


async def test_mutual_tls_accepts_the_facade_and_refuses_others(
    make_servicers: Any, toy: Any, pki: Any
) -> None:
    tls = TlsConfig(str(pki.server_cert), str(pki.server_key), client_ca_file=str(pki.ca))
    assert tls.mutual
    async with ProviderServer(
        make_servicers(toy),
        address="127.0.0.1:0",
        provider="toy",
        tls=tls,
        registry=CollectorRegistry(),
    ) as server:
        good = channel_credentials(
            ca_file=str(pki.ca), cert_file=str(pki.client_cert), key_file=str(pki.client_key)
        )
        assert await _ping(server.port, good) == "toy"

        without_cert = channel_credentials(ca_file=str(pki.ca))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _ping(server.port, without_cert)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE

        untrusted = channel_credentials(
            ca_file=str(pki.ca), cert_file=str(pki.rogue_cert), key_file=str(pki.rogue_key)
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _ping(server.port, untrusted)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE

        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            with pytest.raises(grpc.aio.AioRpcError):
                await np_grpc.NodeProviderServiceStub(ch).Ping(np.PingRequest(), timeout=5)


async def test_server_only_tls(make_servicers: Any, toy: Any, pki: Any) -> None:
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


def test_client_credentials_need_cert_and_key_together(pki: Any) -> None:
    with pytest.raises(ValueError):
        channel_credentials(ca_file=str(pki.ca), cert_file=str(pki.client_cert))
