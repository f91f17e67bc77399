"""The pod backends over vSphere: lifecycle (every call idempotent, answered once vCenter has
done it) and notifications (every pod's status on connect, then each change as the watch sees
it)."""

from __future__ import annotations

from vmlet.provider.v1 import pod_pb2
from vmlet.provider.v1.pod_notifier_service_pb2 import NotifyPodsResponse
from vmlet_contract import Mailbox

from .pods import Pods

__all__ = ["PodBackend"]


class PodBackend:
    """Creates, updates, starts again, stops and deletes the VMs of pods; reads their status; pushes
    its changes (a `kit.PodLifecycleBackend` and `kit.PodNotifierBackend`)."""

    def __init__(self, pods: Pods) -> None:
        self._pods = pods

    async def create_pod(self, pod: pod_pb2.Pod) -> pod_pb2.PodStatus:
        return await self._pods.create(pod)

    async def update_pod(self, pod: pod_pb2.Pod) -> pod_pb2.PodStatus:
        return await self._pods.update(pod)

    async def start_pod(self, pod: pod_pb2.Pod) -> pod_pb2.PodStatus:
        return await self._pods.start(pod)

    async def stop_pod(self, pod: pod_pb2.Pod, grace_seconds: int) -> pod_pb2.PodStatus:
        return await self._pods.stop(pod, grace_seconds)

    async def delete_pod(self, pod: pod_pb2.Pod) -> None:
        await self._pods.delete(pod)

    async def get_pod(self, namespace: str, name: str) -> tuple[pod_pb2.Pod, pod_pb2.PodStatus]:
        entry = self._pods.table.entry(namespace, name)
        return entry.pod, self._pods.table.status_of(entry)

    async def list_pods(self) -> list[pod_pb2.PodWithStatus]:
        table = self._pods.table
        return [
            pod_pb2.PodWithStatus(pod=e.pod, status=table.status_of(e)) for e in table.entries()
        ]

    def subscribe_pods(self) -> Mailbox[NotifyPodsResponse]:
        return self._pods.table.hub.subscribe(self._pods.table.snapshot())

    def unsubscribe_pods(self, box: Mailbox[NotifyPodsResponse]) -> None:
        self._pods.table.hub.unsubscribe(box)
