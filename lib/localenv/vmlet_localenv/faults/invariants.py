"""The invariants checked after convergence, in Kubernetes and in the IaaS, against the model the
workload kept. Each check returns the violations it finds, as sentences naming the object.

- exactly one IaaS VM per live identity, none orphaned (an identity no live VirtualMachine has);
- none destroyed that should be kept (the `Sampler` saw one provider ID per identity, never a gap),
  and every claim's disk still there;
- none powered off that should run, none running that should be stopped, at the size asked;
- no VirtualMachine Failed (the IaaS here fails nothing on its own), none left Provisioning;
- every VirtualMachine, Backup, Restore and Migration has a status current with its generation,
  and every operation reached Succeeded or Failed (or is Pending on a VM the script deleted, a
  Migration of a VM it stopped, a Backup of a VM never placed: `_may_wait`).
"""

from __future__ import annotations

import urllib.parse
from collections import Counter, defaultdict
from typing import Any

from vmlet_api import names as n
from vmlet_localenv.faults.iaas import Iaas, Machine, Sampler
from vmlet_localenv.faults.kubeapi import KubeApi
from vmlet_localenv.faults.workload import VmModel

__all__ = ["OPERATION_PLURALS", "check", "mebibytes"]

OPERATION_PLURALS = tuple(k.plural for k in (n.VIRTUAL_MACHINE_BACKUP, n.VIRTUAL_MACHINE_RESTORE,
                                             n.VIRTUAL_MACHINE_MIGRATION))
_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "": 1}


def mebibytes(quantity: Any) -> int:
    """A binary memory quantity ("512Mi", "1Gi", bytes) in MiB."""
    text = str(quantity)
    for unit, factor in _UNITS.items():
        if unit and text.endswith(unit):
            return int(float(text[: -len(unit)]) * factor) // 2**20
    return int(text) // 2**20


def _current(obj: dict[str, Any], what: str) -> list[str]:
    generation = obj["metadata"].get("generation", 1)
    status = obj.get("status") or {}
    out = []
    if status.get("observedGeneration") != generation:
        out.append(f"{what}: status.observedGeneration {status.get('observedGeneration')} "
                   f"!= generation {generation}")
    for cond in status.get("conditions") or []:
        if "observedGeneration" in cond and cond["observedGeneration"] != generation:
            out.append(f"{what}: condition {cond['type']} observedGeneration "
                       f"{cond['observedGeneration']} != generation {generation}")
    return out


def check(api: KubeApi, ns: str, model: dict[str, VmModel], iaas: Iaas, sampler: Sampler,
          claims: dict[str, str]) -> tuple[list[str], dict[str, int]]:
    """Every violation found now, and the operations' final states counted
    ({"VirtualMachineBackup Succeeded": n, ...}). ``claims`` maps claim names to disk handles."""
    violations: list[str] = []
    live = {v.uid: v for v in model.values() if not v.deleted and v.uid}
    deleted = {v.uid: v for v in model.values() if v.deleted and v.uid}
    violations += [f"VM {v.name}: never created (no uid)" for v in model.values() if not v.uid]

    vms = {o["metadata"]["name"]: o for o in
           api.get(f"{n.API_PATH}/namespaces/{ns}/{n.VIRTUAL_MACHINE.plural}")["items"]}
    for want in live.values():
        obj = vms.pop(want.name, None)
        if obj is None or obj["metadata"]["uid"] != want.uid:
            violations.append(f"VM {want.name}: VirtualMachine {want.uid} is gone")
            continue
        violations += _vm(obj, want)
    for name, obj in vms.items():
        uid = obj["metadata"]["uid"]
        if uid in deleted:
            violations.append(f"VM {name}: deleted, still there "
                              f"(state {(obj.get('status') or {}).get('state')}, finalizers "
                              f"{obj['metadata'].get('finalizers')})")
        else:
            violations.append(f"VM {name}: not made by the workload")

    violations += _pods(api, ns, live, deleted)
    machines: dict[str, list[Machine]] = defaultdict(list)
    for m in iaas.machines():
        machines[m.identity].append(m)
    for uid, want in live.items():
        found = machines.pop(uid, [])
        if not found and want.replicas == 0 and not sampler.provider_ids.get(uid):
            continue  # stopped before the IaaS ever made it: nothing to keep
        if len(found) != 1:
            violations.append(f"VM {want.name}: {len(found)} IaaS VMs for identity {uid}")
            continue
        violations += _machine(found[0], want)
        seen = sampler.provider_ids.get(uid, set())
        if len(seen) > 1:
            violations.append(f"VM {want.name}: destroyed and remade in the IaaS (provider IDs "
                              f"{sorted(seen)})")
        if sampler.missing.get(uid):
            violations.append(f"VM {want.name}: missing from the IaaS in "
                              f"{sampler.missing[uid]} samples after it was made")
    for uid, found in machines.items():
        who = f"deleted VM {deleted[uid].name}" if uid in deleted else "no live VirtualMachine"
        violations.append(f"orphan: {len(found)} IaaS VMs of identity {uid} ({who})")

    for claim, handle in claims.items():
        if not iaas.disk_exists(handle):
            violations.append(f"claim {claim}: its disk {handle} is gone from the IaaS")

    states: Counter[str] = Counter()
    for plural in OPERATION_PLURALS:
        for obj in api.get(f"{n.API_PATH}/namespaces/{ns}/{plural}")["items"]:
            what = f"{obj['kind']} {obj['metadata']['name']}"
            state = (obj.get("status") or {}).get("state", "")
            failed = [c.get("reason") for c in (obj.get("status") or {}).get("conditions") or []
                      if c.get("type") == n.CONDITION_FAILED and c.get("status") == "True"]
            why = f" ({failed[0]})" if failed else ""
            states[f"{obj['kind']} {state or 'no status'}{why}"] += 1
            violations += _current(obj, what)
            vm = model.get((obj.get("spec") or {}).get("vmName", ""))
            if state == n.STATE_PENDING and vm is not None and _may_wait(obj, vm):
                continue
            if state not in n.OPERATION_ENDED:
                said = [f"{c['type']}={c.get('reason')}: {c.get('message')}"
                        for c in (obj.get("status") or {}).get("conditions") or []]
                violations.append(f"{what} of VM {obj['spec'].get('vmName', '?')}: state "
                                  f"{state or 'none'}, not finished {said}")
    return violations, dict(states)


def _may_wait(operation: dict[str, Any], vm: VmModel) -> bool:
    """Whether ``operation`` may rightly stay Pending: its VM was deleted; a Migration of a VM
    the script stopped waits for it to run; a Backup waits only for a VM never placed (a
    stopped VM is backed up where it rests)."""
    if vm.deleted:
        return True
    if operation["kind"] == n.VIRTUAL_MACHINE_BACKUP.kind:
        return any(c.get("reason") == n.REASON_VM_NOT_PLACED
                   for c in (operation.get("status") or {}).get("conditions") or [])
    return vm.replicas == 0


def _vm(obj: dict[str, Any], want: VmModel) -> list[str]:
    what = f"VM {want.name}"
    status = obj.get("status") or {}
    state = status.get("state")
    out = _current(obj, what)
    expected = n.STATE_RUNNING if want.replicas == 1 else n.STATE_STOPPED
    if state != expected:
        ready: dict[str, Any] = next(
            (c for c in status.get("conditions") or [] if c["type"] == n.CONDITION_READY), {})
        out.append(f"{what}: state {state} ({ready.get('reason')}: {ready.get('message')}), "
                   f"want {expected}")
    spec = obj["spec"]
    if (int(spec["cpu"]), mebibytes(spec["memory"])) != (want.cpu, mebibytes(want.memory)):
        out.append(f"{what}: spec size {spec['cpu']}/{spec['memory']}, the workload asked "
                   f"{want.cpu}/{want.memory}")
    size = (str(status.get("cpu")), mebibytes(status.get("memory", 0)))
    if state == n.STATE_RUNNING and size != (str(want.cpu), mebibytes(want.memory)):
        out.append(f"{what}: status size {status.get('cpu')}/{status.get('memory')}, want "
                   f"{want.cpu}/{want.memory}")
    return out


def _pods(api: KubeApi, ns: str, live: dict[str, VmModel],
          deleted: dict[str, VmModel]) -> list[str]:
    selector = urllib.parse.quote(n.VM_UID_LABEL)
    pods = api.get(f"/api/v1/namespaces/{ns}/pods?labelSelector={selector}")["items"]
    by_uid: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for pod in pods:
        by_uid[pod["metadata"]["labels"][n.VM_UID_LABEL]].append(pod)
    out = []
    for uid, want in live.items():
        have = by_uid.pop(uid, [])
        phases = [(p["metadata"]["name"], p.get("status", {}).get("phase"),
                   bool(p["metadata"].get("deletionTimestamp"))) for p in have]
        if want.replicas == 1 and (len(have) != 1 or phases[0][1] != "Running"
                                   or phases[0][2]):
            out.append(f"VM {want.name}: pods {phases}, want one Running")
        if want.replicas == 0 and have:
            out.append(f"VM {want.name}: stopped, yet pods {phases}")
    for uid, have in by_uid.items():
        who = deleted[uid].name if uid in deleted else uid
        out.append(f"VM {who}: deleted, yet pods {[p['metadata']['name'] for p in have]}")
    return out


def _machine(m: Machine, want: VmModel) -> list[str]:
    what = f"VM {want.name}"
    if want.replicas == 1 and not m.powered_on:
        return [f"{what}: powered off in the IaaS, should run"]
    if want.replicas == 0 and m.powered_on:
        return [f"{what}: powered on in the IaaS, should be stopped"]
    if want.replicas == 1 and (m.cpus, m.memory_mib) != (want.cpu, mebibytes(want.memory)):
        return [f"{what}: {m.cpus} CPU/{m.memory_mib} MiB in the IaaS, want "
                f"{want.cpu}/{want.memory}"]
    return []
