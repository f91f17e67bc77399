"""The facade's wiring routes the pod controller to every node of a provider as the node
controller comes to know it: at start, and a host the provider adds later at once (its node
stream), not at the next look."""

from __future__ import annotations

from typing import Any

from fakes import Background, FakeKube, FakeProvider, until

from vmlet.provider.v1 import node_pb2
from vmlet_facade import app
from vmlet_facade.events import EventRecorder
from vmlet_facade.nodes import NodeController, NodeSettings
from vmlet_facade.pods import Route


class Pods:
    """The part of the pod controller the node loop uses: adopt, then add_node."""

    def __init__(self) -> None:
        self.adopted: list[str] = []
        self.routes: dict[str, Route[Any]] = {}

    async def adopt(self, provider: FakeProvider) -> None:
        self.adopted.append(provider.name)

    def add_node(self, node: str, route: Route[Any]) -> None:
        assert self.adopted, "a node is routed only after the provider's pods are adopted"
        self.routes[node] = route


async def test_a_node_the_provider_adds_is_routed_as_it_is_registered(
        kube: FakeKube, provider: FakeProvider, background: Background) -> None:
    client = kube.client
    nc = NodeController(provider, client, NodeSettings(ping_interval=3600, status_interval=3600),
                        EventRecorder(client))
    pods = Pods()
    background.run(app._node_loop(nc, pods))  # type: ignore[arg-type]
    await until(lambda: "node-1" in pods.routes and provider.called("watch_nodes"))
    assert pods.adopted == ["fake"]
    assert pods.routes["node-1"].provider is provider
    assert pods.routes["node-1"].host_ip() == "192.0.2.1"

    added = node_pb2.Node(name="node-2", addresses=[node_pb2.NodeAddress(
        type="InternalIP", address="192.0.2.9")])
    provider.notify_node(added)
    # Routed when registered (the ping and status loops wait an hour: no poll brings it).
    await until(lambda: "node-2" in pods.routes)
    assert kube.get_obj("/api/v1/nodes/node-2") is not None
    assert pods.routes["node-2"].host_ip() == "192.0.2.9"
    assert list(pods.routes) == ["node-1", "node-2"]
