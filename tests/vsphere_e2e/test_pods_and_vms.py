"""Pods and VirtualMachines in vCenter: placement by the scheduler, the VirtualMachine lifecycle,
NICs on the pod's networks, a VM behind a Service, duplicate creates and a provider killed
mid-create."""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest

from tests.vsphere_e2e.vcenter import (
    HOST_OF,
    HOSTS,
    NODES,
    PROVIDER,
    VM_API,
    apply,
    get,
    in_vcenter,
    patch,
    running_vm,
    the_vm,
    vm_manifest,
    vm_state,
)
from vmlet.provider.v1 import pod_lifecycle_service_pb2 as lc_pb
from vmlet.provider.v1 import pod_lifecycle_service_pb2_grpc as lc_grpc
from vmlet.provider.v1 import pod_pb2
from vmlet.provider.v1 import virtual_machine_service_pb2 as vm_pb
from vmlet.provider.v1 import virtual_machine_service_pb2_grpc as vm_grpc
from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.stack import Stack, eventually, report_guest_ip, set_guest_ip
from vmlet_localenv.vcsim import VcSim

pytestmark = [pytest.mark.vcsim, pytest.mark.controlplane]


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
