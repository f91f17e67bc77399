"""The one small interface facade controllers know a provider by.

`grpcprovider.GrpcProvider` implements it over the generated stubs; unit tests implement it with
a fake that counts calls. Failed calls raise `vmlet_contract.ProviderError` (with its gRPC code).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from vmlet.provider.v1 import (
    node_pb2,
    node_provider_service_pb2,
    pod_notifier_service_pb2,
    virtual_machine_service_pb2,
)
from vmlet.provider.v1 import pod_pb2 as pb

__all__ = ["Provider"]


class Provider(Protocol):
    """What the node and pod controllers need from a provider."""

    name: str

    async def ping(self) -> None: ...

    async def list_nodes(self) -> list[node_pb2.Node]: ...

    def watch_nodes(self) -> AsyncIterator[node_provider_service_pb2.NotifyNodeStatusResponse]: ...

    async def create_pod(self, pod: pb.Pod) -> pb.PodStatus: ...

    async def update_pod(self, pod: pb.Pod) -> pb.PodStatus: ...

    async def delete_pod(self, pod: pb.Pod) -> None: ...

    async def get_pods(self) -> list[pb.PodWithStatus]: ...

    def watch_pods(self) -> AsyncIterator[pod_notifier_service_pb2.NotifyPodsResponse]: ...

    async def get_vm(self, identity: str) -> virtual_machine_service_pb2.VirtualMachine: ...

    async def delete_vm(self, identity: str) -> None: ...

    async def create_snapshot(self, identity: str, name: str,
                              description: str) -> virtual_machine_service_pb2.Snapshot: ...

    async def revert_to_snapshot(self, identity: str, snapshot_id: str) -> None: ...

    async def delete_snapshot(self, identity: str, snapshot_id: str) -> None: ...
