"""NodeProviderService: the ESXi hosts as nodes, a ping that reaches vCenter, and node pushes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from vmlet.provider.v1 import node_provider_service_pb2 as pb
from vmlet.provider.v1 import node_provider_service_pb2_grpc as pb_grpc
from vmlet_contract import ProviderError

from .nodes import PROVIDER_KIND, NodeBook
from .session import Session

__all__ = ["NodeProvider"]

_log = logging.getLogger(__name__)


class NodeProvider(pb_grpc.NodeProviderServiceServicer):
    """Lists the hosts, answers pings, and streams node status."""

    def __init__(self, session: Session, book: NodeBook, version: str) -> None:
        self._session = session
        self._book = book
        self._version = version

    async def ListNodes(self, request: pb.ListNodesRequest, context: Any) -> pb.ListNodesResponse:
        """Reads the hosts afresh when vCenter answers; otherwise the nodes as last known (with
        Ready Unknown), or UNAVAILABLE when they were never known."""
        try:
            await self._book.refresh()
        except ProviderError as exc:
            if not self._book.known:
                raise
            _log.info("listing nodes as last known", extra={"error": exc.message})
        if not self._book.known:
            raise self._session.unavailable()
        return pb.ListNodesResponse(nodes=self._book.nodes())

    async def Ping(self, request: pb.PingRequest, context: Any) -> pb.PingResponse:
        await self._session.ping()
        return pb.PingResponse(provider=PROVIDER_KIND, version=self._version)

    async def NotifyNodeStatus(
        self, request: pb.NotifyNodeStatusRequest, context: Any
    ) -> AsyncIterator[pb.NotifyNodeStatusResponse]:
        box = self._book.hub.subscribe(
            (node.name, pb.NotifyNodeStatusResponse(node=node)) for node in self._book.nodes()
        )
        try:
            while True:
                for update in await box.take():
                    yield update
        finally:
            self._book.hub.unsubscribe(box)
