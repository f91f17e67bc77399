"""NodeProviderService: the pretend hosts as Nodes, which never change while the process runs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from vmlet.provider.v1 import node_provider_service_pb2 as pb
from vmlet.provider.v1 import node_provider_service_pb2_grpc as pb_grpc
from vmlet_contract import Unavailable

from .cloud import Cloud

__all__ = ["PROVIDER_KIND", "NodeProvider"]

PROVIDER_KIND = "memory"


class NodeProvider(pb_grpc.NodeProviderServiceServicer):
    """Lists the hosts, answers pings, and streams node status."""

    def __init__(self, cloud: Cloud) -> None:
        self._cloud = cloud

    async def ListNodes(self, request: pb.ListNodesRequest, context: Any) -> pb.ListNodesResponse:
        version = self._cloud.version
        return pb.ListNodesResponse(
            nodes=[h.as_node(version=version) for h in self._cloud.hosts.values()]
        )

    async def Ping(self, request: pb.PingRequest, context: Any) -> pb.PingResponse:
        if self._cloud.closing.is_set():
            raise Unavailable("the provider is shutting down")
        return pb.PingResponse(provider=PROVIDER_KIND, version=self._cloud.version)

    async def NotifyNodeStatus(
        self, request: pb.NotifyNodeStatusRequest, context: Any
    ) -> AsyncIterator[pb.NotifyNodeStatusResponse]:
        version = self._cloud.version
        for host in self._cloud.hosts.values():
            yield pb.NotifyNodeStatusResponse(node=host.as_node(version=version))
        await self._cloud.closing.wait()
        raise Unavailable("the provider is shutting down; reconnect")
