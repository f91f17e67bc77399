"""NodeProviderService: the hosts as Nodes, Ping, the node status stream."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from vmlet.provider.v1 import node_provider_service_pb2 as np
from vmlet.provider.v1 import pod_pb2
from vmlet_memory.cloud import CloudOptions
from vmlet_memory.testing import Harness, running_provider

pytestmark = pytest.mark.timeout(60)


async def test_list_nodes(mp: Harness) -> None:
    nodes = (await mp.nodes.ListNodes(np.ListNodesRequest())).nodes
    assert [n.name for n in nodes] == ["vmlet-memory-0", "vmlet-memory-1"]
    node = nodes[0]
    assert dict(node.capacity) == {"cpu": "64", "memory": "256Gi", "pods": "250"}
    assert dict(node.allocatable) == dict(node.capacity)
    assert [(a.type, a.address) for a in node.addresses] == [
        ("InternalIP", "127.0.0.1"),
        ("Hostname", "vmlet-memory-0"),
    ]
    (ready,) = node.conditions
    assert (ready.type, ready.status) == ("Ready", pod_pb2.CONDITION_STATUS_TRUE)
    assert ready.HasField("last_heartbeat_time")
    assert node.labels["node.vmlet.io/hypervisor"] == "memory"
    assert node.provider_id == "memory://vmlet-memory-0"
    assert node.info.operating_system == "linux" and node.info.system_uuid


async def test_node_flags() -> None:
    options = CloudOptions(nodes=3, node_prefix="lab", cpu="8", memory="32Gi", pods=10)
    async with running_provider(options) as mp:
        nodes = (await mp.nodes.ListNodes(np.ListNodesRequest())).nodes
        assert [n.name for n in nodes] == ["lab-0", "lab-1", "lab-2"]
        assert dict(nodes[2].capacity) == {"cpu": "8", "memory": "32Gi", "pods": "10"}


async def test_ping(mp: Harness) -> None:
    reply = await mp.nodes.Ping(np.PingRequest())
    assert reply.provider == "memory" and reply.version


async def test_node_stream_sends_every_node_then_stays_open_until_shutdown() -> None:
    async with running_provider() as mp:
        call = mp.nodes.NotifyNodeStatus(np.NotifyNodeStatusRequest())
        names = [(await asyncio.wait_for(call.read(), 5)).node.name for _ in range(2)]
        assert names == ["vmlet-memory-0", "vmlet-memory-1"]
        read = asyncio.ensure_future(call.read())
        await asyncio.sleep(0.2)
        assert not read.done()
        await mp.server.stop(5)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(read, 5)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
