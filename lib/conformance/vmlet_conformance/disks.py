"""DiskService: disks idempotent by name, the documented codes (NOT_FOUND for an unknown handle,
success for deleting what is not there, INVALID_ARGUMENT for a shrink), and the deprecated disk
RPCs of VirtualMachineService answering as DiskService does while they are served."""

from __future__ import annotations

import uuid

import grpc

from vmlet.provider.v1 import virtual_machine_service_pb2 as vpb

from .registry import check
from .subject import Subject, code_of

NOT_FOUND = grpc.StatusCode.NOT_FOUND
GIB = 2**30


@check
def disks_by_name(subject: Subject) -> None:
    """CreateDisk is idempotent by name; GetDisk reports it unattached; ExpandDisk grows it and
    refuses to shrink it (INVALID_ARGUMENT); DeleteDisk removes it and succeeds again; an
    unknown handle is NOT_FOUND to get and to expand."""
    disks = subject.disks
    name = f"pvc-{uuid.uuid4()}"
    made = disks.CreateDisk(vpb.CreateDiskRequest(name=name, size_bytes=GIB),
                            timeout=subject.timeout).disk
    try:
        assert made.handle and made.name == name and made.size_bytes >= GIB
        assert not made.attached_to
        again = disks.CreateDisk(vpb.CreateDiskRequest(name=name, size_bytes=GIB),
                                 timeout=subject.timeout).disk
        assert again.handle == made.handle
        got = disks.GetDisk(vpb.GetDiskRequest(handle=made.handle), timeout=60).disk
        assert (got.handle, got.name, got.attached_to) == (made.handle, name, "")
        grown = disks.ExpandDisk(vpb.ExpandDiskRequest(handle=made.handle, size_bytes=2 * GIB),
                                 timeout=subject.timeout).disk
        assert grown.size_bytes >= 2 * GIB
        shrink = vpb.ExpandDiskRequest(handle=made.handle, size_bytes=GIB)
        assert code_of(lambda: disks.ExpandDisk(shrink, timeout=60)) \
            == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        disks.DeleteDisk(vpb.DeleteDiskRequest(handle=made.handle), timeout=subject.timeout)
    disks.DeleteDisk(vpb.DeleteDiskRequest(handle=made.handle), timeout=subject.timeout)
    assert code_of(lambda: disks.GetDisk(vpb.GetDiskRequest(handle=made.handle), timeout=60)) \
        == NOT_FOUND
    unknown = vpb.ExpandDiskRequest(handle=made.handle, size_bytes=4 * GIB)
    assert code_of(lambda: disks.ExpandDisk(unknown, timeout=60)) == NOT_FOUND


@check
def deprecated_disk_rpcs_answer_as_disk_service(subject: Subject) -> None:
    """VirtualMachineService's disk RPCs (deprecated, served for one release) reach DiskService's
    disks: a disk made by one is the other's by name and handle, grown by one is grown for the
    other, deleted by one is NOT_FOUND to both; a malformed request is INVALID_ARGUMENT to both."""
    old, new, timeout = subject.vms, subject.disks, subject.timeout
    name = f"pvc-{uuid.uuid4()}"
    made = old.CreateDisk(vpb.CreateDiskRequest(name=name, size_bytes=GIB), timeout=timeout).disk
    try:
        assert made.handle and made.name == name
        assert new.CreateDisk(vpb.CreateDiskRequest(name=name, size_bytes=GIB),
                              timeout=timeout).disk.handle == made.handle
        get = vpb.GetDiskRequest(handle=made.handle)
        assert old.GetDisk(get, timeout=60).disk == new.GetDisk(get, timeout=60).disk
        old.ExpandDisk(vpb.ExpandDiskRequest(handle=made.handle, size_bytes=2 * GIB),
                       timeout=timeout)
        assert new.GetDisk(get, timeout=60).disk.size_bytes >= 2 * GIB
    finally:
        old.DeleteDisk(vpb.DeleteDiskRequest(handle=made.handle), timeout=timeout)
    assert code_of(lambda: new.GetDisk(get, timeout=60)) == NOT_FOUND
    assert code_of(lambda: old.GetDisk(get, timeout=60)) == NOT_FOUND
    bad = vpb.CreateDiskRequest(name=f"{name}-zero", size_bytes=0)
    assert code_of(lambda: old.CreateDisk(bad, timeout=60)) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: new.CreateDisk(bad, timeout=60)) == grpc.StatusCode.INVALID_ARGUMENT
