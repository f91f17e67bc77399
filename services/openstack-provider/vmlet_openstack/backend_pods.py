"""The pod backend over OpenStack: pods to servers, and their status changes."""

from __future__ import annotations

from vmlet.provider.v1 import pod_pb2
from vmlet.provider.v1.pod_notifier_service_pb2 import NotifyPodsResponse
from vmlet_contract import Mailbox

from .pods import Pods

__all__ = ["PodBackend"]


class PodBackend:
    """Pods to servers, and their status changes, every pod first (a `kit.PodLifecycleBackend`
    and `kit.PodNotifierBackend`)."""

    def __init__(self, pods: Pods) -> None:
        self._pods = pods

    async def create_pod(self, pod: pod_pb2.Pod) -> pod_pb2.PodStatus:
        return await self._pods.create(pod)

    async def update_pod(self, pod: pod_pb2.Pod) -> pod_pb2.PodStatus:
        return await self._pods.update(pod)

    async def start_pod(self, pod: pod_pb2.Pod) -> pod_pb2.PodStatus:
        return await self._pods.start(pod)

    async def stop_pod(self, pod: pod_pb2.Pod, grace_seconds: int) -> pod_pb2.PodStatus:
        return await self._pods.stop_pod(pod, grace_seconds)

    async def delete_pod(self, pod: pod_pb2.Pod) -> None:
        await self._pods.delete(pod)

    async def get_pod(self, namespace: str, name: str) -> tuple[pod_pb2.Pod, pod_pb2.PodStatus]:
        return await self._pods.get(namespace, name)

    async def list_pods(self) -> list[pod_pb2.PodWithStatus]:
        return await self._pods.all_pods()

    def subscribe_pods(self) -> Mailbox[NotifyPodsResponse]:
        return self._pods.subscribe()

    def unsubscribe_pods(self, box: Mailbox[NotifyPodsResponse]) -> None:
        self._pods.hub.unsubscribe(box)
