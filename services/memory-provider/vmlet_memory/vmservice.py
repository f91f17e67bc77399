"""VirtualMachineService over the in-memory cloud: snapshots per machine, disks by handle."""

from __future__ import annotations

from typing import Any

from vmlet.provider.v1 import virtual_machine_service_pb2 as pb
from vmlet.provider.v1 import virtual_machine_service_pb2_grpc as pb_grpc

from . import snapshots
from .cloud import Cloud

__all__ = ["VirtualMachines"]


class VirtualMachines(pb_grpc.VirtualMachineServiceServicer):
    """Snapshots and disks, answered once persisted."""

    def __init__(self, cloud: Cloud) -> None:
        self._cloud = cloud

    async def GetVirtualMachine(
        self, request: pb.GetVirtualMachineRequest, context: Any
    ) -> pb.GetVirtualMachineResponse:
        return pb.GetVirtualMachineResponse(virtual_machine=self._cloud.describe(
            request.identity, request.namespace))

    async def DeleteVirtualMachine(
        self, request: pb.DeleteVirtualMachineRequest, context: Any
    ) -> pb.DeleteVirtualMachineResponse:
        self._cloud.destroy(request.identity, request.namespace)
        await self._cloud.flush()
        return pb.DeleteVirtualMachineResponse()

    async def CreateSnapshot(
        self, request: pb.CreateSnapshotRequest, context: Any
    ) -> pb.CreateSnapshotResponse:
        vm = self._cloud.machine(request.identity, request.namespace)
        snap = snapshots.take(vm, request.name, request.description)
        self._cloud.on_change()
        await self._cloud.flush()
        return pb.CreateSnapshotResponse(snapshot=snap)

    async def RevertToSnapshot(
        self, request: pb.RevertToSnapshotRequest, context: Any
    ) -> pb.RevertToSnapshotResponse:
        snapshots.revert(self._cloud.machine(request.identity, request.namespace),
                         request.snapshot_id)
        self._cloud.on_change()
        await self._cloud.flush()
        return pb.RevertToSnapshotResponse()

    async def DeleteSnapshot(
        self, request: pb.DeleteSnapshotRequest, context: Any
    ) -> pb.DeleteSnapshotResponse:
        vm = self._cloud.find(request.identity, request.namespace)  # unknown ones succeed
        if vm is not None and snapshots.drop(vm, request.snapshot_id):
            self._cloud.on_change()
            await self._cloud.flush()
        return pb.DeleteSnapshotResponse()

    async def ListSnapshots(
        self, request: pb.ListSnapshotsRequest, context: Any
    ) -> pb.ListSnapshotsResponse:
        vm = self._cloud.machine(request.identity, request.namespace)
        return pb.ListSnapshotsResponse(snapshots=list(vm.snapshots.values()))

    async def CreateDisk(
        self, request: pb.CreateDiskRequest, context: Any
    ) -> pb.CreateDiskResponse:
        disk = self._cloud.disks.create(request.name, request.size_bytes,
                                        dict(request.parameters))
        self._cloud.on_change()
        await self._cloud.flush()
        return pb.CreateDiskResponse(disk=disk.as_message())

    async def DeleteDisk(
        self, request: pb.DeleteDiskRequest, context: Any
    ) -> pb.DeleteDiskResponse:
        self._cloud.disks.delete(request.handle)
        self._cloud.on_change()
        await self._cloud.flush()
        return pb.DeleteDiskResponse()

    async def GetDisk(self, request: pb.GetDiskRequest, context: Any) -> pb.GetDiskResponse:
        return pb.GetDiskResponse(disk=self._cloud.disks.get(request.handle).as_message())

    async def ExpandDisk(
        self, request: pb.ExpandDiskRequest, context: Any
    ) -> pb.ExpandDiskResponse:
        disk = self._cloud.disks.expand(request.handle, request.size_bytes)
        self._cloud.on_change()
        await self._cloud.flush()
        return pb.ExpandDiskResponse(disk=disk.as_message())
