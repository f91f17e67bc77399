"""vSphere end to end: the real control plane, the facade and the vSphere provider (each its own
process) on a vcsim of three hosts, every step checked in vCenter itself through pyvmomi.

Pods and VirtualMachines are applied with kubectl as a user would; the scheduler picks the
nodes. vcsim runs no guests, so no VMware Tools reports an IP: the tests report one the way the
tools would (vcsim's SET.guest.ipAddress extraConfig key) once the VM is powered on, and check
that nothing before that invents one. The module runs its own vcsim, since its last test
restarts it.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from pyVmomi import vim

from vmlet.provider.v1 import pod_lifecycle_service_pb2 as lc_pb
from vmlet.provider.v1 import pod_lifecycle_service_pb2_grpc as lc_grpc
from vmlet.provider.v1 import pod_pb2
from vmlet.provider.v1 import virtual_machine_service_pb2 as vm_pb
from vmlet.provider.v1 import virtual_machine_service_pb2_grpc as vm_grpc
from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.stack import (
    Stack,
    eventually,
    nic_networks,
    report_guest_ip,
    set_guest_ip,
    vms_with_identity,
)
from vmlet_localenv.vcsim import VcSim

pytestmark = [pytest.mark.vcsim, pytest.mark.controlplane]

PROVIDER = "vse2e"
HOSTS = ("DC0_C0_H0", "DC0_C0_H1", "DC0_C0_H2")
NODES = tuple(f"{PROVIDER}-{h.lower().replace('_', '-')}" for h in HOSTS)
HOST_OF = dict(zip(NODES, HOSTS, strict=True))
VM_API = "vmlet.io/v1alpha1"


# The environment.


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VcSim]:
    s = VcSim(hosts=len(HOSTS), state_dir=tmp_path_factory.mktemp("e2e-vcsim")).start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def stack(control_plane: ControlPlane, sim: VcSim,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(control_plane, tmp_path_factory.mktemp("e2e-stack"), {PROVIDER: []},
              kinds={PROVIDER: "vsphere"}, vcsim=sim)
    s.start()
    for name, reclaim in (("delete", "Delete"), ("retain", "Retain")):
        control_plane.kubectl("apply", "-f", "-", input=json.dumps({
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": f"{PROVIDER}-{name}"},
            "provisioner": f"{PROVIDER}.vmlet.io", "reclaimPolicy": reclaim,
            "allowVolumeExpansion": True, "volumeBindingMode": "Immediate",
            "parameters": {"datastore": "LocalDS_0", "provisioningType": "thin"}}))
    try:
        eventually(lambda: sorted(s.ready_nodes(PROVIDER)) == sorted(NODES),
                   what="one Ready node per vcsim host")
        yield s
    finally:
        s.stop()
        s.print_logs()


@pytest.fixture
def ns(control_plane: ControlPlane) -> Iterator[str]:
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", name)
    yield name
    # VMs go before the namespace does, so the next test finds the hosts free.
    control_plane.kubectl("delete", "vm", "--all", "-n", name, "--timeout=120s", check=False)
    control_plane.kubectl("delete", "namespace", name, "--wait=false", check=False)


def apply(cp: ControlPlane, ns: str, *objs: dict[str, Any]) -> None:
    cp.kubectl("apply", "-n", ns, "-f", "-",
               input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objs)}))


def get(stack: Stack, kind: str, name: str, ns: str | None = None) -> dict[str, Any]:
    return dict(stack.kubectl_json("get", kind, name, *(["-n", ns] if ns else [])))


def patch(cp: ControlPlane, kind: str, name: str, ns: str, body: dict[str, Any]) -> None:
    cp.kubectl("patch", kind, name, "-n", ns, "--type=merge", "-p", json.dumps(body))


# vCenter as pyvmomi sees it.


def in_vcenter(sim: VcSim, identity: str) -> list[dict[str, Any]]:
    """Every VM in vCenter that carries `identity`, as plain facts."""
    with sim.connect() as si:
        out = []
        for vm in vms_with_identity(si, identity):
            snapshot = getattr(vm, "snapshot", None)  # unset until the first snapshot
            out.append({
                "moref": vm._moId,
                "instance_uuid": vm.config.instanceUuid,
                "bios_uuid": vm.config.uuid,
                "name": vm.name,
                "host": vm.runtime.host.name,
                "power": vm.runtime.powerState,
                "cpus": vm.config.hardware.numCPU,
                "memory_mb": vm.config.hardware.memoryMB,
                "extra": {o.key: str(o.value) for o in vm.config.extraConfig or ()},
                "snapshots": _snapshots(snapshot.rootSnapshotList) if snapshot else {},
                "current_snapshot": snapshot.currentSnapshot._moId if snapshot else None,
                "nics": nic_networks(si, vm),
            })
        return out


def _snapshots(trees: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    stack = list(trees or ())
    while stack:
        node = stack.pop()
        out[node.snapshot._moId] = node.name
        stack.extend(node.childSnapshotList or ())
    return out


def the_vm(sim: VcSim, identity: str) -> dict[str, Any]:
    found = in_vcenter(sim, identity)
    assert len(found) == 1, f"{len(found)} VMs in vCenter carry identity {identity}"
    return found[0]


def fcd(sim: VcSim, handle: str) -> dict[str, Any] | None:
    """The first-class disk `handle` in vCenter, None when no datastore has it."""
    with sim.connect() as si:
        content = si.RetrieveContent()
        for ds in content.rootFolder.childEntity[0].datastore:
            try:
                obj = content.vStorageObjectManager.RetrieveVStorageObject(
                    id=vim.vslm.ID(id=handle), datastore=ds)
            except vim.fault.NotFound:
                continue
            return {"name": obj.config.name, "mb": obj.config.capacityInMB,
                    "consumers": [c.id for c in obj.config.consumerId or ()]}
    return None


def provider_disk(stack: Stack, handle: str) -> vm_pb.Disk:
    with stack.channel(PROVIDER) as channel:
        disk: vm_pb.Disk = vm_grpc.VirtualMachineServiceStub(channel).GetDisk(
            vm_pb.GetDiskRequest(handle=handle), timeout=30).disk
        return disk


# Kubernetes objects.


def vm_manifest(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": VM_API, "kind": "VirtualMachine", "metadata": {"name": name},
            "spec": {"provider": PROVIDER, "image": "debian-12", "cpu": 1, "memory": "1Gi",
                     **spec}}


def vm_state(stack: Stack, ns: str, name: str, want: str) -> dict[str, Any] | None:
    vm = get(stack, "vm", name, ns)
    return vm if vm.get("status", {}).get("state") == want else None


def running_vm(stack: Stack, ns: str, name: str, timeout: float = 90) -> dict[str, Any]:
    return eventually(lambda: (vm := vm_state(stack, ns, name, "Running"))
                      and vm["status"].get("addresses") and vm,
                      timeout=timeout, what=f"VirtualMachine {name} Running with an IP")


def pvc(name: str, policy: str, size: str = "1Gi") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
            "spec": {"storageClassName": f"{PROVIDER}-{policy}", "accessModes": ["ReadWriteOnce"],
                     "resources": {"requests": {"storage": size}}}}


def bound_handle(stack: Stack, ns: str, claim: str) -> tuple[str, str]:
    """(PV name, disk handle) once the claim is Bound."""
    bound = eventually(lambda: (c := get(stack, "pvc", claim, ns))["status"].get("phase")
                       == "Bound" and c, what=f"claim {claim} Bound")
    pv = get(stack, "pv", bound["spec"]["volumeName"])
    return pv["metadata"]["name"], str(pv["spec"]["csi"]["volumeHandle"])


# Pods.


def test_pod_becomes_a_vm_on_the_node_the_scheduler_chose(
        stack: Stack, control_plane: ControlPlane, sim: VcSim, ns: str) -> None:
    pod = stack.vm_pod("web", PROVIDER)  # requests 1 CPU/1Gi, limits 2 CPU/2Gi
    apply(control_plane, ns, pod)
    running = eventually(lambda: (p := get(stack, "pod", "web", ns))["status"].get("phase")
                         == "Running" and p, what="pod Running")
    uid, node = running["metadata"]["uid"], running["spec"]["nodeName"]
    assert node in NODES
    vm = the_vm(sim, uid)
    assert vm["host"] == HOST_OF[node], "the VM is on the host behind the scheduler's node"
    assert get(stack, "node", node)["metadata"]["labels"]["vmlet.io/vsphere-host"] == vm["host"]
    assert (vm["cpus"], vm["memory_mb"]) == (2, 2048)  # the limits: 2 vCPU, 2Gi
    assert vm["extra"]["vmlet.identity"] == uid
    assert vm["extra"]["vmlet.pod"] == f"{ns}/web"
    assert vm["power"] == "poweredOn"
    status = running["status"]
    assert not status.get("podIP"), "no IP before the guest reports one"
    assert next(c for c in status["conditions"] if c["type"] == "Ready")["status"] == "False"
    assert status["containerStatuses"][0]["containerID"] == f"vsphere://{vm['instance_uuid']}"

    assert set_guest_ip(sim, uid, "10.1.2.3")
    ready = eventually(lambda: (p := get(stack, "pod", "web", ns))["status"].get("podIP")
                       == "10.1.2.3" and p, what="pod IP from the guest")
    assert next(c for c in ready["status"]["conditions"] if c["type"] == "Ready")["status"] \
        == "True"

    control_plane.kubectl("delete", "pod", "web", "-n", ns, "--timeout=60s")
    eventually(lambda: not in_vcenter(sim, uid), what="a bare pod's VM destroyed in vCenter")


# VirtualMachines.


def test_virtual_machine_lifecycle_in_vcenter(
        stack: Stack, control_plane: ControlPlane, sim: VcSim, ns: str) -> None:
    apply(control_plane, ns, vm_manifest("app"))
    uid = get(stack, "vm", "app", ns)["metadata"]["uid"]
    report_guest_ip(sim, uid, "10.2.0.1")
    vm = running_vm(stack, ns, "app")
    node = vm["status"]["nodeName"]
    first = the_vm(sim, uid)
    assert first["host"] == HOST_OF[node] and first["power"] == "poweredOn"
    assert (first["cpus"], first["memory_mb"]) == (1, 1024)
    assert first["extra"]["vmlet.identity"] == uid
    assert vm["status"]["addresses"] == ["10.2.0.1"]
    same = (first["moref"], first["instance_uuid"])

    # Power off and on: the same VM (moref and instanceUuid), never a second one.
    patch(control_plane, "vm", "app", ns, {"spec": {"replicas": 0}})
    eventually(lambda: vm_state(stack, ns, "app", "Stopped"), what="Stopped")
    off = the_vm(sim, uid)
    assert off["power"] == "poweredOff" and (off["moref"], off["instance_uuid"]) == same
    patch(control_plane, "vm", "app", ns, {"spec": {"replicas": 1}})
    running_vm(stack, ns, "app")
    on = the_vm(sim, uid)
    assert on["power"] == "poweredOn" and (on["moref"], on["instance_uuid"]) == same

    # Resize: numCPU and memoryMB change in vCenter.
    patch(control_plane, "vm", "app", ns, {"spec": {"cpu": 2, "memory": "2Gi"}})
    eventually(lambda: (v := the_vm(sim, uid))["cpus"] == 2 and v["memory_mb"] == 2048,
               what="the new size in vCenter")
    eventually(lambda: (v := running_vm(stack, ns, "app"))["status"]["cpu"] == 2 and v,
               what="Running at the new size")
    assert (the_vm(sim, uid)["moref"], the_vm(sim, uid)["power"]) == (same[0], "poweredOn")

    # Backup: a snapshot in vCenter. Restore: the VM reverted to it.
    apply(control_plane, ns, {"apiVersion": VM_API, "kind": "VirtualMachineBackup",
                              "metadata": {"name": "nightly"}, "spec": {"vmName": "app"}})
    backup = eventually(lambda: (b := get(stack, "vmbackup", "nightly", ns))
                        .get("status", {}).get("state") == "Succeeded" and b,
                        what="backup Succeeded")
    snapshot = backup["status"]["snapshotID"]
    assert the_vm(sim, uid)["snapshots"] == {snapshot: f"{ns}-nightly"}
    apply(control_plane, ns, {"apiVersion": VM_API, "kind": "VirtualMachineRestore",
                              "metadata": {"name": "undo"}, "spec": {"backupName": "nightly"}})
    eventually(lambda: get(stack, "vmrestore", "undo", ns).get("status", {}).get("state")
               == "Succeeded", what="restore Succeeded")
    restored = the_vm(sim, uid)
    assert restored["current_snapshot"] == snapshot and restored["power"] == "poweredOn"
    running_vm(stack, ns, "app")

    # Migration: runtime.host changes; still one VM, the same one.
    source = get(stack, "vm", "app", ns)["status"]["nodeName"]
    apply(control_plane, ns, {"apiVersion": VM_API, "kind": "VirtualMachineMigration",
                              "metadata": {"name": "move"}, "spec": {"vmName": "app"}})
    mig = eventually(lambda: (m := get(stack, "vmmigration", "move", ns))["status"]
                     .get("state") == "Succeeded" and m, timeout=120, what="migration Succeeded")
    target = mig["status"]["targetNode"]
    assert mig["status"]["sourceNode"] == source and target != source
    moved = the_vm(sim, uid)
    assert moved["host"] == HOST_OF[target] != HOST_OF[source]
    assert (moved["moref"], moved["instance_uuid"], moved["power"]) == (*same, "poweredOn")

    # Delete: the VM is gone from vCenter.
    control_plane.kubectl("delete", "vm", "app", "-n", ns, "--timeout=90s")
    assert in_vcenter(sim, uid) == []


def test_networks_become_the_vms_nics(
        stack: Stack, control_plane: ControlPlane, sim: VcSim, ns: str) -> None:
    apply(control_plane, ns, vm_manifest(
        "multi", networks=[{"name": "DC0_DVPG0"}, {"name": "VM Network"}]))
    uid = get(stack, "vm", "multi", ns)["metadata"]["uid"]
    report_guest_ip(sim, uid, "10.3.0.1")
    running_vm(stack, ns, "multi")
    assert the_vm(sim, uid)["nics"] == ["DC0_DVPG0", "VM Network"]

    apply(control_plane, ns, vm_manifest("lost", networks=[{"name": "no-such-portgroup"}]))
    failed = eventually(lambda: vm_state(stack, ns, "lost", "Provisioning") or
                        vm_state(stack, ns, "lost", "Failed"), what="unknown network refused")
    pod = get(stack, "pod", failed["status"]["podName"], ns)
    waiting = pod["status"]["containerStatuses"][0]["state"]["waiting"]
    assert "no-such-portgroup" in waiting["message"] and "not found" in waiting["message"]


def test_exposed_vm_is_an_endpoint_and_container_pods_stay_off_its_hosts(
        stack: Stack, control_plane: ControlPlane, sim: VcSim, ns: str) -> None:
    apply(control_plane, ns,
          vm_manifest("web", expose={"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}),
          # A container pod aimed at the vSphere nodes, without the provider's toleration.
          {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "plain"},
           "spec": {"nodeSelector": {"vmlet.io/provider": PROVIDER},
                    "containers": [{"name": "c", "image": "busybox"}]}})
    uid = get(stack, "vm", "web", ns)["metadata"]["uid"]
    report_guest_ip(sim, uid, "10.3.0.7")
    running_vm(stack, ns, "web")

    def endpoints() -> list[dict[str, Any]]:
        items = stack.kubectl_json("get", "endpointslices", "-n", ns, "-l",
                                   "kubernetes.io/service-name=web")["items"]
        return [e for s in items for e in s.get("endpoints") or []]

    ready = eventually(lambda: [e for e in endpoints() if e["conditions"]["ready"]],
                       what="the VM's guest IP as a ready endpoint")
    assert ready[0]["addresses"] == ["10.3.0.7"]
    assert "selector" not in get(stack, "service", "web", ns)["spec"]

    # The guest reports a new address (VMware Tools after a DHCP renewal): the endpoint follows.
    assert set_guest_ip(sim, uid, "10.3.0.8")
    eventually(lambda: [e["addresses"] for e in endpoints()] == [["10.3.0.8"]],
               what="the endpoint follows the guest's new IP")
    patch(control_plane, "vm", "web", ns, {"spec": {"replicas": 0}})
    eventually(lambda: endpoints() == [], what="no endpoint once the VM is off")

    # The real scheduler keeps the container pod off every vSphere node (their taint).
    def refused() -> dict[str, Any] | None:
        pod = get(stack, "pod", "plain", ns)
        return pod if any(
            c.get("reason") == "Unschedulable" and "untolerated taint" in c.get("message", "")
            for c in pod.get("status", {}).get("conditions") or []) else None

    assert not eventually(refused, what="the scheduler refusing the container pod")["spec"].get(
        "nodeName")


def test_concurrent_duplicate_creates_leave_one_vm(
        stack: Stack, control_plane: ControlPlane, sim: VcSim, ns: str) -> None:
    # Only the facade chooses an identity (a pod's annotations name none), so six pods of one
    # identity are six CreatePod calls at the provider's own API, all at once.
    identity = str(uuid.uuid4())
    pods = [pod_pb2.Pod(ref=pod_pb2.PodRef(namespace=ns, name=f"dup-{i}", uid=str(uuid.uuid4())),
                        node_name=NODES[0], identity=identity,
                        containers=[pod_pb2.Container(name="vm", image="debian-12")])
            for i in range(6)]
    with stack.channel(PROVIDER) as channel:
        lifecycle = lc_grpc.PodLifecycleServiceStub(channel)

        def create(pod: pod_pb2.Pod) -> str:
            try:
                lifecycle.CreatePod(lc_pb.CreatePodRequest(pod=pod), timeout=120)
                return "ok"
            except grpc.RpcError as err:
                return str(err.code())

        with ThreadPoolExecutor(len(pods)) as pool:
            outcomes = list(pool.map(create, pods))
        assert "ok" in outcomes, outcomes
        vm = the_vm(sim, identity)  # exactly one VM for six pods
        assert vm["power"] == "poweredOn" and vm["host"] == HOSTS[0]
        vm_grpc.VirtualMachineServiceStub(channel).DeleteVirtualMachine(
            vm_pb.DeleteVirtualMachineRequest(identity=identity, namespace=ns), timeout=120)
    eventually(lambda: not in_vcenter(sim, identity), what="the VM destroyed")


def test_provider_sigkill_mid_create_leaves_one_vm(
        stack: Stack, control_plane: ControlPlane, sim: VcSim, ns: str) -> None:
    provider = stack.providers[PROVIDER]
    for round_, delay in enumerate((0.0, 0.2, 0.6)):
        names = [f"k{round_}-{i}" for i in range(3)]
        apply(control_plane, ns, *[vm_manifest(n) for n in names])
        uids = {n: get(stack, "vm", n, ns)["metadata"]["uid"] for n in names}
        # Kill the provider the moment the first clone shows up in vCenter (plus `delay`).
        wanted = list(uids.values())
        eventually(lambda w=wanted: any(in_vcenter(sim, u) for u in w),  # type: ignore[misc]
                   interval=0.02, what="a clone started")
        time.sleep(delay)
        provider.kill()
        provider.start()  # the same address: the facade's channel reconnects
        reporters = [threading.Thread(target=report_guest_ip, args=(sim, uid, f"10.4.{round_}.{i}"),
                                      daemon=True) for i, uid in enumerate(uids.values())]
        for thread in reporters:
            thread.start()
        for name in names:
            running_vm(stack, ns, name, timeout=120)
        for thread in reporters:
            thread.join(30)
        for name, uid in uids.items():
            vm = the_vm(sim, uid)  # exactly one VM each
            assert vm["power"] == "poweredOn", name
        control_plane.kubectl("delete", "vm", *names, "-n", ns, "--timeout=120s")
        for uid in uids.values():
            assert in_vcenter(sim, uid) == []


# Disks (first-class disks) as PersistentVolumes.


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


# vCenter restarts (last: it replaces the module's inventory).


def test_vcenter_restart_relogin_and_recovery(
        stack: Stack, control_plane: ControlPlane, sim: VcSim, ns: str, tmp_path: Path) -> None:
    apply(control_plane, ns, vm_manifest("before"))
    before = get(stack, "vm", "before", ns)["metadata"]["uid"]
    report_guest_ip(sim, before, "10.6.0.1")
    running_vm(stack, ns, "before")

    def ready_conditions() -> dict[str, dict[str, Any]]:
        return {n["metadata"]["name"]: next(c for c in n["status"]["conditions"]
                                            if c["type"] == "Ready")
                for n in stack.nodes(PROVIDER)}

    assert sim.process is not None
    sim.process.stop()
    down = eventually(lambda: (c := ready_conditions()) and all(
        v["status"] == "Unknown" for v in c.values()) and c, what="nodes Ready=Unknown")
    assert sorted(down) == sorted(NODES)
    assert all("vCenter" in c["message"] for c in down.values()), down

    sim.restart()  # the same address and credentials, a fresh inventory
    eventually(lambda: all(c["status"] == "True" for c in ready_conditions().values()),
               timeout=90, what="nodes Ready again after re-login")
    # The old VM is gone with the old inventory: its VirtualMachine says so, nothing remade it.
    failed = eventually(lambda: vm_state(stack, ns, "before", "Failed"), timeout=90,
                        what="the vanished VM's VirtualMachine Failed")
    assert "VMVanished" in json.dumps(failed["status"]["conditions"])
    assert in_vcenter(sim, before) == []

    apply(control_plane, ns, vm_manifest("after"))
    after = get(stack, "vm", "after", ns)["metadata"]["uid"]
    report_guest_ip(sim, after, "10.6.0.2")
    running_vm(stack, ns, "after")
    assert the_vm(sim, after)["power"] == "poweredOn"
    with stack.channel(PROVIDER) as channel:
        got = vm_grpc.VirtualMachineServiceStub(channel).GetVirtualMachine(
            vm_pb.GetVirtualMachineRequest(identity=after), timeout=30).virtual_machine
    assert got.provider_id == the_vm(sim, after)["moref"]
    with pytest.raises(grpc.RpcError):
        with stack.channel(PROVIDER) as channel:
            vm_grpc.VirtualMachineServiceStub(channel).GetVirtualMachine(
                vm_pb.GetVirtualMachineRequest(identity=before), timeout=30)
