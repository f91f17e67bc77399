"""PodNotifierService: every pod's status on connect, then each change, for any number of
subscribers; see `vmlet_contract.hub` for why a slow subscriber holds up nobody."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from vmlet.provider.v1 import pod_notifier_service_pb2 as pb
from vmlet.provider.v1 import pod_notifier_service_pb2_grpc as pb_grpc

from .cloud import Cloud

__all__ = ["PodNotifier"]


class PodNotifier(pb_grpc.PodNotifierServiceServicer):
    """Streams pod status changes."""

    def __init__(self, cloud: Cloud) -> None:
        self._cloud = cloud

    async def NotifyPods(
        self, request: pb.NotifyPodsRequest, context: Any
    ) -> AsyncIterator[pb.NotifyPodsResponse]:
        sub = self._cloud.subscribe()
        try:
            while True:
                for update in await sub.take():
                    yield update
        finally:
            self._cloud.unsubscribe(sub)
