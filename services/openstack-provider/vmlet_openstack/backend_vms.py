"""The virtual machine backend over OpenStack: VMs by identity, snapshots as Glance images
(`snapshots`). Disks, Cinder volumes, are DiskService's: `disks.Disks` is its backend."""

from __future__ import annotations

from vmlet.provider.v1 import virtual_machine_service_pb2 as pb

from .disks import Disks
from .snapshots import Snapshots

__all__ = ["VirtualMachines"]


class VirtualMachines:
    """VMs and their snapshots by identity, with the disks each holds (a
    `kit.VirtualMachineBackend`)."""

    def __init__(self, snapshots: Snapshots, disks: Disks) -> None:
        self._snapshots = snapshots
        self._disks = disks

    async def get_vm(self, identity: str, namespace: str) -> pb.VirtualMachine:
        await self._snapshots.check_owner(identity, namespace)
        vm = await self._snapshots.get_vm(identity)
        vm.disk_handles.extend(await self._disks.attached(vm.provider_id))
        return vm

    async def delete_vm(self, identity: str, namespace: str) -> None:
        await self._snapshots.delete_vm(identity, namespace)

    async def check_owner(self, identity: str, namespace: str) -> None:
        await self._snapshots.check_owner(identity, namespace)

    async def create_snapshot(self, identity: str, name: str, description: str) -> pb.Snapshot:
        return await self._snapshots.create(identity, name, description)

    async def revert_to_snapshot(self, identity: str, snapshot_id: str) -> None:
        await self._snapshots.revert(identity, snapshot_id)

    async def delete_snapshot(self, identity: str, snapshot_id: str) -> None:
        await self._snapshots.delete(identity, snapshot_id)

    async def list_snapshots(self, identity: str) -> list[pb.Snapshot]:
        return await self._snapshots.all_of(identity)
