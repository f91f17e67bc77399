"""VirtualMachineService over vSphere: VMs and their snapshots by identity, and disks as
first-class disks through the VStorageObjectManager (see `disks`)."""

from __future__ import annotations

from typing import Any

from vmlet.provider.v1 import virtual_machine_service_pb2 as pb
from vmlet.provider.v1 import virtual_machine_service_pb2_grpc as pb_grpc

from .disks import Disks
from .nodes import NodeBook
from .pods import Pods
from .sizing import MIB
from .snapshots import Snapshots
from .status import guest_ips

__all__ = ["VirtualMachines"]


_POWER = {
    "poweredOn": pb.POWER_STATE_ON,
    "poweredOff": pb.POWER_STATE_OFF,
    "suspended": pb.POWER_STATE_SUSPENDED,
}


class VirtualMachines(pb_grpc.VirtualMachineServiceServicer):
    """VMs and their snapshots, named by identity; disks by handle."""

    def __init__(self, pods: Pods, book: NodeBook, snapshots: Snapshots, disks: Disks) -> None:
        self._pods = pods
        self._book = book
        self._snapshots = snapshots
        self._disks = disks

    async def GetVirtualMachine(
        self, request: pb.GetVirtualMachineRequest, context: Any
    ) -> pb.GetVirtualMachineResponse:
        vm = await self._pods.describe(request.identity, request.namespace)
        return pb.GetVirtualMachineResponse(
            virtual_machine=pb.VirtualMachine(
                identity=vm.identity,
                provider_id=vm.moid,
                name=vm.name,
                power_state=_POWER.get(vm.power, pb.POWER_STATE_UNSPECIFIED),
                node_name=self._book.node_name_of(vm.host),
                cpus=vm.num_cpu,
                memory_bytes=vm.memory_mb * MIB,
                ip_addresses=guest_ips(vm) if vm.powered_on else [],
                disk_handles=list(vm.disks),
            )
        )

    async def DeleteVirtualMachine(
        self, request: pb.DeleteVirtualMachineRequest, context: Any
    ) -> pb.DeleteVirtualMachineResponse:
        await self._pods.destroy(request.identity, request.namespace)
        return pb.DeleteVirtualMachineResponse()

    async def CreateSnapshot(
        self, request: pb.CreateSnapshotRequest, context: Any
    ) -> pb.CreateSnapshotResponse:
        await self._pods.check_owner(request.identity, request.namespace)
        snap = await self._snapshots.create(request.identity, request.name, request.description)
        return pb.CreateSnapshotResponse(snapshot=snap)

    async def RevertToSnapshot(
        self, request: pb.RevertToSnapshotRequest, context: Any
    ) -> pb.RevertToSnapshotResponse:
        await self._pods.check_owner(request.identity, request.namespace)
        await self._snapshots.revert(request.identity, request.snapshot_id)
        return pb.RevertToSnapshotResponse()

    async def DeleteSnapshot(
        self, request: pb.DeleteSnapshotRequest, context: Any
    ) -> pb.DeleteSnapshotResponse:
        await self._pods.check_owner(request.identity, request.namespace)
        await self._snapshots.delete(request.identity, request.snapshot_id)
        return pb.DeleteSnapshotResponse()

    async def ListSnapshots(
        self, request: pb.ListSnapshotsRequest, context: Any
    ) -> pb.ListSnapshotsResponse:
        await self._pods.check_owner(request.identity, request.namespace)
        return pb.ListSnapshotsResponse(snapshots=await self._snapshots.list_for(request.identity))

    async def CreateDisk(
        self, request: pb.CreateDiskRequest, context: Any
    ) -> pb.CreateDiskResponse:
        disk = await self._disks.create(request.name, request.size_bytes, request.parameters)
        return pb.CreateDiskResponse(disk=disk)

    async def DeleteDisk(
        self, request: pb.DeleteDiskRequest, context: Any
    ) -> pb.DeleteDiskResponse:
        await self._disks.delete(request.handle)
        return pb.DeleteDiskResponse()

    async def ExpandDisk(
        self, request: pb.ExpandDiskRequest, context: Any
    ) -> pb.ExpandDiskResponse:
        return pb.ExpandDiskResponse(
            disk=await self._disks.expand(request.handle, request.size_bytes)
        )

    async def GetDisk(self, request: pb.GetDiskRequest, context: Any) -> pb.GetDiskResponse:
        return pb.GetDiskResponse(disk=await self._disks.get(request.handle))
