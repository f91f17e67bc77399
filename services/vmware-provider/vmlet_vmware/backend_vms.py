"""The virtual machine backend over vSphere: VMs and their snapshots by identity. Disks, first-class
disks through the VStorageObjectManager, are DiskService's: `disks.Disks` is its backend."""

from __future__ import annotations

from vmlet.provider.v1 import virtual_machine_service_pb2 as pb

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


class VirtualMachines:
    """VMs and their snapshots, named by identity (a `kit.VirtualMachineBackend`)."""

    def __init__(self, pods: Pods, book: NodeBook, snapshots: Snapshots) -> None:
        self._pods = pods
        self._book = book
        self._snapshots = snapshots

    async def get_vm(self, identity: str, namespace: str) -> pb.VirtualMachine:
        vm = await self._pods.describe(identity, namespace)
        return pb.VirtualMachine(
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

    async def delete_vm(self, identity: str, namespace: str) -> None:
        await self._pods.destroy(identity, namespace)

    async def check_owner(self, identity: str, namespace: str) -> None:
        await self._pods.check_owner(identity, namespace)

    async def create_snapshot(self, identity: str, name: str, description: str) -> pb.Snapshot:
        return await self._snapshots.create(identity, name, description)

    async def revert_to_snapshot(self, identity: str, snapshot_id: str) -> None:
        await self._snapshots.revert(identity, snapshot_id)

    async def delete_snapshot(self, identity: str, snapshot_id: str) -> None:
        await self._snapshots.delete(identity, snapshot_id)

    async def list_snapshots(self, identity: str) -> list[pb.Snapshot]:
        return await self._snapshots.list_for(identity)
