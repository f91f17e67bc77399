"""FakeProvider: every interface of `vmlet_facade.provider`, in memory, with a record of calls.

Pods are kept by UID with the status the provider would report; a pod's VM (by identity) is kept
when it is created, powered off when a pod that keeps its VM is deleted and destroyed otherwise.
A test scripts the next answers of a method (`fail`: raise a ProviderError on its next calls),
pushes pod and node changes into the NotifyPods and NotifyNodeStatus streams (`notify_pod`,
`notify_node`), and takes the provider or its IaaS down (`alive`, `healthy`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

from vmlet.provider.v1 import kubelet_endpoint_service_pb2 as kep
from vmlet.provider.v1 import node_pb2, node_provider_service_pb2, pod_notifier_service_pb2
from vmlet.provider.v1 import pod_pb2 as pb
from vmlet.provider.v1 import virtual_machine_service_pb2 as vmpb
from vmlet_contract import ProviderError
from vmlet_contract.errors import NotFound, Unavailable
from vmlet_facade.provider import Provider

__all__ = ["FakeProvider", "running"]


def running(ip: str = "10.0.0.5", container: str = "vm") -> pb.PodStatus:
    """A Running status with one ready container and ``ip``."""
    status = pb.PodStatus(phase=pb.POD_PHASE_RUNNING, pod_ip=ip, pod_ips=[ip])
    status.conditions.add(type="Ready", status=pb.CONDITION_STATUS_TRUE)
    cs = status.container_statuses.add(name=container, ready=True, container_id=f"fake://{ip}")
    cs.running.SetInParent()
    return status


class FakeProvider:
    """An in-memory provider; ``calls`` lists (method, argument) in the order they came."""

    def __init__(self, name: str = "fake", nodes: list[str] | None = None) -> None:
        self.name = name
        self.address = f"fake:{name}"
        self.calls: list[tuple[str, Any]] = []
        self.nodes = [node_pb2.Node(name=n, addresses=[node_pb2.NodeAddress(
            type="InternalIP", address=f"192.0.2.{i + 1}")], capacity={"cpu": "8"})
            for i, n in enumerate(nodes if nodes is not None else ["node-1"])]
        self.pods: dict[str, pb.PodWithStatus] = {}  # pod UID -> pod and status
        self.vms: dict[str, vmpb.VirtualMachine] = {}  # identity -> VM
        self.snapshots: dict[str, vmpb.Snapshot] = {}
        self.disks: dict[str, vmpb.Disk] = {}
        self.status: Callable[[pb.Pod], pb.PodStatus] = lambda pod: running()
        self.alive = True  # the process answers its health check
        self.healthy = True  # its IaaS answers (Ping)
        self.log_lines: list[kep.GetContainerLogsResponse] = []
        self._errors: dict[str, list[ProviderError]] = {}
        self._pod_streams: list[asyncio.Queue[pod_notifier_service_pb2.NotifyPodsResponse
                                              | ProviderError]] = []
        self._node_streams: list[asyncio.Queue[
            node_provider_service_pb2.NotifyNodeStatusResponse | ProviderError]] = []

    # -- what a test does --------------------------------------------------------------------

    def fail(self, method: str, error: ProviderError, times: int = 1) -> None:
        """Raise ``error`` on the next ``times`` calls of ``method`` (e.g. "create_pod")."""
        self._errors.setdefault(method, []).extend([error] * times)

    def called(self, method: str) -> list[Any]:
        """The arguments of every call of ``method``, in order."""
        return [arg for name, arg in self.calls if name == method]

    def notify_pod(self, pod: pb.Pod | pb.PodRef, status: pb.PodStatus) -> None:
        """Send ``status`` of ``pod`` down every NotifyPods stream (and keep it)."""
        ref = pod.ref if isinstance(pod, pb.Pod) else pod
        if ref.uid in self.pods:
            self.pods[ref.uid].status.CopyFrom(status)
        for queue in self._pod_streams:
            queue.put_nowait(pod_notifier_service_pb2.NotifyPodsResponse(ref=ref, status=status))

    def notify_node(self, node: node_pb2.Node, removed: bool = False) -> None:
        for queue in self._node_streams:
            queue.put_nowait(node_provider_service_pb2.NotifyNodeStatusResponse(
                node=node, removed=removed))

    def end_streams(self, error: ProviderError | None = None) -> None:
        """End every open stream with ``error`` (default UNAVAILABLE)."""
        for queue in [*self._pod_streams, *self._node_streams]:
            queue.put_nowait(error or Unavailable("stream reset"))

    def run_pod(self, pod: pb.Pod, status: pb.PodStatus | None = None) -> None:
        """Have the provider run ``pod`` already (as before a facade restart)."""
        self.pods[pod.ref.uid] = pb.PodWithStatus(pod=pod, status=status or running())
        self.vms[pod.identity] = vmpb.VirtualMachine(identity=pod.identity, name=pod.ref.name,
                                                     node_name=pod.node_name)

    def _call(self, method: str, arg: Any = None) -> None:
        self.calls.append((method, arg))
        errors = self._errors.get(method)
        if errors:
            raise errors.pop(0)

    # -- NodeSource --------------------------------------------------------------------------

    async def ping(self) -> None:
        self._call("ping")
        if not (self.alive and self.healthy):
            raise Unavailable("the IaaS does not answer")

    async def reachable(self) -> bool:
        self.calls.append(("reachable", None))
        return self.alive

    async def list_nodes(self) -> list[node_pb2.Node]:
        self._call("list_nodes")
        return [_copy(n) for n in self.nodes]

    def watch_nodes(
        self,
    ) -> AsyncIterator[node_provider_service_pb2.NotifyNodeStatusResponse]:
        return self._stream("watch_nodes", self._node_streams)

    # -- PodLifecycle ------------------------------------------------------------------------

    async def create_pod(self, pod: pb.Pod) -> pb.PodStatus:
        self._call("create_pod", _copy(pod))
        status = self.status(pod)
        self.pods[pod.ref.uid] = pb.PodWithStatus(pod=pod, status=status)
        vm = self.vms.setdefault(pod.identity, vmpb.VirtualMachine(identity=pod.identity))
        vm.name, vm.node_name = pod.ref.name, pod.node_name
        vm.power_state = vmpb.POWER_STATE_ON
        return _copy(status)

    async def update_pod(self, pod: pb.Pod) -> pb.PodStatus:
        self._call("update_pod", _copy(pod))
        if pod.ref.uid not in self.pods:
            raise NotFound(f"no pod {pod.ref.namespace}/{pod.ref.name}")
        self.pods[pod.ref.uid].pod.CopyFrom(pod)
        return _copy(self.pods[pod.ref.uid].status)

    async def delete_pod(self, pod: pb.Pod) -> None:
        self._call("delete_pod", _copy(pod))
        self.pods.pop(pod.ref.uid, None)
        if pod.keep_on_delete:
            if pod.identity in self.vms:
                self.vms[pod.identity].power_state = vmpb.POWER_STATE_OFF
        else:
            self.vms.pop(pod.identity, None)

    async def start_pod(self, pod: pb.Pod) -> pb.PodStatus:
        self._call("start_pod", _copy(pod))
        if pod.ref.uid not in self.pods:
            raise NotFound(f"no pod {pod.ref.namespace}/{pod.ref.name}")
        self.pods[pod.ref.uid].status.CopyFrom(self.status(pod))
        return _copy(self.pods[pod.ref.uid].status)

    async def stop_pod(self, pod: pb.Pod, grace_seconds: int) -> pb.PodStatus:
        self._call("stop_pod", (_copy(pod), grace_seconds))
        if pod.ref.uid not in self.pods:
            raise NotFound(f"no pod {pod.ref.namespace}/{pod.ref.name}")
        return _copy(self.pods[pod.ref.uid].status)

    async def get_pods(self) -> list[pb.PodWithStatus]:
        self._call("get_pods")
        return [_copy(p) for p in self.pods.values()]

    def watch_pods(self) -> AsyncIterator[pod_notifier_service_pb2.NotifyPodsResponse]:
        return self._stream("watch_pods", self._pod_streams)

    async def _stream(self, method: str,
                      streams: list[asyncio.Queue[Any]]) -> AsyncGenerator[Any, None]:
        """One notification stream: what a test pushes into ``streams``, until an error."""
        self._call(method)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        streams.append(queue)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, ProviderError):
                    raise item
                yield item
        finally:
            streams.remove(queue)

    # -- VmOperations ------------------------------------------------------------------------

    async def get_vm(self, identity: str, namespace: str = "") -> vmpb.VirtualMachine:
        self._call("get_vm", (identity, namespace))
        if identity not in self.vms:
            raise NotFound(f"no VM of identity {identity}")
        return _copy(self.vms[identity])

    async def delete_vm(self, identity: str, namespace: str = "") -> None:
        self._call("delete_vm", (identity, namespace))
        self.vms.pop(identity, None)

    async def create_snapshot(self, identity: str, name: str, description: str,
                              namespace: str = "") -> vmpb.Snapshot:
        self._call("create_snapshot", (identity, name, namespace))
        if identity not in self.vms:
            raise NotFound(f"no VM of identity {identity}")
        snapshot = vmpb.Snapshot(id=f"snap-{len(self.snapshots) + 1}", name=name,
                                 identity=identity, description=description)
        self.snapshots[snapshot.id] = snapshot
        return _copy(snapshot)

    async def revert_to_snapshot(self, identity: str, snapshot_id: str,
                                 namespace: str = "") -> None:
        self._call("revert_to_snapshot", (identity, snapshot_id, namespace))
        if snapshot_id not in self.snapshots:
            raise NotFound(f"no snapshot {snapshot_id}")

    async def delete_snapshot(self, identity: str, snapshot_id: str,
                              namespace: str = "") -> None:
        self._call("delete_snapshot", (identity, snapshot_id, namespace))
        self.snapshots.pop(snapshot_id, None)

    # -- Disks -------------------------------------------------------------------------------

    async def create_disk(self, name: str, size_bytes: int,
                          parameters: dict[str, str]) -> vmpb.Disk:
        self._call("create_disk", (name, size_bytes, dict(parameters)))
        disk = self.disks.setdefault(name, vmpb.Disk(handle=f"disk-{name}", name=name,
                                                     size_bytes=size_bytes))
        return _copy(disk)

    async def delete_disk(self, handle: str) -> None:
        self._call("delete_disk", handle)
        for name, disk in list(self.disks.items()):
            if disk.handle == handle:
                del self.disks[name]

    async def expand_disk(self, handle: str, size_bytes: int) -> vmpb.Disk:
        self._call("expand_disk", (handle, size_bytes))
        for disk in self.disks.values():
            if disk.handle == handle:
                disk.size_bytes = max(disk.size_bytes, size_bytes)
                return _copy(disk)
        raise NotFound(f"no disk {handle}")

    # -- KubeletEndpoints --------------------------------------------------------------------

    async def container_logs(
        self, request: kep.GetContainerLogsRequest,
    ) -> AsyncGenerator[kep.GetContainerLogsResponse, None]:
        self._call("container_logs", request)
        for line in self.log_lines:
            yield line

    def exec(
        self, requests: AsyncIterator[kep.ExecRequest],
    ) -> AsyncGenerator[kep.ExecResponse, None]:
        return self._drain("exec", requests)

    def attach(
        self, requests: AsyncIterator[kep.AttachRequest],
    ) -> AsyncGenerator[kep.AttachResponse, None]:
        return self._drain("attach", requests)

    def port_forward(
        self, requests: AsyncIterator[kep.PortForwardRequest],
    ) -> AsyncGenerator[kep.PortForwardResponse, None]:
        return self._drain("port_forward", requests)

    async def _drain(self, method: str, requests: AsyncIterator[Any]) -> AsyncGenerator[Any, None]:
        """A stream that reads every request and answers nothing."""
        self._call(method)
        async for _ in requests:
            pass
        return
        yield

    async def stats_summary(self, node: str) -> kep.GetStatsSummaryResponse:
        self._call("stats_summary", node)
        return kep.GetStatsSummaryResponse()


def _copy(message: Any) -> Any:
    out = type(message)()
    out.CopyFrom(message)
    return out


def _is_provider(provider: FakeProvider) -> Provider:
    """Typed check (mypy): the fake implements every interface of the facade's provider."""
    return provider
