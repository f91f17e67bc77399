"""The virtual machine backend over the in-memory cloud: snapshots per machine, disks by handle."""

from __future__ import annotations

from vmlet.provider.v1 import virtual_machine_service_pb2 as pb

from . import snapshots
from .cloud import Cloud

__all__ = ["VirtualMachines"]


class VirtualMachines:
    """Snapshots and disks, answered once persisted (a `kit.VirtualMachineBackend`)."""

    def __init__(self, cloud: Cloud) -> None:
        self._cloud = cloud

    async def _changed(self) -> None:
        self._cloud.on_change()
        await self._cloud.flush()

    async def get_vm(self, identity: str, namespace: str) -> pb.VirtualMachine:
        return self._cloud.describe(identity, namespace)

    async def delete_vm(self, identity: str, namespace: str) -> None:
        self._cloud.destroy(identity, namespace)
        await self._cloud.flush()

    async def check_owner(self, identity: str, namespace: str) -> None:
        self._cloud.find(identity, namespace)

    async def create_snapshot(self, identity: str, name: str, description: str) -> pb.Snapshot:
        snap = snapshots.take(self._cloud.machine(identity), name, description)
        await self._changed()
        return snap

    async def revert_to_snapshot(self, identity: str, snapshot_id: str) -> None:
        snapshots.revert(self._cloud.machine(identity), snapshot_id)
        await self._changed()

    async def delete_snapshot(self, identity: str, snapshot_id: str) -> None:
        vm = self._cloud.find(identity)  # unknown ones succeed
        if vm is not None and snapshots.drop(vm, snapshot_id):
            await self._changed()

    async def list_snapshots(self, identity: str) -> list[pb.Snapshot]:
        return list(self._cloud.machine(identity).snapshots.values())

    async def create_disk(self, name: str, size_bytes: int, parameters: dict[str, str]) -> pb.Disk:
        disk = self._cloud.disks.create(name, size_bytes, parameters)
        await self._changed()
        return disk.as_message()

    async def delete_disk(self, handle: str) -> None:
        self._cloud.disks.delete(handle)
        await self._changed()

    async def expand_disk(self, handle: str, size_bytes: int) -> pb.Disk:
        disk = self._cloud.disks.expand(handle, size_bytes)
        await self._changed()
        return disk.as_message()

    async def get_disk(self, handle: str) -> pb.Disk:
        return self._cloud.disks.get(handle).as_message()
