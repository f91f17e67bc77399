"""First-class disks (FCDs) as the provider's disks: made, grown, read and removed through
vCenter's VStorageObjectManager, and attached to VMs with AttachDisk/DetachDisk.

- Handle: the FCD's ID (a UUID), which the facade stores as the PersistentVolume's volume
  handle. The datastore an FCD lives on is found by asking the datastores of the datacenter
  (RetrieveVStorageObject) and remembered.
- Names: vSphere does not keep FCD names unique, so CreateDisk (idempotent by name) keeps an
  index of the datacenter's FCDs by name, read once per connection (ListVStorageObject on each
  datastore) and kept current by the provider's own creates and deletes; creates of one name
  are serialized. The facade's provisioner runs once per cluster, so no second process creates
  the same name at the same moment.
- Where a new disk goes: the StorageClass parameter `datastore` (a name), else --datastore,
  else the first (by name) datastore every served host mounts. Parameters: `datastore` and
  `provisioningType` (thin, the default, lazyZeroedThick or eagerZeroedThick); any other key is
  INVALID_ARGUMENT, so a typo does not go unnoticed.
- Size: FCDs are sized in whole MiB; a size is rounded up. Expansion only grows (ExtendDisk).
- Attachment: a disk is attached to at most one VM. Who holds it is the FCD's consumerId (the
  VM's UUID, which vCenter writes when it attaches the disk), mapped to that VM's identity. The
  VM remembers the disks vmlet attached in its extraConfig (vmlet.disks), so GetVirtualMachine
  lists them without asking about each disk, and the provider knows what to detach before it
  destroys a VM, together with the VM's VirtualDisk devices that vCenter shows backed by an FCD
  (vDiskId). Disks are made with keepAfterDeleteVm, so even a VM destroyed by hand in vCenter
  leaves them.

A pod names its disks in its volumes (DiskSource.volume_handle); `sync` attaches those it lacks
and detaches the ones vmlet attached that the pod no longer names. A kept (stopped) VM keeps its
disks; a VM being destroyed lets go of them first, so they survive it.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from pyVmomi import vim, vmodl

from vmlet.provider.v1 import pod_pb2
from vmlet.provider.v1 import virtual_machine_service_pb2 as pb
from vmlet_contract import FailedPrecondition, InvalidArgument, NotFound, ProviderError
from vmlet_contract.diskrequests import check_create_disk
from vmlet_contract.locks import KeyedLocks

from .cache import Cache
from .inventory import datastores
from .nodes import NodeBook
from .props import moid, retrieve_one
from .records import DISKS_KEY, VmRecord
from .session import Connection, Session
from .sizing import MIB
from .vms import Machines

__all__ = ["DISK_PARAMETERS", "Disks", "FcdInfo", "pod_disk_handles"]

_log = logging.getLogger(__name__)

PROVISIONING_TYPES: Final = ("thin", "lazyZeroedThick", "eagerZeroedThick")
DISK_PARAMETERS: Final = ("datastore", "provisioningType")


@dataclass(frozen=True)
class FcdInfo:
    """A first-class disk as vCenter describes it."""

    handle: str
    name: str
    datastore: str  # managed object ID
    capacity_mb: int
    consumers: tuple[str, ...]  # IDs of the VMs that hold it


def pod_disk_handles(pod: pod_pb2.Pod) -> tuple[str, ...]:
    """The handles of the disks a pod's volumes name, in order, without repeats;
    INVALID_ARGUMENT for a disk volume without a handle."""
    out: dict[str, None] = {}
    for volume in pod.volumes:
        if volume.WhichOneof("source") != "disk":
            continue
        handle = volume.disk.volume_handle
        if not handle:
            raise InvalidArgument(
                f"volume {volume.name} (claim {volume.disk.claim_name}) has no disk handle"
            )
        out[handle] = None
    return tuple(out)


# Worker-thread functions (blocking).


def _manager(conn: Connection) -> Any:
    ref = conn.inventory.storage_manager
    if ref is None:
        raise FailedPrecondition(
            f"{conn.inventory.product} has no VStorageObjectManager: first-class disks need "
            "vCenter 6.5 or later"
        )
    return conn.mo(vim.vslm.vcenter.VStorageObjectManager, ref)


def _disk_id(handle: str) -> Any:
    return vim.vslm.ID(id=handle)


def _info(obj: Any, datastore: str) -> FcdInfo:
    config = obj.config
    backing_ds = getattr(config.backing, "datastore", None)
    return FcdInfo(
        handle=str(config.id.id),
        name=str(config.name),
        datastore=moid(backing_ds) if backing_ds is not None else datastore,
        capacity_mb=int(config.capacityInMB or 0),
        consumers=tuple(str(c.id) for c in config.consumerId or ()),
    )


def _retrieve(conn: Connection, handle: str, datastore: str) -> FcdInfo | None:
    try:
        obj = _manager(conn).RetrieveVStorageObject(
            id=_disk_id(handle), datastore=conn.mo(vim.Datastore, datastore)
        )
    except (vim.fault.NotFound, vmodl.fault.InvalidArgument, vmodl.fault.ManagedObjectNotFound):
        return None
    return _info(obj, datastore)


def _locate(conn: Connection, handle: str, hint: str | None) -> FcdInfo | None:
    order = list(datastores(conn.si, conn.inventory))
    if hint in order:
        order.remove(hint)
        order.insert(0, hint)
    for datastore in order:
        found = _retrieve(conn, handle, datastore)
        if found is not None:
            return found
    return None


def _scan(conn: Connection) -> list[FcdInfo]:
    manager = _manager(conn)
    out: list[FcdInfo] = []
    for datastore in datastores(conn.si, conn.inventory):
        try:
            ids = manager.ListVStorageObject(datastore=conn.mo(vim.Datastore, datastore))
        except (vim.fault.NotFound, vmodl.fault.InvalidArgument):
            continue
        for disk_id in ids or ():
            found = _retrieve(conn, str(disk_id.id), datastore)
            if found is not None:
                out.append(found)
    return out


def _start_create(
    conn: Connection, name: str, size_mb: int, datastore: str, provisioning: str
) -> str:
    spec = vim.vslm.CreateSpec(
        name=name,
        capacityInMB=size_mb,
        keepAfterDeleteVm=True,
        backingSpec=vim.vslm.CreateSpec.DiskFileBackingSpec(
            datastore=conn.mo(vim.Datastore, datastore), provisioningType=provisioning
        ),
    )
    return moid(_manager(conn).CreateDisk_Task(spec=spec))


def _start_delete(conn: Connection, info: FcdInfo) -> str:
    task = _manager(conn).DeleteVStorageObject_Task(
        id=_disk_id(info.handle), datastore=conn.mo(vim.Datastore, info.datastore)
    )
    return moid(task)


def _start_extend(conn: Connection, info: FcdInfo, size_mb: int) -> str:
    task = _manager(conn).ExtendDisk_Task(
        id=_disk_id(info.handle),
        datastore=conn.mo(vim.Datastore, info.datastore),
        newCapacityInMB=size_mb,
    )
    return moid(task)


def _start_attach(conn: Connection, vm: str, info: FcdInfo) -> str:
    task = conn.mo(vim.VirtualMachine, vm).AttachDisk_Task(
        diskId=_disk_id(info.handle), datastore=conn.mo(vim.Datastore, info.datastore)
    )
    return moid(task)


def _start_detach(conn: Connection, vm: str, handle: str) -> str:
    return moid(conn.mo(vim.VirtualMachine, vm).DetachDisk_Task(diskId=_disk_id(handle)))


def _device_disks(conn: Connection, vm: str) -> tuple[str, ...]:
    """The FCD IDs behind the VM's VirtualDisk devices (vCenter shows them; vcsim does not)."""
    found = retrieve_one(conn.si, conn.mo(vim.VirtualMachine, vm), ["config.hardware.device"])
    out = []
    for device in (found or {}).get("config.hardware.device") or ():
        disk_id = (
            getattr(device, "vDiskId", None)
            if isinstance(device, vim.vm.device.VirtualDisk)
            else None
        )
        if disk_id is not None and getattr(disk_id, "id", None):
            out.append(str(disk_id.id))
    return tuple(out)


def _created(result: Any) -> FcdInfo:
    backing_ds = getattr(result.config.backing, "datastore", None)
    return _info(result, moid(backing_ds) if backing_ds is not None else "")


def _size_mb(size_bytes: int) -> int:
    return max(1, math.ceil(size_bytes / MIB))


class Disks:
    """The disk operations of the provider (`create`, `delete`, `expand` and `get` serve
    DiskService as its `kit.DiskBackend`); see the module docstring."""

    def __init__(self, session: Session, cache: Cache, machines: Machines, book: NodeBook) -> None:
        self._session = session
        self._cache = cache
        self._machines = machines
        self._book = book
        self._where: dict[str, str] = {}  # handle -> datastore it was last seen on
        self._names: dict[str, str] = {}  # name -> handle, valid for _names_generation
        self._names_generation = -1
        self._names_lock = asyncio.Lock()
        self._name_locks = KeyedLocks()
        self._disk_locks = KeyedLocks()

    # Reading.

    async def find(self, handle: str) -> FcdInfo | None:
        """The disk `handle`, None when no datastore has it."""
        if not handle:
            raise InvalidArgument("a disk handle is needed")
        hint = self._where.get(handle)

        def look(conn: Connection) -> FcdInfo | None:
            return _locate(conn, handle, hint)

        found: FcdInfo | None = await self._session.call(look, doing=f"look up disk {handle}")
        if found is None:
            self._where.pop(handle, None)
        else:
            self._where[handle] = found.datastore
        return found

    def holder(self, info: FcdInfo) -> VmRecord | None:
        """The managed VM that holds the disk, as its consumerId or the VM's own record
        says."""
        consumers = set(info.consumers)
        recorded = None
        for vm in self._cache.vms.values():
            if consumers and (vm.bios_uuid in consumers or vm.instance_uuid in consumers):
                return vm
            if recorded is None and info.handle in vm.disks:
                recorded = vm
        return recorded if not consumers else None

    def attached_to(self, info: FcdInfo) -> str:
        """The identity of the VM holding the disk; a VM vmlet does not manage shows as
        vsphere-vm:<uuid>; "" when the disk is free."""
        vm = self.holder(info)
        if vm is not None:
            return vm.identity or f"vsphere-vm:{vm.instance_uuid or vm.moid}"
        if info.consumers:
            return f"vsphere-vm:{info.consumers[0]}"
        return ""

    def message(self, info: FcdInfo) -> pb.Disk:
        """The disk as the contract describes it."""
        return pb.Disk(
            handle=info.handle,
            name=info.name,
            size_bytes=info.capacity_mb * MIB,
            attached_to=self.attached_to(info),
        )

    async def get(self, handle: str) -> pb.Disk:
        """GetDisk: NotFound when there is no such disk."""
        info = await self.find(handle)
        if info is None:
            raise NotFound(f"disk {handle} not found in any datastore of the datacenter")
        return self.message(info)

    # Making, growing and removing.

    async def _name_index(self) -> dict[str, str]:
        conn = self._session.connection
        if conn is None:
            raise self._session.unavailable()
        async with self._names_lock:
            if self._names_generation != conn.generation:
                found: list[FcdInfo] = await self._session.call(
                    _scan, doing="list the first-class disks"
                )
                self._names = {}
                for info in sorted(found, key=lambda i: i.handle):
                    self._names.setdefault(info.name, info.handle)
                    self._where[info.handle] = info.datastore
                self._names_generation = conn.generation
            return self._names

    async def _datastore_for(self, parameters: Mapping[str, str]) -> str:
        conn = self._session.connection
        if conn is None:
            raise self._session.unavailable()

        def read(c: Connection) -> dict[str, str]:
            return datastores(c.si, c.inventory)

        named = await self._session.call(read, doing="list the datastores")
        wanted = parameters.get("datastore")
        if wanted:
            for ref, name in named.items():
                if name == wanted:
                    return ref
            raise FailedPrecondition(
                f"datastore {wanted!r} (StorageClass parameter datastore) not found; the "
                f"datacenter has {sorted(named.values())}"
            )
        if conn.inventory.datastore is not None:
            return conn.inventory.datastore
        hosts = self._book.served_hosts()
        shared = set(named)
        for host in hosts:
            shared &= set(host.datastores)
        if not hosts or not shared:
            raise FailedPrecondition(
                "no datastore is mounted on every served host: name one with the StorageClass "
                "parameter datastore or the provider's --datastore"
            )
        return min(shared, key=lambda ref: (named[ref], ref))

    async def create(self, name: str, size_bytes: int, parameters: Mapping[str, str]) -> pb.Disk:
        """CreateDisk: a new FCD, or the one made earlier under `name`."""
        check_create_disk(name, size_bytes, parameters, DISK_PARAMETERS, "the vSphere provider")
        provisioning = parameters.get("provisioningType", "thin")
        if provisioning not in PROVISIONING_TYPES:
            raise InvalidArgument(
                f"disk {name}: provisioningType {provisioning!r} is not one of "
                f"{list(PROVISIONING_TYPES)}"
            )
        async with self._name_locks.hold(name):
            names = await self._name_index()
            existing = names.get(name)
            if existing is not None:
                info = await self.find(existing)
                if info is not None:
                    return self.message(info)
                names.pop(name, None)
            datastore = await self._datastore_for(parameters)
            size_mb = _size_mb(size_bytes)
            info = await self._machines.run_task(
                _start_create,
                name,
                size_mb,
                datastore,
                provisioning,
                doing=f"create disk {name}",
                convert=_created,
            )
            assert isinstance(info, FcdInfo)
            if not info.datastore:
                info = FcdInfo(info.handle, info.name, datastore, info.capacity_mb, ())
            names[name] = info.handle
            self._where[info.handle] = info.datastore
            _log.info(
                "disk created",
                extra={"disk": info.handle, "disk_name": name, "size_mb": size_mb},
            )
            return self.message(info)

    async def delete(self, handle: str) -> None:
        """DeleteDisk: an unknown disk succeeds; an attached one is FailedPrecondition."""
        async with self._disk_locks.hold(handle):
            info = await self.find(handle)
            if info is None:
                return
            holder = self.attached_to(info)
            if holder:
                raise FailedPrecondition(
                    f"disk {handle} ({info.name}) is attached to VM {holder}; detach it first"
                )
            try:
                await self._machines.run_task(
                    _start_delete, info, doing=f"delete disk {info.name} ({handle})"
                )
            except NotFound:
                pass
            self._where.pop(handle, None)
            if self._names.get(info.name) == handle:
                del self._names[info.name]
            _log.info("disk deleted", extra={"disk": handle, "disk_name": info.name})

    async def expand(self, handle: str, size_bytes: int) -> pb.Disk:
        """ExpandDisk: grows the FCD; asking for less than it has is InvalidArgument."""
        async with self._disk_locks.hold(handle):
            info = await self.find(handle)
            if info is None:
                raise NotFound(f"disk {handle} not found in any datastore of the datacenter")
            size_mb = _size_mb(size_bytes)
            if size_mb < info.capacity_mb:
                raise InvalidArgument(
                    f"disk {handle} has {info.capacity_mb} MiB; it cannot shrink to {size_mb} MiB"
                )
            if size_mb > info.capacity_mb:
                await self._machines.run_task(
                    _start_extend, info, size_mb, doing=f"grow disk {info.name} to {size_mb} MiB"
                )
                info = await self.find(handle) or info
                _log.info("disk grown", extra={"disk": handle, "size_mb": size_mb})
            return self.message(info)

    # Attaching.

    @staticmethod
    def _holds(vm: VmRecord, info: FcdInfo) -> bool:
        return bool(info.consumers) and (
            (bool(vm.bios_uuid) and vm.bios_uuid in info.consumers)
            or (bool(vm.instance_uuid) and vm.instance_uuid in info.consumers)
        )

    async def _attach(self, vm: VmRecord, handle: str) -> None:
        async with self._disk_locks.hold(handle):
            info = await self.find(handle)
            if info is None:
                raise FailedPrecondition(f"disk {handle} does not exist")
            if self._holds(vm, info):
                return
            holder = self.attached_to(info)
            if holder and holder != vm.identity:
                raise FailedPrecondition(
                    f"disk {handle} ({info.name}) is attached to VM {holder}; a disk is "
                    "attached to one VM at a time"
                )
            await self._machines.run_task(
                _start_attach, vm.moid, info, doing=f"attach disk {info.name} to VM {vm.name}"
            )
            _log.info("disk attached", extra={"disk": handle, "vm": vm.moid})

    async def _detach(self, vm: VmRecord, handle: str) -> None:
        async with self._disk_locks.hold(handle):
            try:
                await self._machines.run_task(
                    _start_detach, vm.moid, handle, doing=f"detach disk {handle} from VM {vm.name}"
                )
            except ProviderError:
                info = await self.find(handle)
                if info is not None and self._holds(vm, info):
                    raise
                return  # gone, or not attached (any more): nothing to let go of
            _log.info("disk detached", extra={"disk": handle, "vm": vm.moid})

    async def sync(self, vm: VmRecord, wanted: Iterable[str]) -> VmRecord:
        """Attaches the disks `wanted` that `vm` lacks and detaches those vmlet attached that
        are no longer wanted; records the result in the VM's extraConfig. Returns the VM as it
        now is."""
        wanted = tuple(dict.fromkeys(wanted))
        held = set(vm.disks)
        try:
            for handle in wanted:
                await self._attach(vm, handle)
                held.add(handle)
            for handle in sorted(held - set(wanted)):
                await self._detach(vm, handle)
                held.discard(handle)
        finally:
            if held != set(vm.disks):
                await self._machines.set_extra_config(vm, {DISKS_KEY: ",".join(sorted(held))})
        return self._cache.vms.get(vm.moid) or vm

    async def release(self, vm: VmRecord) -> None:
        """Detaches every disk from `vm` (before it is destroyed), so the disks survive it."""

        def devices(conn: Connection) -> tuple[str, ...]:
            return _device_disks(conn, vm.moid)

        handles = set(vm.disks) | set(
            await self._session.call(devices, doing=f"read the disks of VM {vm.name}")
        )
        for handle in sorted(handles):
            await self._detach(vm, handle)
