"""PodNotifierService: every pod's status on connect, then each change as the watch sees it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from vmlet.provider.v1 import pod_notifier_service_pb2 as pb
from vmlet.provider.v1 import pod_notifier_service_pb2_grpc as pb_grpc

from .pods import Pods

__all__ = ["PodNotifier"]


class PodNotifier(pb_grpc.PodNotifierServiceServicer):
    """Streams pod status changes."""

    def __init__(self, pods: Pods) -> None:
        self._pods = pods

    async def NotifyPods(
        self, request: pb.NotifyPodsRequest, context: Any
    ) -> AsyncIterator[pb.NotifyPodsResponse]:
        box = self._pods.table.hub.subscribe(self._pods.table.snapshot())
        try:
            while True:
                for update in await box.take():
                    yield update
        finally:
            self._pods.table.hub.unsubscribe(box)
