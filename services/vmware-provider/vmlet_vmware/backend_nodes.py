"""The node backend over vSphere: the ESXi hosts as nodes, a ping that reaches vCenter, and
node pushes."""

from __future__ import annotations

import logging

from vmlet.provider.v1 import node_pb2
from vmlet.provider.v1.node_provider_service_pb2 import NotifyNodeStatusResponse
from vmlet_contract import Mailbox, ProviderError

from .nodes import NodeBook
from .session import Session

__all__ = ["NodeBackend"]

_log = logging.getLogger(__name__)


class NodeBackend:
    """Lists the hosts, answers pings, and pushes node changes (a `kit.NodeProviderBackend`)."""

    def __init__(self, session: Session, book: NodeBook) -> None:
        self._session = session
        self._book = book

    async def list_nodes(self) -> list[node_pb2.Node]:
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
        return self._book.nodes()

    async def ping(self) -> None:
        await self._session.ping()

    def subscribe_nodes(self) -> Mailbox[NotifyNodeStatusResponse]:
        return self._book.hub.subscribe(
            (node.name, NotifyNodeStatusResponse(node=node)) for node in self._book.nodes()
        )

    def unsubscribe_nodes(self, box: Mailbox[NotifyNodeStatusResponse]) -> None:
        self._book.hub.unsubscribe(box)
