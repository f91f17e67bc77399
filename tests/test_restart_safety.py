"""Restarts, lost pods and hostile pods change nothing that runs (issues 13 and 14).

On the real control plane, with vSphere on vcsim where the faults were found, and the memory
provider where it is cheaper:

- the facade SIGKILLed and SIGTERMed with VMs running, several times: no VM powers off, none is
  duplicated, no VirtualMachine goes Failed (the VM controller acts only on synced caches, and a
  VM pod has one name, so a second create is AlreadyExists);
- the provider restarted, then a VM pod force-deleted while the facade is down: the VM survives
  (the provider recorded it as kept, with its namespace) and the next pod adopts it;
- a VM that vanished from the IaaS is not made again silently: VMLost, with a Warning;
- a VirtualMachine whose provider is unknown can be deleted, and its namespace with it; one whose
  provider is configured but does not answer keeps its finalizer and says why (DestroyPending);
- a bare pod in another namespace that names a victim's identity gets nothing of the victim's VM,
  and an operation pod cannot aim at it either; providers refuse it at their own API too.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from vmlet.provider.v1 import pod_lifecycle_service_pb2 as lc_pb
from vmlet.provider.v1 import pod_lifecycle_service_pb2_grpc as lc_grpc
from vmlet.provider.v1 import pod_pb2
from vmlet.provider.v1 import virtual_machine_service_pb2 as vm_pb
from vmlet.provider.v1 import virtual_machine_service_pb2_grpc as vm_grpc
from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.stack import Stack, eventually, report_guest_ip, vms_with_identity
from vmlet_localenv.vcsim import VcSim

VS = "vsrs"  # the vSphere provider
MEM = "memrs"  # the memory provider
HOSTS = ("DC0_C0_H0", "DC0_C0_H1", "DC0_C0_H2")
VM_API = "vmlet.io/v1alpha1"


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VcSim]:
    s = VcSim(hosts=len(HOSTS), state_dir=tmp_path_factory.mktemp("rs-vcsim")).start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def stack(control_plane: ControlPlane, sim: VcSim,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(control_plane, tmp_path_factory.mktemp("rs-stack"),
              {VS: [], MEM: ["--nodes", "2"]}, kinds={VS: "vsphere"}, vcsim=sim)
    s.start()
    try:
        eventually(lambda: len(s.ready_nodes(VS)) == len(HOSTS)
                   and len(s.ready_nodes(MEM)) == 2, what="every node Ready")
        yield s
    finally:
        s.stop()
        s.print_logs(60)


def _namespace(cp: ControlPlane) -> str:
    name = f"rs-{uuid.uuid4().hex[:8]}"
    cp.kubectl("create", "namespace", name)
    return name


@pytest.fixture
def ns(control_plane: ControlPlane) -> Iterator[str]:
    name = _namespace(control_plane)
    yield name
    control_plane.kubectl("delete", "vm", "--all", "-n", name, "--timeout=120s", check=False)
    control_plane.kubectl("delete", "namespace", name, "--wait=false", check=False)


def apply(cp: ControlPlane, ns: str, *objs: dict[str, Any]) -> None:
    cp.kubectl("apply", "-n", ns, "-f", "-",
               input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objs)}))


def get(stack: Stack, kind: str, name: str, ns: str) -> dict[str, Any]:
    return dict(stack.kubectl_json("get", kind, name, "-n", ns))


def vm_manifest(name: str, provider: str = VS, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": VM_API, "kind": "VirtualMachine", "metadata": {"name": name},
            "spec": {"provider": provider, "image": "debian-12", "cpu": "500m", "memory": "512Mi",
                     **spec}}


def state_of(stack: Stack, ns: str, name: str) -> str:
    return str(get(stack, "vm", name, ns).get("status", {}).get("state", ""))


def events(stack: Stack, ns: str, name: str, kind: str = "VirtualMachine") -> list[dict[str, Any]]:
    items = stack.kubectl_json("get", "events", "-n", ns, "--field-selector",
                               f"involvedObject.name={name},involvedObject.kind={kind}")
    return list(items["items"])


def vcenter(sim: VcSim, identity: str) -> list[dict[str, Any]]:
    """Every VM in vCenter carrying ``identity``: moref, power and vmlet's extraConfig."""
    with sim.connect() as si:
        return [{"moref": vm._moId, "power": vm.runtime.powerState,
                 "extra": {o.key: str(o.value) for o in vm.config.extraConfig or ()
                           if str(o.key).startswith("vmlet.")}}
                for vm in vms_with_identity(si, identity)]


def vm_pods(stack: Stack, ns: str, uid: str) -> list[dict[str, Any]]:
    return list(stack.kubectl_json("get", "pods", "-n", ns, "-l",
                                   f"vmlet.io/vm-uid={uid}")["items"])


def leaderships(stack: Stack) -> int:
    assert stack.facade is not None and stack.facade.process is not None
    return int(stack.facade.process.tail(100000).count("leading as"))


def start_vms(stack: Stack, cp: ControlPlane, sim: VcSim, ns: str,
              names: list[str]) -> dict[str, str]:
    """The VMs ``names`` Running with a guest IP; their UIDs by name."""
    apply(cp, ns, *[vm_manifest(n) for n in names])
    uids = {n: str(get(stack, "vm", n, ns)["metadata"]["uid"]) for n in names}
    reporters = [threading.Thread(target=report_guest_ip, args=(sim, uid, f"10.9.0.{i + 10}"),
                                  daemon=True) for i, uid in enumerate(uids.values())]
    for thread in reporters:
        thread.start()
    for thread in reporters:
        thread.join(180)
    eventually(lambda: all(state_of(stack, ns, n) == "Running" for n in names), timeout=180,
               what="every VM Running")
    return uids


# -- the facade restarted with VMs running (issue 13 item 1) ------------------------------------


def test_facade_sigkill_and_sigterm_power_nothing_off(
        stack: Stack, control_plane: ControlPlane, sim: VcSim, ns: str) -> None:
    names = [f"r{i}" for i in range(10)]
    uids = start_vms(stack, control_plane, sim, ns, names)
    morefs = {uid: vcenter(sim, uid)[0]["moref"] for uid in uids.values()}
    pod_names = {n: [p["metadata"]["name"] for p in vm_pods(stack, ns, u)]
                 for n, u in uids.items()}
    assert pod_names == {n: [n] for n in names}  # one pod per VM, named after it

    def check(when: str) -> None:
        for name, uid in uids.items():
            found = vcenter(sim, uid)
            assert [v["moref"] for v in found] == [morefs[uid]], f"{name} {when}: {found}"
            assert found[0]["power"] == "poweredOn", f"{name} powered off {when}"

    assert stack.facade is not None
    for round_, how in enumerate(("kill", "stop", "kill", "stop")):
        before = leaderships(stack)
        getattr(stack.facade, how)()  # SIGKILL, or SIGTERM as the stack's stop does
        check(f"after the facade's {how} (round {round_})")
        started = time.monotonic()
        stack.start_facade()
        # Until the new facade leads and its controllers ran for a while: check all along.
        while time.monotonic() - started < 90:
            check(f"while the facade comes back (round {round_})")
            if leaderships(stack) > before and time.monotonic() - started > 15:
                break
            time.sleep(0.5)
        assert leaderships(stack) > before, "the new facade never took the leader Lease"
        for _ in range(10):  # the controllers' first reconciles after the takeover
            check(f"after the takeover (round {round_})")
            time.sleep(1)
        for name, uid in uids.items():
            pods = vm_pods(stack, ns, uid)
            assert [p["metadata"]["name"] for p in pods] == [name], f"round {round_}: {pods}"
            assert pods[0]["status"].get("phase") == "Running", pods[0]["status"]
            assert state_of(stack, ns, name) == "Running", f"{name} in round {round_}"
            assert "VMTakenOver" not in json.dumps(get(stack, "vm", name, ns)["status"])


# -- the provider restarted, a VM pod force-deleted while the facade is down (item 2) ----------


def test_vm_pod_lost_while_facade_down_is_readopted_not_destroyed(
        stack: Stack, control_plane: ControlPlane, sim: VcSim, ns: str) -> None:
    uid = start_vms(stack, control_plane, sim, ns, ["keep"])["keep"]
    first = vcenter(sim, uid)
    assert len(first) == 1
    assert first[0]["extra"]["vmlet.namespace"] == ns and first[0]["extra"]["vmlet.keep"] == "true"
    old_pod = vm_pods(stack, ns, uid)[0]["metadata"]["uid"]

    provider = stack.providers[VS]
    provider.kill()  # its pod table is rebuilt from vCenter: keep must survive that
    provider.start()

    def rebuilt() -> pod_pb2.Pod | None:
        with stack.channel(VS) as channel:
            listed = lc_grpc.PodLifecycleServiceStub(channel).GetPods(
                lc_pb.GetPodsRequest(), timeout=30).pods
        return next((p.pod for p in listed if p.pod.identity == uid), None)

    again = eventually(rebuilt, what="the provider's pod rebuilt from vCenter")
    assert again.keep_on_delete and again.ref.namespace == ns
    assert stack.facade is not None
    stack.facade.kill()
    control_plane.kubectl("delete", "pod", "keep", "-n", ns, "--force", "--grace-period=0")
    eventually(lambda: not vm_pods(stack, ns, uid), what="the VM pod gone")
    stack.start_facade()

    def readopted() -> dict[str, Any] | None:
        pods = vm_pods(stack, ns, uid)
        live = [p for p in pods if p["metadata"]["uid"] != old_pod]
        running = live and live[0]["status"].get("phase") == "Running"
        return live[0] if running and state_of(stack, ns, "keep") == "Running" else None

    pod = eventually(readopted, timeout=120, what="a new pod running the same VM")
    assert pod["metadata"]["name"] == "keep"
    now = vcenter(sim, uid)
    assert [v["moref"] for v in now] == [first[0]["moref"]], "the VM was replaced"
    assert now[0]["power"] == "poweredOn"
    assert "VMLost" not in {e["reason"] for e in events(stack, ns, "keep")}


# -- providers refuse another namespace at their own API (issue 14 item 2) ----------------------


def _pod_for(namespace: str, name: str, identity: str, node: str,
             keep: bool = False) -> pod_pb2.Pod:
    return pod_pb2.Pod(
        ref=pod_pb2.PodRef(namespace=namespace, name=name, uid=str(uuid.uuid4())),
        node_name=node, identity=identity, keep_on_delete=keep,
        containers=[pod_pb2.Container(name="vm", image="debian-12", resources=pod_pb2.Resources(
            cpu_limit_millis=1000, memory_limit_bytes=2**30))])


@pytest.mark.parametrize("provider", [VS, MEM])
def test_provider_refuses_a_vm_of_another_namespace(
        stack: Stack, control_plane: ControlPlane, sim: VcSim, ns: str, provider: str) -> None:
    apply(control_plane, ns, vm_manifest("victim", provider=provider))
    uid = str(get(stack, "vm", "victim", ns)["metadata"]["uid"])
    if provider == VS:
        report_guest_ip(sim, uid, "10.9.1.1")
    eventually(lambda: state_of(stack, ns, "victim") == "Running", timeout=120, what="Running")
    node = get(stack, "vm", "victim", ns)["status"]["nodeName"]
    other = next(n for n in stack.ready_nodes(provider) if n != node)
    hostile = _pod_for("attacker", "steal", uid, other)
    with stack.channel(provider) as channel:
        pods, vms = lc_grpc.PodLifecycleServiceStub(channel), vm_grpc.VirtualMachineServiceStub(
            channel)
        calls: list[Callable[[], object]] = [
            lambda: pods.CreatePod(lc_pb.CreatePodRequest(pod=hostile), timeout=60),
            lambda: pods.DeletePod(lc_pb.DeletePodRequest(pod=hostile), timeout=60),
            lambda: vms.DeleteVirtualMachine(vm_pb.DeleteVirtualMachineRequest(
                identity=uid, namespace="attacker"), timeout=60),
            lambda: vms.CreateSnapshot(vm_pb.CreateSnapshotRequest(
                identity=uid, name="x", namespace="attacker"), timeout=60),
            lambda: vms.GetVirtualMachine(vm_pb.GetVirtualMachineRequest(
                identity=uid, namespace="attacker"), timeout=60),
        ]
        for call in calls:
            with pytest.raises(grpc.RpcError) as refused:
                call()
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "another namespace" in str(refused.value.details())
        machine = vms.GetVirtualMachine(vm_pb.GetVirtualMachineRequest(
            identity=uid, namespace=ns), timeout=30).virtual_machine
    assert machine.node_name == node and machine.power_state == vm_pb.POWER_STATE_ON
    assert state_of(stack, ns, "victim") == "Running"


# -- a tenant's pod names a victim's identity (issue 14 item 2) --------------------------------


def test_bare_pod_with_a_victims_identity_gets_nothing_of_its_vm(
        stack: Stack, control_plane: ControlPlane, ns: str) -> None:
    apply(control_plane, ns, vm_manifest("victim", provider=MEM))
    victim = get(stack, "vm", "victim", ns)
    uid = victim["metadata"]["uid"]
    eventually(lambda: state_of(stack, ns, "victim") == "Running", what="victim Running")
    node = get(stack, "vm", "victim", ns)["status"]["nodeName"]
    other = next(n for n in stack.ready_nodes(MEM) if n != node)
    attacker = _namespace(control_plane)
    try:
        steal = stack.vm_pod("victim", MEM, extra={"nodeName": other})
        steal["metadata"].update(
            annotations={"vmlet.io/identity": uid, "vmlet.io/keep-on-delete": "true"},
            labels={"vmlet.io/vm-uid": uid, "vmlet.io/vm": "victim"},
            ownerReferences=[{"apiVersion": VM_API, "kind": "VirtualMachine", "name": "victim",
                              "uid": uid, "controller": True}])
        backup = stack.vm_pod("snap", MEM, extra={"nodeName": node, "restartPolicy": "Never"})
        backup["metadata"]["annotations"] = {"vmlet.io/operation": "backup",
                                             "vmlet.io/target-identity": uid}
        apply(control_plane, attacker, steal, backup)

        def refused_backup() -> dict[str, Any] | None:
            pod = get(stack, "pod", "snap", attacker)
            return pod if pod["status"].get("phase") == "Failed" else None

        failed = eventually(refused_backup, what="the attacker's backup pod refused")
        term = failed["status"]["containerStatuses"][0]["state"]["terminated"]
        assert term["reason"] == "TargetNotInNamespace", term
        time.sleep(3)  # the stealing pod had its chance (or the garbage collector took it)
        with stack.channel(MEM) as channel:
            vms = vm_grpc.VirtualMachineServiceStub(channel)
            machine = vms.GetVirtualMachine(vm_pb.GetVirtualMachineRequest(identity=uid),
                                            timeout=30).virtual_machine
            assert machine.node_name == node and machine.power_state == vm_pb.POWER_STATE_ON
            assert not vms.ListSnapshots(vm_pb.ListSnapshotsRequest(identity=uid),
                                         timeout=30).snapshots
        pod = vm_pods(stack, ns, uid)[0]
        assert pod["status"]["phase"] == "Running" and pod["spec"]["nodeName"] == node
        assert state_of(stack, ns, "victim") == "Running"
        control_plane.kubectl("delete", "pod", "--all", "-n", attacker, "--timeout=60s")
        time.sleep(2)
        with stack.channel(MEM) as channel:
            machine = vm_grpc.VirtualMachineServiceStub(channel).GetVirtualMachine(
                vm_pb.GetVirtualMachineRequest(identity=uid), timeout=30).virtual_machine
        assert machine.power_state == vm_pb.POWER_STATE_ON, "the attacker's delete hit the VM"
        assert state_of(stack, ns, "victim") == "Running"
    finally:
        control_plane.kubectl("delete", "namespace", attacker, "--wait=false", check=False)


# -- a VM gone from the IaaS is not made again (issue 13 item 2) -------------------------------


def test_vanished_vm_is_reported_not_recreated(
        stack: Stack, control_plane: ControlPlane, ns: str) -> None:
    apply(control_plane, ns, vm_manifest("gone", provider=MEM))
    uid = get(stack, "vm", "gone", ns)["metadata"]["uid"]
    eventually(lambda: state_of(stack, ns, "gone") == "Running"
               and get(stack, "vm", "gone", ns)["status"].get("providerID"), what="Running")
    control_plane.kubectl("patch", "vm", "gone", "-n", ns, "--type=merge",
                          "-p", '{"spec":{"replicas":0}}')
    eventually(lambda: state_of(stack, ns, "gone") == "Stopped", what="Stopped")
    with stack.channel(MEM) as channel:  # the IaaS loses the VM behind vmlet's back
        vm_grpc.VirtualMachineServiceStub(channel).DeleteVirtualMachine(
            vm_pb.DeleteVirtualMachineRequest(identity=uid), timeout=30)
    control_plane.kubectl("patch", "vm", "gone", "-n", ns, "--type=merge",
                          "-p", '{"spec":{"replicas":1}}')

    def lost() -> dict[str, Any] | None:
        vm = get(stack, "vm", "gone", ns)
        conds = {c["type"]: c for c in vm.get("status", {}).get("conditions") or []}
        return vm if conds.get("VMLost", {}).get("status") == "True" else None

    vm = eventually(lost, what="the VirtualMachine saying its VM is lost")
    assert vm["status"]["state"] == "Failed"
    warnings = [e for e in events(stack, ns, "gone") if e["reason"] == "VMLost"]
    assert warnings and warnings[0]["type"] == "Warning" and uid in warnings[0]["message"]
    time.sleep(3)
    assert not vm_pods(stack, ns, uid)
    with stack.channel(MEM) as channel, pytest.raises(grpc.RpcError) as missing:
        vm_grpc.VirtualMachineServiceStub(channel).GetVirtualMachine(
            vm_pb.GetVirtualMachineRequest(identity=uid), timeout=30)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND  # no fresh VM was made


# -- a VirtualMachine of an unknown provider can be deleted (issue 13 item 3) -------------------


def test_vm_of_an_unknown_provider_is_deleted_with_its_namespace(
        stack: Stack, control_plane: ControlPlane) -> None:
    name = _namespace(control_plane)
    apply(control_plane, name, vm_manifest("orphan", provider="nowhere"))
    eventually(lambda: "vmlet.io/destroy-vm" in (get(stack, "vm", "orphan", name)["metadata"]
                                                 .get("finalizers") or []), what="finalizer")
    control_plane.kubectl("delete", "vm", "orphan", "-n", name, "--timeout=60s")
    said = [e for e in events(stack, name, "orphan") if e["reason"] == "ProviderUnknown"]
    assert said and said[0]["type"] == "Warning" and "nowhere" in said[0]["message"]
    control_plane.kubectl("delete", "namespace", name, "--timeout=90s")


def test_vm_of_an_unreachable_provider_waits_and_says_why(
        stack: Stack, control_plane: ControlPlane, ns: str) -> None:
    apply(control_plane, ns, vm_manifest("later", provider=MEM, replicas=0))
    uid = get(stack, "vm", "later", ns)["metadata"]["uid"]
    eventually(lambda: state_of(stack, ns, "later") == "Stopped", what="Stopped")
    provider = stack.providers[MEM]
    provider.stop()  # configured, but not answering
    try:
        control_plane.kubectl("delete", "vm", "later", "-n", ns, "--wait=false")

        def pending() -> dict[str, Any] | None:
            vm = get(stack, "vm", "later", ns)
            ready = {c["type"]: c for c in vm.get("status", {}).get("conditions") or []}
            return vm if ready.get("Ready", {}).get("reason") == "DestroyPending" else None

        vm = eventually(pending, what="the status saying the destroy waits for the provider")
        assert any(MEM in c["message"] for c in vm["status"]["conditions"])
        assert "vmlet.io/destroy-vm" in vm["metadata"]["finalizers"]
    finally:
        provider.start()
    eventually(lambda: not stack.kubectl_json("get", "vm", "-n", ns)["items"], timeout=120,
               what="the VirtualMachine deleted once its provider answers")
    assert "Destroyed" in {e["reason"] for e in events(stack, ns, "later")}
    with stack.channel(MEM) as channel, pytest.raises(grpc.RpcError) as gone:
        vm_grpc.VirtualMachineServiceStub(channel).GetVirtualMachine(
            vm_pb.GetVirtualMachineRequest(identity=uid), timeout=30)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
