"""The facade's disk calls go to the provider's DiskService: a memory provider served without
VirtualMachineService (so its deprecated disk RPCs are not there to answer) provisions, grows and
removes a disk for the facade."""

from __future__ import annotations

import dataclasses

import grpc
import pytest
from prometheus_client import CollectorRegistry

from vmlet_contract import ProviderError, ProviderServer
from vmlet_facade.grpcprovider import GrpcProvider
from vmlet_memory.app import PROVIDER_KIND, build
from vmlet_memory.cloud import CloudOptions

pytestmark = pytest.mark.timeout(60)
GIB = 2**30


async def test_disk_calls_reach_disk_service() -> None:
    servicers = dataclasses.replace(build(CloudOptions(nodes=1)).servicers, vms=None)
    server = ProviderServer(servicers, address="127.0.0.1:0", provider=PROVIDER_KIND,
                            registry=CollectorRegistry())
    await server.start()
    provider = GrpcProvider("m", f"127.0.0.1:{server.port}")
    try:
        assert "vmlet.provider.v1.VirtualMachineService" not in server.services
        made = await provider.create_disk("pv-1", GIB, {})
        assert made.handle and made.name == "pv-1" and made.size_bytes == GIB
        assert (await provider.create_disk("pv-1", GIB, {})).handle == made.handle
        assert (await provider.expand_disk(made.handle, 2 * GIB)).size_bytes == 2 * GIB
        await provider.delete_disk(made.handle)
        with pytest.raises(ProviderError) as info:
            await provider.expand_disk(made.handle, 3 * GIB)
        assert info.value.code is grpc.StatusCode.NOT_FOUND
    finally:
        await provider.close()
        await server.stop(0)
