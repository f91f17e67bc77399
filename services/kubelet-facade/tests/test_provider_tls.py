"""The facade towards providers: mutual TLS by default, plaintext only behind its flag, and
rotated certificates picked up without a restart (a memory provider served in-process over
mutual TLS, with the local environment's boundary PKI)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry

from vmlet_contract import ProviderError, ProviderServer, TlsConfig
from vmlet_facade.__main__ import parse_args
from vmlet_facade.grpcprovider import GrpcProvider, ProviderTls, follow_certificates
from vmlet_localenv.providerpki import FACADE_IDENTITY, ProviderPki
from vmlet_memory.app import PROVIDER_KIND, build
from vmlet_memory.cloud import CloudOptions

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def pki(tmp_path: Path) -> ProviderPki:
    return ProviderPki.create(tmp_path / "pki")


@pytest.fixture
async def provider(pki: ProviderPki) -> AsyncIterator[ProviderServer]:
    tls = TlsConfig(str(pki.provider.cert), str(pki.provider.key), str(pki.ca), FACADE_IDENTITY)
    server = ProviderServer(build(CloudOptions(nodes=1)).servicers, address="127.0.0.1:0",
                            provider=PROVIDER_KIND, tls=tls, registry=CollectorRegistry())
    await server.start()
    try:
        yield server
    finally:
        await server.stop(0)


def _tls(pki: ProviderPki) -> ProviderTls:
    return ProviderTls(pki.ca, pki.facade.cert, pki.facade.key)


async def test_the_facade_reaches_a_provider_over_mutual_tls_only(
    pki: ProviderPki, provider: ProviderServer
) -> None:
    address = f"127.0.0.1:{provider.port}"
    facade = GrpcProvider("m", address, tls=_tls(pki))
    plain = GrpcProvider("m", address)
    try:
        assert [n.name for n in await facade.list_nodes()]
        with pytest.raises(ProviderError) as info:
            await plain.list_nodes()
        assert info.value.code is grpc.StatusCode.UNAVAILABLE
    finally:
        await facade.close()
        await plain.close()


async def test_rotated_certificates_give_a_fresh_channel(
    pki: ProviderPki, provider: ProviderServer
) -> None:
    facade = GrpcProvider("m", f"127.0.0.1:{provider.port}", tls=_tls(pki))
    try:
        await facade.ping()
        assert not await facade.reload_tls(), "nothing changed"
        # A new CA: the provider trusts only it from its next handshake on, so the facade's
        # next connection must present the new client pair and trust the new serving cert.
        pki.rotate(new_ca=True)
        assert await facade.reload_tls()
        await facade.ping()
        assert [n.name for n in await facade.list_nodes()]

        # The same, found by the follower the facade runs.
        follower = asyncio.create_task(follow_certificates([facade], interval=0.05))
        try:
            before = facade._channel
            pki.rotate(new_ca=True)
            for _ in range(100):
                if facade._channel is not before:
                    break
                await asyncio.sleep(0.05)
            assert facade._channel is not before, "the rotation was not noticed"
            await facade.ping()
        finally:
            follower.cancel()
    finally:
        await facade.close()


async def test_unreadable_files_keep_the_current_channel(
    pki: ProviderPki, provider: ProviderServer
) -> None:
    facade = GrpcProvider("m", f"127.0.0.1:{provider.port}", tls=_tls(pki))
    try:
        await facade.ping()
        pki.facade.key.unlink()
        assert not await facade.reload_tls()
        await facade.ping()
    finally:
        await facade.close()


def test_the_command_line_needs_tls_or_the_plaintext_flag(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("VMLET_PROVIDER_CA", "VMLET_PROVIDER_CERT", "VMLET_PROVIDER_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit) as info:
        parse_args(["--provider", "m=127.0.0.1:1"])
    assert info.value.code == 2
    assert "mutual TLS" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--provider", "m=127.0.0.1:1", "--provider-ca", "ca.crt"])
    with pytest.raises(SystemExit):
        parse_args(["--provider", "m=127.0.0.1:1", "--provider-insecure-plaintext",
                    "--provider-ca", "ca.crt"])
    assert parse_args(["--provider", "m=127.0.0.1:1",
                       "--provider-insecure-plaintext"]).provider_insecure_plaintext
    args = parse_args(["--provider", "m=127.0.0.1:1", "--provider-ca", "a", "--provider-cert",
                       "b", "--provider-key", "c"])
    assert not args.provider_insecure_plaintext
