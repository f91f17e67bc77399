"""The node backend over OpenStack: compute hosts as nodes, a ping from what the polls saw."""

from __future__ import annotations

from vmlet.provider.v1 import node_pb2
from vmlet.provider.v1.node_provider_service_pb2 import NotifyNodeStatusResponse
from vmlet_contract import Mailbox, Unavailable

from .cloud import Cloud
from .nodes import NodeBook

__all__ = ["NodeBackend"]


class NodeBackend:
    """Compute hosts as nodes (a `kit.NodeProviderBackend`)."""

    def __init__(self, cloud: Cloud, book: NodeBook) -> None:
        self._cloud = cloud
        self._book = book

    async def list_nodes(self) -> list[node_pb2.Node]:
        await self._book.ensure_loaded()
        return self._book.nodes()

    async def ping(self) -> None:
        # Answered from what the background polls (every few seconds) last saw, so a Ping never
        # waits out an OpenStack timeout; only before the first call does it ask Nova itself.
        if self._cloud.reachable is None:
            await self._cloud.call("ping Nova", lambda api: api.ping())
        elif not self._cloud.reachable:
            raise Unavailable(self._cloud.unreachable_reason or "OpenStack is unreachable")

    def subscribe_nodes(self) -> Mailbox[NotifyNodeStatusResponse]:
        return self._book.subscribe()

    def unsubscribe_nodes(self, box: Mailbox[NotifyNodeStatusResponse]) -> None:
        self._book.hub.unsubscribe(box)
