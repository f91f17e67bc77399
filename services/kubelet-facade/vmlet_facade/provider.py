"""The small interfaces facade components know a provider by, one per consumer.

Each controller is typed with the narrowest of them: the node controller with `NodeSource`, the
pod controller with `PodHost` (pod lifecycle, and snapshots for operation pods), the
VirtualMachine and operations controllers with `VmOperations`, the provisioner with `Disks`, the
kubelet API with `KubeletEndpoints`. `Provider` is their composition, used only where the facade
is wired (app.py, cluster.py) and by the kubelet API, which reaches a pod's provider through the
pod controller.

`grpcprovider.GrpcProvider` implements them over the generated stubs; unit tests implement them
with an in-memory fake that records calls (services/kubelet-facade/tests/fakes/provider.py).
Failed calls raise `vmlet_contract.ProviderError` (with its gRPC code).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Protocol

from vmlet.provider.v1 import kubelet_endpoint_service_pb2 as kep
from vmlet.provider.v1 import (
    node_pb2,
    node_provider_service_pb2,
    pod_notifier_service_pb2,
    virtual_machine_service_pb2,
)
from vmlet.provider.v1 import pod_pb2 as pb

__all__ = ["Disks", "KubeletEndpoints", "NodeSource", "PodHost", "PodLifecycle", "Provider",
           "VmOperations"]


class NodeSource(Protocol):
    """The nodes a provider backs and its health (the node controller)."""

    @property
    def name(self) -> str: ...

    async def ping(self) -> None: ...

    async def reachable(self) -> bool:
        """Whether the provider process answers at all (its gRPC health check), whatever the
        state of its IaaS."""
        ...

    async def list_nodes(self) -> list[node_pb2.Node]: ...

    def watch_nodes(self) -> AsyncIterator[node_provider_service_pb2.NotifyNodeStatusResponse]: ...


class PodLifecycle(Protocol):
    """Pods carried to the provider and their status back."""

    @property
    def name(self) -> str: ...

    async def create_pod(self, pod: pb.Pod) -> pb.PodStatus: ...

    async def update_pod(self, pod: pb.Pod) -> pb.PodStatus: ...

    async def delete_pod(self, pod: pb.Pod) -> None: ...

    async def start_pod(self, pod: pb.Pod) -> pb.PodStatus: ...

    async def stop_pod(self, pod: pb.Pod, grace_seconds: int) -> pb.PodStatus: ...

    async def get_pods(self) -> list[pb.PodWithStatus]: ...

    def watch_pods(self) -> AsyncIterator[pod_notifier_service_pb2.NotifyPodsResponse]: ...


class VmOperations(Protocol):
    """What pods cannot express about a VM: look-up, destroy, snapshots.

    ``namespace``: the VM's namespace as vmlet knows it; the provider refuses a VM it recorded
    for another namespace (PERMISSION_DENIED).
    """

    async def get_vm(self, identity: str,
                     namespace: str = "") -> virtual_machine_service_pb2.VirtualMachine: ...

    async def delete_vm(self, identity: str, namespace: str = "") -> None: ...

    async def create_snapshot(self, identity: str, name: str, description: str,
                              namespace: str = "") -> virtual_machine_service_pb2.Snapshot: ...

    async def revert_to_snapshot(self, identity: str, snapshot_id: str,
                                 namespace: str = "") -> None: ...

    async def delete_snapshot(self, identity: str, snapshot_id: str,
                              namespace: str = "") -> None: ...


class Disks(Protocol):
    """Disks behind PersistentVolumes (the provisioner), the provider's DiskService."""

    async def create_disk(self, name: str, size_bytes: int,
                          parameters: dict[str, str]) -> virtual_machine_service_pb2.Disk: ...

    async def delete_disk(self, handle: str) -> None: ...

    async def expand_disk(self, handle: str,
                          size_bytes: int) -> virtual_machine_service_pb2.Disk: ...


class KubeletEndpoints(Protocol):
    """The kubelet endpoint streams (the kubelet API, vmlet_facade.kubeletapi).

    Streams end when the caller closes them (aclose): the provider's call is cancelled.
    """

    def container_logs(
        self, request: kep.GetContainerLogsRequest,
    ) -> AsyncGenerator[kep.GetContainerLogsResponse, None]: ...

    def exec(
        self, requests: AsyncIterator[kep.ExecRequest],
    ) -> AsyncGenerator[kep.ExecResponse, None]: ...

    def attach(
        self, requests: AsyncIterator[kep.AttachRequest],
    ) -> AsyncGenerator[kep.AttachResponse, None]: ...

    def port_forward(
        self, requests: AsyncIterator[kep.PortForwardRequest],
    ) -> AsyncGenerator[kep.PortForwardResponse, None]: ...

    async def stats_summary(self, node: str) -> kep.GetStatsSummaryResponse: ...


class PodHost(PodLifecycle, VmOperations, Protocol):
    """What the pod controller needs: pod lifecycle, and snapshots for operation pods."""


class Provider(NodeSource, PodHost, Disks, KubeletEndpoints, Protocol):
    """A whole provider: every interface above (the facade's wiring and the kubelet API)."""
