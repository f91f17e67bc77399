"""A VirtualMachine's printable state, from its spec and its VM pods as last seen.

The states: Stopped, Provisioning, Starting, Running, Stopping, Migrating, Failed, Unknown.
"""

from __future__ import annotations

from typing import Any

from vmlet_facade.vmapi import MIGRATION_ANNOTATION

__all__ = ["PROGRESS_REASONS", "observe"]

Obj = dict[str, Any]

#: Reasons a provider gives a VM pod's waiting container while a step is under way (see
#: docs/provider-guide.md): progress, not a failure. Any other waiting reason is a failure.
PROGRESS_REASONS = frozenset({
    "ContainerCreating", "PoweringOn", "PowerCycling", "Resizing", "Relocating", "Migrating",
    "Rebuilding", "Rebooting", "SettingPassword", "Busy",
})
_MOVING_REASONS = frozenset({"Relocating", "Migrating"})


def _ready(pod: Obj) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in pod.get("status", {}).get("conditions", []))


def _waiting(pod: Obj) -> Obj | None:
    for cs in pod.get("status", {}).get("containerStatuses", []):
        waiting = cs.get("state", {}).get("waiting")
        if waiting:
            return dict(waiting)
    return None


def observe(vm: Obj, pods: list[Obj], deleting: bool,
            blocked: str = "") -> tuple[str, str, str, Obj | None]:
    """(state, reason, message, pod) of ``vm`` whose VM pods are ``pods``; ``blocked`` says why
    the VM may not run (a disk another VM holds)."""
    if blocked:
        return "Failed", "DiskInUse", blocked, None
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    migrating = bool((vm["metadata"].get("annotations") or {}).get(MIGRATION_ANNOTATION))
    desired = int(vm["spec"].get("replicas", 1))
    if deleting:
        return "Stopping", "Deleting", "the VM pod is being deleted", None
    if desired == 0:
        if pods:
            return "Stopping", "PoweringOff", "the VM is powering off", pods[0]
        return "Stopped", "Stopped", "the VM is powered off; its disks are kept", None
    if not live:
        if migrating:
            return "Migrating", "Migrating", "the VM is leaving its host", None
        return "Provisioning", "PodPending", "waiting for the VM pod", None
    pod = live[0]
    phase = pod.get("status", {}).get("phase", "Pending")
    node = pod["spec"].get("nodeName")
    if phase == "Failed":
        status = pod.get("status", {})
        return ("Failed", status.get("reason") or "VMFailed",
                status.get("message") or "the VM failed", pod)
    if phase == "Unknown":
        return "Unknown", "NodeUnreachable", "the VM's host does not answer", pod
    if phase == "Running" and _ready(pod):
        return "Running", "Running", f"the VM runs on {node}", pod
    waiting = _waiting(pod)
    if not node:
        return (("Migrating" if migrating else "Provisioning"), "Unscheduled",
                "waiting for the scheduler to pick a host", pod)
    reason = (waiting or {}).get("reason")
    said = str((waiting or {}).get("message") or reason)
    if reason and reason not in PROGRESS_REASONS:
        return "Provisioning", str(reason), said, pod
    moving = migrating or reason in _MOVING_REASONS
    if reason in (None, "ContainerCreating", "PoweringOn"):
        return ("Migrating" if moving else "Starting"), "Starting", \
            f"the VM is starting on {node}", pod
    return ("Migrating" if moving else "Starting"), str(reason), said, pod
