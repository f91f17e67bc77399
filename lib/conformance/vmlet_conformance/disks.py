"""DiskService: disks idempotent by name, the documented codes (NOT_FOUND for an unknown handle,
success for deleting what is not there, INVALID_ARGUMENT for a shrink, FAILED_PRECONDITION for a
disk another VM holds), disks following their pods (kept with a kept VM, freed with a destroyed
one), and the deprecated disk RPCs of VirtualMachineService answering as DiskService does while
they are served."""

from __future__ import annotations

import uuid

import grpc

from vmlet.provider.v1 import pod_pb2
from vmlet.provider.v1 import virtual_machine_service_pb2 as vpb

from .registry import check
from .subject import Subject, code_of, eventually

NOT_FOUND = grpc.StatusCode.NOT_FOUND
HELD = grpc.StatusCode.FAILED_PRECONDITION
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


def _holder(subject: Subject, handle: str) -> str:
    """The identity GetDisk says holds the disk ("" when it is free)."""
    holder: str = subject.disks.GetDisk(vpb.GetDiskRequest(handle=handle),
                                        timeout=60).disk.attached_to
    return holder


@check
def disks_follow_their_pods(subject: Subject) -> None:
    """A pod's disk is attached to its VM (GetDisk names the identity; DeleteDisk of it is
    FAILED_PRECONDITION); a pod of another identity naming it is FAILED_PRECONDITION and takes
    nothing (its delete leaves no VM); a kept delete keeps the disk with the stopped VM, and the
    identity's next pod runs with it; once the VM is destroyed the disk is free, a bare pod runs
    with it, and that pod's delete frees it again."""
    disks, timeout = subject.disks, subject.timeout
    made = disks.CreateDisk(vpb.CreateDiskRequest(name=f"pvc-{uuid.uuid4()}", size_bytes=GIB),
                            timeout=timeout).disk
    volume = pod_pb2.Volume(name="data", disk=pod_pb2.DiskSource(
        claim_name="data", volume_handle=made.handle))
    kept = subject.pod(keep=True, volumes=[volume])
    intruder = subject.pod(volumes=[volume])
    try:
        with subject.cleanup(kept.identity, intruder.identity):
            subject.create(kept)
            subject.wait_running(kept)
            eventually(lambda: _holder(subject, made.handle) == kept.identity, timeout=timeout,
                       what="the disk attached to its pod's VM")
            delete = vpb.DeleteDiskRequest(handle=made.handle)
            assert code_of(lambda: disks.DeleteDisk(delete, timeout=timeout)) == HELD
            assert code_of(lambda: subject.create(intruder)) == HELD
            subject.delete(intruder)
            assert not subject.has_vm(intruder.identity), "a refused pod left a VM"

            subject.delete(kept)
            assert subject.has_vm(kept.identity), "a kept delete destroyed the VM"
            assert _holder(subject, made.handle) == kept.identity, "kept without its disk"
            again = subject.pod(identity=kept.identity, keep=True, volumes=[volume])
            subject.create(again)
            subject.wait_running(again)
            assert _holder(subject, made.handle) == kept.identity
            subject.delete(again)
            subject.destroy(kept.identity)
            eventually(lambda: _holder(subject, made.handle) == "", timeout=timeout,
                       what="the disk freed by its VM's destruction")

            bare = subject.pod(volumes=[volume])
            with subject.cleanup(bare.identity):
                subject.create(bare)
                subject.wait_running(bare)
                assert _holder(subject, made.handle) == bare.identity
                subject.delete(bare)
                assert not subject.has_vm(bare.identity)
                eventually(lambda: _holder(subject, made.handle) == "", timeout=timeout,
                           what="the disk freed by its bare pod's delete")
    finally:
        disks.DeleteDisk(vpb.DeleteDiskRequest(handle=made.handle), timeout=timeout)
    assert code_of(lambda: disks.GetDisk(vpb.GetDiskRequest(handle=made.handle), timeout=60)) \
        == NOT_FOUND
