"""The pretend block storage: disks by handle, named once, attached to at most one machine.

A disk is made idempotently by name, grows but never shrinks, and cannot be deleted while a
machine holds it; a pod names disks by handle in its volumes, and its machine holds them from
creation until it is destroyed (a kept machine keeps its disks).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from vmlet.provider.v1 import pod_pb2, virtual_machine_service_pb2
from vmlet_contract import FailedPrecondition, InvalidArgument, NotFound

__all__ = ["Disk", "DiskStore", "disk_handles"]


@dataclass
class Disk:
    """One disk."""

    handle: str
    name: str
    size_bytes: int
    parameters: dict[str, str] = field(default_factory=dict)
    attached_to: str = ""

    def as_message(self) -> virtual_machine_service_pb2.Disk:
        """The disk as the contract describes it."""
        return virtual_machine_service_pb2.Disk(
            handle=self.handle,
            name=self.name,
            size_bytes=self.size_bytes,
            attached_to=self.attached_to,
        )


def disk_handles(pod: pod_pb2.Pod) -> list[str]:
    """The handles of the disks a pod's volumes name."""
    return [v.disk.volume_handle for v in pod.volumes if v.WhichOneof("source") == "disk"]


class DiskStore:
    """Every disk, by handle and by name."""

    def __init__(self) -> None:
        self._by_handle: dict[str, Disk] = {}
        self._by_name: dict[str, str] = {}

    def __iter__(self) -> Iterator[Disk]:
        return iter(self._by_handle.values())

    def add(self, disk: Disk) -> None:
        """Puts a disk in the store as it is (when state is loaded)."""
        self._by_handle[disk.handle] = disk
        self._by_name[disk.name] = disk.handle

    def create(self, name: str, size_bytes: int, parameters: dict[str, str]) -> Disk:
        """Makes a disk, or returns the disk made earlier under that name."""
        if not name:
            raise InvalidArgument("a disk needs a name")
        existing = self._by_name.get(name)
        if existing is not None:
            return self._by_handle[existing]
        if size_bytes <= 0:
            raise InvalidArgument(f"disk {name}: size must be positive, not {size_bytes}")
        disk = Disk(f"memory-disk-{uuid.uuid4()}", name, size_bytes, dict(parameters))
        self.add(disk)
        return disk

    def get(self, handle: str) -> Disk:
        """The disk with that handle; NotFound otherwise."""
        disk = self._by_handle.get(handle)
        if disk is None:
            raise NotFound(f"disk {handle} not found")
        return disk

    def delete(self, handle: str) -> None:
        """Removes a disk; unknown handles succeed, attached disks are FailedPrecondition."""
        disk = self._by_handle.get(handle)
        if disk is None:
            return
        if disk.attached_to:
            raise FailedPrecondition(f"disk {handle} is attached to VM {disk.attached_to}")
        del self._by_handle[handle]
        self._by_name.pop(disk.name, None)

    def expand(self, handle: str, size_bytes: int) -> Disk:
        """Grows a disk; asking for less than its size is InvalidArgument."""
        disk = self.get(handle)
        if size_bytes < disk.size_bytes:
            raise InvalidArgument(
                f"disk {handle} has {disk.size_bytes} bytes; it cannot shrink to {size_bytes}"
            )
        disk.size_bytes = size_bytes
        return disk

    def check_attachable(self, handles: Iterable[str], identity: str) -> None:
        """Raises unless every disk exists and is free or already held by `identity`."""
        for handle in handles:
            disk = self._by_handle.get(handle)
            if disk is None:
                raise FailedPrecondition(f"disk {handle} does not exist")
            if disk.attached_to and disk.attached_to != identity:
                raise FailedPrecondition(f"disk {handle} is attached to VM {disk.attached_to}")

    def attach(self, handles: Iterable[str], identity: str) -> None:
        """Marks the disks as held by `identity` (check first)."""
        for handle in handles:
            self._by_handle[handle].attached_to = identity

    def attach_exactly(self, handles: Iterable[str], identity: str) -> None:
        """Makes `handles` the disks `identity` holds (check first): a new pod of a VM carries
        the VM's disks as they are now, so a disk its VirtualMachine no longer names is freed."""
        wanted = set(handles)
        for disk in self._by_handle.values():
            if disk.attached_to == identity and disk.handle not in wanted:
                disk.attached_to = ""
        self.attach(wanted, identity)

    def detach_all(self, identity: str) -> None:
        """Frees every disk `identity` holds."""
        for disk in self._by_handle.values():
            if disk.attached_to == identity:
                disk.attached_to = ""
