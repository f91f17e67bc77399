"""The vSphere provider against vcsim, through its real gRPC server, checked through pyvmomi:
its nodes, pods becoming VMs, requests it refuses, keep and move, snapshots.

The provider runs as its own process (`python -m vmlet_vmware`) on loopback with a port file;
the tests talk to it over gRPC as the facade would, and look at vcsim directly with pyvmomi to
see what really happened there. vcsim is a real vSphere API (SOAP, PropertyCollector, tasks);
the guest IP is set the way VMware Tools would report it, through vcsim's SET.guest.ipAddress
extraConfig key. The provider never invents one.

What the contract says of every provider (idempotent and concurrent creates, keep versus
destroy, identity moves, streams, error codes, malformed requests) is the conformance suite's
(tests/test_conformance.py); these tests keep what is vSphere's: what vCenter holds. Disks,
NICs, logs and stats: tests/test_vmware_provider_devices.py; restarts, crashes and vCenter going
away: tests/test_vmware_provider_recovery.py.
"""

from __future__ import annotations

import base64
import contextlib
import email
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from pyVmomi import vim

from tests import vmwareprovider
from tests.vmwareprovider import (
    HOSTS,
    NODES,
    RUNNING,
    TEMPLATE,
    Provider,
    count_vms,
    eventually,
    make_pod,
    reconfigure_vm,
    start_provider,
    the_vm,
)
from vmlet.provider.v1 import pod_pb2
from vmlet.provider.v1 import virtual_machine_service_pb2 as vpb
from vmlet_conformance import code_of, ready
from vmlet_contract.hostile import hostile_requests
from vmlet_localenv.stack import set_guest_ip, vm_property, vms_with_identity
from vmlet_localenv.vcsim import VcSim, _wait_task

pytestmark = pytest.mark.vcsim

TRUE = pod_pb2.CONDITION_STATUS_TRUE
provider = vmwareprovider.provider


# Nodes.


def test_lists_one_node_per_host_with_capacity(provider: Provider, vcsim: VcSim) -> None:
    nodes = {n.name: n for n in provider.list_nodes()}
    assert sorted(nodes) == sorted(NODES)
    with vcsim.connect() as si:
        cluster = si.RetrieveContent().rootFolder.childEntity[0].hostFolder.childEntity[0]
        hardware = {h.name: h.hardware for h in cluster.host}
    for host, name in zip(HOSTS, NODES, strict=True):
        node = nodes[name]
        assert node.capacity["cpu"] == str(hardware[host].cpuInfo.numCpuCores)
        assert node.capacity["memory"] == f"{hardware[host].memorySize // 1024}Ki"
        assert node.capacity["pods"] == "110"
        assert node.allocatable["cpu"] == node.capacity["cpu"]
        assert node.labels["vmlet.io/vsphere-host"] == host
        assert node.provider_id.startswith("vsphere://")
        assert {(a.type, a.address) for a in node.addresses} >= {("Hostname", host)}
        (cond,) = node.conditions
        assert (cond.type, cond.status, cond.reason) == ("Ready", TRUE, "HostConnected")
        assert not node.unschedulable


def test_reserve_is_taken_from_allocatable(vcsim: VcSim, tmp_path: Path) -> None:
    provider = start_provider(
        vcsim, tmp_path, "--reserve-cpu", "500m", "--reserve-memory", "1Gi", "--max-pods", "20",
        "--node-prefix", "esx",
    )  # fmt: skip
    try:
        node = eventually(lambda: provider.list_nodes(), what="nodes")[0]
        assert node.name.startswith("esx-dc0-c0-h")
        assert node.allocatable["cpu"] == "1500m"
        capacity_ki = int(node.capacity["memory"].removesuffix("Ki"))
        assert node.allocatable["memory"] == f"{capacity_ki - 1024 * 1024}Ki"
        assert node.allocatable["pods"] == node.capacity["pods"] == "20"
    finally:
        provider.stop()


def test_host_in_maintenance_mode_is_unschedulable(provider: Provider, vcsim: VcSim) -> None:
    with vcsim.connect() as si:
        cluster = si.RetrieveContent().rootFolder.childEntity[0].hostFolder.childEntity[0]
        host = next(h for h in cluster.host if h.name == HOSTS[2])
        _wait_task(host.EnterMaintenanceMode_Task(timeout=0))
        try:
            nodes = {n.name: n for n in provider.list_nodes()}
            assert nodes[NODES[2]].unschedulable
            assert not nodes[NODES[0]].unschedulable
            pod = make_pod(NODES[2])
            with pytest.raises(grpc.RpcError) as err:
                provider.create(pod)
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "maintenance" in (err.value.details() or "")
        finally:
            _wait_task(host.ExitMaintenanceMode_Task(timeout=0))
    nodes = {n.name: n for n in provider.list_nodes()}
    assert not nodes[NODES[2]].unschedulable


# Pods become VMs.


def test_create_pod_makes_vm_on_the_right_host(provider: Provider, vcsim: VcSim) -> None:
    user_data = "#cloud-config\nruncmd: [echo hello]\n"
    pod = make_pod(NODES[1], cpu_millis=1500, memory=1 << 30, user_data=user_data)
    status = provider.create(pod)
    assert status.phase == RUNNING
    assert status.actual_node_name == NODES[1]
    vm = the_vm(vcsim, pod.identity)
    assert vm["host"] == HOSTS[1]
    assert vm["power"] == "poweredOn"
    assert (vm["cpus"], vm["memory_mb"]) == (2, 1024)  # ceil(1500m) = 2; 1Gi = 1024 MiB
    assert vm["extra"]["vmlet.identity"] == pod.identity
    assert vm["extra"]["vmlet.pod"] == f"tests/{pod.ref.name}"
    assert vm["extra"]["guestinfo.userdata.encoding"] == "base64"
    assert base64.b64decode(vm["extra"]["guestinfo.userdata"]).decode() == user_data
    assert "guestinfo.metadata" in vm["extra"]
    assert vm["name"].startswith(f"tests-{pod.ref.name}-")
    assert status.provider_id == vm["moid"]
    # A retry is a no-op: still one VM in vCenter.
    assert provider.create(pod).phase == RUNNING
    assert count_vms(vcsim, pod.identity) == 1
    provider.delete(pod)


def test_init_containers_and_command_reach_guestinfo_as_runcmd(
    provider: Provider, vcsim: VcSim
) -> None:
    user_data = "#cloud-config\nruncmd: [echo hello]\n"
    pod = make_pod(NODES[0], user_data=user_data)
    pod.init_containers.add(name="prep", command=["mkdir", "-p", "/srv/app"])
    pod.containers[0].command.extend(["/usr/bin/serve"])
    pod.containers[0].args.extend(["--port", "8080"])
    pod.containers[0].env.add(name="MODE", value="prod")
    assert provider.create(pod).phase == RUNNING
    extra = the_vm(vcsim, pod.identity)["extra"]
    document = email.message_from_string(base64.b64decode(extra["guestinfo.userdata"]).decode())
    assert document.get_content_type() == "multipart/mixed"
    mine, first_boot = cast(list[Any], document.get_payload())
    assert (mine.get_content_type(), mine.get_payload()) == ("text/cloud-config", user_data)
    assert first_boot.get_content_type() == "text/cloud-config"
    assert json.loads(first_boot.get_payload().partition("\n")[2])["runcmd"] == [
        ["mkdir", "-p", "/srv/app"],
        ["sh", "-c", '. "$0" && exec "$@"', "/run/vmlet/first-boot/vm.env", "/usr/bin/serve",
         "--port", "8080"],
    ]
    assert "guestinfo.metadata" in extra
    provider.delete(pod)


def test_memory_rounding_and_bare_template_name(provider: Provider, vcsim: VcSim) -> None:
    pod = make_pod(NODES[0], cpu_millis=100, memory=10**9, image=TEMPLATE)
    provider.create(pod)
    vm = the_vm(vcsim, pod.identity)
    assert (vm["cpus"], vm["memory_mb"]) == (1, 956)  # 10^9 B = 953.7 MiB -> 954 -> 956
    provider.delete(pod)


def test_bad_requests_are_refused_with_clear_codes(provider: Provider) -> None:
    docker = make_pod(NODES[0], image="docker.io/library/nginx:1.27")
    assert code_of(lambda: provider.create(docker)) == grpc.StatusCode.INVALID_ARGUMENT
    nowhere = make_pod("some-other-node")
    assert code_of(lambda: provider.create(nowhere)) == grpc.StatusCode.FAILED_PRECONDITION
    missing = make_pod(NODES[0], image="vsphere:template/no-such-template")
    assert code_of(lambda: provider.create(missing)) == grpc.StatusCode.FAILED_PRECONDITION
    assert code_of(lambda: provider.status(missing)) == grpc.StatusCode.NOT_FOUND


def all_vm_names(sim: VcSim) -> list[str]:
    """The names of every VM in vCenter (a VM another test is deleting meanwhile may be in it
    or not, never an error)."""
    with sim.connect() as si:
        return sorted(str(name) for _, name in vm_property(si, "name") if name is not None)


def test_out_of_bounds_requests_are_invalid_argument(provider: Provider, vcsim: VcSim) -> None:
    """cpu 2^62, memory 2^62, a 10 MB identity, 20 MB of user data, a 4 EiB disk, namespace
    a/b...: INVALID_ARGUMENT, never INTERNAL with a vCenter fault; vCenter's inventory has
    nothing made or destroyed (the conformance suite checks the codes through the provider's
    own eyes only)."""
    victim = make_pod(NODES[0], keep=False)
    provider.create(victim)
    before = all_vm_names(vcsim)
    stubs = {"pods": provider.pods, "vms": provider.vms}
    for case in hostile_requests(NODES[0], f"vsphere:template/{TEMPLATE}"):
        with pytest.raises(grpc.RpcError) as err:
            getattr(stubs[case.stub], case.method)(case.request, timeout=60)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (case.what, err.value)
        assert "Fault" not in (err.value.details() or ""), case.what
    after = all_vm_names(vcsim)
    assert set(after) <= set(before) and not [n for n in after if "hostile" in n]
    assert count_vms(vcsim, victim.identity) == 1
    provider.delete(victim)


def test_status_has_an_ip_only_once_the_guest_reports_one(provider: Provider, vcsim: VcSim) -> None:
    pod = make_pod(NODES[0])
    with contextlib.closing(provider.stream()) as stream:
        provider.create(pod)
        running = stream.wait(pod.ref.name, lambda s: s.phase == RUNNING, timeout=30)
        assert running.pod_ip == "" and not running.pod_ips
        assert not ready(running)
        assert running.container_statuses[0].HasField("running")
        assert running.HasField("start_time")
        time.sleep(1.5)
        assert provider.status(pod).pod_ip == ""  # the provider never invents one
        assert set_guest_ip(vcsim, pod.identity, "10.20.30.40")
        with_ip = stream.wait(pod.ref.name, lambda s: s.pod_ip == "10.20.30.40", timeout=30)
    assert list(with_ip.pod_ips) == ["10.20.30.40"]
    assert with_ip.phase == RUNNING and ready(with_ip)
    assert with_ip.host_ip  # the ESXi host's address
    provider.delete(pod)


def test_update_pod_reconfigures_the_vm(provider: Provider, vcsim: VcSim) -> None:
    pod = make_pod(NODES[0], cpu_millis=1000, memory=512 << 20)
    provider.create(pod)
    before = the_vm(vcsim, pod.identity)
    assert (before["cpus"], before["memory_mb"]) == (1, 512)

    pod.containers[0].resources.cpu_limit_millis = 2000
    pod.containers[0].resources.memory_limit_bytes = 2 << 30
    status = provider.update(pod)
    after = the_vm(vcsim, pod.identity)
    assert (after["cpus"], after["memory_mb"]) == (2, 2048)
    assert after["power"] == "poweredOn"
    assert "power cycle" in status.message and "hot add is off" in status.message
    assert status.phase == RUNNING

    spec = vim.vm.ConfigSpec(cpuHotAddEnabled=True, memoryHotAddEnabled=True)
    reconfigure_vm(vcsim, pod.identity, spec)
    time.sleep(0.5)
    pod.containers[0].resources.cpu_limit_millis = 3000
    status = eventually(
        lambda: s if "while running" in (s := provider.update(pod)).message else None,
        what="hot-add update",
    )
    hot = the_vm(vcsim, pod.identity)
    assert hot["cpus"] == 3
    assert hot["boot"] == after["boot"]  # no power cycle this time
    assert "while running" in status.message
    provider.delete(pod)


def test_kept_vm_in_vcenter_and_destroyed_with_its_pod_running(
    provider: Provider, vcsim: VcSim
) -> None:
    """A kept VM is powered off in vCenter and no longer names a pod; GetVirtualMachine describes
    it as vCenter has it. DeleteVirtualMachine of a VM whose pod runs destroys it and forgets the
    pod. (Keep versus destroy as such: the conformance suite's delete_* checks.)"""
    kept = make_pod(NODES[1], keep=True)
    provider.create(kept)
    provider.delete(kept)
    vm = the_vm(vcsim, kept.identity)
    assert vm["power"] == "poweredOff"
    assert "vmlet.pod" not in vm["extra"]
    get = vpb.GetVirtualMachineRequest(identity=kept.identity)
    described = provider.vms.GetVirtualMachine(get, timeout=30).virtual_machine
    assert (described.provider_id, described.power_state) == (vm["moid"], vpb.POWER_STATE_OFF)
    assert (described.node_name, described.cpus) == (NODES[1], vm["cpus"])
    assert described.memory_bytes == vm["memory_mb"] << 20 and not described.ip_addresses

    again = make_pod(NODES[1], identity=kept.identity)
    assert provider.create(again).phase == RUNNING
    assert the_vm(vcsim, kept.identity)["moid"] == vm["moid"]
    provider.destroy(kept.identity)
    assert count_vms(vcsim, kept.identity) == 0
    assert code_of(lambda: provider.status(again)) == grpc.StatusCode.NOT_FOUND


def test_pod_for_existing_identity_on_another_node_moves_the_vm(
    provider: Provider, vcsim: VcSim
) -> None:
    first = make_pod(NODES[0])
    provider.create(first)
    original = the_vm(vcsim, first.identity)
    assert original["host"] == HOSTS[0]

    # The VM pod is made again on another node (e.g. after a drain): the running VM moves.
    moved = make_pod(NODES[2], identity=first.identity)
    with contextlib.closing(provider.stream()) as stream:
        status = provider.create(moved)
        taken = stream.wait(first.ref.name, lambda s: s.phase == pod_pb2.POD_PHASE_FAILED,
                            timeout=30)
    assert taken.reason == "VMTakenOver"
    assert status.actual_node_name == NODES[2]
    vm = the_vm(vcsim, first.identity)
    assert vm["moid"] == original["moid"]
    assert vm["host"] == HOSTS[2]
    assert vm["power"] == "poweredOn"
    assert vm["extra"]["vmlet.pod"] == f"tests/{moved.ref.name}"

    # Stopped and kept, then wanted on a third node: moved again, never made anew.
    moved.keep_on_delete = True
    provider.delete(moved)
    back = make_pod(NODES[1], identity=first.identity)
    provider.create(back)
    vm = the_vm(vcsim, first.identity)
    assert (vm["moid"], vm["host"], vm["power"]) == (original["moid"], HOSTS[1], "poweredOn")
    provider.delete(back)


# Snapshots.


def test_snapshots_are_vcenter_snapshots_and_revert(provider: Provider, vcsim: VcSim) -> None:
    """Snapshots are vCenter's, the latest the current one; a revert makes its snapshot current
    and leaves a running VM on. (Idempotence by name and the codes: the conformance suite.)"""
    pod = make_pod(NODES[1])
    provider.create(pod)
    vms = provider.vms
    first = vms.CreateSnapshot(
        vpb.CreateSnapshotRequest(identity=pod.identity, name="s1", description="before"),
        timeout=60,
    ).snapshot
    assert first.kind == "vsphere-snapshot"
    second = vms.CreateSnapshot(
        vpb.CreateSnapshotRequest(identity=pod.identity, name="s2"), timeout=60
    ).snapshot
    with vcsim.connect() as si:
        (vm,) = vms_with_identity(si, pod.identity)
        assert vm.snapshot.currentSnapshot._moId == second.id

    vms.RevertToSnapshot(
        vpb.RevertToSnapshotRequest(identity=pod.identity, snapshot_id=first.id), timeout=60
    )
    with vcsim.connect() as si:
        (vm,) = vms_with_identity(si, pod.identity)
        assert vm.snapshot.currentSnapshot._moId == first.id
        assert vm.runtime.powerState == "poweredOn"

    # (vcsim 0.46 crashes removing the current snapshot when it is a root one, so the child
    # goes: vSphere itself takes either.)
    vms.DeleteSnapshot(
        vpb.DeleteSnapshotRequest(identity=pod.identity, snapshot_id=second.id), timeout=60
    )
    listed = vms.ListSnapshots(vpb.ListSnapshotsRequest(identity=pod.identity), timeout=30)
    assert [s.id for s in listed.snapshots] == [first.id]
    provider.delete(pod)


def test_revert_keeps_a_stopped_vm_stopped(tmp_path: Path) -> None:
    """A pod stopped (deleted, VM kept) while a revert runs, or before it, leaves its VM off:
    the revert of a snapshot taken while the VM ran never powers a stopped VM on (found by the
    fault-injection run: a Restore and a stop of one VM, moments apart). vCenter here takes
    1.5 s over a revert, so the stop lands inside it."""
    sim = VcSim(hosts=1, state_dir=tmp_path / "vcsim",
                extra_args=("-method-delay", "RevertToSnapshot:1500,LockHandoff:0")).start()
    running = start_provider(sim, tmp_path / "provider")
    try:
        vms = running.vms
        node = eventually(running.list_nodes, what="a node")[0].name
        pod = make_pod(node, keep=True)
        running.create(pod)
        taken = vms.CreateSnapshot(
            vpb.CreateSnapshotRequest(identity=pod.identity, name="running"), timeout=60
        ).snapshot
        revert = vpb.RevertToSnapshotRequest(identity=pod.identity, snapshot_id=taken.id)
        with ThreadPoolExecutor(2) as pool:
            reverting = pool.submit(vms.RevertToSnapshot, revert, timeout=60)
            time.sleep(0.5)
            stopping = pool.submit(running.delete, pod)
            reverting.result()
            stopping.result()
        with sim.connect() as si:
            (vm,) = vms_with_identity(si, pod.identity)
            assert vm.runtime.powerState == "poweredOff", "the revert started the stopped VM"
        vms.RevertToSnapshot(revert, timeout=60)  # a revert after the stop
        with sim.connect() as si:
            (vm,) = vms_with_identity(si, pod.identity)
            assert vm.runtime.powerState == "poweredOff"
    finally:
        running.stop()
        sim.stop()
