"""A VirtualMachine's printable state, from its spec and its VM pods as last seen.

The states: Stopped, Provisioning, Starting, Running, Stopping, Migrating, Failed, Unknown.
"""

from __future__ import annotations

from typing import Any

from vmlet_facade.outage import REASONS as OUTAGE_REASONS
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


def _unseen(pod: Obj) -> tuple[str, str] | None:
    """(reason, message) when ``pod``'s VM ran and cannot be seen now: an outage of its provider
    or IaaS, or a host whose node stopped reporting (the node lifecycle controller turned the pod
    not ready while its container still reads ready). None otherwise."""
    status = pod.get("status", {})
    ready = next((c for c in status.get("conditions", []) if c.get("type") == "Ready"), None)
    if status.get("phase") != "Running" or ready is None or ready.get("status") == "True":
        return None
    if ready.get("reason") in OUTAGE_REASONS:
        return str(ready["reason"]), str(ready.get("message") or ready["reason"])
    containers = status.get("containerStatuses") or []
    if containers and all(c.get("ready") and "running" in (c.get("state") or {})
                          for c in containers):
        return "NodeNotReady", f"the VM's host {pod['spec'].get('nodeName')} does not report"
    return None


def _unscheduled(pod: Obj) -> str:
    """What the scheduler said about ``pod`` (e.g. that no node has room), else a default."""
    for c in pod.get("status", {}).get("conditions", []):
        if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("message"):
            return f"no host for the VM yet: {c['message']}"
    return "waiting for the scheduler to pick a host"


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
    unseen = _unseen(pod)
    if unseen is not None:
        return "Unknown", unseen[0], unseen[1], pod
    waiting = _waiting(pod)
    if not node:
        return (("Migrating" if migrating else "Provisioning"), "Unscheduled",
                _unscheduled(pod), pod)
    reason = (waiting or {}).get("reason")
    said = str((waiting or {}).get("message") or reason)
    if reason and reason not in PROGRESS_REASONS:
        return "Provisioning", str(reason), said, pod
    moving = migrating or reason in _MOVING_REASONS
    if reason in (None, "ContainerCreating", "PoweringOn"):
        return ("Migrating" if moving else "Starting"), "Starting", \
            f"the VM is starting on {node}", pod
    return ("Migrating" if moving else "Starting"), str(reason), said, pod
