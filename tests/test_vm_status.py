"""A VirtualMachine's status tells the truth: about a spec that cannot be carried out, and about an
outage of its provider or of the IaaS behind it.

On the real control plane with the memory provider, and with the vSphere provider on a vcsim of
its own (the outage test stops that vcsim). Invalid specs are refused at admission (the CRD's
schema and CEL rules) or, when admission could not (an object stored before a rule, a fault only
the apiserver's check of the VM pod finds), turned into status (InvalidSpec, naming the field)
and one Warning Event. Outages are caused for real: the provider process or vcsim is frozen with
SIGSTOP (a hung process, the hardest case: no connection is refused) and thawed with SIGCONT, or
the provider is killed and started again. Figures measured are printed (run with -s).
"""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import yaml

from vmlet.provider.v1 import virtual_machine_service_pb2 as vm_pb
from vmlet.provider.v1 import virtual_machine_service_pb2_grpc as vm_grpc
from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.processes import Process
from vmlet_localenv.services import REPO, apply_crds
from vmlet_localenv.stack import Stack, eventually, report_guest_ip, vms_with_identity
from vmlet_localenv.vcsim import VcSim

MEM = "vmstat"
VS = "vsstat"
VM_API = "vmlet.io/v1alpha1"


@pytest.fixture(scope="module")
def stack(control_plane: ControlPlane,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(control_plane, tmp_path_factory.mktemp("vmstatus"), {MEM: ["--nodes", "2"]})
    s.start()
    try:
        eventually(lambda: len(s.ready_nodes(MEM)) == 2, what="2 nodes Ready")
        yield s
    finally:
        s.stop()
        s.print_logs()


@pytest.fixture
def ns(control_plane: ControlPlane) -> Iterator[str]:
    name = f"vmst-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", name)
    yield name
    control_plane.kubectl("delete", "vm", "--all", "-n", name, "--timeout=60s", check=False)
    control_plane.kubectl("delete", "namespace", name, "--wait=false", check=False)


def manifest(name: str, provider: str = MEM, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": VM_API, "kind": "VirtualMachine", "metadata": {"name": name},
            "spec": {"provider": provider, "image": "debian-12", "cpu": 1, "memory": "1Gi",
                     **spec}}


def apply(cp: ControlPlane, ns: str, obj: dict[str, Any], check: bool = True) -> Any:
    return cp.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(obj), check=check)


def get_vm(stack: Stack, ns: str, name: str) -> dict[str, Any]:
    return dict(stack.kubectl_json("get", "vm", name, "-n", ns))


def condition(obj: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in (obj.get("status") or {}).get("conditions") or []
                 if c["type"] == ctype), {})


def warnings(stack: Stack, ns: str, name: str, reason: str) -> list[dict[str, Any]]:
    items = stack.kubectl_json("get", "events", "-n", ns, "--field-selector",
                               f"involvedObject.name={name},involvedObject.kind=VirtualMachine,"
                               f"reason={reason}")["items"]
    return [e for e in items if e["type"] == "Warning"]


def vm_pod(stack: Stack, ns: str, vm: dict[str, Any]) -> dict[str, Any]:
    pods = stack.kubectl_json("get", "pods", "-n", ns, "-l",
                              f"vmlet.io/vm-uid={vm['metadata']['uid']}")["items"]
    assert len(pods) == 1
    return dict(pods[0])


def wait_state(stack: Stack, ns: str, name: str, want: str, timeout: float = 90,
               seen: set[str] | None = None) -> tuple[dict[str, Any], float]:
    """The VM once its state is ``want``, and how long that took; every state on the way is
    added to ``seen``."""
    start = time.monotonic()

    def check() -> dict[str, Any] | None:
        vm = get_vm(stack, ns, name)
        state = (vm.get("status") or {}).get("state", "")
        if seen is not None:
            seen.add(state)
        return vm if state == want else None

    vm = eventually(check, timeout=timeout, interval=0.25, what=f"{name} {want}")
    return vm, time.monotonic() - start


# -- invalid specs --------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "spec", "said"), [
    ("a" * 64, {}, "metadata.name must be a DNS label of at most 63 characters"),
    ("garbage-affinity", {"placement": {"affinity": "garbage"}},
     "spec.placement.affinity in body must be of type object"),
    ("unknown-affinity", {"placement": {"affinity": {"nodeAffinity": {"whatever": 1}}}},
     "unknown field \"spec.placement.affinity.nodeAffinity.whatever\""),
    ("cross-ns", {"placement": {"affinity": {"podAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": [
            {"topologyKey": "kubernetes.io/hostname", "namespaces": ["kube-system"]}]}}}},
     "unknown field"),
    ("huge", {"memory": "1Ei"}, "memory must be at most 24Ti"),
    ("no-cpu", {"cpu": "0"}, "cpu must be between 1m and 256"),
], ids=["name-64", "affinity-string", "affinity-unknown-field", "affinity-namespaces",
        "memory-1Ei", "cpu-0"])
def test_invalid_specs_are_refused_at_admission(stack: Stack, control_plane: ControlPlane,
                                                ns: str, name: str, spec: dict[str, Any],
                                                said: str) -> None:
    result = apply(control_plane, ns, manifest(name, **spec), check=False)
    assert result.returncode != 0, f"{name} was admitted"
    assert said in result.stderr, result.stderr
    assert not stack.kubectl_json("get", "vm", "-n", ns)["items"]


def test_a_long_name_stored_before_the_rule_is_invalid_spec(stack: Stack,
                                                            control_plane: ControlPlane,
                                                            ns: str) -> None:
    """A VirtualMachine of 64 characters admitted by an older CRD (no name rule): the controller
    says InvalidSpec naming metadata.name, with one Warning Event, creates nothing, and the VM
    can still be deleted once the current CRD is back."""
    crd_file = REPO / "k8s/base/crds/virtualmachines.yaml"
    crd = yaml.safe_load(crd_file.read_text())
    del crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["x-kubernetes-validations"]
    name = "a" * 64
    try:
        control_plane.kubectl("apply", "-f", "-", input=json.dumps(crd))
        eventually(lambda: apply(control_plane, ns, manifest(name), check=False).returncode == 0,
                   timeout=30, what="the older CRD served")
    finally:
        apply_crds(control_plane)
    vm, took = wait_state(stack, ns, name, "Failed", timeout=20)
    print(f"\n64-character name: InvalidSpec status {took:.1f}s after the apply")
    failure = condition(vm, "Failure")
    assert (failure["status"], failure["reason"]) == ("True", "InvalidSpec")
    assert failure["message"].startswith("metadata.name: 64 characters")
    assert vm["status"]["observedGeneration"] == vm["metadata"]["generation"]
    eventually(lambda: warnings(stack, ns, name, "InvalidSpec"), timeout=10,
               what="a Warning Event InvalidSpec")
    assert not stack.kubectl_json("get", "pods", "-n", ns)["items"]
    control_plane.kubectl("delete", "vm", name, "-n", ns, "--timeout=30s")
    assert not stack.kubectl_json("get", "vm", "-n", ns)["items"]


def test_a_vm_pod_the_apiserver_refuses_is_invalid_spec(stack: Stack,
                                                        control_plane: ControlPlane,
                                                        ns: str) -> None:
    """Affinity of the right shape that pod validation refuses (In without values): the VM says
    InvalidSpec with the apiserver's message, once, retries nothing until the spec changes, and
    runs once it is fixed."""
    bad_term = {"matchExpressions": [{"key": "vmlet.io/rack", "operator": "In"}]}
    apply(control_plane, ns, manifest("refused", placement={"affinity": {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [bad_term]}}}}))
    vm, took = wait_state(stack, ns, "refused", "Failed", timeout=20)
    print(f"\nInvalidSpec status {took:.1f}s after the apply")
    status = vm["status"]
    assert status["observedGeneration"] == vm["metadata"]["generation"]
    ready, failure = condition(vm, "Ready"), condition(vm, "Failure")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert (failure["status"], failure["reason"]) == ("True", "InvalidSpec")
    assert "apiserver refused the VM pod" in failure["message"]
    assert "nodeAffinity" in failure["message"] and "values" in failure["message"]
    assert failure["observedGeneration"] == vm["metadata"]["generation"]
    events = eventually(lambda: warnings(stack, ns, "refused", "InvalidSpec"), timeout=10,
                        what="a Warning Event InvalidSpec")
    assert "nodeAffinity" in events[0]["message"]
    time.sleep(6)  # no retry loop: no second Event, no pod, the status as it was
    assert len(warnings(stack, ns, "refused", "InvalidSpec")) == 1
    assert sum(e.get("count", 1) for e in warnings(stack, ns, "refused", "InvalidSpec")) == 1
    assert not stack.kubectl_json("get", "pods", "-n", ns)["items"]
    assert get_vm(stack, ns, "refused")["metadata"]["resourceVersion"] == \
        vm["metadata"]["resourceVersion"]

    good_term = {"matchExpressions": [{"key": "vmlet.io/provider", "operator": "In",
                                       "values": [MEM]}]}
    control_plane.kubectl("patch", "vm", "refused", "-n", ns, "--type=merge", "-p", json.dumps(
        {"spec": {"placement": {"affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [good_term]}}}}}}))
    fixed, _ = wait_state(stack, ns, "refused", "Running", timeout=60)
    assert condition(fixed, "Failure")["status"] == "False"
    assert fixed["status"]["observedGeneration"] == fixed["metadata"]["generation"]


def test_too_big_for_every_host_says_what_the_scheduler_said(stack: Stack,
                                                             control_plane: ControlPlane,
                                                             ns: str) -> None:
    """Within the documented maximum but larger than any host: Provisioning, and the status
    says why (the scheduler's message), not a silent wait."""
    apply(control_plane, ns, manifest("big", memory="20Ti"))

    def told() -> dict[str, Any] | None:
        vm = get_vm(stack, ns, "big")
        ready = condition(vm, "Ready")
        return vm if "Insufficient memory" in ready.get("message", "") else None

    vm = eventually(told, timeout=30, what="the scheduler's reason in the VM's status")
    assert vm["status"]["state"] == "Provisioning"
    assert condition(vm, "Ready")["reason"] == "Unscheduled"


# -- outages --------------------------------------------------------------------------------

class _Frozen:
    """SIGSTOP ``process`` (its group) for the with-block; SIGCONT whatever happens."""

    def __init__(self, process: Process | None) -> None:
        assert process is not None
        self._process = process

    def __enter__(self) -> float:
        self._process.signal(signal.SIGSTOP)
        return time.monotonic()

    def __exit__(self, *exc: object) -> None:
        self._process.signal(signal.SIGCONT)


def power_state(stack: Stack, identity: str) -> int:
    with stack.channel(MEM) as channel:
        try:
            return int(vm_grpc.VirtualMachineServiceStub(channel).GetVirtualMachine(
                vm_pb.GetVirtualMachineRequest(identity=identity), timeout=10)
                .virtual_machine.power_state)
        except grpc.RpcError:
            return -1


class _Killed:
    """SIGKILL the provider for the with-block; start it again as it was started after."""

    def __init__(self, stack: Stack) -> None:
        self._provider = stack.providers[MEM]

    def __enter__(self) -> float:
        self._provider.kill()
        return time.monotonic()

    def __exit__(self, *exc: object) -> None:
        self._provider.start()


@pytest.mark.parametrize("how", ["SIGSTOP", "SIGKILL"])
def test_provider_outage_is_unknown_then_recovers(stack: Stack, control_plane: ControlPlane,
                                                  ns: str, how: str) -> None:
    apply(control_plane, ns, manifest("steady"))
    vm, _ = wait_state(stack, ns, "steady", "Running", timeout=60)
    uid, node = vm["metadata"]["uid"], vm["status"]["nodeName"]
    disks_before = vm["status"].get("disks")
    seen: set[str] = set()
    outage: _Frozen | _Killed = (_Frozen(stack.providers[MEM].process) if how == "SIGSTOP"
                                else _Killed(stack))
    with outage as since:
        vm, took = wait_state(stack, ns, "steady", "Unknown", timeout=45, seen=seen)
        print(f"\nprovider {how}: VM Unknown after {took:.1f}s")
        ready = condition(vm, "Ready")
        assert (ready["status"], ready["reason"]) == ("Unknown", "ProviderUnavailable")
        assert f"provider {MEM} is not answering" in ready["message"]
        assert vm["status"]["nodeName"] == node and vm["status"].get("disks") == disks_before
        pod = vm_pod(stack, ns, vm)
        pod_ready = condition(pod, "Ready")
        assert (pod_ready["status"], pod_ready["reason"]) == ("False", "ProviderUnavailable")
        assert pod["status"]["phase"] == "Running", "an outage is not a power-off"
        node_ready = condition(stack.kubectl_json("get", "node", node), "Ready")
        assert (node_ready["status"], node_ready["reason"]) == ("Unknown", "ProviderUnavailable")
        assert warnings(stack, ns, "steady", "Unknown")
        time.sleep(3)
        vm = get_vm(stack, ns, "steady")
        seen.add(vm["status"]["state"])
        print(f"outage shown {time.monotonic() - since:.1f}s into it")
    vm, back = wait_state(stack, ns, "steady", "Running", timeout=60, seen=seen)
    print(f"provider back ({how}): VM Running again after {back:.1f}s")
    assert seen <= {"Running", "Unknown"}, f"the VM's state went through {seen}"
    assert condition(vm, "Ready")["status"] == "True"
    assert condition(vm_pod(stack, ns, vm), "Ready")["status"] == "True"
    assert power_state(stack, uid) == vm_pb.POWER_STATE_ON
    assert vm["status"]["nodeName"] == node


# -- vSphere: vCenter (vcsim) down while the provider answers ---------------------------------

@pytest.fixture(scope="module")
def vsim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VcSim]:
    s = VcSim(hosts=1, state_dir=tmp_path_factory.mktemp("vmstatus-vcsim")).start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def vstack(control_plane: ControlPlane, vsim: VcSim,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(control_plane, tmp_path_factory.mktemp("vmstatus-vs"), {VS: []},
              kinds={VS: "vsphere"}, vcsim=vsim)
    s.start()
    try:
        eventually(lambda: len(s.ready_nodes(VS)) == 1, what="the vcsim host's node Ready")
        yield s
    finally:
        s.stop()
        s.print_logs()


def vcenter_power(sim: VcSim, identity: str) -> list[str]:
    with sim.connect() as si:
        return [str(vm.runtime.powerState) for vm in vms_with_identity(si, identity)]


def test_vcenter_outage_is_unknown_then_recovers(vstack: Stack, vsim: VcSim,
                                                 control_plane: ControlPlane, ns: str) -> None:
    apply(control_plane, ns, manifest("vsteady", provider=VS))
    created = eventually(lambda: (vm := get_vm(vstack, ns, "vsteady")).get("status")
                         and vm["metadata"]["uid"], timeout=60, what="the VM's identity")
    report_guest_ip(vsim, created, "10.0.0.42")
    vm, _ = wait_state(vstack, ns, "vsteady", "Running", timeout=90)
    uid = vm["metadata"]["uid"]
    seen: set[str] = set()
    with _Frozen(vsim.process):
        vm, took = wait_state(vstack, ns, "vsteady", "Unknown", timeout=60, seen=seen)
        print(f"\nvcsim frozen: VM Unknown after {took:.1f}s")
        ready = condition(vm, "Ready")
        assert (ready["status"], ready["reason"]) == ("Unknown", "IaaSUnavailable"), ready
        assert f"provider {VS} answers, but its IaaS does not" in ready["message"]
        pod_ready = condition(vm_pod(vstack, ns, vm), "Ready")
        assert (pod_ready["status"], pod_ready["reason"]) == ("False", "IaaSUnavailable")
        time.sleep(3)
        seen.add(get_vm(vstack, ns, "vsteady")["status"]["state"])
    vm, back = wait_state(vstack, ns, "vsteady", "Running", timeout=90, seen=seen)
    print(f"vcsim thawed: VM Running again after {back:.1f}s")
    assert seen <= {"Running", "Unknown"}, f"the VM's state went through {seen}"
    assert vcenter_power(vsim, uid) == ["poweredOn"], "still one VM, still on, in vCenter"
    assert vm["status"]["addresses"] == ["10.0.0.42"]
