"""PodLifecycleService: the backend a provider writes, and the servicer the kit serves it with."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, Protocol, TypeVar

from vmlet.provider.v1 import pod_lifecycle_service_pb2 as pb
from vmlet.provider.v1 import pod_lifecycle_service_pb2_grpc as pb_grpc
from vmlet.provider.v1 import pod_pb2

__all__ = ["PodLifecycleBackend", "PodLifecycleServicer"]

T = TypeVar("T")


class PodLifecycleBackend(Protocol):
    """Pods to VMs. Every call is idempotent and returns once the IaaS has done it; an unknown
    pod is `NotFound`."""

    async def create_pod(self, pod: pod_pb2.Pod) -> pod_pb2.PodStatus:
        """Makes (or finds) the VM of `pod`; its status."""
        ...

    async def update_pod(self, pod: pod_pb2.Pod) -> pod_pb2.PodStatus:
        """Brings the VM of `pod` to its spec; its status."""
        ...

    async def delete_pod(self, pod: pod_pb2.Pod) -> None:
        """Deletes (or keeps, as the pod says) the VM of `pod`; an unknown pod succeeds."""
        ...

    async def start_pod(self, pod: pod_pb2.Pod) -> pod_pb2.PodStatus:
        """Powers the stopped VM of `pod` on again (a restart under its restartPolicy) and
        forgets the guest's exit code; a VM that runs or is powering on is left as it is. Its
        status."""
        ...

    async def stop_pod(self, pod: pod_pb2.Pod, grace_seconds: int) -> pod_pb2.PodStatus:
        """Powers the VM of `pod` off and keeps it: the guest asked to shut down, powered off
        hard after `grace_seconds`; exit code 137 unless the guest left one. Returns once it
        is off; a VM that is off is left as it is. Its status."""
        ...

    async def get_pod(self, namespace: str, name: str) -> tuple[pod_pb2.Pod, pod_pb2.PodStatus]:
        """The pod namespace/name as last created or updated, and its status."""
        ...

    async def list_pods(self) -> list[pod_pb2.PodWithStatus]:
        """Every pod the provider runs, with its status."""
        ...


class PodLifecycleServicer(pb_grpc.PodLifecycleServiceServicer):
    """PodLifecycleService over a `PodLifecycleBackend`."""

    def __init__(self, backend: PodLifecycleBackend) -> None:
        self._backend = backend
        self._finishing: set[asyncio.Task[Any]] = set()

    async def _completed(self, call: Awaitable[T]) -> T:
        """``call``'s result; a cancelled RPC (the caller gone, its deadline passed) leaves it
        running to its end, so a VM is not left half stopped or half started."""
        task = asyncio.ensure_future(call)
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)
        return await asyncio.shield(task)

    async def CreatePod(self, request: pb.CreatePodRequest, context: Any) -> pb.CreatePodResponse:
        return pb.CreatePodResponse(status=await self._backend.create_pod(request.pod))

    async def UpdatePod(self, request: pb.UpdatePodRequest, context: Any) -> pb.UpdatePodResponse:
        return pb.UpdatePodResponse(status=await self._backend.update_pod(request.pod))

    async def DeletePod(self, request: pb.DeletePodRequest, context: Any) -> pb.DeletePodResponse:
        await self._backend.delete_pod(request.pod)
        return pb.DeletePodResponse()

    async def StartPod(self, request: pb.StartPodRequest, context: Any) -> pb.StartPodResponse:
        return pb.StartPodResponse(
            status=await self._completed(self._backend.start_pod(request.pod)))

    async def StopPod(self, request: pb.StopPodRequest, context: Any) -> pb.StopPodResponse:
        return pb.StopPodResponse(status=await self._completed(
            self._backend.stop_pod(request.pod, request.grace_seconds)))

    async def GetPod(self, request: pb.GetPodRequest, context: Any) -> pb.GetPodResponse:
        pod, status = await self._backend.get_pod(request.namespace, request.name)
        return pb.GetPodResponse(pod=pod, status=status)

    async def GetPodStatus(
        self, request: pb.GetPodStatusRequest, context: Any
    ) -> pb.GetPodStatusResponse:
        _, status = await self._backend.get_pod(request.namespace, request.name)
        return pb.GetPodStatusResponse(status=status)

    async def GetPods(self, request: pb.GetPodsRequest, context: Any) -> pb.GetPodsResponse:
        return pb.GetPodsResponse(pods=await self._backend.list_pods())
