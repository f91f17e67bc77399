"""vCenter restarted under the provider: it logs in again and recovers. Runs last in the package
(the file names sort so): it restarts the package's vcsim."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.vsphere_e2e.vcenter import (
    NODES,
    PROVIDER,
    apply,
    get,
    in_vcenter,
    running_vm,
    the_vm,
    vm_manifest,
    vm_state,
)
from vmlet.provider.v1 import virtual_machine_service_pb2 as vm_pb
from vmlet.provider.v1 import virtual_machine_service_pb2_grpc as vm_grpc
from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.stack import Stack, eventually, report_guest_ip
from vmlet_localenv.vcsim import VcSim

pytestmark = [pytest.mark.vcsim, pytest.mark.controlplane]


def test_vcenter_restart_relogin_and_recovery(
        stack: Stack, control_plane: ControlPlane, sim: VcSim, ns: str, tmp_path: Path) -> None:
    apply(control_plane, ns, vm_manifest("before"))
    before = get(stack, "vm", "before", ns)["metadata"]["uid"]
    report_guest_ip(sim, before, "10.6.0.1")
    running_vm(stack, ns, "before")

    def ready_conditions() -> dict[str, dict[str, Any]]:
        return {n["metadata"]["name"]: next(c for c in n["status"]["conditions"]
                                            if c["type"] == "Ready")
                for n in stack.nodes(PROVIDER)}

    assert sim.process is not None
    sim.process.stop()
    down = eventually(lambda: (c := ready_conditions()) and all(
        v["status"] == "Unknown" for v in c.values()) and c, what="nodes Ready=Unknown")
    assert sorted(down) == sorted(NODES)
    assert all("vCenter" in c["message"] for c in down.values()), down

    sim.restart()  # the same address and credentials, a fresh inventory
    eventually(lambda: all(c["status"] == "True" for c in ready_conditions().values()),
               timeout=90, what="nodes Ready again after re-login")
    # The old VM is gone with the old inventory: its VirtualMachine says so, nothing remade it.
    failed = eventually(lambda: vm_state(stack, ns, "before", "Failed"), timeout=90,
                        what="the vanished VM's VirtualMachine Failed")
    assert "VMVanished" in json.dumps(failed["status"]["conditions"])
    assert in_vcenter(sim, before) == []

    apply(control_plane, ns, vm_manifest("after"))
    after = get(stack, "vm", "after", ns)["metadata"]["uid"]
    report_guest_ip(sim, after, "10.6.0.2")
    running_vm(stack, ns, "after")
    assert the_vm(sim, after)["power"] == "poweredOn"
    with stack.channel(PROVIDER) as channel:
        got = vm_grpc.VirtualMachineServiceStub(channel).GetVirtualMachine(
            vm_pb.GetVirtualMachineRequest(identity=after), timeout=30).virtual_machine
    assert got.provider_id == the_vm(sim, after)["moref"]
    with pytest.raises(grpc.RpcError):
        with stack.channel(PROVIDER) as channel:
            vm_grpc.VirtualMachineServiceStub(channel).GetVirtualMachine(
                vm_pb.GetVirtualMachineRequest(identity=before), timeout=30)
