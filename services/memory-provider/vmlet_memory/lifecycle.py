"""PodLifecycleService over the in-memory cloud: every call idempotent, answered once persisted."""

from __future__ import annotations

from typing import Any

from vmlet.provider.v1 import pod_lifecycle_service_pb2 as pb
from vmlet.provider.v1 import pod_lifecycle_service_pb2_grpc as pb_grpc

from .cloud import Cloud

__all__ = ["PodLifecycle"]


class PodLifecycle(pb_grpc.PodLifecycleServiceServicer):
    """Creates, updates and deletes the machines of pods."""

    def __init__(self, cloud: Cloud) -> None:
        self._cloud = cloud

    async def CreatePod(self, request: pb.CreatePodRequest, context: Any) -> pb.CreatePodResponse:
        status = self._cloud.create_pod(request.pod)
        await self._cloud.flush()
        return pb.CreatePodResponse(status=status)

    async def UpdatePod(self, request: pb.UpdatePodRequest, context: Any) -> pb.UpdatePodResponse:
        status = self._cloud.update_pod(request.pod)
        await self._cloud.flush()
        return pb.UpdatePodResponse(status=status)

    async def DeletePod(self, request: pb.DeletePodRequest, context: Any) -> pb.DeletePodResponse:
        self._cloud.delete_pod(request.pod)
        await self._cloud.flush()
        return pb.DeletePodResponse()

    async def GetPod(self, request: pb.GetPodRequest, context: Any) -> pb.GetPodResponse:
        vm = self._cloud.pod_machine(request.namespace, request.name)
        return pb.GetPodResponse(pod=vm.pod, status=vm.status)

    async def GetPodStatus(
        self, request: pb.GetPodStatusRequest, context: Any
    ) -> pb.GetPodStatusResponse:
        vm = self._cloud.pod_machine(request.namespace, request.name)
        return pb.GetPodStatusResponse(status=vm.status)

    async def GetPods(self, request: pb.GetPodsRequest, context: Any) -> pb.GetPodsResponse:
        return pb.GetPodsResponse(pods=self._cloud.pods())
