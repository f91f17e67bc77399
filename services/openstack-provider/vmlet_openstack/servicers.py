"""The gRPC services over `pods`, `nodes`, `snapshots`, `consolelog` and `stats`.

Thin on purpose: each method checks its request, calls the part that knows, and answers. Errors
are `vmlet_contract` errors, mapped to status codes by the scaffold's interceptor. What the
OpenStack provider does not serve answers UNIMPLEMENTED with the reason:

- Attach: Nova's serial console (a websocket proxy) is not wired up yet. Exec and PortForward go
  over the server's network to its address (SSH with the credentials the facade resolved, and
  TCP); a server with no network has no address, and they say so.

Disks are Cinder volumes (`disks`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import grpc

from vmlet.provider.v1 import kubelet_endpoint_service_pb2 as kpb
from vmlet.provider.v1 import kubelet_endpoint_service_pb2_grpc as kpb_grpc
from vmlet.provider.v1 import node_provider_service_pb2 as npb
from vmlet.provider.v1 import node_provider_service_pb2_grpc as npb_grpc
from vmlet.provider.v1 import pod_lifecycle_service_pb2 as lpb
from vmlet.provider.v1 import pod_lifecycle_service_pb2_grpc as lpb_grpc
from vmlet.provider.v1 import pod_notifier_service_pb2 as ppb
from vmlet.provider.v1 import pod_notifier_service_pb2_grpc as ppb_grpc
from vmlet.provider.v1 import virtual_machine_service_pb2 as vpb
from vmlet.provider.v1 import virtual_machine_service_pb2_grpc as vpb_grpc
from vmlet_contract import (
    FailedPrecondition,
    InvalidArgument,
    ProviderError,
    Unavailable,
    containerlogs,
    guest,
)

from .cloud import Cloud
from .config import Settings
from .consolelog import ConsoleJournal, server_log
from .disks import Disks
from .nodes import PROVIDER_KIND, NodeBook
from .pods import Pods
from .snapshots import Snapshots
from .stats import Stats

__all__ = [
    "KubeletEndpoints",
    "NodeProvider",
    "PodLifecycle",
    "PodNotifier",
    "VirtualMachines",
]


def _unimplemented(message: str) -> NoReturn:
    raise ProviderError(message, code=grpc.StatusCode.UNIMPLEMENTED)


class PodLifecycle(lpb_grpc.PodLifecycleServiceServicer):
    """Pods to servers."""

    def __init__(self, pods: Pods) -> None:
        self._pods = pods

    async def CreatePod(self, request: lpb.CreatePodRequest, context: Any) -> lpb.CreatePodResponse:
        return lpb.CreatePodResponse(status=await self._pods.create(request.pod))

    async def UpdatePod(self, request: lpb.UpdatePodRequest, context: Any) -> lpb.UpdatePodResponse:
        return lpb.UpdatePodResponse(status=await self._pods.update(request.pod))

    async def DeletePod(self, request: lpb.DeletePodRequest, context: Any) -> lpb.DeletePodResponse:
        await self._pods.delete(request.pod)
        return lpb.DeletePodResponse()

    async def GetPod(self, request: lpb.GetPodRequest, context: Any) -> lpb.GetPodResponse:
        pod, status = await self._pods.get(request.namespace, request.name)
        return lpb.GetPodResponse(pod=pod, status=status)

    async def GetPodStatus(
        self, request: lpb.GetPodStatusRequest, context: Any
    ) -> lpb.GetPodStatusResponse:
        _, status = await self._pods.get(request.namespace, request.name)
        return lpb.GetPodStatusResponse(status=status)

    async def GetPods(self, request: lpb.GetPodsRequest, context: Any) -> lpb.GetPodsResponse:
        return lpb.GetPodsResponse(pods=await self._pods.all_pods())


class PodNotifier(ppb_grpc.PodNotifierServiceServicer):
    """Pod status changes, every pod first."""

    def __init__(self, pods: Pods) -> None:
        self._pods = pods

    async def NotifyPods(
        self, request: ppb.NotifyPodsRequest, context: Any
    ) -> AsyncIterator[ppb.NotifyPodsResponse]:
        box = self._pods.subscribe()
        try:
            while True:
                for update in await box.take():
                    yield update
        finally:
            self._pods.hub.unsubscribe(box)


class NodeProvider(npb_grpc.NodeProviderServiceServicer):
    """Compute hosts as nodes."""

    def __init__(self, cloud: Cloud, book: NodeBook, version: str) -> None:
        self._cloud = cloud
        self._book = book
        self._version = version

    async def ListNodes(self, request: npb.ListNodesRequest, context: Any) -> npb.ListNodesResponse:
        await self._book.ensure_loaded()
        return npb.ListNodesResponse(nodes=self._book.nodes())

    async def Ping(self, request: npb.PingRequest, context: Any) -> npb.PingResponse:
        # Answered from what the background polls (every few seconds) last saw, so a Ping never
        # waits out an OpenStack timeout; only before the first call does it ask Nova itself.
        if self._cloud.reachable is None:
            await self._cloud.call("ping Nova", lambda api: api.ping())
        elif not self._cloud.reachable:
            raise Unavailable(self._cloud.unreachable_reason or "OpenStack is unreachable")
        return npb.PingResponse(provider=PROVIDER_KIND, version=self._version)

    async def NotifyNodeStatus(
        self, request: npb.NotifyNodeStatusRequest, context: Any
    ) -> AsyncIterator[npb.NotifyNodeStatusResponse]:
        box = self._book.subscribe()
        try:
            while True:
                for update in await box.take():
                    yield update
        finally:
            self._book.hub.unsubscribe(box)


class KubeletEndpoints(kpb_grpc.KubeletEndpointServiceServicer):
    """Logs and stats; exec, attach and port-forward are not served."""

    def __init__(
        self,
        cloud: Cloud,
        pods: Pods,
        stats: Stats,
        settings: Settings,
        closing: asyncio.Event,
    ) -> None:
        self._cloud = cloud
        self._pods = pods
        self._stats = stats
        self._settings = settings
        self._closing = closing
        self._journal = ConsoleJournal()

    async def GetContainerLogs(
        self, request: kpb.GetContainerLogsRequest, context: Any
    ) -> AsyncIterator[kpb.GetContainerLogsResponse]:
        options = containerlogs.LogOptions.from_request(request)
        pod, _ = await self._pods.get(request.namespace, request.pod_name)
        names = [c.name for c in pod.containers]
        if request.container_name and request.container_name not in names:
            raise InvalidArgument(
                f"container {request.container_name} is not valid for pod "
                f"{request.namespace}/{request.pod_name}"
            )
        if options.previous:
            container = request.container_name or (names[0] if names else "")
            raise containerlogs.no_previous(container, request.pod_name)
        entry = self._pods.entry(request.namespace, request.pod_name)
        server = self._pods.server_of(entry) if entry is not None else None
        if entry is None or server is None:
            return

        def alive() -> bool:
            return (
                not self._closing.is_set()
                and self._pods.entry(request.namespace, request.pod_name) is entry
            )

        history, followed = await server_log(
            self._cloud,
            self._journal,
            server.id,
            tail_lines=options.tail_lines,
            poll_seconds=self._settings.log_poll_seconds,
            alive=alive,
        )
        async for response in containerlogs.serve_log(options, history, followed):
            yield response

    async def _guest_address(self, namespace: str, name: str) -> str:
        """The server's primary address, from its status; FailedPrecondition when it has none."""
        _, status = await self._pods.get(namespace, name)
        if not status.pod_ip:
            raise FailedPrecondition(
                f"the guest of {namespace}/{name} has no IP yet (a server with no network has "
                "none): exec and port-forward go over its network"
            )
        return str(status.pod_ip)

    async def Exec(
        self, request_iterator: AsyncIterator[kpb.ExecRequest], context: Any
    ) -> AsyncIterator[kpb.ExecResponse]:
        requests = aiter(request_iterator)
        start = await guest.exec_start(requests)
        host = await self._guest_address(start.namespace, start.pod_name)
        async with contextlib.aclosing(guest.exec_over_ssh(start, requests, host)) as responses:
            async for response in responses:
                yield response

    async def Attach(
        self, request_iterator: AsyncIterator[kpb.AttachRequest], context: Any
    ) -> AsyncIterator[kpb.AttachResponse]:
        _unimplemented(
            "attach is not supported by the OpenStack provider yet: Nova's serial console "
            "is not wired up; read the console with kubectl logs"
        )
        yield kpb.AttachResponse()  # pragma: no cover

    async def PortForward(
        self, request_iterator: AsyncIterator[kpb.PortForwardRequest], context: Any
    ) -> AsyncIterator[kpb.PortForwardResponse]:
        requests = aiter(request_iterator)
        start = await guest.port_forward_start(requests)
        host = await self._guest_address(start.namespace, start.pod_name)
        async with contextlib.aclosing(guest.forward_tcp(requests, host, start.port)) as responses:
            async for response in responses:
                yield response

    async def GetStatsSummary(
        self, request: kpb.GetStatsSummaryRequest, context: Any
    ) -> kpb.GetStatsSummaryResponse:
        return await self._stats.summary(request.node_name)


class VirtualMachines(vpb_grpc.VirtualMachineServiceServicer):
    """VMs by identity, snapshots as Glance images, disks as Cinder volumes."""

    def __init__(self, snapshots: Snapshots, disks: Disks) -> None:
        self._snapshots = snapshots
        self._disks = disks

    async def GetVirtualMachine(
        self, request: vpb.GetVirtualMachineRequest, context: Any
    ) -> vpb.GetVirtualMachineResponse:
        await self._snapshots.check_owner(request.identity, request.namespace)
        vm = await self._snapshots.get_vm(request.identity)
        vm.disk_handles.extend(await self._disks.attached(vm.provider_id))
        return vpb.GetVirtualMachineResponse(virtual_machine=vm)

    async def DeleteVirtualMachine(
        self, request: vpb.DeleteVirtualMachineRequest, context: Any
    ) -> vpb.DeleteVirtualMachineResponse:
        await self._snapshots.delete_vm(request.identity, request.namespace)
        return vpb.DeleteVirtualMachineResponse()

    async def CreateSnapshot(
        self, request: vpb.CreateSnapshotRequest, context: Any
    ) -> vpb.CreateSnapshotResponse:
        await self._snapshots.check_owner(request.identity, request.namespace)
        snapshot = await self._snapshots.create(request.identity, request.name, request.description)
        return vpb.CreateSnapshotResponse(snapshot=snapshot)

    async def RevertToSnapshot(
        self, request: vpb.RevertToSnapshotRequest, context: Any
    ) -> vpb.RevertToSnapshotResponse:
        await self._snapshots.check_owner(request.identity, request.namespace)
        await self._snapshots.revert(request.identity, request.snapshot_id)
        return vpb.RevertToSnapshotResponse()

    async def DeleteSnapshot(
        self, request: vpb.DeleteSnapshotRequest, context: Any
    ) -> vpb.DeleteSnapshotResponse:
        await self._snapshots.check_owner(request.identity, request.namespace)
        await self._snapshots.delete(request.identity, request.snapshot_id)
        return vpb.DeleteSnapshotResponse()

    async def ListSnapshots(
        self, request: vpb.ListSnapshotsRequest, context: Any
    ) -> vpb.ListSnapshotsResponse:
        await self._snapshots.check_owner(request.identity, request.namespace)
        return vpb.ListSnapshotsResponse(snapshots=await self._snapshots.all_of(request.identity))

    async def CreateDisk(
        self, request: vpb.CreateDiskRequest, context: Any
    ) -> vpb.CreateDiskResponse:
        disk = await self._disks.create(request.name, request.size_bytes, dict(request.parameters))
        return vpb.CreateDiskResponse(disk=disk)

    async def DeleteDisk(
        self, request: vpb.DeleteDiskRequest, context: Any
    ) -> vpb.DeleteDiskResponse:
        await self._disks.delete(request.handle)
        return vpb.DeleteDiskResponse()

    async def ExpandDisk(
        self, request: vpb.ExpandDiskRequest, context: Any
    ) -> vpb.ExpandDiskResponse:
        disk = await self._disks.expand(request.handle, request.size_bytes)
        return vpb.ExpandDiskResponse(disk=disk)

    async def GetDisk(self, request: vpb.GetDiskRequest, context: Any) -> vpb.GetDiskResponse:
        return vpb.GetDiskResponse(disk=await self._disks.get(request.handle))
