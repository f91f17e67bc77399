"""The Provider interface over the generated gRPC stubs: one channel per provider address.

Towards providers the facade speaks mutual TLS (`ProviderTls`: the providers' CA, and the
facade's client pair, which names ``vmlet-facade``). Rotated files are picked up by
`follow_certificates`: a provider whose files changed gets a fresh channel, as on a repoint.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vmlet.provider.v1 import (
    disk_service_pb2_grpc,
    kubelet_endpoint_service_pb2_grpc,
    node_pb2,
    node_provider_service_pb2,
    node_provider_service_pb2_grpc,
    pod_lifecycle_service_pb2,
    pod_lifecycle_service_pb2_grpc,
    pod_notifier_service_pb2,
    pod_notifier_service_pb2_grpc,
    virtual_machine_service_pb2_grpc,
)
from vmlet.provider.v1 import kubelet_endpoint_service_pb2 as kep
from vmlet.provider.v1 import pod_pb2 as pb
from vmlet.provider.v1 import virtual_machine_service_pb2 as vm_pb
from vmlet_contract import ProviderError, error_from_rpc, files_fingerprint

__all__ = ["GrpcProvider", "ProviderTls", "follow_certificates"]

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class ProviderTls:
    """Client-side TLS towards providers: the CA that signed them and, for mTLS, our pair."""

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None

    def fingerprint(self) -> tuple[Any, ...]:
        """Changes when any of the files is rewritten (see `files_fingerprint`)."""
        return files_fingerprint(self.ca_file, self.cert_file, self.key_file)

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_file.read_bytes(),
            private_key=self.key_file.read_bytes() if self.key_file else None,
            certificate_chain=self.cert_file.read_bytes() if self.cert_file else None,
        )


def _channel_closed() -> ProviderError:
    """A call cancelled by its channel's close (``repoint``), not by its caller: the caller sees
    an UNAVAILABLE provider and retries, as for any lost connection."""
    task = asyncio.current_task()
    if task is None or task.cancelling():
        raise asyncio.CancelledError
    return ProviderError("the channel to the provider was closed", code=grpc.StatusCode.UNAVAILABLE)


async def _unary(call: Awaitable[Any]) -> Any:
    """Await one call; a failed one raises the ProviderError of its status code."""
    try:
        return await call
    except grpc.aio.AioRpcError as err:
        raise error_from_rpc(err) from None
    except asyncio.CancelledError:
        raise _channel_closed() from None


async def _stream(call: AsyncIterator[T]) -> AsyncIterator[T]:
    try:
        async for msg in call:
            yield msg
    except grpc.aio.AioRpcError as err:
        raise error_from_rpc(err) from None
    except asyncio.CancelledError:
        raise _channel_closed() from None


async def _cancelling(call: Any) -> AsyncGenerator[Any, None]:
    """Relay a streaming call; closing the iterator early cancels the call."""
    try:
        async for msg in call:
            yield msg
    except grpc.aio.AioRpcError as err:
        raise error_from_rpc(err) from None
    finally:
        call.cancel()


class GrpcProvider:
    """A provider reached at ``address``; every call raises ProviderError on failure."""

    def __init__(self, name: str, address: str, *, tls: ProviderTls | None = None,
                 call_timeout: float = 120.0) -> None:
        self.name = name
        self._tls = tls
        self._timeout = call_timeout
        self._tls_seen: tuple[Any, ...] | None = None
        self._open(address)

    def _open(self, address: str) -> None:
        self.address = address
        tls = self._tls
        self._tls_seen = tls.fingerprint() if tls else None
        options = [("grpc.keepalive_time_ms", 20000), ("grpc.keepalive_timeout_ms", 10000),
                   ("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        self._channel = (grpc.aio.secure_channel(address, tls.credentials(), options=options)
                         if tls else grpc.aio.insecure_channel(address, options=options))
        self._nodes = node_provider_service_pb2_grpc.NodeProviderServiceStub(self._channel)
        self._pods = pod_lifecycle_service_pb2_grpc.PodLifecycleServiceStub(self._channel)
        self._notifier = pod_notifier_service_pb2_grpc.PodNotifierServiceStub(self._channel)
        self._vms = virtual_machine_service_pb2_grpc.VirtualMachineServiceStub(self._channel)
        self._disks = disk_service_pb2_grpc.DiskServiceStub(self._channel)
        self._endpoints = kubelet_endpoint_service_pb2_grpc.KubeletEndpointServiceStub(
            self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def repoint(self, address: str, grace: float = 5.0) -> None:
        """Call the provider at ``address`` from now on (providerfile: swapping a provider).
        Calls in flight on the old address get ``grace`` seconds; its streams then end, and the
        controllers following them reconnect, to the new address."""
        old = self._channel
        self._open(address)
        await old.close(grace)

    async def reload_tls(self) -> bool:
        """Open a fresh channel when the TLS files changed since the current one was opened (a
        rotated client certificate or CA); True when it did. Files that cannot be read keep the
        current channel."""
        if self._tls is None or self._tls.fingerprint() == self._tls_seen:
            return False
        old = self._channel
        try:
            self._open(self.address)
        except OSError as err:
            log.warning("provider %s: certificates not reloaded: %s", self.name, err)
            return False
        log.info("provider %s: certificates reloaded", self.name)
        await old.close(5.0)
        return True

    # -- nodes -------------------------------------------------------------------------------

    async def ping(self) -> None:
        await _unary(self._nodes.Ping(node_provider_service_pb2.PingRequest(), timeout=5))

    async def reachable(self) -> bool:
        try:
            await self._health.Check(health_pb2.HealthCheckRequest(), timeout=3)
        except grpc.aio.AioRpcError as err:
            # Any other code is an answer (a health service without an overall status).
            return err.code() not in (grpc.StatusCode.UNAVAILABLE,
                                      grpc.StatusCode.DEADLINE_EXCEEDED)
        return True

    async def list_nodes(self) -> list[node_pb2.Node]:
        resp = await _unary(self._nodes.ListNodes(
            node_provider_service_pb2.ListNodesRequest(), timeout=30))
        return list(resp.nodes)

    def watch_nodes(self) -> AsyncIterator[node_provider_service_pb2.NotifyNodeStatusResponse]:
        return _stream(self._nodes.NotifyNodeStatus(
            node_provider_service_pb2.NotifyNodeStatusRequest()))

    # -- pods --------------------------------------------------------------------------------

    async def create_pod(self, pod: pb.Pod) -> pb.PodStatus:
        resp = await _unary(self._pods.CreatePod(
            pod_lifecycle_service_pb2.CreatePodRequest(pod=pod), timeout=self._timeout))
        status: pb.PodStatus = resp.status
        return status

    async def update_pod(self, pod: pb.Pod) -> pb.PodStatus:
        resp = await _unary(self._pods.UpdatePod(
            pod_lifecycle_service_pb2.UpdatePodRequest(pod=pod), timeout=self._timeout))
        status: pb.PodStatus = resp.status
        return status

    async def delete_pod(self, pod: pb.Pod) -> None:
        await _unary(self._pods.DeletePod(
            pod_lifecycle_service_pb2.DeletePodRequest(pod=pod), timeout=self._timeout))

    async def start_pod(self, pod: pb.Pod) -> pb.PodStatus:
        resp = await _unary(self._pods.StartPod(
            pod_lifecycle_service_pb2.StartPodRequest(pod=pod), timeout=self._timeout))
        status: pb.PodStatus = resp.status
        return status

    async def stop_pod(self, pod: pb.Pod, grace_seconds: int) -> pb.PodStatus:
        resp = await _unary(self._pods.StopPod(
            pod_lifecycle_service_pb2.StopPodRequest(pod=pod, grace_seconds=grace_seconds),
            timeout=self._timeout + grace_seconds))
        status: pb.PodStatus = resp.status
        return status

    async def get_pods(self) -> list[pb.PodWithStatus]:
        resp = await _unary(self._pods.GetPods(pod_lifecycle_service_pb2.GetPodsRequest(),
                                               timeout=60))
        return list(resp.pods)

    def watch_pods(self) -> AsyncIterator[pod_notifier_service_pb2.NotifyPodsResponse]:
        return _stream(self._notifier.NotifyPods(pod_notifier_service_pb2.NotifyPodsRequest()))

    # -- VMs ---------------------------------------------------------------------------------

    async def get_vm(self, identity: str, namespace: str = "") -> vm_pb.VirtualMachine:
        resp = await _unary(self._vms.GetVirtualMachine(
            vm_pb.GetVirtualMachineRequest(identity=identity, namespace=namespace), timeout=30))
        vm: vm_pb.VirtualMachine = resp.virtual_machine
        return vm

    async def delete_vm(self, identity: str, namespace: str = "") -> None:
        await _unary(self._vms.DeleteVirtualMachine(
            vm_pb.DeleteVirtualMachineRequest(identity=identity, namespace=namespace),
            timeout=self._timeout))

    async def create_snapshot(self, identity: str, name: str, description: str,
                              namespace: str = "") -> vm_pb.Snapshot:
        resp = await _unary(self._vms.CreateSnapshot(vm_pb.CreateSnapshotRequest(
            identity=identity, name=name, description=description, namespace=namespace),
            timeout=self._timeout))
        snapshot: vm_pb.Snapshot = resp.snapshot
        return snapshot

    async def revert_to_snapshot(self, identity: str, snapshot_id: str,
                                 namespace: str = "") -> None:
        await _unary(self._vms.RevertToSnapshot(vm_pb.RevertToSnapshotRequest(
            identity=identity, snapshot_id=snapshot_id, namespace=namespace),
            timeout=self._timeout))

    async def delete_snapshot(self, identity: str, snapshot_id: str,
                              namespace: str = "") -> None:
        await _unary(self._vms.DeleteSnapshot(vm_pb.DeleteSnapshotRequest(
            identity=identity, snapshot_id=snapshot_id, namespace=namespace),
            timeout=self._timeout))

    async def create_disk(self, name: str, size_bytes: int,
                          parameters: dict[str, str]) -> vm_pb.Disk:
        resp = await _unary(self._disks.CreateDisk(vm_pb.CreateDiskRequest(
            name=name, size_bytes=size_bytes, parameters=parameters), timeout=self._timeout))
        disk: vm_pb.Disk = resp.disk
        return disk

    async def delete_disk(self, handle: str) -> None:
        await _unary(self._disks.DeleteDisk(vm_pb.DeleteDiskRequest(handle=handle),
                                            timeout=self._timeout))

    async def expand_disk(self, handle: str, size_bytes: int) -> vm_pb.Disk:
        resp = await _unary(self._disks.ExpandDisk(vm_pb.ExpandDiskRequest(
            handle=handle, size_bytes=size_bytes), timeout=self._timeout))
        disk: vm_pb.Disk = resp.disk
        return disk

    # -- kubelet endpoints -------------------------------------------------------------------

    def container_logs(
        self, request: kep.GetContainerLogsRequest,
    ) -> AsyncGenerator[kep.GetContainerLogsResponse, None]:
        return _cancelling(self._endpoints.GetContainerLogs(request))

    def exec(
        self, requests: AsyncIterator[kep.ExecRequest],
    ) -> AsyncGenerator[kep.ExecResponse, None]:
        return _cancelling(self._endpoints.Exec(requests))

    def attach(
        self, requests: AsyncIterator[kep.AttachRequest],
    ) -> AsyncGenerator[kep.AttachResponse, None]:
        return _cancelling(self._endpoints.Attach(requests))

    def port_forward(
        self, requests: AsyncIterator[kep.PortForwardRequest],
    ) -> AsyncGenerator[kep.PortForwardResponse, None]:
        return _cancelling(self._endpoints.PortForward(requests))

    async def stats_summary(self, node: str) -> kep.GetStatsSummaryResponse:
        resp: kep.GetStatsSummaryResponse = await _unary(self._endpoints.GetStatsSummary(
            kep.GetStatsSummaryRequest(node_name=node), timeout=30))
        return resp


async def follow_certificates(providers: Sequence[GrpcProvider], *,
                              interval: float = 10.0) -> None:
    """Every ``interval`` seconds, give each provider whose TLS files changed a fresh channel."""
    while True:
        await asyncio.sleep(interval)
        for provider in providers:
            try:
                await provider.reload_tls()
            except Exception:  # a failed reload must not take the facade down
                log.exception("provider %s: certificates not reloaded", provider.name)
