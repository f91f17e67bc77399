"""The pod lifecycle backend over the in-memory cloud: every call idempotent, answered once
persisted."""

from __future__ import annotations

from vmlet.provider.v1 import pod_pb2

from .cloud import Cloud

__all__ = ["PodLifecycle"]


class PodLifecycle:
    """Creates, updates and deletes the machines of pods (a `kit.PodLifecycleBackend`)."""

    def __init__(self, cloud: Cloud) -> None:
        self._cloud = cloud

    async def create_pod(self, pod: pod_pb2.Pod) -> pod_pb2.PodStatus:
        status = self._cloud.create_pod(pod)
        await self._cloud.flush()
        return status

    async def update_pod(self, pod: pod_pb2.Pod) -> pod_pb2.PodStatus:
        status = self._cloud.update_pod(pod)
        await self._cloud.flush()
        return status

    async def start_pod(self, pod: pod_pb2.Pod) -> pod_pb2.PodStatus:
        status = self._cloud.start_pod(pod)
        await self._cloud.flush()
        return status

    async def stop_pod(self, pod: pod_pb2.Pod, grace_seconds: int) -> pod_pb2.PodStatus:
        status = self._cloud.stop_pod(pod)
        await self._cloud.flush()
        return status

    async def delete_pod(self, pod: pod_pb2.Pod) -> None:
        self._cloud.delete_pod(pod)
        await self._cloud.flush()

    async def get_pod(self, namespace: str, name: str) -> tuple[pod_pb2.Pod, pod_pb2.PodStatus]:
        vm = self._cloud.pod_machine(namespace, name)
        return vm.pod or pod_pb2.Pod(), vm.status or pod_pb2.PodStatus()

    async def list_pods(self) -> list[pod_pb2.PodWithStatus]:
        return self._cloud.pods()
