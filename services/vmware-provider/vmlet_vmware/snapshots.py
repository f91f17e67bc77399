"""vSphere snapshots of a VM named by identity: create (idempotent by name), revert, delete,
list.

Snapshots are taken without memory and without quiescing (the guest may lack VMware Tools), so
a revert keeps the power state the VM had before it: a VM that ran is powered on again (a
reverted pod keeps running), a stopped one stays off whatever state the snapshot recorded. A
snapshot's ID is its managed object ID ("snapshot-12"). Calls for one identity are serialized,
with each other and with the pod operations on that VM (the locks are the pods'), so two creates
of one name make one snapshot and a pod stopped during a revert stays stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pyVmomi import vim

from vmlet.provider.v1 import virtual_machine_service_pb2 as pb
from vmlet_contract import InvalidArgument, NotFound, podstatus
from vmlet_contract.locks import KeyedLocks

from .cache import Cache
from .props import moid, retrieve_one
from .records import VmRecord
from .session import Connection, Session
from .vms import Machines, TaskFailed

__all__ = ["SNAPSHOT_KIND", "Snapshots"]

SNAPSHOT_KIND = "vsphere-snapshot"


@dataclass(frozen=True)
class _Info:
    moid: str
    name: str
    description: str
    created: datetime | None


def _flatten(trees: Any) -> list[_Info]:
    out: list[_Info] = []
    stack = list(trees or ())
    while stack:
        node = stack.pop()
        out.append(
            _Info(moid(node.snapshot), str(node.name), str(node.description or ""), node.createTime)
        )
        stack.extend(node.childSnapshotList or ())
    return out


def _list(conn: Connection, vm: str) -> list[_Info]:
    found = retrieve_one(conn.si, conn.mo(vim.VirtualMachine, vm), ["snapshot"])
    if found is None:
        raise NotFound(f"VM {vm} no longer exists")
    info = found.get("snapshot")
    return _flatten(info.rootSnapshotList if info is not None else ())


def _create(conn: Connection, vm: str, name: str, description: str) -> str:
    task = conn.mo(vim.VirtualMachine, vm).CreateSnapshot_Task(
        name=name, description=description, memory=False, quiesce=False
    )
    return moid(task)


def _revert(conn: Connection, snapshot: str) -> str:
    return moid(conn.mo(vim.vm.Snapshot, snapshot).RevertToSnapshot_Task())


def _remove(conn: Connection, snapshot: str) -> str:
    return moid(conn.mo(vim.vm.Snapshot, snapshot).RemoveSnapshot_Task(removeChildren=False))


class Snapshots:
    """Snapshot operations by identity; see the module docstring."""

    def __init__(self, session: Session, cache: Cache, machines: Machines,
                 locks: KeyedLocks | None = None) -> None:
        self._session = session
        self._cache = cache
        self._machines = machines
        self._locks = locks if locks is not None else KeyedLocks()

    def _vm(self, identity: str) -> VmRecord:
        if not identity:
            raise InvalidArgument("an identity is needed")
        vm = self._cache.vm_of(identity)
        if vm is None:
            if self._session.connection is None:
                raise self._session.unavailable()
            raise NotFound(f"no VM with identity {identity}")
        return vm

    async def _infos(self, vm: VmRecord) -> list[_Info]:
        def read(conn: Connection) -> list[_Info]:
            return _list(conn, vm.moid)

        infos = await self._session.call(read, doing=f"list the snapshots of VM {vm.name}")
        return sorted(infos, key=lambda i: (i.created or datetime.min, i.moid))

    async def _task(self, start: Any, doing: str) -> Any:
        task = await self._session.call(start, doing=doing)
        try:
            return await self._machines.wait_task(task, doing)
        except TaskFailed as failed:
            raise failed.error from None

    @staticmethod
    def _message(info: _Info, identity: str) -> pb.Snapshot:
        snap = pb.Snapshot(
            id=info.moid,
            name=info.name,
            description=info.description,
            kind=SNAPSHOT_KIND,
            identity=identity,
        )
        if info.created is not None:
            snap.create_time.CopyFrom(podstatus.timestamp(info.created))
        return snap

    async def list_for(self, identity: str) -> list[pb.Snapshot]:
        """The VM's snapshots, oldest first."""
        vm = self._vm(identity)
        return [self._message(i, identity) for i in await self._infos(vm)]

    async def create(self, identity: str, name: str, description: str) -> pb.Snapshot:
        """Snapshots the VM; a second call with the same name returns the first snapshot."""
        if not name:
            raise InvalidArgument("a snapshot needs a name")
        async with self._locks.hold(identity):
            vm = self._vm(identity)
            for info in await self._infos(vm):
                if info.name == name:
                    return self._message(info, identity)

            def start(conn: Connection) -> str:
                return _create(conn, vm.moid, name, description)

            made = str(await self._task(start, f"snapshot VM {vm.name} as {name}"))
            for info in await self._infos(vm):
                if info.moid == made:
                    return self._message(info, identity)
            return pb.Snapshot(
                id=made, name=name, description=description, kind=SNAPSHOT_KIND, identity=identity
            )

    async def _find(self, vm: VmRecord, snapshot_id: str) -> _Info | None:
        for info in await self._infos(vm):
            if info.moid == snapshot_id:
                return info
        return None

    async def revert(self, identity: str, snapshot_id: str) -> None:
        """Puts the VM back to the snapshot in the power state it had before."""
        async with self._locks.hold(identity):
            vm = self._vm(identity)
            info = await self._find(vm, snapshot_id)
            if info is None:
                raise NotFound(f"VM of identity {identity} has no snapshot {snapshot_id}")
            was_on = (await self._machines.refresh(vm.moid) or vm).powered_on

            def start(conn: Connection) -> str:
                return _revert(conn, snapshot_id)

            await self._task(start, f"revert VM {vm.name} to snapshot {info.name}")
            current = await self._machines.refresh(vm.moid)
            if current is not None and current.powered_on != was_on:
                if was_on:
                    await self._machines.power_on(current)
                else:
                    await self._machines.power_off(current)

    async def delete(self, identity: str, snapshot_id: str) -> None:
        """Removes the snapshot; an unknown VM or snapshot is fine."""
        async with self._locks.hold(identity):
            try:
                vm = self._vm(identity)
            except NotFound:
                return
            if await self._find(vm, snapshot_id) is None:
                return

            def start(conn: Connection) -> str:
                return _remove(conn, snapshot_id)

            try:
                await self._task(start, f"delete snapshot {snapshot_id} of VM {vm.name}")
            except NotFound:
                return
