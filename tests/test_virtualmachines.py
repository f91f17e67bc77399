"""The VirtualMachine API on the real control plane, with the memory provider as the IaaS.

Every transition is checked in the IaaS itself (the provider's GetVirtualMachine), not only in
the resources' status. The vSphere and OpenStack runs of the same flows live beside their
providers' tests.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from vmlet.provider.v1 import virtual_machine_service_pb2 as vm_pb
from vmlet.provider.v1 import virtual_machine_service_pb2_grpc as vm_grpc
from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.stack import Stack, eventually

PROVIDER = "vmmem"


@pytest.fixture(scope="module")
def stack(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(control_plane, tmp_path_factory.mktemp("vmstack"), {PROVIDER: ["--nodes", "3"]})
    s.start()
    try:
        eventually(lambda: len(s.ready_nodes(PROVIDER)) == 3, what="3 nodes Ready")
        yield s
    finally:
        s.stop()


@pytest.fixture
def ns(control_plane: ControlPlane) -> str:
    name = f"vm-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", name)
    return name


def apply(cp: ControlPlane, ns: str, obj: dict[str, Any]) -> None:
    cp.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(obj))


def get(stack: Stack, kind: str, ns: str, name: str) -> dict[str, Any]:
    return dict(stack.kubectl_json("get", kind, name, "-n", ns))


def iaas(stack: Stack, identity: str) -> vm_pb.VirtualMachine | None:
    with stack.channel(PROVIDER) as channel:
        try:
            return vm_grpc.VirtualMachineServiceStub(channel).GetVirtualMachine(
                vm_pb.GetVirtualMachineRequest(identity=identity), timeout=10).virtual_machine
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise


def vm_manifest(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "vmlet.io/v1alpha1", "kind": "VirtualMachine",
            "metadata": {"name": name},
            "spec": {"provider": PROVIDER, "image": "debian-12", "cpu": 2, "memory": "4Gi",
                     **spec}}


def state(stack: Stack, ns: str, name: str, want: str) -> dict[str, Any] | None:
    vm = get(stack, "vm", ns, name)
    return vm if vm.get("status", {}).get("state") == want else None


def running(stack: Stack, ns: str, name: str) -> dict[str, Any]:
    return eventually(lambda: state(stack, ns, name, "Running"), what=f"{name} Running")


def vm_events(stack: Stack, ns: str, name: str) -> set[str]:
    items = stack.kubectl_json("get", "events", "-n", ns, "--field-selector",
                               f"involvedObject.name={name},involvedObject.kind=VirtualMachine")
    return {e["reason"] for e in items["items"]}


def test_lifecycle_power_resize_and_delete(stack: Stack, control_plane: ControlPlane,
                                           ns: str) -> None:
    apply(control_plane, ns, vm_manifest("app"))
    vm = running(stack, ns, "app")
    uid = vm["metadata"]["uid"]
    status = vm["status"]
    assert status["addresses"] and status["nodeName"]
    assert "identity" not in status  # the identity is metadata.uid, carried nowhere else
    assert status["observedGeneration"] == vm["metadata"]["generation"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    pods = stack.kubectl_json("get", "pods", "-n", ns, "-l", f"vmlet.io/vm-uid={uid}")["items"]
    assert len(pods) == 1
    pod = pods[0]
    assert pod["metadata"]["ownerReferences"][0]["uid"] == uid
    assert "vmlet.io/identity" not in (pod["metadata"].get("annotations") or {})
    assert {"key": "virtual-kubelet.io/provider", "operator": "Equal", "value": PROVIDER,
            "effect": "NoSchedule"} in pod["spec"]["tolerations"]
    machine = iaas(stack, uid)
    assert machine is not None and machine.power_state == vm_pb.POWER_STATE_ON
    assert machine.node_name == status["nodeName"]
    first_provider_id = machine.provider_id

    # 1 -> 0: powered off, kept.
    control_plane.kubectl("patch", "vm", "app", "-n", ns, "--type=merge",
                          "-p", '{"spec":{"replicas":0}}')
    eventually(lambda: state(stack, ns, "app", "Stopped"), what="Stopped")
    machine = iaas(stack, uid)
    assert machine is not None and machine.power_state == vm_pb.POWER_STATE_OFF
    assert not stack.kubectl_json("get", "pods", "-n", ns, "-l",
                                  f"vmlet.io/vm-uid={uid}")["items"]

    # 0 -> 1: the same VM powers on again.
    control_plane.kubectl("patch", "vm", "app", "-n", ns, "--type=merge",
                          "-p", '{"spec":{"replicas":1}}')
    running(stack, ns, "app")
    machine = iaas(stack, uid)
    assert machine is not None and machine.power_state == vm_pb.POWER_STATE_ON
    assert machine.provider_id == first_provider_id

    # Resize in place: the same pod, the new size in the IaaS.
    pod_name = get(stack, "vm", ns, "app")["status"]["podName"]
    control_plane.kubectl("patch", "vm", "app", "-n", ns, "--type=merge",
                          "-p", '{"spec":{"cpu":4,"memory":"8Gi"}}')
    eventually(lambda: (m := iaas(stack, uid)) is not None and m.cpus == 4
               and m.memory_bytes == 8 * 2**30, what="new size in the IaaS")
    # The status follows once the facade has reported the pod's new size (a moment later).
    after = eventually(lambda: (v := running(stack, ns, "app"))["status"]["cpu"] == 4 and v,
                       what="Running at the new size")
    assert after["status"]["podName"] == pod_name
    assert after["status"]["memory"] == "8Gi"
    assert {"Running", "Stopped", "Resizing"} <= vm_events(stack, ns, "app")

    # Delete: destroyed in the IaaS through the finalizer, then gone.
    control_plane.kubectl("delete", "vm", "app", "-n", ns, "--timeout=60s")
    assert iaas(stack, uid) is None
    assert not stack.kubectl_json("get", "vm", "-n", ns)["items"]


def test_backup_restore_and_migration(stack: Stack, control_plane: ControlPlane,
                                      ns: str) -> None:
    apply(control_plane, ns, vm_manifest("db"))
    vm = running(stack, ns, "db")
    uid, source = vm["metadata"]["uid"], vm["status"]["nodeName"]

    apply(control_plane, ns, {"apiVersion": "vmlet.io/v1alpha1", "kind": "VirtualMachineBackup",
                              "metadata": {"name": "nightly"}, "spec": {"vmName": "db"}})
    backup = eventually(lambda: (b := get(stack, "vmbackup", ns, "nightly"))
                        .get("status", {}).get("state") == "Succeeded" and b,
                        what="backup Succeeded")
    job = get(stack, "job", ns, backup["status"]["jobName"])
    assert job["status"]["succeeded"] == 1
    job_pods = stack.kubectl_json("get", "pods", "-n", ns, "-l", "vmlet.io/backup=nightly")
    assert job_pods["items"][0]["spec"]["nodeName"] == source, "the Job ran on the VM's node"
    with stack.channel(PROVIDER) as channel:
        snaps = vm_grpc.VirtualMachineServiceStub(channel).ListSnapshots(
            vm_pb.ListSnapshotsRequest(identity=uid), timeout=10).snapshots
    assert [s.id for s in snaps] == [backup["status"]["snapshotID"]]
    assert backup["status"]["completionTime"] and backup["status"]["startTime"]

    apply(control_plane, ns, {"apiVersion": "vmlet.io/v1alpha1", "kind": "VirtualMachineRestore",
                              "metadata": {"name": "undo"}, "spec": {"backupName": "nightly"}})
    restore = eventually(lambda: (r := get(stack, "vmrestore", ns, "undo"))["status"]
                         .get("state") == "Succeeded" and r, what="restore Succeeded")
    assert restore["status"]["completionTime"] and restore["status"]["vmName"] == "db"

    apply(control_plane, ns, {"apiVersion": "vmlet.io/v1alpha1",
                              "kind": "VirtualMachineMigration",
                              "metadata": {"name": "move"}, "spec": {"vmName": "db"}})
    mig = eventually(lambda: (m := get(stack, "vmmigration", ns, "move"))["status"]
                     .get("state") == "Succeeded" and m, timeout=90, what="migration Succeeded")
    assert mig["status"]["sourceNode"] == source
    assert mig["status"]["targetNode"] != source
    machine = iaas(stack, uid)
    assert machine is not None and machine.node_name == mig["status"]["targetNode"]
    assert machine.power_state == vm_pb.POWER_STATE_ON
    moved = running(stack, ns, "db")
    assert moved["metadata"]["uid"] == uid
    assert "Migrated" in vm_events(stack, ns, "db")


def backup(cp: ControlPlane, ns: str, name: str, vm: str) -> None:
    apply(cp, ns, {"apiVersion": "vmlet.io/v1alpha1", "kind": "VirtualMachineBackup",
                   "metadata": {"name": name}, "spec": {"vmName": vm}})


def backup_state(stack: Stack, ns: str, name: str, want: str) -> dict[str, Any] | None:
    b = get(stack, "vmbackup", ns, name)
    return b if b.get("status", {}).get("state") == want else None


def test_backups_of_a_stopped_vm(stack: Stack, control_plane: ControlPlane, ns: str) -> None:
    """A VM stopped right after a Backup was asked for, or before, is backed up where it rests
    (the fault-injection run once found such Backups Running for good); a VM not yet placed
    holds its Backup Pending and says why."""
    apply(control_plane, ns, vm_manifest("cold"))
    vm = running(stack, ns, "cold")
    uid, node = vm["metadata"]["uid"], vm["status"]["nodeName"]
    backup(control_plane, ns, "racing", "cold")
    control_plane.kubectl("patch", "vm", "cold", "-n", ns, "--type=merge", "-p",
                          '{"spec":{"replicas":0}}')
    eventually(lambda: state(stack, ns, "cold", "Stopped"), what="cold Stopped")
    backup(control_plane, ns, "after", "cold")
    for name in ("racing", "after"):
        done = eventually(lambda n=name: backup_state(stack, ns, n, "Succeeded"), timeout=90,
                          what=f"backup {name} Succeeded")
        pods = stack.kubectl_json("get", "pods", "-n", ns, "-l", f"vmlet.io/backup={name}")
        assert {p["spec"]["nodeName"] for p in pods["items"]} == {node}
        assert done["status"]["snapshotID"]
    with stack.channel(PROVIDER) as channel:
        snaps = vm_grpc.VirtualMachineServiceStub(channel).ListSnapshots(
            vm_pb.ListSnapshotsRequest(identity=uid, namespace=ns), timeout=10).snapshots
    assert len(snaps) == 2
    machine = iaas(stack, uid)
    assert machine is not None and machine.power_state == vm_pb.POWER_STATE_OFF, \
        "a backup does not start a stopped VM"
    assert state(stack, ns, "cold", "Stopped")

    apply(control_plane, ns, vm_manifest("nowhere",
                                         placement={"nodeSelector": {"vmlet.io/none": "x"}}))
    backup(control_plane, ns, "early", "nowhere")
    waiting = eventually(lambda: backup_state(stack, ns, "early", "Pending"),
                         what="backup of an unplaced VM Pending")
    complete = next(c for c in waiting["status"]["conditions"] if c["type"] == "Complete")
    assert complete["reason"] == "VMNotPlaced" and complete["status"] == "False"
    assert not stack.kubectl_json("get", "jobs", "-n", ns, "-l", "vmlet.io/backup=early")["items"]


def test_migration_to_a_named_node(stack: Stack, control_plane: ControlPlane, ns: str) -> None:
    apply(control_plane, ns, vm_manifest("pinned", placement={"nodeName": f"{PROVIDER}-0"}))
    vm = running(stack, ns, "pinned")
    assert vm["status"]["nodeName"] == f"{PROVIDER}-0"
    target = f"{PROVIDER}-2"
    apply(control_plane, ns, {"apiVersion": "vmlet.io/v1alpha1",
                              "kind": "VirtualMachineMigration", "metadata": {"name": "to2"},
                              "spec": {"vmName": "pinned", "targetNode": target}})
    eventually(lambda: get(stack, "vmmigration", ns, "to2")["status"].get("state")
               == "Succeeded", timeout=90, what="migration Succeeded")
    machine = iaas(stack, vm["metadata"]["uid"])
    assert machine is not None and machine.node_name == target


def test_invalid_specs_are_refused_up_front(control_plane: ControlPlane, ns: str,
                                            stack: Stack) -> None:
    bad = vm_manifest("bad", replicas=2, cpu="0", memory="1Mi")
    result = control_plane.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(bad),
                                   check=False)
    assert result.returncode != 0
    assert "spec.replicas" in result.stderr and "cpu must be between" in result.stderr
    assert "memory must be at least 64Mi" in result.stderr
    apply(control_plane, ns, vm_manifest("fixed"))
    immut = control_plane.kubectl("patch", "vm", "fixed", "-n", ns, "--type=merge", "-p",
                                  '{"spec":{"image":"other"}}', check=False)
    assert immut.returncode != 0 and "image is immutable" in immut.stderr


def test_unplaceable_vm_says_why(stack: Stack, control_plane: ControlPlane, ns: str) -> None:
    apply(control_plane, ns, vm_manifest("nope",
                                         placement={"nodeSelector": {"vmlet.io/none": "x"}}))
    vm = eventually(lambda: state(stack, ns, "nope", "Provisioning"), what="Provisioning")
    ready = next(c for c in vm["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "Unscheduled"
