"""NodeController against the fakes: registration, the provider's node stream, and outages."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fakes import Background, FakeKube, FakeProvider, settle, until

from vmlet.provider.v1 import node_pb2
from vmlet_facade.events import EventRecorder
from vmlet_facade.nodes import NodeController, NodeSettings
from vmlet_facade.outage import IAAS_UNAVAILABLE, PROVIDER_UNAVAILABLE, Outage

Obj = dict[str, Any]
NODE_PATH = "/api/v1/nodes/node-1"


@pytest.fixture
def outages() -> list[Outage | None]:
    return []


@pytest.fixture
async def controller(kube: FakeKube, provider: FakeProvider, outages: list[Outage | None],
                     background: Background) -> NodeController[FakeProvider]:
    """A running controller that pings at every loop turn and sends no timed heartbeat."""
    client = kube.client
    nc = NodeController(provider, client, NodeSettings(ping_interval=0.0, status_interval=3600),
                        EventRecorder(client), on_outage=outages.append)
    background.run(nc.run())
    return nc


def ready(kube: FakeKube) -> Obj:
    node = kube.get_obj(NODE_PATH) or {}
    return next((c for c in (node.get("status") or {}).get("conditions") or []
                 if c["type"] == "Ready"), {})


async def test_a_listed_node_is_registered_tainted_and_ready(
        kube: FakeKube, controller: NodeController[FakeProvider]) -> None:
    await until(lambda: ready(kube).get("status") == "True")
    node = kube.get_obj(NODE_PATH)
    assert node is not None
    assert node["metadata"]["labels"]["vmlet.io/provider"] == "fake"
    assert node["metadata"]["annotations"]["vmlet.io/provider-address"] == "fake:fake"
    assert node["spec"]["taints"] == [{"key": "virtual-kubelet.io/provider", "value": "fake",
                                       "effect": "NoSchedule"}]
    assert node["status"]["capacity"] == {"cpu": "8"}
    assert node["status"]["addresses"] == [{"type": "InternalIP", "address": "192.0.2.1"}]
    assert "RegisteredNode" in kube.event_reasons()
    assert controller.uids == {"node-1": node["metadata"]["uid"]}
    assert controller.address("node-1") == "192.0.2.1"


async def test_an_existing_node_is_updated_keeping_taints_others_set(
        kube: FakeKube, provider: FakeProvider) -> None:
    kube.seed(NODE_PATH, {"metadata": {"name": "node-1", "uid": "old-uid"}, "spec": {"taints": [
        {"key": "example.com/maintenance", "effect": "NoExecute"},
        {"key": "virtual-kubelet.io/provider", "value": "stale", "effect": "NoSchedule"}]}})
    client = kube.client
    nc = NodeController(provider, client, NodeSettings(), EventRecorder(client))
    await nc.register(provider.nodes[0])
    node = kube.get_obj(NODE_PATH)
    assert node is not None and node["metadata"]["uid"] == "old-uid"
    assert [t["key"] for t in node["spec"]["taints"]] == ["example.com/maintenance",
                                                           "virtual-kubelet.io/provider"]
    assert node["spec"]["taints"][1]["value"] == "fake"
    assert not kube.writes("POST", "/api/v1/nodes")


async def test_the_node_stream_carries_cordons_and_removed_hosts(
        kube: FakeKube, provider: FakeProvider, controller: NodeController[FakeProvider]) -> None:
    await until(lambda: ready(kube).get("status") == "True" and provider.called("watch_nodes"))
    cordoned = node_pb2.Node()
    cordoned.CopyFrom(provider.nodes[0])
    cordoned.unschedulable = True
    provider.notify_node(cordoned)
    await until(lambda: (kube.get_obj(NODE_PATH) or {}).get("spec", {}).get("unschedulable"))
    provider.notify_node(cordoned, removed=True)
    await until(lambda: ready(kube).get("reason") == "HostRemoved")
    assert ready(kube)["status"] == "False"
    assert kube.get_obj(NODE_PATH) is not None  # marked, never deleted


async def test_an_iaas_outage_and_a_provider_outage_are_told_apart_and_recover(
        kube: FakeKube, provider: FakeProvider, controller: NodeController[FakeProvider],
        outages: list[Outage | None]) -> None:
    await until(lambda: ready(kube).get("status") == "True")
    provider.healthy = False  # the provider answers, its IaaS does not
    await until(lambda: ready(kube).get("reason") == IAAS_UNAVAILABLE)
    assert ready(kube)["status"] == "Unknown"
    provider.alive = False  # now the provider itself is gone
    await until(lambda: ready(kube).get("reason") == PROVIDER_UNAVAILABLE)
    assert [o.reason if o else None for o in outages] == [IAAS_UNAVAILABLE,
                                                          PROVIDER_UNAVAILABLE]
    provider.alive = provider.healthy = True
    await until(lambda: ready(kube).get("status") == "True")
    await settle()
    assert outages[-1] is None and controller.healthy
    assert kube.event_reasons().count("NodeNotReady") == 2 and "NodeReady" in kube.event_reasons()
    assert kube.get_obj(NODE_PATH) is not None


async def test_a_shard_released_mid_registration_is_neither_adopted_nor_written(
        kube: FakeKube, provider: FakeProvider, background: Background,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A rebalance hands node-1 to another replica while this one still registers it, and a
    heartbeat that listed node-1 before the hand-over comes to write it: neither takes the node
    back, and nothing crashes (a replica died of a KeyError here at 10,000 pods)."""
    client = kube.client
    nc = NodeController(provider, client, NodeSettings(ping_interval=3600, status_interval=3600),
                        EventRecorder(client), sharded=True)
    background.run(nc.run())
    await until(lambda: "node-1" in nc.known)
    gate, entered = asyncio.Event(), asyncio.Event()
    real_get = kube.get

    async def held_get(path: str, **params: str) -> Obj:
        if path == NODE_PATH and not gate.is_set():
            entered.set()
            await gate.wait()
        return await real_get(path, **params)

    monkeypatch.setattr(kube, "get", held_get)
    serving = asyncio.create_task(nc.serve("node-1"))
    await entered.wait()
    nc.release("node-1")
    gate.set()
    await serving
    assert "node-1" not in nc.nodes and "node-1" not in nc.uids
    status = ("PATCH", NODE_PATH + "/status")
    writes = [c for c in kube.calls if (c.method, c.path) == status]
    await nc.write_status("node-1")
    assert [c for c in kube.calls if (c.method, c.path) == status] == writes
    await nc.serve("node-1")  # taken back later: served again
    assert "node-1" in nc.nodes
