"""PodLifecycleService over vSphere: every call idempotent, answered once vCenter has done it."""

from __future__ import annotations

from typing import Any

from vmlet.provider.v1 import pod_lifecycle_service_pb2 as pb
from vmlet.provider.v1 import pod_lifecycle_service_pb2_grpc as pb_grpc
from vmlet.provider.v1 import pod_pb2

from .pods import Pods

__all__ = ["PodLifecycle"]


class PodLifecycle(pb_grpc.PodLifecycleServiceServicer):
    """Creates, updates and deletes the VMs of pods; reads their status."""

    def __init__(self, pods: Pods) -> None:
        self._pods = pods

    async def CreatePod(self, request: pb.CreatePodRequest, context: Any) -> pb.CreatePodResponse:
        return pb.CreatePodResponse(status=await self._pods.create(request.pod))

    async def UpdatePod(self, request: pb.UpdatePodRequest, context: Any) -> pb.UpdatePodResponse:
        return pb.UpdatePodResponse(status=await self._pods.update(request.pod))

    async def DeletePod(self, request: pb.DeletePodRequest, context: Any) -> pb.DeletePodResponse:
        await self._pods.delete(request.pod)
        return pb.DeletePodResponse()

    async def GetPod(self, request: pb.GetPodRequest, context: Any) -> pb.GetPodResponse:
        entry = self._pods.table.entry(request.namespace, request.name)
        return pb.GetPodResponse(pod=entry.pod, status=self._pods.table.status_of(entry))

    async def GetPodStatus(
        self, request: pb.GetPodStatusRequest, context: Any
    ) -> pb.GetPodStatusResponse:
        entry = self._pods.table.entry(request.namespace, request.name)
        return pb.GetPodStatusResponse(status=self._pods.table.status_of(entry))

    async def GetPods(self, request: pb.GetPodsRequest, context: Any) -> pb.GetPodsResponse:
        return pb.GetPodsResponse(
            pods=[
                pod_pb2.PodWithStatus(pod=e.pod, status=self._pods.table.status_of(e))
                for e in self._pods.table.entries()
            ]
        )
