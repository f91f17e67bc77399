"""OpenStack disks end to end: PersistentVolumeClaims become Cinder volumes and VMs get them
attached, through the real control plane, the facade and the OpenStack provider (each its own
process) on the real OpenStack of `vmlet_localenv.openstack` (Cinder's API, scheduler and volume
service included), every step checked in Cinder and Nova themselves as the cloud admin.

The OpenStack, the provider and the facade are test_openstack_e2e's fixtures (with
VMLET_OPENSTACK_FACTS, an env already running is reused).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import openstack.exceptions
import pytest

from tests import test_openstack_e2e as e2e
from tests.openstackprovider import Cloudside
from tests.test_openstack_e2e import (
    LONG,
    MV,
    PROVIDER,
    Vmlet,
    apply,
    delete,
    get,
    patch,
    running_vm,
    settled,
    vm_manifest,
    vm_state,
)
from vmlet.provider.v1 import pod_lifecycle_service_pb2 as lifecycle_pb
from vmlet.provider.v1 import pod_lifecycle_service_pb2_grpc as lifecycle_grpc
from vmlet.provider.v1 import pod_pb2
from vmlet.provider.v1 import virtual_machine_service_pb2 as vm_pb
from vmlet.provider.v1 import virtual_machine_service_pb2_grpc as vm_grpc
from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.stack import eventually

pytestmark = [pytest.mark.openstack, pytest.mark.controlplane]

GIB = 1024**3
# test_openstack_e2e's fixtures: its OpenStack, provider and facade, and a namespace per test.
cloud, admin, vmlet, ns = e2e.cloud, e2e.admin, e2e.vmlet, e2e.ns


@pytest.fixture(scope="module")
def classes(vmlet: Vmlet, control_plane: ControlPlane) -> Iterator[None]:
    for name, reclaim in (("delete", "Delete"), ("retain", "Retain")):
        control_plane.kubectl("apply", "-f", "-", input=json.dumps({
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": f"{PROVIDER}-{name}"},
            "provisioner": f"{PROVIDER}.vmlet.io", "reclaimPolicy": reclaim,
            "allowVolumeExpansion": True, "volumeBindingMode": "Immediate",
            "parameters": {"type": "__DEFAULT__"}}))
    yield
    for name in ("delete", "retain"):
        control_plane.kubectl("delete", "storageclass", f"{PROVIDER}-{name}", check=False)


# Cinder and Nova as the admin sees them.


def volume(admin: Any, handle: str) -> dict[str, Any] | None:
    """The Cinder volume `handle`, None when Cinder has none."""
    resp = admin.block_storage.get(f"/volumes/{handle}", microversion="3.42")
    if resp.status_code == 404:
        return None
    openstack.exceptions.raise_from_response(resp)
    found: dict[str, Any] = resp.json()["volume"]
    return found


def attached_servers(admin: Any, handle: str) -> list[str]:
    return [a["server_id"] for a in (volume(admin, handle) or {}).get("attachments") or []]


def nova_volumes(admin: Any, server_id: str) -> list[str]:
    resp = admin.compute.get(f"/servers/{server_id}/os-volume_attachments", microversion=MV)
    openstack.exceptions.raise_from_response(resp)
    return [a["volumeId"] for a in resp.json()["volumeAttachments"]]


def settled_volume(admin: Any, handle: str, status: str, **want: Any) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        v = volume(admin, handle)
        if v is None or v["status"] != status:
            return None
        return v if all(v.get(k) == w for k, w in want.items()) else None
    found: dict[str, Any] = eventually(check, timeout=LONG, interval=1,
                                       what=f"volume {handle} {status} {want}")
    return found


# vmlet.


def pvc(name: str, policy: str, size: str = "1Gi") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
            "spec": {"storageClassName": f"{PROVIDER}-{policy}", "accessModes": ["ReadWriteOnce"],
                     "resources": {"requests": {"storage": size}}}}


def bound_handle(v: Vmlet, ns: str, claim: str) -> tuple[str, str]:
    """(PV name, volume handle) once the claim is Bound."""
    bound = eventually(lambda: (c := get(v, "pvc", claim, ns))["status"].get("phase")
                       == "Bound" and c, timeout=LONG, interval=1, what=f"claim {claim} Bound")
    pv = v.kubectl_json("get", "pv", bound["spec"]["volumeName"])
    return pv["metadata"]["name"], str(pv["spec"]["csi"]["volumeHandle"])


def pv_gone(v: Vmlet, name: str) -> bool:
    return v.cp.kubectl("get", "pv", name, check=False).returncode != 0


def vms_stub(v: Vmlet) -> tuple[grpc.Channel, vm_grpc.VirtualMachineServiceStub]:
    channel = v.provider.channel()
    return channel, vm_grpc.VirtualMachineServiceStub(channel)


def provider_disk(v: Vmlet, handle: str) -> vm_pb.Disk:
    channel, stub = vms_stub(v)
    with channel:
        disk: vm_pb.Disk = stub.GetDisk(vm_pb.GetDiskRequest(handle=handle), timeout=30).disk
        return disk


def provider_vm(v: Vmlet, identity: str) -> vm_pb.VirtualMachine:
    channel, stub = vms_stub(v)
    with channel:
        vm: vm_pb.VirtualMachine = stub.GetVirtualMachine(
            vm_pb.GetVirtualMachineRequest(identity=identity), timeout=30).virtual_machine
        return vm


# Claims.


def test_claim_becomes_a_cinder_volume_and_delete_removes_it(
        vmlet: Vmlet, classes: None, control_plane: ControlPlane, admin: Any, ns: str) -> None:
    apply(control_plane, ns, pvc("data", "delete", "2Gi"))
    pv_name, handle = bound_handle(vmlet, ns, "data")
    made = volume(admin, handle)
    assert made is not None, "the claim's volume exists in Cinder"
    assert (made["name"], made["size"], made["status"]) == (pv_name, 2, "available")
    assert made["metadata"]["vmlet-disk"] == pv_name
    pv = vmlet.kubectl_json("get", "pv", pv_name)
    assert pv["spec"]["csi"]["driver"] == f"{PROVIDER}.vmlet.io"
    assert pv["spec"]["capacity"]["storage"] == "2Gi"
    assert pv["spec"]["accessModes"] == ["ReadWriteOnce"]
    disk = provider_disk(vmlet, handle)
    assert (disk.name, disk.size_bytes, disk.attached_to) == (pv_name, 2 * GIB, "")

    control_plane.kubectl("delete", "pvc", "data", "-n", ns)
    eventually(lambda: volume(admin, handle) is None, timeout=LONG, interval=1,
               what="the volume deleted in Cinder")
    eventually(lambda: pv_gone(vmlet, pv_name), timeout=LONG, interval=1, what="PV deleted")


def test_retain_keeps_the_cinder_volume(
        vmlet: Vmlet, classes: None, control_plane: ControlPlane, admin: Any, ns: str) -> None:
    apply(control_plane, ns, pvc("keep", "retain"))
    pv_name, handle = bound_handle(vmlet, ns, "keep")
    control_plane.kubectl("delete", "pvc", "keep", "-n", ns)
    eventually(lambda: vmlet.kubectl_json("get", "pv", pv_name)["status"]["phase"] == "Released",
               timeout=LONG, interval=1, what="PV Released")
    time.sleep(3)
    kept = volume(admin, handle)
    assert kept is not None and kept["status"] == "available", "Retain keeps the volume"
    control_plane.kubectl("delete", "pv", pv_name)
    time.sleep(2)
    assert volume(admin, handle) is not None, "deleting a retained PV leaves the volume too"
    admin.block_storage.delete(f"/volumes/{handle}")


def test_expansion_grows_the_cinder_volume(
        vmlet: Vmlet, classes: None, control_plane: ControlPlane, admin: Any, ns: str) -> None:
    apply(control_plane, ns, pvc("grow", "delete", "1Gi"))
    _, handle = bound_handle(vmlet, ns, "grow")
    assert (volume(admin, handle) or {}).get("size") == 1
    patch(control_plane, "pvc", "grow", ns, {"spec": {"resources": {"requests": {
        "storage": "3Gi"}}}})
    settled_volume(admin, handle, "available", size=3)
    eventually(lambda: get(vmlet, "pvc", "grow", ns)["status"].get("capacity", {}).get("storage")
               == "3Gi", timeout=LONG, interval=1, what="claim capacity 3Gi")
    assert provider_disk(vmlet, handle).size_bytes == 3 * GIB
    control_plane.kubectl("delete", "pvc", "grow", "-n", ns)
    eventually(lambda: volume(admin, handle) is None, timeout=LONG, interval=1,
               what="the volume deleted in Cinder")


# VMs with disks.


def test_vm_volume_is_attached_to_the_right_server_and_outlives_it(
        vmlet: Vmlet, classes: None, control_plane: ControlPlane, cloud: Cloudside, admin: Any,
        ns: str) -> None:
    apply(control_plane, ns, pvc("root", "delete"))
    pv_name, handle = bound_handle(vmlet, ns, "root")
    disks = [{"name": "data", "claimName": "root"}]
    apply(control_plane, ns, vm_manifest(cloud, "one", disks=disks))
    one = get(vmlet, "vm", "one", ns)["metadata"]["uid"]
    running = running_vm(vmlet, ns, "one")
    assert running["status"]["disks"] == [{"name": "data", "claimName": "root"}]
    server_one = settled(admin, one, status="ACTIVE")["id"]
    # Attached to that server, as Cinder and Nova each see it.
    settled_volume(admin, handle, "in-use")
    assert attached_servers(admin, handle) == [server_one]
    assert nova_volumes(admin, server_one) == [handle]
    assert provider_disk(vmlet, handle).attached_to == one
    assert list(provider_vm(vmlet, one).disk_handles) == [handle]

    # The provider itself refuses to delete it or to give it to another VM, saying who holds it.
    channel, stub = vms_stub(vmlet)
    with channel, pytest.raises(grpc.RpcError) as caught:
        stub.DeleteDisk(vm_pb.DeleteDiskRequest(handle=handle), timeout=30)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"is attached to VM {one}" in (caught.value.details() or "")
    intruder = pod_pb2.Pod(
        ref=pod_pb2.PodRef(namespace=ns, name="intruder", uid=str(uuid.uuid4())),
        identity=str(uuid.uuid4()), node_name=running["status"]["nodeName"],
        containers=[pod_pb2.Container(name="vm", image=cloud.image_name)],
        volumes=[pod_pb2.Volume(name="data", disk=pod_pb2.DiskSource(
            claim_name="root", volume_handle=handle))])
    channel = vmlet.provider.channel()
    with channel, pytest.raises(grpc.RpcError) as caught:
        lifecycle_grpc.PodLifecycleServiceStub(channel).CreatePod(
            lifecycle_pb.CreatePodRequest(pod=intruder), timeout=60)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"is attached to VM {one}" in (caught.value.details() or "")
    assert not _servers(admin, intruder.identity), "no server for the refused pod"

    # A second VM asking for the claim is refused while the first runs with it.
    apply(control_plane, ns, vm_manifest(cloud, "two", disks=disks))
    two = get(vmlet, "vm", "two", ns)["metadata"]["uid"]
    refused = eventually(lambda: vm_state(vmlet, ns, "two", "Failed"), timeout=LONG,
                         interval=1, what="second VM refused")
    assert next(c for c in refused["status"]["conditions"]
                if c["type"] == "Failure")["reason"] == "DiskInUse"
    assert attached_servers(admin, handle) == [server_one]

    # Stopped, the first VM's server is kept with its volume (the contract's keep "with its
    # disks"), so the second VM is still refused.
    patch(control_plane, "vm", "one", ns, {"spec": {"replicas": 0}})
    eventually(lambda: vm_state(vmlet, ns, "one", "Stopped"), timeout=LONG, interval=1,
               what="one Stopped")
    assert settled(admin, one, status="SHUTOFF")["id"] == server_one
    assert nova_volumes(admin, server_one) == [handle]
    assert provider_disk(vmlet, handle).attached_to == one
    assert vm_state(vmlet, ns, "two", "Failed"), "the second VM is still refused"

    # Deleted, the first VM's server goes and Nova detaches the volume; the second gets it.
    delete(control_plane, "vm", "one", ns)
    eventually(lambda: not _servers(admin, one), timeout=LONG, interval=1,
               what="the first server deleted in Nova")
    running_vm(vmlet, ns, "two")
    server_two = settled(admin, two, status="ACTIVE")["id"]
    eventually(lambda: attached_servers(admin, handle) == [server_two], timeout=LONG,
               interval=1, what="the volume attached to the second VM's server")
    assert nova_volumes(admin, server_two) == [handle]
    assert provider_disk(vmlet, handle).attached_to == two

    # Deleted, the second VM's server goes; the volume outlives it, then goes with its claim.
    delete(control_plane, "vm", "two", ns)
    eventually(lambda: not _servers(admin, two), timeout=LONG, interval=1,
               what="the second server deleted in Nova")
    survived = settled_volume(admin, handle, "available")
    assert survived["attachments"] == [], "the volume outlives the VMs"
    control_plane.kubectl("delete", "pvc", "root", "-n", ns)
    eventually(lambda: volume(admin, handle) is None, timeout=LONG, interval=1,
               what="the claim's volume deleted (Delete policy)")
    eventually(lambda: pv_gone(vmlet, pv_name), timeout=LONG, interval=1, what="PV deleted")


def test_disk_given_to_a_stopped_vm_is_attached_at_start_and_retain_keeps_it(
        vmlet: Vmlet, classes: None, control_plane: ControlPlane, cloud: Cloudside, admin: Any,
        ns: str) -> None:
    # A pod's volumes cannot change, so a VM gets a new disk across a stop and start: its kept
    # server is claimed by the new pod, and the provider attaches the disk to that same server.
    apply(control_plane, ns, vm_manifest(cloud, "late"), pvc("extra", "retain"))
    pv_name, handle = bound_handle(vmlet, ns, "extra")
    late = get(vmlet, "vm", "late", ns)["metadata"]["uid"]
    running_vm(vmlet, ns, "late")
    server = settled(admin, late, status="ACTIVE")["id"]
    assert nova_volumes(admin, server) == []

    patch(control_plane, "vm", "late", ns, {"spec": {"replicas": 0}})
    eventually(lambda: vm_state(vmlet, ns, "late", "Stopped"), timeout=LONG, interval=1,
               what="late Stopped")
    patch(control_plane, "vm", "late", ns, {"spec": {"replicas": 1, "disks": [
        {"name": "extra", "claimName": "extra"}]}})
    running = running_vm(vmlet, ns, "late")
    assert running["status"]["disks"] == [{"name": "extra", "claimName": "extra"}]
    eventually(lambda: attached_servers(admin, handle) == [server], timeout=LONG, interval=1,
               what="the disk attached to the VM's same server")
    assert settled(admin, late, status="ACTIVE")["id"] == server
    assert nova_volumes(admin, server) == [handle]
    eventually(lambda: list(provider_vm(vmlet, late).disk_handles) == [handle], timeout=LONG,
               interval=1, what="GetVirtualMachine lists the disk")

    delete(control_plane, "vm", "late", ns)
    eventually(lambda: not _servers(admin, late), timeout=LONG, interval=1,
               what="the server deleted in Nova")
    assert settled_volume(admin, handle, "available")["attachments"] == []
    control_plane.kubectl("delete", "pvc", "extra", "-n", ns)
    eventually(lambda: vmlet.kubectl_json("get", "pv", pv_name)["status"]["phase"] == "Released",
               timeout=LONG, interval=1, what="PV Released")
    time.sleep(2)
    assert volume(admin, handle) is not None, "Retain keeps the volume after VM and claim"
    control_plane.kubectl("delete", "pv", pv_name)
    admin.block_storage.delete(f"/volumes/{handle}")


def _servers(admin: Any, *identities: str) -> list[str]:
    resp = admin.compute.get("/servers/detail", params={"all_tenants": 1, "limit": 1000},
                             microversion=MV)
    openstack.exceptions.raise_from_response(resp)
    return [s["id"] for s in resp.json()["servers"]
            if (s.get("metadata") or {}).get("vmlet-identity") in identities
            and s["status"] not in ("DELETED", "SOFT_DELETED")]
