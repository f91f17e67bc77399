"""A VirtualMachine's printable state, from its spec and its VM pods as last seen.

The states (`vmlet_api.names.VM_STATES`): Stopped, Provisioning, Starting, Running, Stopping,
Migrating, Failed, Unknown. Its reasons are named there too, but for a provider's progress and
failure reasons, which are passed on. What a provider is doing comes from its `Progress` (the pod
condition `podconvert.PROGRESS_CONDITION`); a provider older than that field is read by its
container's waiting reason instead: a step under way when it is a step's CamelCase name.
"""

from __future__ import annotations

from vmlet.provider.v1 import pod_pb2 as pb
from vmlet_api import names as n
from vmlet_contract import progress as progresses
from vmlet_facade.kube.objects import Obj
from vmlet_facade.outage import REASONS as OUTAGE_REASONS
from vmlet_facade.podconvert import PROGRESS_CONDITION

__all__ = ["PROGRESS_REASONS", "observe"]


#: Waiting reasons of an older provider's VM pod (no `Progress`) read as a step under way (see
#: docs/provider-guide.md): progress, not a failure. Any other waiting reason is a failure.
PROGRESS_REASONS = frozenset(progresses.name(step) for step in progresses.STEPS)
#: Steps shown as the VM starting, with the facade's own reason.
_STARTING = frozenset({pb.PROGRESS_NONE, pb.PROGRESS_CREATING, pb.PROGRESS_POWERING_ON,
                       pb.PROGRESS_WAITING_FOR_GUEST_IP})


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
        host = pod["spec"].get("nodeName")
        return n.REASON_NODE_NOT_READY, f"the VM's host {host} does not report"
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


def _said(pod: Obj) -> tuple[str, str]:
    """The provider's own (reason, message) for ``pod``: its waiting or stopped container's, else
    its Ready condition's."""
    status = pod.get("status", {})
    for cs in status.get("containerStatuses") or []:
        state = cs.get("state") or {}
        said = state.get("waiting") or state.get("terminated")
        if said and said.get("reason"):
            return str(said["reason"]), str(said.get("message") or "")
    for c in status.get("conditions") or []:
        if c.get("type") == "Ready" and c.get("status") != "True" and c.get("reason"):
            return str(c["reason"]), str(c.get("message") or "")
    return "", ""


def _progress(pod: Obj, waiting: Obj | None) -> tuple[progresses.Progress, str, str]:
    """(progress, reason, message) of ``pod``: the provider's `Progress` with the provider's own
    reason and message, or for an older provider what its waiting reason names."""
    reason, message = _said(pod)
    for c in pod.get("status", {}).get("conditions") or []:
        if c.get("type") == PROGRESS_CONDITION:
            progress = progresses.of_reason(str(c.get("reason") or ""))
            if progress in progresses.STEPS:
                reason = progresses.name(progress)
            return progress, reason or progresses.name(progress), \
                str(c.get("message") or message or reason)
    reason = str((waiting or {}).get("reason") or "")
    progress = progresses.of_reason(reason) if reason else pb.PROGRESS_NONE
    return progress, reason, str((waiting or {}).get("message") or reason)


def observe(vm: Obj, pods: list[Obj], deleting: bool,
            blocked: str = "") -> tuple[str, str, str, Obj | None]:
    """(state, reason, message, pod) of ``vm`` whose VM pods are ``pods``; ``blocked`` says why
    the VM may not run (a disk another VM holds)."""
    if blocked:
        return n.STATE_FAILED, n.REASON_DISK_IN_USE, blocked, None
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    migrating = bool((vm["metadata"].get("annotations") or {}).get(n.MIGRATION_ANNOTATION))
    desired = int(vm["spec"].get("replicas", 1))
    if deleting:
        return n.STATE_STOPPING, n.REASON_DELETING, "the VM pod is being deleted", None
    if desired == 0:
        if pods:
            return n.STATE_STOPPING, n.REASON_POWERING_OFF, "the VM is powering off", pods[0]
        return n.STATE_STOPPED, n.REASON_STOPPED, "the VM is powered off; its disks are kept", None
    if not live:
        if migrating:
            return n.STATE_MIGRATING, n.REASON_MIGRATING, "the VM is leaving its host", None
        return n.STATE_PROVISIONING, n.REASON_POD_PENDING, "waiting for the VM pod", None
    pod = live[0]
    phase = pod.get("status", {}).get("phase", "Pending")
    node = pod["spec"].get("nodeName")
    if phase == "Failed":
        status = pod.get("status", {})
        return (n.STATE_FAILED, status.get("reason") or n.REASON_VM_FAILED,
                status.get("message") or "the VM failed", pod)
    if phase == "Unknown":
        progress, reason, said = _progress(pod, _waiting(pod))
        if progress == pb.PROGRESS_STATE_UNKNOWN:  # the IaaS's state, not the host's silence
            return n.STATE_UNKNOWN, reason, said, pod
        return n.STATE_UNKNOWN, n.REASON_NODE_UNREACHABLE, "the VM's host does not answer", pod
    if phase == "Running" and _ready(pod):
        return n.STATE_RUNNING, n.REASON_RUNNING, f"the VM runs on {node}", pod
    unseen = _unseen(pod)
    if unseen is not None:
        return n.STATE_UNKNOWN, unseen[0], unseen[1], pod
    if not node:
        return ((n.STATE_MIGRATING if migrating else n.STATE_PROVISIONING), n.REASON_UNSCHEDULED,
                _unscheduled(pod), pod)
    progress, reason, said = _progress(pod, _waiting(pod))
    if progress == pb.PROGRESS_DELETING:
        return n.STATE_STOPPING, n.REASON_DELETING, said, pod
    if progress not in progresses.STEPS and progress != pb.PROGRESS_NONE:
        return n.STATE_PROVISIONING, reason, said, pod
    moving = migrating or progress in progresses.MOVING
    if progress in _STARTING:
        return (n.STATE_MIGRATING if moving else n.STATE_STARTING), n.REASON_STARTING, \
            f"the VM is starting on {node}", pod
    return (n.STATE_MIGRATING if moving else n.STATE_STARTING), reason, said, pod
