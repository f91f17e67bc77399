"""The vSphere provider's devices and endpoints against vcsim, checked through pyvmomi: disks
are first-class disks attached to the pods' VMs, pod networks are the VMs' NICs, logs are the
VMs' events, stats are the hosts'. The provider and vcsim: tests/vmwareprovider.py; disks as
the contract has them (idempotent by name, grow only, the codes): the conformance suite."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import grpc
import pytest
from pyVmomi import vim

from tests import vmwareprovider
from tests.vmwareprovider import (
    NODES,
    RUNNING,
    Provider,
    count_vms,
    eventually,
    make_pod,
    reconfigure_vm,
    the_vm,
)
from vmlet.provider.v1 import kubelet_endpoint_service_pb2 as kpb
from vmlet.provider.v1 import pod_pb2
from vmlet.provider.v1 import virtual_machine_service_pb2 as vpb
from vmlet_conformance import code_of
from vmlet_localenv.stack import nic_networks, vms_with_identity
from vmlet_localenv.vcsim import VcSim

pytestmark = pytest.mark.vcsim

provider = vmwareprovider.provider


# Disks (first-class disks).


def fcd(sim: VcSim, handle: str) -> Any:
    """The first-class disk `handle` as vCenter has it (None when no datastore has it)."""
    with sim.connect() as si:
        content = si.RetrieveContent()
        manager = content.vStorageObjectManager
        for ds in content.rootFolder.childEntity[0].datastore:
            try:
                obj = manager.RetrieveVStorageObject(id=vim.vslm.ID(id=handle), datastore=ds)
            except vim.fault.NotFound:
                continue
            config = obj.config
            return {
                "name": config.name,
                "mb": config.capacityInMB,
                "consumers": [c.id for c in config.consumerId or ()],
                "datastore": ds.name,
            }
    return None


def bios_uuid(sim: VcSim, identity: str) -> str:
    with sim.connect() as si:
        (vm,) = vms_with_identity(si, identity)
        return str(vm.config.uuid)


def with_disks(pod: pod_pb2.Pod, *handles: str) -> pod_pb2.Pod:
    del pod.volumes[:]
    for i, handle in enumerate(handles):
        pod.volumes.add(
            name=f"d{i}", disk=pod_pb2.DiskSource(claim_name=f"c{i}", volume_handle=handle)
        )
    return pod


def test_disks_are_first_class_disks(provider: Provider, vcsim: VcSim) -> None:
    vms = provider.vms
    name = f"pvc-{uuid.uuid4()}"
    made = vms.CreateDisk(vpb.CreateDiskRequest(name=name, size_bytes=(1 << 30) + 1), timeout=60)
    disk = made.disk
    assert disk.name == name and disk.size_bytes == 1025 << 20  # rounded up to a whole MiB
    found = fcd(vcsim, disk.handle)
    assert found is not None and (found["name"], found["mb"]) == (name, 1025)
    assert found["consumers"] == []
    got = vms.GetDisk(vpb.GetDiskRequest(handle=disk.handle), timeout=30).disk
    assert (got.name, got.size_bytes, got.attached_to) == (name, 1025 << 20, "")

    grow = vpb.ExpandDiskRequest(handle=disk.handle, size_bytes=3 << 30)
    grown = vms.ExpandDisk(grow, timeout=60)
    assert grown.disk.size_bytes == 3 << 30 and fcd(vcsim, disk.handle)["mb"] == 3072

    bad = vpb.CreateDiskRequest(name="x", size_bytes=1 << 30, parameters={"tier": "gold"})
    assert code_of(lambda: vms.CreateDisk(bad, timeout=30)) == grpc.StatusCode.INVALID_ARGUMENT
    nowhere = vpb.CreateDiskRequest(name="y", size_bytes=1 << 30, parameters={"datastore": "no"})
    refused = code_of(lambda: vms.CreateDisk(nowhere, timeout=30))
    assert refused == grpc.StatusCode.FAILED_PRECONDITION
    placed = vms.CreateDisk(
        vpb.CreateDiskRequest(
            name=f"pvc-{uuid.uuid4()}", size_bytes=1 << 30,
            parameters={"datastore": "LocalDS_0", "provisioningType": "eagerZeroedThick"},
        ),
        timeout=60,
    ).disk  # fmt: skip
    assert fcd(vcsim, placed.handle)["datastore"] == "LocalDS_0"

    for handle in (disk.handle, placed.handle):
        vms.DeleteDisk(vpb.DeleteDiskRequest(handle=handle), timeout=60)
        assert fcd(vcsim, handle) is None


def test_pod_disks_attach_and_outlive_the_vm(provider: Provider, vcsim: VcSim) -> None:
    vms = provider.vms

    def new_disk() -> str:
        request = vpb.CreateDiskRequest(name=f"pvc-{uuid.uuid4()}", size_bytes=1 << 30)
        return str(vms.CreateDisk(request, timeout=60).disk.handle)

    def attached_to(handle: str) -> str:
        return str(vms.GetDisk(vpb.GetDiskRequest(handle=handle), timeout=30).disk.attached_to)

    first, second = new_disk(), new_disk()
    pod = with_disks(make_pod(NODES[0], keep=True), first, second)
    assert provider.create(pod).phase == RUNNING
    owner = bios_uuid(vcsim, pod.identity)
    assert fcd(vcsim, first)["consumers"] == [owner]
    assert fcd(vcsim, second)["consumers"] == [owner]
    assert attached_to(first) == attached_to(second) == pod.identity
    described = provider.vm(pod.identity)
    assert sorted(described.disk_handles) == sorted([first, second])

    # A disk is attached to one VM at a time, and not deleted while attached.
    other = with_disks(make_pod(NODES[1]), first)
    assert code_of(lambda: provider.create(other)) == grpc.StatusCode.FAILED_PRECONDITION
    assert count_vms(vcsim, other.identity) == 1  # made, but not powered on with the disk
    assert the_vm(vcsim, other.identity)["power"] == "poweredOff"
    provider.delete(other)
    assert count_vms(vcsim, other.identity) == 0
    held = vpb.DeleteDiskRequest(handle=first)
    assert code_of(lambda: vms.DeleteDisk(held, timeout=30)) == grpc.StatusCode.FAILED_PRECONDITION

    # The pod no longer names the second disk: it is detached.
    provider.update(with_disks(pod, first))
    assert fcd(vcsim, second)["consumers"] == [] and attached_to(second) == ""
    assert fcd(vcsim, first)["consumers"] == [owner]

    # Kept (stopped) VMs keep their disks; a destroyed VM lets go of them first.
    provider.delete(pod)
    assert the_vm(vcsim, pod.identity)["power"] == "poweredOff"
    assert attached_to(first) == pod.identity
    provider.destroy(pod.identity)
    assert count_vms(vcsim, pod.identity) == 0
    assert fcd(vcsim, first) is not None and fcd(vcsim, first)["consumers"] == []
    for handle in (first, second):
        vms.DeleteDisk(vpb.DeleteDiskRequest(handle=handle), timeout=60)
        assert fcd(vcsim, handle) is None


# Networks.


def vm_networks(sim: VcSim, identity: str) -> list[str]:
    """The networks of the VM's NICs, in device order, by name."""
    with sim.connect() as si:
        (vm,) = vms_with_identity(si, identity)
        return nic_networks(si, vm)


def test_pod_networks_become_the_nics(provider: Provider, vcsim: VcSim) -> None:
    plain = make_pod(NODES[0])
    provider.create(plain)
    assert vm_networks(vcsim, plain.identity) == ["VM Network"]  # the provider's --network
    provider.delete(plain)

    pod = make_pod(NODES[1], keep=True)
    pod.networks.add(name="DC0_DVPG0")
    pod.networks.add(name="VM Network")
    provider.create(pod)
    assert vm_networks(vcsim, pod.identity) == ["DC0_DVPG0", "VM Network"]

    # The kept VM comes back for a pod with other networks: its NICs follow.
    provider.delete(pod)
    again = make_pod(NODES[1], identity=pod.identity)
    again.networks.add(name="VM Network")
    provider.create(again)
    assert vm_networks(vcsim, pod.identity) == ["VM Network"]
    provider.delete(again)

    unknown = make_pod(NODES[2])
    unknown.networks.add(name="no-such-portgroup")
    assert code_of(lambda: provider.create(unknown)) == grpc.StatusCode.FAILED_PRECONDITION


# Logs and stats.


def test_logs_are_the_vms_events_and_follow(provider: Provider, vcsim: VcSim) -> None:
    pod = make_pod(NODES[0])
    provider.create(pod)
    request = kpb.GetContainerLogsRequest(
        namespace="tests", pod_name=pod.ref.name, container_name="vm"
    )
    lines = [r.line.decode() for r in provider.endpoints.GetContainerLogs(request, timeout=30)]
    assert any("VmPoweredOnEvent" in line for line in lines), lines
    assert any("task VirtualMachine.powerOn success" in line for line in lines), lines

    request.follow = True
    request.tail_lines = 0
    stream = provider.endpoints.GetContainerLogs(request, timeout=60)
    followed: list[str] = []

    def read() -> None:
        try:
            for response in stream:
                followed.append(response.line.decode())
        except grpc.RpcError:
            pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    time.sleep(1)
    reconfigure_vm(vcsim, pod.identity, vim.vm.ConfigSpec(annotation="hello"))
    eventually(
        lambda: any("VmReconfiguredEvent" in line for line in followed), what="followed event"
    )
    assert not any("VmPoweredOnEvent" in line for line in followed)  # tail 0: only new lines
    provider.delete(pod)
    reader.join(10)  # the followed log ends with its pod
    assert not reader.is_alive()


def test_stats_and_exec_without_an_address(provider: Provider) -> None:
    """A node's stats carry its start and memory; an unknown node is NOT_FOUND (the contract
    allows an empty answer too); Exec in a VM without an IP is FAILED_PRECONDITION."""
    pod = make_pod(NODES[2])
    provider.create(pod)
    summary = provider.endpoints.GetStatsSummary(
        kpb.GetStatsSummaryRequest(node_name=NODES[2]), timeout=30
    )
    assert summary.HasField("node_start_time")
    assert summary.node_memory.usage_bytes + summary.node_memory.available_bytes > 0
    assert pod.ref.name in {p.ref.name for p in summary.pods}
    unknown = kpb.GetStatsSummaryRequest(node_name="nope")
    assert (
        code_of(lambda: provider.endpoints.GetStatsSummary(unknown, timeout=10))
        == grpc.StatusCode.NOT_FOUND
    )
    start = kpb.ExecRequest(
        start=kpb.ExecStart(namespace="tests", pod_name=pod.ref.name, command=["true"])
    )
    with pytest.raises(grpc.RpcError) as err:
        list(provider.endpoints.Exec(iter([start]), timeout=10))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no IP yet" in (err.value.details() or "")
    provider.delete(pod)
