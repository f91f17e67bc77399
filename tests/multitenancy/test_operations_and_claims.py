"""Operation pods, Backups, Migrations and Restores naming the victim's objects, and a claim
pre-bound to the victim's volume."""

from __future__ import annotations

import json
import time

import pytest

from tests.multitenancy.tenancy import (
    MISSING,
    PROVIDER,
    STORAGE_CLASS,
    Tenant,
    VictimVM,
    bare_pod,
    compare,
    disk,
    iaas_pods,
    normalised,
    pod_decided,
    stays_untouched,
    told,
    undecided_report,
    wait_decided,
)
from vmlet_localenv.stack import Stack, eventually

pytestmark = pytest.mark.controlplane


def test_operation_pod_cannot_target_another_namespace(stack: Stack, victim: Tenant,
                                                      attacker: Tenant,
                                                      crown: VictimVM) -> None:
    """A backup operation pod naming the victim VM's identity (vmlet.io/target-identity) on the
    victim's host makes no snapshot of it."""
    pod = bare_pod(stack, "snatch", node=crown.node, annotations={
        "vmlet.io/operation": "backup", "vmlet.io/target-identity": crown.uid,
        "vmlet.io/snapshot-name": "stolen"}, restartPolicy="Never")
    out = attacker.create(pod)
    if out.returncode == 0:
        eventually(lambda: pod_decided(attacker.get("pod", "snatch")), timeout=60,
                   what="the operation pod decided")
        ended = attacker.get("pod", "snatch")["status"]
        assert ended.get("phase") != "Succeeded", \
            f"the attacker's operation pod snapshotted the victim's VM: {ended}"
    stays_untouched(stack, victim, crown)


def ref_forms(victim_ns: str, name: str) -> list[str]:
    return [name, f"../{victim_ns}/{name}", f"{victim_ns}/{name}",
            f"../../namespaces/{victim_ns}/virtualmachines/{name}"]


def run_operation_attacks(attacker: Tenant, kind: str, field: str, victim_ns: str,
                          target: str) -> dict[str, tuple[set[str], set[str]]]:
    """Create ``kind`` objects whose ``field`` names ``target`` (and a missing object) in each
    form; wait for vmlet's verdict; return what the attacker was told, per form."""
    plural = {"VirtualMachineBackup": "vmbackup", "VirtualMachineRestore": "vmrestore",
              "VirtualMachineMigration": "vmmigration"}[kind]
    made = []
    results: dict[str, tuple[set[str], set[str]]] = {}
    forms = list(zip(ref_forms(victim_ns, target), ref_forms(victim_ns, MISSING), strict=True))
    for i, refs in enumerate(forms):
        for index, ref in enumerate(refs):
            name = f"{plural}{i}-{'ab'[index]}"
            out = attacker.create({"apiVersion": "vmlet.io/v1alpha1", "kind": kind,
                                   "metadata": {"name": name}, "spec": {field: ref}})
            if out.returncode == 0:
                made.append(name)
            else:
                results.setdefault(f"f{i}", (set(), set()))[index].add(
                    normalised(out.stderr, name, victim_ns, target, MISSING))

    def decided(name: str) -> bool:
        state = (attacker.get(plural, name).get("status") or {}).get("state")
        return state in ("Failed", "Succeeded", "Pending")
    eventually(lambda: all(decided(n) for n in made), timeout=60,
               what=f"every {kind} decided")
    time.sleep(2)
    for name in made:
        i, index = int(name[len(plural):].split("-")[0]), "ab".index(name[-1])
        obj = attacker.get(plural, name)
        assert (obj.get("status") or {}).get("state") != "Succeeded", \
            f"{kind} {name} naming {victim_ns}'s {target} succeeded"
        results.setdefault(f"f{i}", (set(), set()))[index].update(
            told(attacker, name, obj, victim_ns, target, MISSING))
    return results


def test_backup_cannot_name_another_namespaces_vm(stack: Stack, victim: Tenant,
                                                 attacker: Tenant, crown: VictimVM) -> None:
    results = run_operation_attacks(attacker, "VirtualMachineBackup", "vmName", victim.ns,
                                    crown.name)
    assert not victim.get("jobs")["items"], "a Job ran in the victim's namespace"
    stays_untouched(stack, victim, crown)
    assert not compare(results), compare(results)


def test_migration_cannot_name_another_namespaces_vm(stack: Stack, victim: Tenant,
                                                    attacker: Tenant, crown: VictimVM) -> None:
    results = run_operation_attacks(attacker, "VirtualMachineMigration", "vmName", victim.ns,
                                    crown.name)
    stays_untouched(stack, victim, crown)
    assert not compare(results), compare(results)


def test_restore_cannot_name_another_namespaces_backup(stack: Stack, victim: Tenant,
                                                      attacker: Tenant,
                                                      crown: VictimVM) -> None:
    """The victim takes a backup; the attacker's Restores naming it revert nothing."""
    backup = f"nightly-{crown.name}"
    out = victim.create({"apiVersion": "vmlet.io/v1alpha1", "kind": "VirtualMachineBackup",
                         "metadata": {"name": backup}, "spec": {"vmName": crown.name}})
    assert out.returncode == 0, out.stderr
    eventually(lambda: (victim.get("vmbackup", backup).get("status") or {}).get("state")
               == "Succeeded", timeout=90, what="the victim's backup Succeeded")
    taken = crown.again(stack, victim)
    assert len(taken.snapshots) == 1
    results = run_operation_attacks(attacker, "VirtualMachineRestore", "backupName", victim.ns,
                                    backup)
    # A Backup of the attacker's own whose status would point at the victim's snapshot: a
    # tenant may not write status, so a Restore of it has nothing to revert.
    forged = f"forged-{crown.name}"
    assert attacker.create({"apiVersion": "vmlet.io/v1alpha1", "kind": "VirtualMachineBackup",
                            "metadata": {"name": forged},
                            "spec": {"vmName": MISSING}}).returncode == 0
    patch = attacker.kubectl("patch", "vmbackup", forged, "-n", attacker.ns,
                             "--subresource=status", "--type=merge", "-p", json.dumps(
                                 {"status": {"state": "Succeeded", "identity": crown.uid,
                                             "snapshotID": taken.snapshots[0]}}))
    assert patch.returncode != 0 and "forbidden" in patch.stderr.lower(), patch
    assert attacker.create({"apiVersion": "vmlet.io/v1alpha1", "kind": "VirtualMachineRestore",
                            "metadata": {"name": forged},
                            "spec": {"backupName": forged}}).returncode == 0
    eventually(lambda: (attacker.get("vmrestore", forged).get("status") or {}).get("state")
               == "Failed", what="the Restore of a forged Backup Failed")
    stays_untouched(stack, victim, taken)
    assert not compare(results), compare(results)


def test_claim_cannot_bind_another_namespaces_volume(stack: Stack, victim: Tenant,
                                                    attacker: Tenant) -> None:
    """A claim of the attacker pre-bound (spec.volumeName) to the victim's volume: the victim's
    disk is not attached to the attacker's VM and its volume stays the victim's."""
    out = victim.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                        "metadata": {"name": "vdata"},
                        "spec": {"storageClassName": STORAGE_CLASS,
                                 "accessModes": ["ReadWriteOnce"],
                                 "resources": {"requests": {"storage": "1Gi"}}}})
    assert out.returncode == 0, out.stderr
    claim = eventually(lambda: (c := victim.get("pvc", "vdata"))["status"].get("phase")
                       == "Bound" and c, what="the victim's claim Bound")
    pv_name = claim["spec"]["volumeName"]
    pv = json.loads(stack.cp.kubectl("get", "pv", pv_name, "-o", "json").stdout)
    handle = pv["spec"]["csi"]["volumeHandle"]
    grab = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "grab"},
            "spec": {"storageClassName": STORAGE_CLASS, "accessModes": ["ReadWriteOnce"],
                     "volumeName": pv_name, "resources": {"requests": {"storage": "1Gi"}}}}
    assert attacker.create(grab).returncode == 0
    # Straight to a node (a tenant may set nodeName): the scheduler would hold back a pod whose
    # claim is unbound, so this is the path on which only vmlet can say no.
    pod = bare_pod(stack, "thief", node=f"{PROVIDER}-0", volumes=[
        {"name": "d", "persistentVolumeClaim": {"claimName": "grab"}}])
    assert attacker.create(pod).returncode == 0
    pending = wait_decided(lambda: {"thief": attacker.get("pod", "thief")}, ["thief"],
                           pod_decided)
    time.sleep(3)
    holder = disk(stack, handle).attached_to
    holders = [f"{p.pod.ref.namespace}/{p.pod.ref.name}" for p in iaas_pods(stack)
               if holder and p.pod.identity == holder]
    assert not holder, f"the victim's disk is attached to VM {holder} ({holders})"
    for p in iaas_pods(stack):
        assert p.pod.ref.namespace != attacker.ns or all(
            v.disk.volume_handle != handle for v in p.pod.volumes), \
            f"the IaaS gave {p.pod.ref.name} the victim's disk"
    pv = json.loads(stack.cp.kubectl("get", "pv", pv_name, "-o", "json").stdout)
    assert pv["spec"]["claimRef"]["namespace"] == victim.ns
    assert pv["spec"]["claimRef"]["name"] == "vdata"
    assert not pending, undecided_report(pending)
