"""What the vSphere end-to-end tests share: the provider's nodes and hosts, vCenter as pyvmomi sees
it (VMs by identity, first-class disks), the provider's own view of a disk, and the Kubernetes
objects the tests apply."""

from __future__ import annotations

import json
from typing import Any

from pyVmomi import vim

from vmlet.provider.v1 import virtual_machine_service_pb2 as vm_pb
from vmlet.provider.v1 import virtual_machine_service_pb2_grpc as vm_grpc
from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.stack import Stack, eventually, nic_networks, vms_with_identity
from vmlet_localenv.vcsim import VcSim

PROVIDER = "vse2e"
HOSTS = ("DC0_C0_H0", "DC0_C0_H1", "DC0_C0_H2")
NODES = tuple(f"{PROVIDER}-{h.lower().replace('_', '-')}" for h in HOSTS)
HOST_OF = dict(zip(NODES, HOSTS, strict=True))
VM_API = "vmlet.io/v1alpha1"


def apply(cp: ControlPlane, ns: str, *objs: dict[str, Any]) -> None:
    cp.kubectl("apply", "-n", ns, "-f", "-",
               input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objs)}))


def get(stack: Stack, kind: str, name: str, ns: str | None = None) -> dict[str, Any]:
    return dict(stack.kubectl_json("get", kind, name, *(["-n", ns] if ns else [])))


def patch(cp: ControlPlane, kind: str, name: str, ns: str, body: dict[str, Any]) -> None:
    cp.kubectl("patch", kind, name, "-n", ns, "--type=merge", "-p", json.dumps(body))


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
