"""The node backend: the pretend hosts as Nodes, which never change while the process runs."""

from __future__ import annotations

from vmlet.provider.v1 import node_pb2
from vmlet.provider.v1.node_provider_service_pb2 import NotifyNodeStatusResponse
from vmlet_contract import Hub, Mailbox, Unavailable

from .cloud import Cloud

__all__ = ["PROVIDER_KIND", "NodeProvider"]

PROVIDER_KIND = "memory"


class NodeProvider:
    """Lists the hosts, answers pings, and pushes every host on connect (a
    `kit.NodeProviderBackend`); `close` ends the node streams at shutdown."""

    def __init__(self, cloud: Cloud) -> None:
        self._cloud = cloud
        self._hub: Hub[NotifyNodeStatusResponse] = Hub()

    def _nodes(self) -> list[node_pb2.Node]:
        version = self._cloud.version
        return [h.as_node(version=version) for h in self._cloud.hosts.values()]

    async def list_nodes(self) -> list[node_pb2.Node]:
        return self._nodes()

    async def ping(self) -> None:
        if self._cloud.closing.is_set():
            raise Unavailable("the provider is shutting down")

    def subscribe_nodes(self) -> Mailbox[NotifyNodeStatusResponse]:
        return self._hub.subscribe(
            (node.name, NotifyNodeStatusResponse(node=node)) for node in self._nodes()
        )

    def unsubscribe_nodes(self, box: Mailbox[NotifyNodeStatusResponse]) -> None:
        self._hub.unsubscribe(box)

    def close(self) -> None:
        """Ends every node stream: the provider is shutting down."""
        self._hub.close("the provider is shutting down; reconnect")
