"""Claims as first-class disks in vCenter: made, deleted or retained, grown, attached to the right
VM and outliving it."""

from __future__ import annotations

import time

import pytest

from tests.vsphere_e2e.vcenter import (
    PROVIDER,
    apply,
    bound_handle,
    fcd,
    get,
    in_vcenter,
    patch,
    provider_disk,
    pvc,
    running_vm,
    the_vm,
    vm_manifest,
    vm_state,
)
from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.stack import Stack, eventually, report_guest_ip
from vmlet_localenv.vcsim import VcSim

pytestmark = [pytest.mark.vcsim, pytest.mark.controlplane]


def test_claim_becomes_a_first_class_disk_and_delete_removes_it(
        stack: Stack, control_plane: ControlPlane, sim: VcSim, ns: str) -> None:
    apply(control_plane, ns, pvc("data", "delete", "2Gi"))
    pv_name, handle = bound_handle(stack, ns, "data")
    made = fcd(sim, handle)
    assert made is not None and made["name"] == pv_name and made["mb"] == 2048
    assert get(stack, "pv", pv_name)["spec"]["csi"]["driver"] == f"{PROVIDER}.vmlet.io"
    control_plane.kubectl("delete", "pvc", "data", "-n", ns)
    eventually(lambda: fcd(sim, handle) is None, what="the FCD deleted in vCenter")
    eventually(lambda: control_plane.kubectl("get", "pv", pv_name, check=False).returncode != 0,
               what="PV deleted")


def test_retain_keeps_the_first_class_disk(
        stack: Stack, control_plane: ControlPlane, sim: VcSim, ns: str) -> None:
    apply(control_plane, ns, pvc("keep", "retain"))
    pv_name, handle = bound_handle(stack, ns, "keep")
    control_plane.kubectl("delete", "pvc", "keep", "-n", ns)
    eventually(lambda: get(stack, "pv", pv_name)["status"]["phase"] == "Released",
               what="PV Released")
    time.sleep(3)
    assert fcd(sim, handle) is not None, "Retain keeps the disk in vCenter"
    control_plane.kubectl("delete", "pv", pv_name)


def test_expansion_grows_the_first_class_disk(
        stack: Stack, control_plane: ControlPlane, sim: VcSim, ns: str) -> None:
    apply(control_plane, ns, pvc("grow", "delete", "1Gi"))
    _, handle = bound_handle(stack, ns, "grow")
    assert (fcd(sim, handle) or {}).get("mb") == 1024
    patch(control_plane, "pvc", "grow", ns, {"spec": {"resources": {"requests": {
        "storage": "3Gi"}}}})
    eventually(lambda: (fcd(sim, handle) or {}).get("mb") == 3072, what="FCD grown in vCenter")
    eventually(lambda: get(stack, "pvc", "grow", ns)["status"]["capacity"]["storage"] == "3Gi",
               what="claim capacity 3Gi")


def test_vm_disk_is_attached_to_the_right_vm_and_outlives_it(
        stack: Stack, control_plane: ControlPlane, sim: VcSim, ns: str) -> None:
    apply(control_plane, ns, pvc("root", "delete"))
    _, handle = bound_handle(stack, ns, "root")
    apply(control_plane, ns, vm_manifest("one", disks=[{"name": "data", "claimName": "root"}]))
    one = get(stack, "vm", "one", ns)["metadata"]["uid"]
    report_guest_ip(sim, one, "10.5.0.1")
    running = running_vm(stack, ns, "one")
    assert running["status"]["disks"] == [{"name": "data", "claimName": "root"}]
    vm = the_vm(sim, one)
    assert (fcd(sim, handle) or {}).get("consumers") == [vm["bios_uuid"]]
    assert vm["extra"]["vmlet.disks"] == handle
    assert provider_disk(stack, handle).attached_to == one

    # A second VM asking for the claim is refused while the first holds it.
    apply(control_plane, ns, vm_manifest("two", disks=[{"name": "data", "claimName": "root"}]))
    two = get(stack, "vm", "two", ns)["metadata"]["uid"]
    refused = eventually(lambda: vm_state(stack, ns, "two", "Failed"), what="second VM refused")
    assert next(c for c in refused["status"]["conditions"]
                if c["type"] == "Failure")["reason"] == "DiskInUse"

    # Stopped, the first VM keeps its disk.
    patch(control_plane, "vm", "one", ns, {"spec": {"replicas": 0}})
    eventually(lambda: vm_state(stack, ns, "one", "Stopped"), what="Stopped")
    assert the_vm(sim, one)["power"] == "poweredOff"
    assert (fcd(sim, handle) or {}).get("consumers") == [vm["bios_uuid"]]

    # Deleted, the first VM lets go of the disk before it is destroyed; the second gets it.
    control_plane.kubectl("delete", "vm", "one", "-n", ns, "--timeout=90s")
    assert in_vcenter(sim, one) == []
    report_guest_ip(sim, two, "10.5.0.2")
    running_vm(stack, ns, "two")
    assert (fcd(sim, handle) or {}).get("consumers") == [the_vm(sim, two)["bios_uuid"]]
    assert provider_disk(stack, handle).attached_to == two

    control_plane.kubectl("delete", "vm", "two", "-n", ns, "--timeout=90s")
    survived = fcd(sim, handle)
    assert survived is not None and survived["consumers"] == [], "the disk outlives the VMs"
    control_plane.kubectl("delete", "pvc", "root", "-n", ns)
    eventually(lambda: fcd(sim, handle) is None, what="the claim's FCD deleted (Delete policy)")
