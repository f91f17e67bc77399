"""Disks as PVs, VMs behind Services, and taints, on the real control plane with the memory
provider as the IaaS; every disk is checked in the IaaS itself.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from vmlet.provider.v1 import virtual_machine_service_pb2 as vm_pb
from vmlet.provider.v1 import virtual_machine_service_pb2_grpc as vm_grpc
from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.stack import Stack, eventually

PROVIDER = "dskmem"


@pytest.fixture(scope="module")
def stack(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(control_plane, tmp_path_factory.mktemp("dstack"), {PROVIDER: ["--nodes", "2"]})
    s.start()
    for name, reclaim in (("vmlet-delete", "Delete"), ("vmlet-retain", "Retain")):
        control_plane.kubectl("apply", "-f", "-", input=json.dumps({
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": f"{name}-{PROVIDER}"},
            "provisioner": f"{PROVIDER}.vmlet.io", "reclaimPolicy": reclaim,
            "allowVolumeExpansion": True, "volumeBindingMode": "Immediate",
            "parameters": {"tier": "gold"}}))
    try:
        eventually(lambda: len(s.ready_nodes(PROVIDER)) == 2, what="nodes Ready")
        yield s
    finally:
        s.stop()


@pytest.fixture
def ns(control_plane: ControlPlane) -> str:
    name = f"d-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", name)
    return name


def apply(cp: ControlPlane, ns: str, *objs: dict[str, Any]) -> None:
    cp.kubectl("apply", "-n", ns, "-f", "-",
               input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objs)}))


def pvc(name: str, klass: str, size: str = "1Gi", modes: tuple[str, ...] = ("ReadWriteOnce",)
        ) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
            "spec": {"storageClassName": f"{klass}-{PROVIDER}", "accessModes": list(modes),
                     "resources": {"requests": {"storage": size}}}}


def get(stack: Stack, kind: str, name: str, ns: str | None = None) -> dict[str, Any]:
    args = ["get", kind, name] + (["-n", ns] if ns else [])
    return dict(stack.kubectl_json(*args))


def bound(stack: Stack, ns: str, name: str) -> dict[str, Any] | None:
    claim = get(stack, "pvc", name, ns)
    return claim if claim.get("status", {}).get("phase") == "Bound" else None


def disk(stack: Stack, handle: str) -> vm_pb.Disk | None:
    with stack.channel(PROVIDER) as channel:
        try:
            return vm_grpc.VirtualMachineServiceStub(channel).GetDisk(
                vm_pb.GetDiskRequest(handle=handle), timeout=10).disk
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise


def handle_of(stack: Stack, claim: dict[str, Any]) -> str:
    pv = get(stack, "pv", claim["spec"]["volumeName"])
    return str(pv["spec"]["csi"]["volumeHandle"])


def vm(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "vmlet.io/v1alpha1", "kind": "VirtualMachine",
            "metadata": {"name": name, "labels": spec.pop("labels", {})},
            "spec": {"provider": PROVIDER, "image": "debian-12", "cpu": 1, "memory": "1Gi",
                     **spec}}


def vm_state(stack: Stack, ns: str, name: str, want: str) -> dict[str, Any] | None:
    obj = get(stack, "vm", name, ns)
    return obj if obj.get("status", {}).get("state") == want else None


def events(stack: Stack, ns: str, name: str) -> list[dict[str, Any]]:
    return list(stack.kubectl_json("get", "events", "-n", ns, "--field-selector",
                                   f"involvedObject.name={name}")["items"])


def test_claim_becomes_a_disk_and_goes_with_delete(stack: Stack, control_plane: ControlPlane,
                                                   ns: str) -> None:
    apply(control_plane, ns, pvc("data", "vmlet-delete", "2Gi"))
    claim = eventually(lambda: bound(stack, ns, "data"), what="claim Bound")
    pv = get(stack, "pv", claim["spec"]["volumeName"])
    assert pv["spec"]["capacity"]["storage"] == "2Gi"
    assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Delete"
    assert pv["spec"]["csi"]["driver"] == f"{PROVIDER}.vmlet.io"
    handle = handle_of(stack, claim)
    made = disk(stack, handle)
    assert made is not None and made.size_bytes == 2 * 2**30 and made.name == pv["metadata"]["name"]
    assert "ProvisioningSucceeded" in {e["reason"] for e in events(stack, ns, "data")}
    control_plane.kubectl("delete", "pvc", "data", "-n", ns)
    eventually(lambda: disk(stack, handle) is None, what="disk deleted in the IaaS")
    eventually(lambda: control_plane.kubectl("get", "pv", pv["metadata"]["name"],
                                             check=False).returncode != 0, what="PV deleted")


def test_retain_keeps_the_disk(stack: Stack, control_plane: ControlPlane, ns: str) -> None:
    apply(control_plane, ns, pvc("keep", "vmlet-retain"))
    claim = eventually(lambda: bound(stack, ns, "keep"), what="claim Bound")
    handle = handle_of(stack, claim)
    control_plane.kubectl("delete", "pvc", "keep", "-n", ns)
    eventually(lambda: get(stack, "pv", claim["spec"]["volumeName"])["status"]["phase"]
               == "Released", what="PV Released")
    time.sleep(2)
    assert disk(stack, handle) is not None, "Retain keeps the disk"


def test_only_read_write_once(stack: Stack, control_plane: ControlPlane, ns: str) -> None:
    apply(control_plane, ns, pvc("shared", "vmlet-delete", modes=("ReadWriteMany",)))
    refused = eventually(lambda: [e for e in events(stack, ns, "shared")
                                  if e["reason"] == "ProvisioningFailed"
                                  and e["source"].get("component") == "vmlet"],
                         what="ProvisioningFailed Event")
    assert "only ReadWriteOnce" in refused[0]["message"]
    assert get(stack, "pvc", "shared", ns)["status"]["phase"] == "Pending"


def test_expansion_grows_the_disk(stack: Stack, control_plane: ControlPlane, ns: str) -> None:
    apply(control_plane, ns, pvc("grow", "vmlet-delete", "1Gi"))
    claim = eventually(lambda: bound(stack, ns, "grow"), what="claim Bound")
    handle = handle_of(stack, claim)
    control_plane.kubectl("patch", "pvc", "grow", "-n", ns, "--type=merge", "-p",
                          '{"spec":{"resources":{"requests":{"storage":"3Gi"}}}}')
    eventually(lambda: (d := disk(stack, handle)) is not None and d.size_bytes == 3 * 2**30,
               what="disk grown in the IaaS")
    eventually(lambda: get(stack, "pvc", "grow", ns)["status"]["capacity"]["storage"] == "3Gi",
               what="claim capacity updated")
    assert get(stack, "pv", claim["spec"]["volumeName"])["spec"]["capacity"]["storage"] == "3Gi"


def test_vm_disks_attach_and_are_exclusive(stack: Stack, control_plane: ControlPlane,
                                           ns: str) -> None:
    apply(control_plane, ns, pvc("root", "vmlet-delete"))
    claim = eventually(lambda: bound(stack, ns, "root"), what="claim Bound")
    handle = handle_of(stack, claim)
    apply(control_plane, ns, vm("one", disks=[{"name": "data", "claimName": "root"}]))
    one = eventually(lambda: vm_state(stack, ns, "one", "Running"), what="VM Running")
    assert one["status"]["disks"] == [{"name": "data", "claimName": "root"}]
    attached = disk(stack, handle)
    assert attached is not None and attached.attached_to == one["metadata"]["uid"]

    apply(control_plane, ns, vm("two", disks=[{"name": "data", "claimName": "root"}]))
    two = eventually(lambda: vm_state(stack, ns, "two", "Failed"), what="second VM refused")
    failure = next(c for c in two["status"]["conditions"] if c["type"] == "Failure")
    assert failure["reason"] == "DiskInUse" and "VirtualMachine one" in failure["message"]

    control_plane.kubectl("delete", "vm", "one", "-n", ns, "--timeout=60s")
    eventually(lambda: (d := disk(stack, handle)) is not None and d.attached_to
               == get(stack, "vm", "two", ns)["metadata"]["uid"], what="disk moves to VM two")
    control_plane.kubectl("delete", "vm", "two", "-n", ns, "--timeout=60s")
    eventually(lambda: (d := disk(stack, handle)) is not None and not d.attached_to,
               what="disk detached after the VM is destroyed")


def test_exposed_vm_gets_service_and_endpoints(stack: Stack, control_plane: ControlPlane,
                                               ns: str) -> None:
    apply(control_plane, ns, vm("web", expose={"ports": [{"name": "http", "port": 80,
                                                          "targetPort": 8080}]}))
    running = eventually(lambda: vm_state(stack, ns, "web", "Running"), what="VM Running")
    ip = running["status"]["addresses"][0]
    svc = get(stack, "service", "web", ns)
    assert "selector" not in svc["spec"] and svc["spec"]["ports"][0]["port"] == 80

    def slice_endpoints() -> list[dict[str, Any]]:
        items = stack.kubectl_json("get", "endpointslices", "-n", ns, "-l",
                                   "kubernetes.io/service-name=web")["items"]
        return [e for s in items for e in s.get("endpoints") or []]

    eps = eventually(lambda: [e for e in slice_endpoints() if e["conditions"]["ready"]],
                     what="ready endpoint")
    assert eps[0]["addresses"] == [ip]
    control_plane.kubectl("patch", "vm", "web", "-n", ns, "--type=merge",
                          "-p", '{"spec":{"replicas":0}}')
    eventually(lambda: slice_endpoints() == [], what="endpoints emptied when stopped")
    control_plane.kubectl("patch", "vm", "web", "-n", ns, "--type=merge",
                          "-p", '{"spec":{"replicas":1}}')
    eventually(lambda: [e for e in slice_endpoints() if e["conditions"]["ready"]],
               what="endpoint back after start")


def test_selector_service_lists_container_pods_and_vms(stack: Stack,
                                                       control_plane: ControlPlane,
                                                       ns: str) -> None:
    node = f"containers-{uuid.uuid4().hex[:5]}"
    control_plane.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": node,
                                                        "labels": {"vmlet.io/test": node}}}))
    apply(control_plane, ns,
          {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "mixed"},
           "spec": {"selector": {"app": "mixed"}, "ports": [{"port": 80}]}},
          {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "c", "labels": {"app": "mixed"}},
           "spec": {"nodeName": node, "containers": [{"name": "c", "image": "nginx"}]}},
          vm("v", labels={"app": "mixed"}))
    # This test plays the container node's kubelet, as there is none: it reports the pod.
    control_plane.kubectl("patch", "pod", "c", "-n", ns, "--subresource=status", "--type=merge",
                          "-p", json.dumps({"status": {
                              "phase": "Running", "podIP": "10.99.0.7",
                              "podIPs": [{"ip": "10.99.0.7"}],
                              "conditions": [{"type": "Ready", "status": "True"}]}}))
    vm_ip = eventually(lambda: vm_state(stack, ns, "v", "Running"),
                       what="VM Running")["status"]["addresses"][0]

    def addresses() -> set[str]:
        items = stack.kubectl_json("get", "endpointslices", "-n", ns, "-l",
                                   "kubernetes.io/service-name=mixed")["items"]
        return {a for s in items for e in s.get("endpoints") or [] for a in e["addresses"]}

    eventually(lambda: addresses() == {"10.99.0.7", vm_ip}, what="both endpoints listed")
    control_plane.kubectl("delete", "node", node)


def test_daemonsets_stay_off_vmlet_nodes_unless_tolerating(stack: Stack,
                                                           control_plane: ControlPlane,
                                                           ns: str) -> None:
    def daemonset(name: str, tolerate: bool) -> dict[str, Any]:
        spec: dict[str, Any] = {"containers": [{"name": "c", "image": "busybox"}],
                                "nodeSelector": {"vmlet.io/provider": PROVIDER}}
        if tolerate:
            spec["tolerations"] = [{"key": "virtual-kubelet.io/provider", "operator": "Exists"}]
        return {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": name},
                "spec": {"selector": {"matchLabels": {"ds": name}},
                         "template": {"metadata": {"labels": {"ds": name}}, "spec": spec}}}

    apply(control_plane, ns, daemonset("plain", False), daemonset("tolerant", True))
    eventually(lambda: get(stack, "daemonset", "tolerant", ns)["status"]
               .get("desiredNumberScheduled") == 2, what="tolerant DaemonSet on both nodes")
    pods = stack.kubectl_json("get", "pods", "-n", ns, "-l", "ds=tolerant")["items"]
    assert sorted(p["spec"]["nodeName"] for p in pods) == [f"{PROVIDER}-0", f"{PROVIDER}-1"]
    plain = get(stack, "daemonset", "plain", ns)["status"]
    assert plain.get("desiredNumberScheduled", 0) == 0
    assert not stack.kubectl_json("get", "pods", "-n", ns, "-l", "ds=plain")["items"]
