"""The backends of VirtualMachineService (snapshots per machine) and DiskService (disks by handle)
over the in-memory cloud."""

from __future__ import annotations

from collections.abc import Mapping

from vmlet.provider.v1 import virtual_machine_service_pb2 as pb

from . import snapshots
from .cloud import Cloud

__all__ = ["Disks", "VirtualMachines"]


async def _changed(cloud: Cloud) -> None:
    """Marks the cloud changed and waits until it is persisted."""
    cloud.on_change()
    await cloud.flush()


class VirtualMachines:
    """VMs and their snapshots, answered once persisted (a `kit.VirtualMachineBackend`)."""

    def __init__(self, cloud: Cloud) -> None:
        self._cloud = cloud

    async def get_vm(self, identity: str, namespace: str) -> pb.VirtualMachine:
        return self._cloud.describe(identity, namespace)

    async def delete_vm(self, identity: str, namespace: str) -> None:
        self._cloud.destroy(identity, namespace)
        await self._cloud.flush()

    async def check_owner(self, identity: str, namespace: str) -> None:
        self._cloud.find(identity, namespace)

    async def create_snapshot(self, identity: str, name: str, description: str) -> pb.Snapshot:
        snap = snapshots.take(self._cloud.machine(identity), name, description)
        await _changed(self._cloud)
        return snap

    async def revert_to_snapshot(self, identity: str, snapshot_id: str) -> None:
        snapshots.revert(self._cloud.machine(identity), snapshot_id)
        await _changed(self._cloud)

    async def delete_snapshot(self, identity: str, snapshot_id: str) -> None:
        vm = self._cloud.find(identity)  # unknown ones succeed
        if vm is not None and snapshots.drop(vm, snapshot_id):
            await _changed(self._cloud)

    async def list_snapshots(self, identity: str) -> list[pb.Snapshot]:
        return list(self._cloud.machine(identity).snapshots.values())


class Disks:
    """The cloud's disks, answered once persisted (a `kit.DiskBackend`)."""

    def __init__(self, cloud: Cloud) -> None:
        self._cloud = cloud

    async def create(self, name: str, size_bytes: int, parameters: Mapping[str, str]) -> pb.Disk:
        disk = self._cloud.disks.create(name, size_bytes, dict(parameters))
        await _changed(self._cloud)
        return disk.as_message()

    async def delete(self, handle: str) -> None:
        self._cloud.disks.delete(handle)
        await _changed(self._cloud)

    async def expand(self, handle: str, size_bytes: int) -> pb.Disk:
        disk = self._cloud.disks.expand(handle, size_bytes)
        await _changed(self._cloud)
        return disk.as_message()

    async def get(self, handle: str) -> pb.Disk:
        return self._cloud.disks.get(handle).as_message()
