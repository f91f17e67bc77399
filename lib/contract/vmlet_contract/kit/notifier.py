"""PodNotifierService: every pod's status on connect, then each change, newest per pod."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from vmlet.provider.v1 import pod_notifier_service_pb2 as pb
from vmlet.provider.v1 import pod_notifier_service_pb2_grpc as pb_grpc

from ..hub import Mailbox
from .streams import relay

__all__ = ["PodNotifierBackend", "PodNotifierServicer"]


class PodNotifierBackend(Protocol):
    """Pod status changes, through a `vmlet_contract.Hub` the backend publishes to and closes at
    shutdown (every stream then ends UNAVAILABLE, and the facade reconnects)."""

    def subscribe_pods(self) -> Mailbox[pb.NotifyPodsResponse]:
        """A mailbox holding every pod's current status, then each change."""
        ...

    def unsubscribe_pods(self, box: Mailbox[pb.NotifyPodsResponse]) -> None:
        """Forgets a mailbox whose stream ended."""
        ...


class PodNotifierServicer(pb_grpc.PodNotifierServiceServicer):
    """PodNotifierService over a `PodNotifierBackend`."""

    def __init__(self, backend: PodNotifierBackend) -> None:
        self._backend = backend

    async def NotifyPods(
        self, request: pb.NotifyPodsRequest, context: Any
    ) -> AsyncIterator[pb.NotifyPodsResponse]:
        async for update in relay(self._backend.subscribe_pods(), self._backend.unsubscribe_pods):
            yield update
