"""What the multi-tenancy tests share: the tenants (a namespace and a ServiceAccount with `edit`
there only), the victim's VM and Secrets, what the IaaS holds, what a tenant is told, and the
comparison of every attack made against an existing and a missing object."""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import yaml

from vmlet.provider.v1 import kubelet_endpoint_service_pb2 as kep
from vmlet.provider.v1 import kubelet_endpoint_service_pb2_grpc as kep_grpc
from vmlet.provider.v1 import pod_lifecycle_service_pb2 as lc
from vmlet.provider.v1 import pod_lifecycle_service_pb2_grpc as lc_grpc
from vmlet.provider.v1 import virtual_machine_service_pb2 as vm_pb
from vmlet.provider.v1 import virtual_machine_service_pb2_grpc as vm_grpc
from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.kubeconfig import write_kubeconfig
from vmlet_localenv.stack import Stack, eventually, report_guest_ip

PROVIDER = "mten"
VSPHERE = "mtvs"  # vSphere on vcsim, for the identity attack where it was found
REPO = Path(__file__).resolve().parents[2]
STORAGE_CLASS = f"vmlet-{PROVIDER}"
MISSING = "nosuchthing"  # a name that exists nowhere: the "does it exist?" control
#: Reasons that mean a pod is still on its way, not that vmlet has decided.
IN_PROGRESS = {"", "ContainerCreating", "PoweringOn"}


Obj = dict[str, Any]


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


@dataclass(frozen=True)
class Secrets:
    """The victim's Secrets: ``topsecret`` is used by nothing; ``own`` is its VMs' user data."""

    topsecret: str
    marker: bytes  # in every value of topsecret
    own: str
    own_marker: bytes


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
           tuple(status.get("addresses") or ()), meta.get("uid"))
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


def bare_pod(stack: Stack, name: str, *, annotations: dict[str, str] | None = None,
             labels: dict[str, str] | None = None, node: str | None = None,
             **spec: Any) -> Obj:
    pod = stack.vm_pod(name, PROVIDER, extra=spec)
    pod["metadata"]["annotations"] = annotations or {}
    pod["metadata"]["labels"] = labels or {}
    if node:
        pod["spec"]["nodeName"] = node
    return pod
