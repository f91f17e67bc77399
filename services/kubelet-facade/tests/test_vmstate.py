"""A VirtualMachine's state from its pods: progress reasons are not failures."""

from __future__ import annotations

from typing import Any

import pytest

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
