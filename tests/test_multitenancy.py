"""Two tenants on one vmlet, each holding `edit` in its own namespace only (issue 14).

Through the real apiserver, each tenant is a ServiceAccount bound to the built-in `edit`
ClusterRole and to `vmlet-edit` (k8s/base/user-rbac.yaml) in its namespace, and acts only with its
own token, through kubectl, as a user would. The attacker tries every way vmlet offers to name
something in the victim's namespace: Secret references with path traversal (VM spec, pod
annotations, env, volumes), the VM identity annotation, owner references and the VM's labels,
operation pods, Backup/Restore/Migration objects, a claim pre-bound to the victim's volume, and
logs/exec/port-forward (through the apiserver and straight at the kubelet port).

After each attack the test checks, in the IaaS (the memory provider's own API) and in Kubernetes,
that nothing crossed: the victim's VM is where it was, powered on, with the same pod, status,
snapshots and console history; no byte of the victim's Secrets reached anything the attacker owns;
and what the attacker is told does not depend on whether the victim's object exists (each attack
is made twice, against an existing and a missing object, and the answers compared).

The IaaS is the memory provider; the identity attack runs on vSphere on vcsim too, where it was
found. The facade's kubelet API serves from a network namespace (`vmlet_localenv.netns`) so the
apiserver can proxy exec to it, as in tests/test_kubelet_api.py.
"""

from __future__ import annotations

import http.client
import json
import re
import ssl
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from vmlet.provider.v1 import kubelet_endpoint_service_pb2 as kep
from vmlet.provider.v1 import kubelet_endpoint_service_pb2_grpc as kep_grpc
from vmlet.provider.v1 import pod_lifecycle_service_pb2 as lc
from vmlet.provider.v1 import pod_lifecycle_service_pb2_grpc as lc_grpc
from vmlet.provider.v1 import virtual_machine_service_pb2 as vm_pb
from vmlet.provider.v1 import virtual_machine_service_pb2_grpc as vm_grpc
from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.kubeconfig import write_kubeconfig
from vmlet_localenv.netns import Netns, namespaces
from vmlet_localenv.stack import (
    KUBELET_PORT,
    Stack,
    eventually,
    kubelet_api_args,
    report_guest_ip,
    vms_with_identity,
)
from vmlet_localenv.vcsim import VcSim

pytestmark = pytest.mark.controlplane

PROVIDER = "mten"
VSPHERE = "mtvs"  # vSphere on vcsim, for the identity attack where it was found
REPO = Path(__file__).resolve().parents[1]
STORAGE_CLASS = f"vmlet-{PROVIDER}"
MISSING = "nosuchthing"  # a name that exists nowhere: the "does it exist?" control
#: Reasons that mean a pod is still on its way, not that vmlet has decided.
IN_PROGRESS = {"", "ContainerCreating", "PoweringOn"}

Obj = dict[str, Any]


# -- tenants ---------------------------------------------------------------------------------------


@dataclass
class Tenant:
    """A namespace and a ServiceAccount in it with `edit` there and nowhere else."""

    cp: ControlPlane
    ns: str
    kubeconfig: Path

    def kubectl(self, *args: str, input: str | None = None,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """kubectl with this tenant's token only; a refusal is a result, not raised."""
        return subprocess.run(["kubectl", f"--kubeconfig={self.kubeconfig}", *args],
                              input=input, capture_output=True, text=True, timeout=timeout)

    def apply(self, *objs: Obj, ns: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.kubectl("apply", "-n", ns or self.ns, "-f", "-", input=json.dumps(
            {"apiVersion": "v1", "kind": "List", "items": list(objs)}))

    def create(self, obj: Obj, ns: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.kubectl("create", "-n", ns or self.ns, "-f", "-", input=json.dumps(obj))

    def get(self, *args: str, ns: str | None = None) -> Any:
        out = self.kubectl("get", "-n", ns or self.ns, *args, "-o", "json")
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def token(self) -> str:
        return str(yaml.safe_load(self.kubeconfig.read_text())["users"][0]["user"]["token"])


def make_tenant(cp: ControlPlane, prefix: str) -> Tenant:
    """A namespace, its ServiceAccount `tenant` bound to `edit` and `vmlet-edit` there, and a
    kubeconfig holding only that ServiceAccount's token, as an operator hands one out."""
    ns = f"{prefix}-{uuid.uuid4().hex[:6]}"
    cp.kubectl("create", "namespace", ns)
    cp.kubectl("create", "serviceaccount", "tenant", "-n", ns)
    for role in ("edit", "vmlet-edit"):
        cp.kubectl("create", "rolebinding", f"tenant-{role}", "-n", ns, f"--clusterrole={role}",
                   f"--serviceaccount={ns}:tenant")
    token = cp.kubectl("create", "token", "tenant", "-n", ns, "--duration=2h").stdout.strip()
    kubeconfig = write_kubeconfig(cp.dir / f"tenant-{ns}.kubeconfig", server=cp.server,
                                  ca=cp.pki.ca.cert, token=token, user=f"{ns}-tenant")
    tenant = Tenant(cp, ns, kubeconfig)
    # `edit` gains vmlet's resources by aggregation (the controller-manager's work): wait for it.
    eventually(lambda: tenant.kubectl("auth", "can-i", "create", "virtualmachines.vmlet.io",
                                      "-n", ns).stdout.strip() == "yes",
               what=f"{ns}'s tenant may create VirtualMachines")
    return tenant


# -- the stack -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def test_host() -> Iterator[Netns]:
    with namespaces("vmlet-mten") as (host,):
        yield host


@pytest.fixture(scope="module")
def stack(control_plane: ControlPlane, test_host: Netns, vcsim: VcSim,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(control_plane, tmp_path_factory.mktemp("tenancy"),
              {PROVIDER: ["--nodes", "2"], VSPHERE: []}, kinds={VSPHERE: "vsphere"},
              vcsim=vcsim,
              facade_args=kubelet_api_args(control_plane, test_host, KUBELET_PORT)).start()
    control_plane.kubectl("apply", "-f", str(REPO / "k8s/base/user-rbac.yaml"))
    control_plane.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": STORAGE_CLASS}, "provisioner": f"{PROVIDER}.vmlet.io",
        "reclaimPolicy": "Delete", "volumeBindingMode": "Immediate"}))
    try:
        eventually(lambda: len(s.ready_nodes(PROVIDER)) == 2
                   and len(s.ready_nodes(VSPHERE)) == vcsim.hosts, what="nodes Ready")
        s.wait_kubelet_api(test_host.ip, KUBELET_PORT)
        yield s
    except BaseException:
        s.print_logs(80)
        raise
    finally:
        s.stop()


@pytest.fixture(scope="module")
def victim(stack: Stack, control_plane: ControlPlane) -> Tenant:
    return make_tenant(control_plane, "victim")


@pytest.fixture(scope="module")
def attacker(stack: Stack, control_plane: ControlPlane) -> Tenant:
    return make_tenant(control_plane, "attacker")


@pytest.fixture(autouse=True)
def sweep(control_plane: ControlPlane, request: pytest.FixtureRequest) -> Iterator[None]:
    """After each attack, the attacker's pods go (the next attack starts from a clean slate)."""
    yield
    if "attacker" in request.fixturenames:
        ns = request.getfixturevalue("attacker").ns
        control_plane.kubectl("delete", "pods", "--all", "-n", ns, "--wait=false", check=False)


@dataclass(frozen=True)
class Secrets:
    """The victim's Secrets: ``topsecret`` is used by nothing; ``own`` is its VMs' user data."""

    topsecret: str
    marker: bytes  # in every value of topsecret
    own: str
    own_marker: bytes


@pytest.fixture(scope="module")
def secrets(victim: Tenant) -> Secrets:
    marker = f"TOPSECRET-{uuid.uuid4().hex}"
    own_marker = f"VICTIM-OWN-{uuid.uuid4().hex}"
    out = victim.apply(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "topsecret"},
         "stringData": {"userdata": f"#cloud-config\n# {marker}\n", "password": marker,
                        "username": marker, "ssh-privatekey": marker, "key": marker}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "own-userdata"},
         "stringData": {"userdata": f"#cloud-config\n# {own_marker}\n"}})
    assert out.returncode == 0, out.stderr
    return Secrets("topsecret", marker.encode(), "own-userdata", own_marker.encode())


# -- the IaaS, as the provider has it --------------------------------------------------------------


def machine(stack: Stack, identity: str,
            provider: str = PROVIDER) -> vm_pb.VirtualMachine | None:
    with stack.channel(provider) as channel:
        try:
            return vm_grpc.VirtualMachineServiceStub(channel).GetVirtualMachine(
                vm_pb.GetVirtualMachineRequest(identity=identity), timeout=10).virtual_machine
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise


def snapshots(stack: Stack, identity: str, provider: str = PROVIDER) -> list[str]:
    with stack.channel(provider) as channel:
        return sorted(s.id for s in vm_grpc.VirtualMachineServiceStub(channel).ListSnapshots(
            vm_pb.ListSnapshotsRequest(identity=identity), timeout=10).snapshots)


def iaas_pods(stack: Stack, provider: str = PROVIDER) -> list[Any]:
    """Every pod the IaaS holds, with what the facade resolved into it (user data, env, files)."""
    with stack.channel(provider) as channel:
        return list(lc_grpc.PodLifecycleServiceStub(channel).GetPods(
            lc.GetPodsRequest(), timeout=10).pods)


def console(stack: Stack, ns: str, pod: str, provider: str = PROVIDER) -> list[str]:
    """The VM's console history as the IaaS keeps it (power, snapshots, reverts, moves)."""
    with stack.channel(provider) as channel:
        stream = kep_grpc.KubeletEndpointServiceStub(channel).GetContainerLogs(
            kep.GetContainerLogsRequest(namespace=ns, pod_name=pod, container_name="vm"),
            timeout=10)
        try:
            return [r.line.decode(errors="replace").rstrip("\n") for r in stream]
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return []
            raise


def leaked_into_iaas(stack: Stack, marker: bytes, owner_ns: str = "", prefix: str = ""
                     ) -> list[str]:
    """The IaaS pods outside ``owner_ns`` (named ``prefix``...) that carry ``marker`` anywhere
    (user data, env, files, the pod's JSON)."""
    return [f"{p.pod.ref.namespace}/{p.pod.ref.name}" for p in iaas_pods(stack)
            if p.pod.ref.namespace != owner_ns and p.pod.ref.name.startswith(prefix)
            and marker in p.pod.SerializeToString()]


def disk(stack: Stack, handle: str) -> vm_pb.Disk:
    with stack.channel(PROVIDER) as channel:
        return vm_grpc.VirtualMachineServiceStub(channel).GetDisk(
            vm_pb.GetDiskRequest(handle=handle), timeout=10).disk


# -- the victim's VM -------------------------------------------------------------------------------


@dataclass(frozen=True)
class VictimVM:
    """A running VM of the victim and everything that must not change while it is attacked."""

    name: str
    uid: str
    pod: str
    node: str
    addresses: tuple[str, ...]
    provider_id: str
    snapshots: tuple[str, ...]
    history: int  # lines of console history when recorded
    provider: str = PROVIDER

    def again(self, stack: Stack, victim: Tenant) -> VictimVM:
        """The same VM recorded anew (after the victim itself changed it)."""
        obj: Obj = victim.get("vm", self.name)
        status = obj["status"]
        return VictimVM(self.name, self.uid, status["podName"], status["nodeName"],
                        tuple(status.get("addresses") or ()), self.provider_id,
                        tuple(snapshots(stack, self.uid, self.provider)),
                        len(console(stack, victim.ns, status["podName"], self.provider)),
                        self.provider)


def vm_manifest(name: str, provider: str = PROVIDER, **spec: Any) -> Obj:
    return {"apiVersion": "vmlet.io/v1alpha1", "kind": "VirtualMachine",
            "metadata": {"name": name},
            "spec": {"provider": provider, "image": "debian-12", "cpu": 1, "memory": "1Gi",
                     **spec}}


def running_vm(t: Tenant, name: str, timeout: float = 60) -> Obj:
    def check() -> Obj | None:
        vm: Obj = t.get("vm", name)
        return vm if (vm.get("status") or {}).get("state") == "Running" else None
    return eventually(check, timeout=timeout, what=f"VirtualMachine {t.ns}/{name} Running")


def start_victim_vm(stack: Stack, victim: Tenant, secrets: Secrets, provider: str = PROVIDER,
                    **spec: Any) -> VictimVM:
    name = f"crown-{uuid.uuid4().hex[:5]}"
    out = victim.apply(vm_manifest(name, userData={"secretName": secrets.own},
                                   provider=provider, **spec))
    assert out.returncode == 0, out.stderr
    uid = str(victim.get("vm", name)["metadata"]["uid"])
    if provider == VSPHERE:
        assert stack.vcsim is not None
        report_guest_ip(stack.vcsim, uid, f"10.77.{uuid.uuid4().int % 200}.7")
    vm = running_vm(victim, name, timeout=120)
    status = vm["status"]
    iaas = machine(stack, uid, provider)
    assert iaas is not None and iaas.power_state == vm_pb.POWER_STATE_ON
    # The control: a reference in the VM's own namespace still reaches its VM.
    assert any(p.pod.identity == uid and secrets.own_marker in p.pod.user_data.encode()
               for p in iaas_pods(stack, provider)), "the victim's own user data is missing"
    return VictimVM(name, uid, status["podName"], status["nodeName"],
                    tuple(status.get("addresses") or ()), iaas.provider_id,
                    tuple(snapshots(stack, uid, provider)),
                    len(console(stack, victim.ns, status["podName"], provider)), provider)


@pytest.fixture
def crown(stack: Stack, victim: Tenant, secrets: Secrets) -> VictimVM:
    """A fresh running VM of the victim for each attack, so one attack's damage cannot hide or
    fake another's."""
    return start_victim_vm(stack, victim, secrets)


def untouched(stack: Stack, victim: Tenant, vm: VictimVM) -> list[str]:
    """What changed about ``vm`` since it was recorded (nothing, when the attack failed)."""
    changed = []
    iaas = machine(stack, vm.uid, vm.provider)
    if iaas is None:
        return [f"VM {vm.uid} is gone from the IaaS"]
    if iaas.power_state != vm_pb.POWER_STATE_ON:
        changed.append(f"power state {vm_pb.PowerState.Name(iaas.power_state)}")
    if iaas.node_name != vm.node:
        changed.append(f"moved from {vm.node} to {iaas.node_name}")
    if iaas.provider_id != vm.provider_id:
        changed.append(f"provider ID {vm.provider_id} became {iaas.provider_id}")
    if tuple(snapshots(stack, vm.uid, vm.provider)) != vm.snapshots:
        changed.append(f"snapshots {vm.snapshots} became "
                       f"{snapshots(stack, vm.uid, vm.provider)}")
    owners = [p for p in iaas_pods(stack, vm.provider) if p.pod.identity == vm.uid]
    if [(p.pod.ref.namespace, p.pod.ref.name) for p in owners] != [(victim.ns, vm.pod)]:
        changed.append("the IaaS serves it to " + ", ".join(
            f"{p.pod.ref.namespace}/{p.pod.ref.name}" for p in owners))
    history = console(stack, victim.ns, vm.pod, vm.provider)
    for line in history[vm.history:]:
        if re.search(r"revert|snapshot .* taken|serving pod|moved|powered off|kept|destroyed",
                     line, re.I):
            changed.append(f"console: {line}")
    obj: Obj = victim.get("vm", vm.name)
    status, meta = obj.get("status") or {}, obj["metadata"]
    now = (status.get("state"), status.get("podName"), status.get("nodeName"),
           tuple(status.get("addresses") or ()), status.get("identity"))
    if now != ("Running", vm.pod, vm.node, vm.addresses, vm.uid):
        changed.append(f"status {now}")
    if any(k.startswith("vmlet.io/migration") for k in meta.get("annotations") or {}):
        changed.append(f"annotations {meta.get('annotations')}")
    pods = victim.get("pods", "-l", f"vmlet.io/vm-uid={vm.uid}")["items"]
    if [p["metadata"]["name"] for p in pods] != [vm.pod]:
        changed.append(f"pods {[p['metadata']['name'] for p in pods]}")
    return changed


def stays_untouched(stack: Stack, victim: Tenant, vm: VictimVM, seconds: float = 6.0) -> None:
    """``vm`` stays exactly as recorded for ``seconds`` (attacks act asynchronously)."""
    deadline = time.monotonic() + seconds
    while True:
        changed = untouched(stack, victim, vm)
        assert not changed, f"the victim's VM {victim.ns}/{vm.name} was touched: {changed}"
        if time.monotonic() > deadline:
            return
        time.sleep(1.0)


# -- what the attacker is told ---------------------------------------------------------------------


def normalised(text: str, *names: str) -> str:
    """``text`` with what legitimately differs between two runs of one attack replaced."""
    text = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "<uid>", text)
    for name in sorted(names, key=len, reverse=True):
        text = re.sub(re.escape(name) + r"(-[a-z0-9]{5})?", "<name>", text)
    text = re.sub(rf"{PROVIDER}-\d+", "<node>", text)
    text = re.sub(r"\d+\.\d+\.\d+\.\d+", "<ip>", text)
    return re.sub(r"\b\d+(\.\d+)?(ms|s|m)\b", "<t>", text)


def warnings_about(t: Tenant, prefix: str) -> list[Obj]:
    return [e for e in t.get("events")["items"] if e.get("type") == "Warning"
            and str(e["involvedObject"].get("name", "")).startswith(prefix)]


def told(t: Tenant, prefix: str, obj: Obj | None, *names: str) -> set[str]:
    """What ``t`` can read about object ``prefix`` (status and Warning Events), normalised."""
    out: set[str] = set()
    for event in warnings_about(t, prefix):
        out.add(normalised(f"event {event['reason']}: {event.get('message', '')}", prefix,
                           *names))
    status = (obj or {}).get("status") or {}
    for key in ("phase", "state", "reason", "message"):
        if status.get(key):
            out.add(normalised(f"{key}: {status[key]}", prefix, *names))
    for cond in status.get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") not in ("PodScheduled",):
            out.add(normalised(f"condition {cond['type']}: {cond.get('reason', '')} "
                               f"{cond.get('message', '')}", prefix, *names))
    for cs in status.get("containerStatuses") or []:
        for state, detail in (cs.get("state") or {}).items():
            out.add(normalised(f"{state}: {detail.get('reason', '')} "
                               f"{detail.get('message', '')}", prefix, *names))
    return out


def pod_decided(pod: Obj) -> bool:
    """vmlet has done what it will with ``pod``: it runs, ended, or waits for a reason."""
    status = pod.get("status") or {}
    if status.get("phase") in ("Running", "Succeeded", "Failed"):
        return True
    return any(str((cs.get("state") or {}).get("waiting", {}).get("reason", "")) not in
               IN_PROGRESS for cs in status.get("containerStatuses") or [])


def vm_decided(vm: Obj) -> bool:
    status = vm.get("status") or {}
    if status.get("state") in ("Running", "Failed"):
        return True
    return any(c.get("type") == "Failure" and c.get("status") == "True"
               for c in status.get("conditions") or [])


def wait_decided(list_objs: Callable[[], dict[str, Obj]], names: list[str],
                 decided: Callable[[Obj], bool], timeout: float = 60) -> dict[str, Obj]:
    """Wait until vmlet has decided about each of ``names``; return those it has not (with
    what they show), for the caller to report after its other checks."""
    deadline = time.monotonic() + timeout
    while True:
        objs = list_objs()
        pending = {n: objs.get(n, {}) for n in names if not decided(objs.get(n, {}))}
        if not pending or time.monotonic() > deadline:
            return pending
        time.sleep(1.0)


def undecided_report(pending: dict[str, Obj]) -> list[str]:
    return [f"{name}: no decision, status {json.dumps(obj.get('status') or {})[:400]}"
            for name, obj in pending.items()]


def traversals(victim_ns: str, secret: str) -> list[str]:
    """Secret references that leave the namespace if pasted into an API path."""
    return [
        f"../../{victim_ns}/secrets/{secret}",
        f"./../../{victim_ns}/secrets/{secret}",
        f"x/../../../{victim_ns}/secrets/{secret}",
        f"../../../../../api/v1/namespaces/{victim_ns}/secrets/{secret}",
        f"..%2F..%2F{victim_ns}%2Fsecrets%2F{secret}",
        f"%2e%2e/%2e%2e/{victim_ns}/secrets/{secret}",
        f"../../{victim_ns}/secrets/{secret}?pretty=true",
        f"../../{victim_ns}/secrets/{secret}#",
        f"{victim_ns}/{secret}",
    ]


def attempts(victim_ns: str, secret: str) -> list[tuple[str, str, str]]:
    """(label, reference to the existing Secret, the same reference to a missing one)."""
    return [(f"t{i}", ref, miss) for i, (ref, miss) in enumerate(zip(
        traversals(victim_ns, secret), traversals(victim_ns, MISSING), strict=True))]


def compare(results: dict[str, tuple[set[str], set[str]]]) -> list[str]:
    """The attempts whose answer told an existing object from a missing one."""
    return [f"{label}: existing -> {sorted(a)}; missing -> {sorted(b)}"
            for label, (a, b) in results.items() if a != b]


# -- Secrets ---------------------------------------------------------------------------------------


def test_user_data_secret_name_stays_in_the_namespace(stack: Stack, victim: Tenant,
                                                     attacker: Tenant, secrets: Secrets,
                                                     crown: VictimVM) -> None:
    """spec.userData.secretName with path traversal: refused or failed, never the victim's
    bytes in the attacker's VM, and the same answer whether the Secret exists or not."""
    made: dict[str, tuple[str, str]] = {}
    refused: dict[str, tuple[str, str]] = {}
    for label, ref, miss in attempts(victim.ns, secrets.topsecret):
        names = (f"ud{label}-a", f"ud{label}-b")
        answers = []
        for name, secret in zip(names, (ref, miss), strict=True):
            out = attacker.apply(vm_manifest(name, userData={"secretName": secret}))
            answers.append(normalised(out.stderr, name, victim.ns, secrets.topsecret, MISSING))
            if out.returncode == 0:
                made[name] = (label, secret)
        refused[label] = (answers[0], answers[1])
    admission_leaks = [f"{k}: {a!r} vs {b!r}" for k, (a, b) in refused.items() if a != b]

    pending = wait_decided(lambda: {v["metadata"]["name"]: v
                                    for v in attacker.get("vm")["items"]},
                           list(made), vm_decided, timeout=60)
    results: dict[str, tuple[set[str], set[str]]] = {}
    for label, _, _ in attempts(victim.ns, secrets.topsecret):
        pair = []
        for suffix in ("a", "b"):
            name = f"ud{label}-{suffix}"
            obj = attacker.get("vm", name) if name in made else None
            pair.append(told(attacker, name, obj, victim.ns, secrets.topsecret, MISSING)
                        if obj else {"refused at admission"})
        results[label] = (pair[0], pair[1])
    running = [n for n in made if (attacker.get("vm", n).get("status") or {})
               .get("state") == "Running"]
    assert not leaked_into_iaas(stack, secrets.marker, prefix="ud"), \
        f"the victim's Secret reached the IaaS (VMs that ran: {running}; " \
        f"{undecided_report(pending)})"
    assert not leaked_into_iaas(stack, secrets.own_marker, owner_ns=victim.ns)
    assert not admission_leaks, admission_leaks
    assert not compare(results), compare(results)
    for event in warnings_about(attacker, "ud"):
        assert secrets.marker.decode() not in json.dumps(event)
    stays_untouched(stack, victim, crown, seconds=2)
    assert not pending, undecided_report(pending)


def bare_pod(stack: Stack, name: str, *, annotations: dict[str, str] | None = None,
             labels: dict[str, str] | None = None, node: str | None = None,
             **spec: Any) -> Obj:
    pod = stack.vm_pod(name, PROVIDER, extra=spec)
    pod["metadata"]["annotations"] = annotations or {}
    pod["metadata"]["labels"] = labels or {}
    if node:
        pod["spec"]["nodeName"] = node
    return pod


def run_pod_attacks(stack: Stack, attacker: Tenant, pods: dict[str, Obj], *names: str
                    ) -> tuple[dict[str, set[str]], dict[str, str], dict[str, Obj]]:
    """Create ``pods`` as the attacker; wait until vmlet decided each; return what the attacker
    was told about each, how the apiserver answered the ones it refused, and the pods vmlet
    left undecided."""
    refused: dict[str, str] = {}
    for name, pod in pods.items():
        out = attacker.create(pod)
        if out.returncode != 0:
            refused[name] = normalised(out.stderr, name, *names)

    pending = wait_decided(lambda: {p["metadata"]["name"]: p
                                    for p in attacker.get("pods")["items"]},
                           [n for n in pods if n not in refused], pod_decided)
    items = {p["metadata"]["name"]: p for p in attacker.get("pods")["items"]}
    return ({n: told(attacker, n, items[n], *names) for n in pods if n not in refused},
            refused, pending)


def pair_up(told_: dict[str, set[str]], refused: dict[str, str],
            labels: list[str], prefix: str) -> dict[str, tuple[set[str], set[str]]]:
    def answer(name: str) -> set[str]:
        return told_.get(name) or {f"refused: {refused.get(name, '')}"}
    return {label: (answer(f"{prefix}{label}-a"), answer(f"{prefix}{label}-b"))
            for label in labels}


def test_user_data_annotation_stays_in_the_namespace(stack: Stack, victim: Tenant,
                                                    attacker: Tenant, secrets: Secrets,
                                                    crown: VictimVM) -> None:
    """A bare pod's vmlet.io/user-data-secret annotation with path traversal."""
    pods: dict[str, Obj] = {}
    labels = []
    for label, ref, miss in attempts(victim.ns, secrets.topsecret):
        labels.append(label)
        for suffix, secret in (("a", ref), ("b", miss)):
            name = f"ua{label}-{suffix}"
            pods[name] = bare_pod(stack, name, annotations={
                "vmlet.io/user-data-secret": secret, "vmlet.io/user-data-key": "userdata"})
    told_, refused, pending = run_pod_attacks(stack, attacker, pods, victim.ns,
                                              secrets.topsecret, MISSING)
    assert not leaked_into_iaas(stack, secrets.marker, prefix="ua"), \
        f"the victim's Secret reached the IaaS ({undecided_report(pending)})"
    results = pair_up(told_, refused, labels, "ua")
    assert not compare(results), compare(results)
    stays_untouched(stack, victim, crown, seconds=2)
    assert not pending, undecided_report(pending)


def test_pod_secret_references_stay_in_the_namespace(stack: Stack, victim: Tenant,
                                                    attacker: Tenant, secrets: Secrets) -> None:
    """The same traversal in a pod's own Secret references (env, envFrom, volumes), which the
    facade resolves itself: refused by the apiserver or resolved in the pod's namespace only."""
    pods: dict[str, Obj] = {}
    labels = []
    for label, ref, miss in attempts(victim.ns, secrets.topsecret)[:4]:
        for kind in ("env", "envfrom", "vol"):
            labels.append(f"{kind}{label}")
            for suffix, secret in (("a", ref), ("b", miss)):
                name = f"ps{kind}{label}-{suffix}"
                pod = bare_pod(stack, name)
                container = pod["spec"]["containers"][0]
                if kind == "env":
                    container["env"] = [{"name": "STOLEN", "valueFrom": {"secretKeyRef": {
                        "name": secret, "key": "password"}}}]
                elif kind == "envfrom":
                    container["envFrom"] = [{"secretRef": {"name": secret}}]
                else:
                    pod["spec"]["volumes"] = [{"name": "s", "secret": {"secretName": secret}}]
                pods[name] = pod
    told_, refused, pending = run_pod_attacks(stack, attacker, pods, victim.ns,
                                              secrets.topsecret, MISSING)
    assert not leaked_into_iaas(stack, secrets.marker, prefix="ps"), \
        f"the victim's Secret reached the IaaS ({undecided_report(pending)})"
    results = pair_up(told_, refused, labels, "ps")
    assert not compare(results), compare(results)
    assert not pending, undecided_report(pending)


def exec_answer(t: Tenant, pod: str) -> tuple[int, str, str]:
    out = t.kubectl("exec", "-n", t.ns, pod, "--", "echo", "in")
    return out.returncode, out.stdout, out.stderr


def test_ssh_secret_annotation_stays_in_the_namespace(stack: Stack, victim: Tenant,
                                                     attacker: Tenant, secrets: Secrets) -> None:
    """A pod's vmlet.io/ssh-secret (read at exec time) with path traversal: exec into one's own
    pod answers the same whether the victim's Secret exists or not, and never with its bytes."""
    pods: dict[str, Obj] = {}
    labels = []
    for label, ref, miss in attempts(victim.ns, secrets.topsecret):
        labels.append(label)
        for suffix, secret in (("a", ref), ("b", miss)):
            name = f"ssh{label}-{suffix}"
            pods[name] = bare_pod(stack, name, annotations={"vmlet.io/ssh-secret": secret})
    _, refused, pending = run_pod_attacks(stack, attacker, pods, victim.ns, secrets.topsecret,
                                          MISSING)
    assert not pending, undecided_report(pending)  # exec needs them Running
    results: dict[str, tuple[set[str], set[str]]] = {}
    names = (victim.ns, secrets.topsecret, MISSING)
    for label in labels:
        pair = []
        for suffix in ("a", "b"):
            name = f"ssh{label}-{suffix}"
            if name in refused:
                pair.append({f"refused: {refused[name]}"})
                continue
            code, out, err = exec_answer(attacker, name)
            assert secrets.marker.decode() not in out + err
            pair.append({f"exit {code}", normalised(out, name, *names),
                         normalised(err, name, *names)})
        results[label] = (pair[0], pair[1])
    assert not compare(results), compare(results)


def test_ssh_secret_name_of_a_vm_stays_in_the_namespace(stack: Stack, victim: Tenant,
                                                       attacker: Tenant,
                                                       secrets: Secrets) -> None:
    """spec.access.sshSecretName with path traversal: refused, or exec answers alike."""
    results: dict[str, tuple[set[str], set[str]]] = {}
    names = (victim.ns, secrets.topsecret, MISSING)
    made = []
    chosen = attempts(victim.ns, secrets.topsecret)[:3]
    for label, ref, miss in chosen:
        for suffix, secret in (("a", ref), ("b", miss)):
            name = f"sshvm{label}-{suffix}"
            out = attacker.apply(vm_manifest(name, access={"sshSecretName": secret}))
            if out.returncode == 0:
                made.append(name)
            else:
                results.setdefault(label, (set(), set()))[0 if suffix == "a" else 1].add(
                    normalised(out.stderr, name, *names))
    for name in made:
        running_vm(attacker, name, timeout=90)
    for label, _, _ in chosen:
        for index, suffix in enumerate(("a", "b")):
            name = f"sshvm{label}-{suffix}"
            if name not in made:
                continue
            pod = attacker.get("vm", name)["status"]["podName"]
            code, said, err = exec_answer(attacker, pod)
            assert secrets.marker.decode() not in said + err
            results.setdefault(label, (set(), set()))[index].update(
                {f"exit {code}", normalised(said, pod, name, *names),
                 normalised(err, pod, name, *names)})
    assert not compare(results), compare(results)


# -- identity, ownership and labels ----------------------------------------------------------------


def other_node(stack: Stack, node: str, provider: str = PROVIDER) -> str:
    return next(n for n in stack.ready_nodes(provider) if n != node)


def in_vcenter(stack: Stack, identity: str) -> list[tuple[str, str]]:
    """(host, power state) of every vCenter VM that carries ``identity``."""
    assert stack.vcsim is not None
    with stack.vcsim.connect() as si:
        return [(vm.runtime.host.name, str(vm.runtime.powerState))
                for vm in vms_with_identity(si, identity)]


@pytest.mark.parametrize("provider", [PROVIDER, VSPHERE])
def test_identity_annotation_cannot_take_over_a_vm(stack: Stack, victim: Tenant,
                                                  attacker: Tenant, secrets: Secrets,
                                                  provider: str) -> None:
    """A bare pod carrying vmlet.io/identity = the victim VM's UID, on another host: the
    victim's VM does not move, change hands or power off, and deleting the attacker's pod does
    not destroy it (memory provider, and vSphere on vcsim where it was found)."""
    crown = start_victim_vm(stack, victim, secrets, provider=provider)
    before = in_vcenter(stack, crown.uid) if provider == VSPHERE else []
    squatter = stack.vm_pod("squatter", provider)
    squatter["metadata"]["annotations"] = {"vmlet.io/identity": crown.uid,
                                           "vmlet.io/keep-on-delete": "false"}
    squatter["spec"]["nodeName"] = other_node(stack, crown.node, provider)
    out = attacker.create(squatter)
    assert out.returncode == 0, out.stderr
    eventually(lambda: pod_decided(attacker.get("pod", "squatter")), timeout=90,
               what="the squatter pod decided")
    stays_untouched(stack, victim, crown)
    if provider == VSPHERE:
        assert in_vcenter(stack, crown.uid) == before == [(before[0][0], "poweredOn")]
    squat = attacker.get("pod", "squatter")
    assert squat["status"].get("phase") != "Running" or \
        machine(stack, squat["metadata"]["uid"], provider) is not None, \
        "a running squatter must run a VM of its own identity"
    assert attacker.kubectl("delete", "pod", "squatter", "-n", attacker.ns,
                            "--timeout=90s").returncode == 0
    stays_untouched(stack, victim, crown)
    if provider == VSPHERE:
        assert in_vcenter(stack, crown.uid) == before, "deleting the squatter touched the VM"


def test_owner_reference_to_another_namespace_is_no_identity(stack: Stack, victim: Tenant,
                                                            attacker: Tenant,
                                                            crown: VictimVM) -> None:
    """A pod that claims the victim's VirtualMachine as its owner (and its labels and identity)
    from the attacker's namespace gets no part of the victim's VM."""
    fake = bare_pod(stack, "changeling", node=other_node(stack, crown.node),
                    annotations={"vmlet.io/identity": crown.uid},
                    labels={"vmlet.io/vm": crown.name, "vmlet.io/vm-uid": crown.uid})
    fake["metadata"]["ownerReferences"] = [{
        "apiVersion": "vmlet.io/v1alpha1", "kind": "VirtualMachine", "name": crown.name,
        "uid": crown.uid, "controller": True}]
    out = attacker.create(fake)
    assert out.returncode == 0, out.stderr
    time.sleep(3)
    stays_untouched(stack, victim, crown)
    attacker.kubectl("delete", "pod", "changeling", "-n", attacker.ns, "--ignore-not-found",
                     "--timeout=60s")
    stays_untouched(stack, victim, crown, seconds=3)


def test_vm_labels_in_another_namespace_do_not_count(stack: Stack, victim: Tenant,
                                                    attacker: Tenant, secrets: Secrets) -> None:
    """Pods of the attacker labelled vmlet.io/vm-uid with the victim VM's UID neither stop the
    victim's VM from starting nor replace its pod, and vmlet leaves them alone."""
    vm = start_victim_vm(stack, victim, secrets)
    assert victim.kubectl("patch", "vm", vm.name, "-n", victim.ns, "--type=merge",
                          "-p", '{"spec":{"replicas":0}}').returncode == 0
    eventually(lambda: (victim.get("vm", vm.name).get("status") or {}).get("state")
               == "Stopped", what="the victim's VM Stopped")
    decoy: Obj = {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": "decoy", "labels": {"vmlet.io/vm-uid": vm.uid, "vmlet.io/vm": vm.name}},
        "spec": {"nodeSelector": {"vmlet.io/nowhere": "true"},
                 "containers": [{"name": "vm", "image": "debian-12"}]}}
    out = attacker.create(decoy)
    assert out.returncode == 0, out.stderr
    assert victim.kubectl("patch", "vm", vm.name, "-n", victim.ns, "--type=merge",
                          "-p", '{"spec":{"replicas":1}}').returncode == 0
    started = running_vm(victim, vm.name, timeout=60)
    assert started["status"]["podName"] != "decoy"
    assert machine(stack, vm.uid) is not None
    again = vm.again(stack, victim)
    decoy["metadata"]["name"] = "decoy2"
    out = attacker.create(decoy)
    assert out.returncode == 0, out.stderr
    stays_untouched(stack, victim, again)
    left = {p["metadata"]["name"] for p in attacker.get("pods")["items"]
            if not p["metadata"].get("deletionTimestamp")}
    assert {"decoy", "decoy2"} <= left, "vmlet deleted the attacker's pods as the victim's"


def test_operation_pod_cannot_target_another_namespace(stack: Stack, victim: Tenant,
                                                      attacker: Tenant,
                                                      crown: VictimVM) -> None:
    """A backup operation pod naming the victim VM's identity (vmlet.io/target-identity) on the
    victim's host makes no snapshot of it."""
    pod = bare_pod(stack, "snatch", node=crown.node, annotations={
        "vmlet.io/operation": "backup", "vmlet.io/target-identity": crown.uid,
        "vmlet.io/snapshot-name": "stolen"}, restartPolicy="Never")
    out = attacker.create(pod)
    if out.returncode == 0:
        eventually(lambda: pod_decided(attacker.get("pod", "snatch")), timeout=60,
                   what="the operation pod decided")
        ended = attacker.get("pod", "snatch")["status"]
        assert ended.get("phase") != "Succeeded", \
            f"the attacker's operation pod snapshotted the victim's VM: {ended}"
    stays_untouched(stack, victim, crown)


# -- backups, restores, migrations -----------------------------------------------------------------


def ref_forms(victim_ns: str, name: str) -> list[str]:
    return [name, f"../{victim_ns}/{name}", f"{victim_ns}/{name}",
            f"../../namespaces/{victim_ns}/virtualmachines/{name}"]


def run_operation_attacks(attacker: Tenant, kind: str, field: str, victim_ns: str,
                          target: str) -> dict[str, tuple[set[str], set[str]]]:
    """Create ``kind`` objects whose ``field`` names ``target`` (and a missing object) in each
    form; wait for vmlet's verdict; return what the attacker was told, per form."""
    plural = {"VirtualMachineBackup": "vmbackup", "VirtualMachineRestore": "vmrestore",
              "VirtualMachineMigration": "vmmigration"}[kind]
    made = []
    results: dict[str, tuple[set[str], set[str]]] = {}
    forms = list(zip(ref_forms(victim_ns, target), ref_forms(victim_ns, MISSING), strict=True))
    for i, refs in enumerate(forms):
        for index, ref in enumerate(refs):
            name = f"{plural}{i}-{'ab'[index]}"
            out = attacker.create({"apiVersion": "vmlet.io/v1alpha1", "kind": kind,
                                   "metadata": {"name": name}, "spec": {field: ref}})
            if out.returncode == 0:
                made.append(name)
            else:
                results.setdefault(f"f{i}", (set(), set()))[index].add(
                    normalised(out.stderr, name, victim_ns, target, MISSING))

    def decided(name: str) -> bool:
        state = (attacker.get(plural, name).get("status") or {}).get("state")
        return state in ("Failed", "Succeeded", "Pending")
    eventually(lambda: all(decided(n) for n in made), timeout=60,
               what=f"every {kind} decided")
    time.sleep(2)
    for name in made:
        i, index = int(name[len(plural):].split("-")[0]), "ab".index(name[-1])
        obj = attacker.get(plural, name)
        assert (obj.get("status") or {}).get("state") != "Succeeded", \
            f"{kind} {name} naming {victim_ns}'s {target} succeeded"
        results.setdefault(f"f{i}", (set(), set()))[index].update(
            told(attacker, name, obj, victim_ns, target, MISSING))
    return results


def test_backup_cannot_name_another_namespaces_vm(stack: Stack, victim: Tenant,
                                                 attacker: Tenant, crown: VictimVM) -> None:
    results = run_operation_attacks(attacker, "VirtualMachineBackup", "vmName", victim.ns,
                                    crown.name)
    assert not victim.get("jobs")["items"], "a Job ran in the victim's namespace"
    stays_untouched(stack, victim, crown)
    assert not compare(results), compare(results)


def test_migration_cannot_name_another_namespaces_vm(stack: Stack, victim: Tenant,
                                                    attacker: Tenant, crown: VictimVM) -> None:
    results = run_operation_attacks(attacker, "VirtualMachineMigration", "vmName", victim.ns,
                                    crown.name)
    stays_untouched(stack, victim, crown)
    assert not compare(results), compare(results)


def test_restore_cannot_name_another_namespaces_backup(stack: Stack, victim: Tenant,
                                                      attacker: Tenant,
                                                      crown: VictimVM) -> None:
    """The victim takes a backup; the attacker's Restores naming it revert nothing."""
    backup = f"nightly-{crown.name}"
    out = victim.create({"apiVersion": "vmlet.io/v1alpha1", "kind": "VirtualMachineBackup",
                         "metadata": {"name": backup}, "spec": {"vmName": crown.name}})
    assert out.returncode == 0, out.stderr
    eventually(lambda: (victim.get("vmbackup", backup).get("status") or {}).get("state")
               == "Succeeded", timeout=90, what="the victim's backup Succeeded")
    taken = crown.again(stack, victim)
    assert len(taken.snapshots) == 1
    results = run_operation_attacks(attacker, "VirtualMachineRestore", "backupName", victim.ns,
                                    backup)
    # A Backup of the attacker's own whose status would point at the victim's snapshot: a
    # tenant may not write status, so a Restore of it has nothing to revert.
    forged = f"forged-{crown.name}"
    assert attacker.create({"apiVersion": "vmlet.io/v1alpha1", "kind": "VirtualMachineBackup",
                            "metadata": {"name": forged},
                            "spec": {"vmName": MISSING}}).returncode == 0
    patch = attacker.kubectl("patch", "vmbackup", forged, "-n", attacker.ns,
                             "--subresource=status", "--type=merge", "-p", json.dumps(
                                 {"status": {"state": "Succeeded", "identity": crown.uid,
                                             "snapshotID": taken.snapshots[0]}}))
    assert patch.returncode != 0 and "forbidden" in patch.stderr.lower(), patch
    assert attacker.create({"apiVersion": "vmlet.io/v1alpha1", "kind": "VirtualMachineRestore",
                            "metadata": {"name": forged},
                            "spec": {"backupName": forged}}).returncode == 0
    eventually(lambda: (attacker.get("vmrestore", forged).get("status") or {}).get("state")
               == "Failed", what="the Restore of a forged Backup Failed")
    stays_untouched(stack, victim, taken)
    assert not compare(results), compare(results)


# -- claims and volumes ----------------------------------------------------------------------------


def test_claim_cannot_bind_another_namespaces_volume(stack: Stack, victim: Tenant,
                                                    attacker: Tenant) -> None:
    """A claim of the attacker pre-bound (spec.volumeName) to the victim's volume: the victim's
    disk is not attached to the attacker's VM and its volume stays the victim's."""
    out = victim.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                        "metadata": {"name": "vdata"},
                        "spec": {"storageClassName": STORAGE_CLASS,
                                 "accessModes": ["ReadWriteOnce"],
                                 "resources": {"requests": {"storage": "1Gi"}}}})
    assert out.returncode == 0, out.stderr
    claim = eventually(lambda: (c := victim.get("pvc", "vdata"))["status"].get("phase")
                       == "Bound" and c, what="the victim's claim Bound")
    pv_name = claim["spec"]["volumeName"]
    pv = json.loads(stack.cp.kubectl("get", "pv", pv_name, "-o", "json").stdout)
    handle = pv["spec"]["csi"]["volumeHandle"]
    grab = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "grab"},
            "spec": {"storageClassName": STORAGE_CLASS, "accessModes": ["ReadWriteOnce"],
                     "volumeName": pv_name, "resources": {"requests": {"storage": "1Gi"}}}}
    assert attacker.create(grab).returncode == 0
    # Straight to a node (a tenant may set nodeName): the scheduler would hold back a pod whose
    # claim is unbound, so this is the path on which only vmlet can say no.
    pod = bare_pod(stack, "thief", node=f"{PROVIDER}-0", volumes=[
        {"name": "d", "persistentVolumeClaim": {"claimName": "grab"}}])
    assert attacker.create(pod).returncode == 0
    pending = wait_decided(lambda: {"thief": attacker.get("pod", "thief")}, ["thief"],
                           pod_decided)
    time.sleep(3)
    holder = disk(stack, handle).attached_to
    holders = [f"{p.pod.ref.namespace}/{p.pod.ref.name}" for p in iaas_pods(stack)
               if holder and p.pod.identity == holder]
    assert not holder, f"the victim's disk is attached to VM {holder} ({holders})"
    for p in iaas_pods(stack):
        assert p.pod.ref.namespace != attacker.ns or all(
            v.disk.volume_handle != handle for v in p.pod.volumes), \
            f"the IaaS gave {p.pod.ref.name} the victim's disk"
    pv = json.loads(stack.cp.kubectl("get", "pv", pv_name, "-o", "json").stdout)
    assert pv["spec"]["claimRef"]["namespace"] == victim.ns
    assert pv["spec"]["claimRef"]["name"] == "vdata"
    assert not pending, undecided_report(pending)


# -- logs, exec, port-forward ----------------------------------------------------------------------


def test_logs_exec_and_port_forward_into_another_namespace_are_forbidden(
        stack: Stack, victim: Tenant, attacker: Tenant, crown: VictimVM) -> None:
    """Through the apiserver, as kubectl does: Forbidden, the same for a pod that does not
    exist; the victim's own tenant can (the control)."""
    assert victim.kubectl("logs", "-n", victim.ns, crown.pod).returncode == 0
    verbs: dict[str, Callable[[str], list[str]]] = {
        "logs": lambda pod: ["logs", "-n", victim.ns, pod],
        "exec": lambda pod: ["exec", "-n", victim.ns, pod, "--", "echo", "in"],
        "attach": lambda pod: ["attach", "-n", victim.ns, pod],
        "port-forward": lambda pod: ["port-forward", "-n", victim.ns, f"pod/{pod}", ":8080"],
        "node proxy": lambda pod: ["get", "--raw", f"/api/v1/nodes/{crown.node}/proxy/"
                                   f"containerLogs/{victim.ns}/{pod}/vm"],
        "pod proxy": lambda pod: ["get", "--raw",
                                  f"/api/v1/namespaces/{victim.ns}/pods/{pod}/proxy/"],
    }
    differ = []
    for verb, args in verbs.items():
        answers = []
        for pod in (crown.pod, MISSING):
            out = attacker.kubectl(*args(pod), timeout=30)
            assert out.returncode != 0, f"{verb} into {victim.ns}/{pod} was allowed"
            assert "forbidden" in out.stderr.lower(), f"{verb}: {out.stderr}"
            answers.append(normalised(out.stderr, pod, crown.pod, MISSING))
        if answers[0] != answers[1]:
            differ.append(f"{verb}: {answers}")
    assert not differ, differ
    stays_untouched(stack, victim, crown, seconds=1)


def kubelet_call(host: Netns, ca: Path, method: str, path: str,
                 token: str | None) -> tuple[int, bytes]:
    context = ssl.create_default_context(cafile=str(ca))
    conn = http.client.HTTPSConnection(host.ip, KUBELET_PORT, context=context, timeout=15)
    try:
        conn.request(method, path, headers={"Authorization": f"Bearer {token}"}
                     if token else {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_kubelet_port_refuses_a_tenant_token(stack: Stack, victim: Tenant, attacker: Tenant,
                                            test_host: Netns, crown: VictimVM) -> None:
    """Straight at the facade's kubelet port with the attacker's own token: 403 on every
    endpoint (a tenant has no nodes/proxy), 401 without a token, and no victim data."""
    ca = stack.cp.pki.ca.cert
    endpoints = [
        ("GET", f"/containerLogs/{victim.ns}/{crown.pod}/vm"),
        ("POST", f"/exec/{victim.ns}/{crown.pod}/vm?command=echo&command=in&output=1"),
        ("POST", f"/run/{victim.ns}/{crown.pod}/vm?cmd=echo+in"),
        ("POST", f"/attach/{victim.ns}/{crown.pod}/vm?output=1"),
        ("POST", f"/portForward/{victim.ns}/{crown.pod}"),
        ("GET", "/pods"), ("GET", "/runningpods/"), ("GET", "/stats/summary"),
        ("GET", "/logs/"), ("GET", "/metrics"),
    ]
    for method, path in endpoints:
        status, body = kubelet_call(test_host, ca, method, path, attacker.token())
        assert status == 403, f"{method} {path} with a tenant's token: {status} {body[:200]!r}"
        assert crown.uid.encode() not in body and crown.pod.encode() not in body
        status, body = kubelet_call(test_host, ca, method, path, None)
        assert status == 401, f"{method} {path} without credentials: {status} {body[:200]!r}"
    stays_untouched(stack, victim, crown, seconds=1)
