"""NodeProviderService: the backend's nodes, its ping, and node pushes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from vmlet.provider.v1 import node_pb2
from vmlet.provider.v1 import node_provider_service_pb2 as pb
from vmlet.provider.v1 import node_provider_service_pb2_grpc as pb_grpc

from ..hub import Mailbox
from .streams import relay

__all__ = ["NodeProviderBackend", "NodeProviderServicer"]


class NodeProviderBackend(Protocol):
    """The IaaS's hosts as nodes."""

    async def list_nodes(self) -> list[node_pb2.Node]:
        """Every node; `Unavailable` when they cannot be known."""
        ...

    async def ping(self) -> None:
        """Returns when the IaaS answers (or is known to); `Unavailable` otherwise."""
        ...

    def subscribe_nodes(self) -> Mailbox[pb.NotifyNodeStatusResponse]:
        """A mailbox holding every node, then each change (closed at shutdown)."""
        ...

    def unsubscribe_nodes(self, box: Mailbox[pb.NotifyNodeStatusResponse]) -> None:
        """Forgets a mailbox whose stream ended."""
        ...


class NodeProviderServicer(pb_grpc.NodeProviderServiceServicer):
    """NodeProviderService over a `NodeProviderBackend`; Ping names `provider` and `version`."""

    def __init__(self, backend: NodeProviderBackend, *, provider: str, version: str) -> None:
        self._backend = backend
        self._provider = provider
        self._version = version

    async def ListNodes(self, request: pb.ListNodesRequest, context: Any) -> pb.ListNodesResponse:
        return pb.ListNodesResponse(nodes=await self._backend.list_nodes())

    async def Ping(self, request: pb.PingRequest, context: Any) -> pb.PingResponse:
        await self._backend.ping()
        return pb.PingResponse(provider=self._provider, version=self._version)

    async def NotifyNodeStatus(
        self, request: pb.NotifyNodeStatusRequest, context: Any
    ) -> AsyncIterator[pb.NotifyNodeStatusResponse]:
        box = self._backend.subscribe_nodes()
        async for update in relay(box, self._backend.unsubscribe_nodes):
            yield update
