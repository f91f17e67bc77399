"""A VM whose guest shuts down in vCenter, through the real apiserver: the exit code the guest
left in guestinfo.vmlet.exitCode ends a restartPolicy Never pod Failed with that code, and a
restartPolicy Always pod's VM is powered on again by the facade, counted as a restart."""

from __future__ import annotations

from typing import Any

import pytest
from pyVmomi import vim

from tests.vsphere_e2e.vcenter import PROVIDER, apply, get, the_vm
from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.stack import Stack, eventually, vms_with_identity
from vmlet_localenv.vcsim import VcSim, _wait_task

pytestmark = [pytest.mark.vcsim, pytest.mark.controlplane]


def guest_shuts_down(sim: VcSim, identity: str, code: int | None) -> None:
    """What a guest does: leave its exit code (when given), then power itself off."""
    with sim.connect() as si:
        (vm,) = vms_with_identity(si, identity)
        if code is not None:
            _wait_task(vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(extraConfig=[
                vim.option.OptionValue(key="guestinfo.vmlet.exitCode", value=str(code))])))
        _wait_task(vm.PowerOffVM_Task())


def running_pod(stack: Stack, ns: str, name: str) -> dict[str, Any]:
    def running() -> dict[str, Any] | None:
        pod = get(stack, "pod", name, ns)
        statuses = pod["status"].get("containerStatuses") or [{}]
        ok = pod["status"].get("phase") == "Running" and "running" in statuses[0].get("state", {})
        return pod if ok else None

    found: dict[str, Any] = eventually(running, what=f"pod {name} running")
    return found


def test_a_guest_exit_code_fails_a_never_pod(
        stack: Stack, control_plane: ControlPlane, sim: VcSim, ns: str) -> None:
    apply(control_plane, ns, stack.vm_pod("task", PROVIDER, extra={"restartPolicy": "Never"}))
    uid = running_pod(stack, ns, "task")["metadata"]["uid"]
    guest_shuts_down(sim, uid, 3)
    failed = eventually(lambda: (p := get(stack, "pod", "task", ns))["status"]["phase"]
                        == "Failed" and p, timeout=60, what="pod Failed")
    state = failed["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (state["exitCode"], state["reason"]) == (3, "Error")
    vm = the_vm(sim, uid)
    assert vm["power"] == "poweredOff"  # kept, off: nothing powers it on or destroys it
    control_plane.kubectl("delete", "pod", "task", "-n", ns, "--timeout=60s")


def test_an_always_pod_has_its_vm_powered_on_again(
        stack: Stack, control_plane: ControlPlane, sim: VcSim, ns: str) -> None:
    apply(control_plane, ns, stack.vm_pod("svc", PROVIDER))
    uid = running_pod(stack, ns, "svc")["metadata"]["uid"]
    guest_shuts_down(sim, uid, None)
    restarted = eventually(
        lambda: (p := get(stack, "pod", "svc", ns))["status"]["containerStatuses"][0]
        ["restartCount"] == 1 and "running" in p["status"]["containerStatuses"][0]["state"]
        and p, timeout=90, what="restarted once")
    cs = restarted["status"]["containerStatuses"][0]
    assert (cs["lastState"]["terminated"]["exitCode"], cs["lastState"]["terminated"]["reason"]) \
        == (0, "Completed")
    vm = the_vm(sim, uid)
    assert vm["power"] == "poweredOn"
    assert restarted["status"]["phase"] == "Running"
    control_plane.kubectl("delete", "pod", "svc", "-n", ns, "--timeout=60s")
