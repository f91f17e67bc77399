"""Taking over the victim's VM: the identity annotation (memory and vSphere on vcsim), owner
references to another namespace, and VM labels in another namespace."""

from __future__ import annotations

import time

import pytest

from tests.multitenancy.tenancy import (
    PROVIDER,
    VSPHERE,
    Obj,
    Secrets,
    Tenant,
    VictimVM,
    bare_pod,
    machine,
    pod_decided,
    running_vm,
    start_victim_vm,
    stays_untouched,
)
from vmlet_localenv.stack import Stack, eventually, vms_with_identity

pytestmark = pytest.mark.controlplane


def other_node(stack: Stack, node: str, provider: str = PROVIDER) -> str:
    return next(n for n in stack.ready_nodes(provider) if n != node)


def in_vcenter(stack: Stack, identity: str) -> list[tuple[str, str]]:
    """(host, power state) of every vCenter VM that carries ``identity``."""
    assert stack.vcsim is not None
    with stack.vcsim.connect() as si:
        return [(vm.runtime.host.name, str(vm.runtime.powerState))
                for vm in vms_with_identity(si, identity)]


@pytest.mark.parametrize("provider", [PROVIDER, VSPHERE])
def test_identity_annotation_cannot_take_over_a_vm(stack: Stack, victim: Tenant,
                                                  attacker: Tenant, secrets: Secrets,
                                                  provider: str) -> None:
    """A bare pod carrying vmlet.io/identity = the victim VM's UID, on another host: the
    victim's VM does not move, change hands or power off, and deleting the attacker's pod does
    not destroy it (memory provider, and vSphere on vcsim where it was found)."""
    crown = start_victim_vm(stack, victim, secrets, provider=provider)
    before = in_vcenter(stack, crown.uid) if provider == VSPHERE else []
    squatter = stack.vm_pod("squatter", provider)
    squatter["metadata"]["annotations"] = {"vmlet.io/identity": crown.uid,
                                           "vmlet.io/keep-on-delete": "false"}
    squatter["spec"]["nodeName"] = other_node(stack, crown.node, provider)
    out = attacker.create(squatter)
    assert out.returncode == 0, out.stderr
    eventually(lambda: pod_decided(attacker.get("pod", "squatter")), timeout=90,
               what="the squatter pod decided")
    stays_untouched(stack, victim, crown)
    if provider == VSPHERE:
        assert in_vcenter(stack, crown.uid) == before == [(before[0][0], "poweredOn")]
    squat = attacker.get("pod", "squatter")
    assert squat["status"].get("phase") != "Running" or \
        machine(stack, squat["metadata"]["uid"], provider) is not None, \
        "a running squatter must run a VM of its own identity"
    assert attacker.kubectl("delete", "pod", "squatter", "-n", attacker.ns,
                            "--timeout=90s").returncode == 0
    stays_untouched(stack, victim, crown)
    if provider == VSPHERE:
        assert in_vcenter(stack, crown.uid) == before, "deleting the squatter touched the VM"


def test_owner_reference_to_another_namespace_is_no_identity(stack: Stack, victim: Tenant,
                                                            attacker: Tenant,
                                                            crown: VictimVM) -> None:
    """A pod that claims the victim's VirtualMachine as its owner (and its labels and identity)
    from the attacker's namespace gets no part of the victim's VM."""
    fake = bare_pod(stack, "changeling", node=other_node(stack, crown.node),
                    annotations={"vmlet.io/identity": crown.uid},
                    labels={"vmlet.io/vm": crown.name, "vmlet.io/vm-uid": crown.uid})
    fake["metadata"]["ownerReferences"] = [{
        "apiVersion": "vmlet.io/v1alpha1", "kind": "VirtualMachine", "name": crown.name,
        "uid": crown.uid, "controller": True}]
    out = attacker.create(fake)
    assert out.returncode == 0, out.stderr
    time.sleep(3)
    stays_untouched(stack, victim, crown)
    attacker.kubectl("delete", "pod", "changeling", "-n", attacker.ns, "--ignore-not-found",
                     "--timeout=60s")
    stays_untouched(stack, victim, crown, seconds=3)


def test_vm_labels_in_another_namespace_do_not_count(stack: Stack, victim: Tenant,
                                                    attacker: Tenant, secrets: Secrets) -> None:
    """Pods of the attacker labelled vmlet.io/vm-uid with the victim VM's UID neither stop the
    victim's VM from starting nor replace its pod, and vmlet leaves them alone."""
    vm = start_victim_vm(stack, victim, secrets)
    assert victim.kubectl("patch", "vm", vm.name, "-n", victim.ns, "--type=merge",
                          "-p", '{"spec":{"replicas":0}}').returncode == 0
    eventually(lambda: (victim.get("vm", vm.name).get("status") or {}).get("state")
               == "Stopped", what="the victim's VM Stopped")
    decoy: Obj = {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": "decoy", "labels": {"vmlet.io/vm-uid": vm.uid, "vmlet.io/vm": vm.name}},
        "spec": {"nodeSelector": {"vmlet.io/nowhere": "true"},
                 "containers": [{"name": "vm", "image": "debian-12"}]}}
    out = attacker.create(decoy)
    assert out.returncode == 0, out.stderr
    assert victim.kubectl("patch", "vm", vm.name, "-n", victim.ns, "--type=merge",
                          "-p", '{"spec":{"replicas":1}}').returncode == 0
    started = running_vm(victim, vm.name, timeout=60)
    assert started["status"]["podName"] != "decoy"
    assert machine(stack, vm.uid) is not None
    again = vm.again(stack, victim)
    decoy["metadata"]["name"] = "decoy2"
    out = attacker.create(decoy)
    assert out.returncode == 0, out.stderr
    stays_untouched(stack, victim, again)
    left = {p["metadata"]["name"] for p in attacker.get("pods")["items"]
            if not p["metadata"].get("deletionTimestamp")}
    assert {"decoy", "decoy2"} <= left, "vmlet deleted the attacker's pods as the victim's"
