"""VirtualMachineService (snapshots by identity) and DiskService (disks by handle), idempotent;
the deprecated disk RPCs of VirtualMachineService answer as DiskService does."""

from __future__ import annotations

import grpc
import pytest

from vmlet.provider.v1 import pod_lifecycle_service_pb2 as pl
from vmlet.provider.v1 import virtual_machine_service_pb2 as vms
from vmlet_memory.testing import Harness, make_pod

pytestmark = pytest.mark.timeout(60)


async def test_snapshots(mp: Harness) -> None:
    await mp.lifecycle.CreatePod(pl.CreatePodRequest(pod=make_pod("vm", identity="vm-1")))
    first = (
        await mp.vms.CreateSnapshot(vms.CreateSnapshotRequest(identity="vm-1", name="daily"))
    ).snapshot
    again = (
        await mp.vms.CreateSnapshot(vms.CreateSnapshotRequest(identity="vm-1", name="daily"))
    ).snapshot
    assert first == again and first.identity == "vm-1" and first.kind == "memory-snapshot"
    described = vms.CreateSnapshotRequest(identity="vm-1", name="b", description="før ☃")
    second = (await mp.vms.CreateSnapshot(described)).snapshot
    assert second.description == "før ☃" and first.description == ""
    listed = (await mp.vms.ListSnapshots(vms.ListSnapshotsRequest(identity="vm-1"))).snapshots
    assert [(s.name, s.description) for s in listed] == [("daily", ""), ("b", "før ☃")]

    await mp.vms.RevertToSnapshot(
        vms.RevertToSnapshotRequest(identity="vm-1", snapshot_id=first.id)
    )
    await mp.vms.DeleteSnapshot(vms.DeleteSnapshotRequest(identity="vm-1", snapshot_id=second.id))
    await mp.vms.DeleteSnapshot(vms.DeleteSnapshotRequest(identity="vm-1", snapshot_id=second.id))
    await mp.vms.DeleteSnapshot(vms.DeleteSnapshotRequest(identity="ghost", snapshot_id="x"))
    listed = (await mp.vms.ListSnapshots(vms.ListSnapshotsRequest(identity="vm-1"))).snapshots
    assert [s.name for s in listed] == ["daily"]

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await mp.vms.RevertToSnapshot(
            vms.RevertToSnapshotRequest(identity="vm-1", snapshot_id="no")
        )
    assert info.value.code() is grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await mp.vms.CreateSnapshot(vms.CreateSnapshotRequest(identity="ghost", name="x"))
    assert info.value.code() is grpc.StatusCode.NOT_FOUND


async def test_disks(mp: Harness) -> None:
    request = vms.CreateDiskRequest(name="pv-1", size_bytes=1 << 30)
    disk = (await mp.disks.CreateDisk(request)).disk
    same = (await mp.disks.CreateDisk(request)).disk
    assert disk == same and disk.handle and disk.attached_to == ""

    grown = (
        await mp.disks.ExpandDisk(vms.ExpandDiskRequest(handle=disk.handle, size_bytes=2 << 30))
    ).disk
    assert grown.size_bytes == 2 << 30
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await mp.disks.ExpandDisk(vms.ExpandDiskRequest(handle=disk.handle, size_bytes=1))
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT

    pod = make_pod("with-disk", disks=(disk.handle,))
    await mp.lifecycle.CreatePod(pl.CreatePodRequest(pod=pod))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await mp.disks.DeleteDisk(vms.DeleteDiskRequest(handle=disk.handle))
    assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    other = make_pod("wants-same-disk", disks=(disk.handle,))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await mp.lifecycle.CreatePod(pl.CreatePodRequest(pod=other))
    assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION

    await mp.lifecycle.DeletePod(pl.DeletePodRequest(pod=pod))
    await mp.disks.DeleteDisk(vms.DeleteDiskRequest(handle=disk.handle))
    await mp.disks.DeleteDisk(vms.DeleteDiskRequest(handle=disk.handle))  # unknown: fine
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await mp.disks.ExpandDisk(vms.ExpandDiskRequest(handle=disk.handle, size_bytes=5 << 30))
    assert info.value.code() is grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await mp.disks.CreateDisk(vms.CreateDiskRequest(name="pv-2", size_bytes=0))
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_the_deprecated_disk_rpcs_are_disk_services(mp: Harness) -> None:
    """VirtualMachineService's disk RPCs, served for one release, reach the same disks."""
    request = vms.CreateDiskRequest(name="pv-old", size_bytes=1 << 30)
    made = (await mp.vms.CreateDisk(request)).disk
    assert (await mp.disks.CreateDisk(request)).disk == made
    assert (await mp.vms.GetDisk(vms.GetDiskRequest(handle=made.handle))).disk == made
    grow = vms.ExpandDiskRequest(handle=made.handle, size_bytes=2 << 30)
    assert (await mp.vms.ExpandDisk(grow)).disk.size_bytes == 2 << 30
    got = (await mp.disks.GetDisk(vms.GetDiskRequest(handle=made.handle))).disk
    assert got.size_bytes == 2 << 30
    await mp.vms.DeleteDisk(vms.DeleteDiskRequest(handle=made.handle))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await mp.disks.GetDisk(vms.GetDiskRequest(handle=made.handle))
    assert info.value.code() is grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("stop_first", [True, False])
async def test_a_new_pod_of_a_vm_carries_exactly_its_disks(mp: Harness, stop_first: bool) -> None:
    """A VirtualMachine whose spec dropped a disk gets a pod without it: the VM lets the disk go,
    whether the old pod was deleted first (a stop) or the new pod takes the VM over."""
    kept_request = vms.CreateDiskRequest(name="pv-kept", size_bytes=1 << 30)
    kept = (await mp.disks.CreateDisk(kept_request)).disk
    dropped = (
        await mp.disks.CreateDisk(vms.CreateDiskRequest(name="pv-dropped", size_bytes=1 << 30))
    ).disk
    first = make_pod("vm-a", identity="vm-d", uid="pod-1", keep_on_delete=True,
                     disks=(kept.handle, dropped.handle))
    await mp.lifecycle.CreatePod(pl.CreatePodRequest(pod=first))
    if stop_first:
        await mp.lifecycle.DeletePod(pl.DeletePodRequest(pod=first))
    second = make_pod("vm-a", identity="vm-d", uid="pod-2", keep_on_delete=True,
                      disks=(kept.handle,))
    await mp.lifecycle.CreatePod(pl.CreatePodRequest(pod=second))
    vm = (
        await mp.vms.GetVirtualMachine(vms.GetVirtualMachineRequest(identity="vm-d"))
    ).virtual_machine
    assert list(vm.disk_handles) == [kept.handle]
    # The dropped disk is free: another VM can have it.
    other = make_pod("vm-b", disks=(dropped.handle,))
    await mp.lifecycle.CreatePod(pl.CreatePodRequest(pod=other))
