"""VirtualMachineService: VMs and snapshots by identity; its deprecated disk RPCs are
DiskService's (`disks`), served for one release.

A VM recorded for another namespace than the caller's is `PermissionDenied`
(`vmlet_contract.check_namespace`): `get_vm` and `delete_vm` check it under their own locks, and
the kit asks `check_owner` before every snapshot call. A VM that is not there is `NotFound`
(deletes of what is not there succeed).
"""

from __future__ import annotations

from typing import Any, Protocol

import grpc

from vmlet.provider.v1 import virtual_machine_service_pb2 as pb
from vmlet.provider.v1 import virtual_machine_service_pb2_grpc as pb_grpc

from ..errors import ProviderError
from .disks import DiskBackend, DiskServicer

__all__ = ["VirtualMachineBackend", "VirtualMachineServicer"]


class VirtualMachineBackend(Protocol):
    """VMs and their snapshots."""

    async def get_vm(self, identity: str, namespace: str) -> pb.VirtualMachine:
        """The VM of `identity` as the IaaS has it."""
        ...

    async def delete_vm(self, identity: str, namespace: str) -> None:
        """Destroys the VM of `identity` (a kept VM included); an unknown one succeeds."""
        ...

    async def check_owner(self, identity: str, namespace: str) -> None:
        """`PermissionDenied` when the VM of `identity` belongs to another namespace than
        `namespace` (when given); an unknown VM passes."""
        ...

    async def create_snapshot(self, identity: str, name: str, description: str) -> pb.Snapshot:
        """Snapshots the VM of `identity`."""
        ...

    async def revert_to_snapshot(self, identity: str, snapshot_id: str) -> None:
        """Reverts the VM of `identity` to a snapshot of it."""
        ...

    async def delete_snapshot(self, identity: str, snapshot_id: str) -> None:
        """Deletes a snapshot; an unknown VM or snapshot succeeds."""
        ...

    async def list_snapshots(self, identity: str) -> list[pb.Snapshot]:
        """The snapshots of the VM of `identity`."""
        ...


class VirtualMachineServicer(pb_grpc.VirtualMachineServiceServicer):
    """VirtualMachineService over a `VirtualMachineBackend`; its deprecated disk RPCs are
    `disks`' (DiskService's), UNIMPLEMENTED without one."""

    def __init__(self, backend: VirtualMachineBackend, disks: DiskBackend | None = None) -> None:
        self._backend = backend
        self._disks = DiskServicer(disks) if disks is not None else None

    async def GetVirtualMachine(
        self, request: pb.GetVirtualMachineRequest, context: Any
    ) -> pb.GetVirtualMachineResponse:
        vm = await self._backend.get_vm(request.identity, request.namespace)
        return pb.GetVirtualMachineResponse(virtual_machine=vm)

    async def DeleteVirtualMachine(
        self, request: pb.DeleteVirtualMachineRequest, context: Any
    ) -> pb.DeleteVirtualMachineResponse:
        await self._backend.delete_vm(request.identity, request.namespace)
        return pb.DeleteVirtualMachineResponse()

    async def CreateSnapshot(
        self, request: pb.CreateSnapshotRequest, context: Any
    ) -> pb.CreateSnapshotResponse:
        await self._backend.check_owner(request.identity, request.namespace)
        snapshot = await self._backend.create_snapshot(
            request.identity, request.name, request.description
        )
        return pb.CreateSnapshotResponse(snapshot=snapshot)

    async def RevertToSnapshot(
        self, request: pb.RevertToSnapshotRequest, context: Any
    ) -> pb.RevertToSnapshotResponse:
        await self._backend.check_owner(request.identity, request.namespace)
        await self._backend.revert_to_snapshot(request.identity, request.snapshot_id)
        return pb.RevertToSnapshotResponse()

    async def DeleteSnapshot(
        self, request: pb.DeleteSnapshotRequest, context: Any
    ) -> pb.DeleteSnapshotResponse:
        await self._backend.check_owner(request.identity, request.namespace)
        await self._backend.delete_snapshot(request.identity, request.snapshot_id)
        return pb.DeleteSnapshotResponse()

    async def ListSnapshots(
        self, request: pb.ListSnapshotsRequest, context: Any
    ) -> pb.ListSnapshotsResponse:
        await self._backend.check_owner(request.identity, request.namespace)
        snapshots = await self._backend.list_snapshots(request.identity)
        return pb.ListSnapshotsResponse(snapshots=snapshots)

    # The deprecated disk RPCs, served for one release: DiskService's, answered alike.

    def _disk_service(self) -> DiskServicer:
        if self._disks is None:
            raise ProviderError("this provider serves no disks", code=grpc.StatusCode.UNIMPLEMENTED)
        return self._disks

    async def CreateDisk(
        self, request: pb.CreateDiskRequest, context: Any
    ) -> pb.CreateDiskResponse:
        return await self._disk_service().CreateDisk(request, context)

    async def DeleteDisk(
        self, request: pb.DeleteDiskRequest, context: Any
    ) -> pb.DeleteDiskResponse:
        return await self._disk_service().DeleteDisk(request, context)

    async def ExpandDisk(
        self, request: pb.ExpandDiskRequest, context: Any
    ) -> pb.ExpandDiskResponse:
        return await self._disk_service().ExpandDisk(request, context)

    async def GetDisk(self, request: pb.GetDiskRequest, context: Any) -> pb.GetDiskResponse:
        return await self._disk_service().GetDisk(request, context)
