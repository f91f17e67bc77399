"""A VirtualMachine's state from its pods: progress reasons are not failures."""

from __future__ import annotations

from typing import Any

import pytest

from vmlet.provider.v1 import pod_pb2 as pb
from vmlet_facade.outage import IAAS_UNAVAILABLE, Outage, during
from vmlet_facade.podconvert import status_to_k8s
from vmlet_facade.vmapi import MIGRATION_ANNOTATION
from vmlet_facade.vmstate import observe

Obj = dict[str, Any]


def vm(replicas: int = 1, migrating: bool = False) -> Obj:
    annotations = {MIGRATION_ANNOTATION: "m"} if migrating else {}
    return {"metadata": {"name": "web", "annotations": annotations},
            "spec": {"replicas": replicas}}


def pod(phase: str = "Pending", node: str | None = "n1", waiting: Obj | None = None,
        ready: bool = False) -> Obj:
    state = {"waiting": waiting} if waiting else {"running": {}}
    return {"metadata": {"name": "web-x"}, "spec": {"nodeName": node},
            "status": {"phase": phase,
                       "conditions": [{"type": "Ready", "status": str(ready)}],
                       "containerStatuses": [{"state": state}]}}


@pytest.mark.parametrize(("waiting", "migrating", "expected"), [
    (None, False, ("Starting", "Starting")),
    ({"reason": "ContainerCreating"}, False, ("Starting", "Starting")),
    ({"reason": "PowerCycling", "message": "powering off to resize"}, False,
     ("Starting", "PowerCycling")),
    ({"reason": "Relocating", "message": "moving to h2"}, False, ("Migrating", "Relocating")),
    ({"reason": "Resizing"}, True, ("Migrating", "Resizing")),
    ({"reason": "TemplateNotFound", "message": "no template debian-13"}, False,
     ("Provisioning", "TemplateNotFound")),
])
def test_waiting_reasons(waiting: Obj | None, migrating: bool, expected: tuple[str, str]) -> None:
    state, reason, message, seen = observe(vm(migrating=migrating), [pod(waiting=waiting)], False)
    assert (state, reason) == expected
    assert seen is not None
    if waiting and waiting.get("message"):
        assert message == waiting["message"]


def test_the_other_states() -> None:
    assert observe(vm(), [pod("Running", ready=True)], False)[:2] == ("Running", "Running")
    assert observe(vm(), [], False)[:2] == ("Provisioning", "PodPending")
    assert observe(vm(), [pod(node=None)], False)[:2] == ("Provisioning", "Unscheduled")
    assert observe(vm(migrating=True), [], False)[:2] == ("Migrating", "Migrating")
    assert observe(vm(0), [], False)[:2] == ("Stopped", "Stopped")
    assert observe(vm(0), [pod()], False)[:2] == ("Stopping", "PoweringOff")
    assert observe(vm(), [pod("Unknown")], False)[:2] == ("Unknown", "NodeUnreachable")
    assert observe(vm(), [pod("Failed")], False)[:2] == ("Failed", "VMFailed")
    assert observe(vm(), [pod()], True)[:2] == ("Stopping", "Deleting")
    assert observe(vm(), [pod()], False, "claim data is used by web2")[:2] == (
        "Failed", "DiskInUse")


def test_an_outage_is_unknown_never_stopped() -> None:
    """A VM pod marked not ready for an outage (outage.py): its VM is Unknown, with the reason
    and message of the outage; once the provider answers again, Running."""
    running = pb.PodStatus(phase=pb.POD_PHASE_RUNNING)
    running.container_statuses.add(name="vm", ready=True, running=pb.ContainerStateRunning())
    seen = {"metadata": {"name": "web-x"}, "spec": {"nodeName": "n1", "containers": [
        {"name": "vm", "image": "debian-12"}]}}
    seen["status"] = status_to_k8s(running, seen, "10.0.0.1")
    assert observe(vm(), [seen], False)[:2] == ("Running", "Running")
    outage = Outage(IAAS_UNAVAILABLE, "provider p answers, but its IaaS does not: vCenter down")
    seen["status"] = status_to_k8s(during(running, outage), seen, "10.0.0.1")
    assert seen["status"]["phase"] == "Running"
    ready = next(c for c in seen["status"]["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", IAAS_UNAVAILABLE)
    state, reason, message, _ = observe(vm(), [seen], False)
    assert (state, reason, message) == ("Unknown", IAAS_UNAVAILABLE, outage.message)
    seen["status"] = status_to_k8s(running, seen, "10.0.0.1")
    assert observe(vm(), [seen], False)[:2] == ("Running", "Running")


def test_a_lost_node_is_unknown() -> None:
    """The node lifecycle controller turned the pod not ready (its node stopped reporting):
    the container still reads ready and running, so the VM is Unknown, not Starting."""
    lost = pod("Running", ready=False)
    lost["status"]["containerStatuses"][0]["ready"] = True
    assert observe(vm(), [lost], False)[:2] == ("Unknown", "NodeNotReady")


def test_unschedulable_says_what_the_scheduler_said() -> None:
    unbound = pod(node=None)
    unbound["status"]["conditions"].append({
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/3 nodes are available: 3 Insufficient memory."})
    state, reason, message, _ = observe(vm(), [unbound], False)
    assert (state, reason) == ("Provisioning", "Unscheduled")
    assert "3 Insufficient memory" in message


def _reported(status: pb.PodStatus) -> Obj:
    """A VM pod on n1 whose status is ``status`` as the facade writes it."""
    seen: Obj = {"metadata": {"name": "web-x"}, "spec": {"nodeName": "n1", "containers": [
        {"name": "vm", "image": "debian-12"}]}}
    seen["status"] = status_to_k8s(status, seen, "10.0.0.1")
    return seen


def _waiting(reason: str, progress: int, message: str = "") -> pb.PodStatus:
    status = pb.PodStatus(phase=pb.POD_PHASE_PENDING, progress=progress)  # type: ignore[arg-type]
    status.container_statuses.add(name="vm", waiting=pb.ContainerStateWaiting(
        reason=reason, message=message))
    return status


def test_the_progress_value_decides_not_the_waiting_reason() -> None:
    """A provider's own waiting reason, unknown to the facade, with a step's Progress value is
    progress; the same reason without one (an older provider) is a failure."""
    step = _reported(_waiting("CloningTemplate", pb.PROGRESS_CREATING, "cloning debian-12"))
    assert observe(vm(), [step], False)[:2] == ("Starting", "Starting")
    moving = _reported(_waiting("VMotion", pb.PROGRESS_RELOCATING, "moving to h2"))
    assert observe(vm(), [moving], False)[1:3] == ("Relocating", "moving to h2")
    assert observe(vm(), [moving], False)[0] == "Migrating"
    old = _reported(_waiting("CloningTemplate", pb.PROGRESS_UNSPECIFIED, "cloning"))
    assert observe(vm(), [old], False)[:3] == ("Provisioning", "CloningTemplate", "cloning")
    older = _reported(_waiting("PowerCycling", pb.PROGRESS_UNSPECIFIED))
    assert observe(vm(), [older], False)[:2] == ("Starting", "PowerCycling")


def test_a_vm_stopped_in_the_iaas_is_a_failure_with_the_providers_reason() -> None:
    stopped = pb.PodStatus(phase=pb.POD_PHASE_RUNNING, progress=pb.PROGRESS_STOPPED)
    stopped.container_statuses.add(name="vm", terminated=pb.ContainerStateTerminated(
        reason="Suspended", message="VM web is suspended in vCenter"))
    assert observe(vm(), [_reported(stopped)], False)[:3] == (
        "Provisioning", "Suspended", "VM web is suspended in vCenter")


def test_an_iaas_state_the_provider_does_not_know_is_unknown_with_its_words() -> None:
    odd = pb.PodStatus(phase=pb.POD_PHASE_UNKNOWN, progress=pb.PROGRESS_STATE_UNKNOWN,
                       message="Nova reports server web as WEIRD")
    odd.conditions.add(type="Ready", status=pb.CONDITION_STATUS_FALSE,
                       reason="ServerStateUnknown", message="Nova reports server web as WEIRD")
    odd.container_statuses.add(name="vm", running=pb.ContainerStateRunning())
    assert observe(vm(), [_reported(odd)], False)[:3] == (
        "Unknown", "ServerStateUnknown", "Nova reports server web as WEIRD")
