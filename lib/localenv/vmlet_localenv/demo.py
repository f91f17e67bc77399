"""`make demo`: vmlet's main job on an embedded default, printed step by step.

Starts the local environment in a temporary directory (by default the vSphere provider against
vcsim; `--iaas memory|openstack` for the others), shows a pod become a VM and a VirtualMachine go
through its lifecycle, each step also shown as the IaaS itself has it, then uses the VM as a
kubelet user would (kubectl logs, exec, top, the node's stats summary through the apiserver,
each command printed with its output), and tears it all down. vcsim runs no guests: on vsphere
the environment gives each running VM one (`vmlet_localenv.guests`), so exec runs in it; without
one (no root) the demo reports a guest IP itself, the way VMware Tools would (vcsim's
SET.guest.ipAddress), and says so. On openstack the VM gets a port on the env's first network,
whose fixed IP Neutron assigns; Nova's fake compute driver runs no guest to exec into.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from vmlet_api.names import (
    API_VERSION,
    PROVIDER_TAINT,
    STATE_RUNNING,
    STATE_STOPPED,
    VIRTUAL_MACHINE,
    VIRTUAL_MACHINE_MIGRATION,
)
from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.environment import DEFAULT_IAAS, IAAS_CHOICES, Environment
from vmlet_localenv.guests import SECRET_NAME, guest_hostname
from vmlet_localenv.stack import report_guest_ip, vms_with_identity
from vmlet_localenv.vcsim import VcSim

__all__ = ["main"]


def step(text: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {text}", flush=True)


_POD = {
    "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "demo-vm", "namespace": "default"},
    "spec": {
        "tolerations": [{"key": PROVIDER_TAINT, "operator": "Exists",
                         "effect": "NoSchedule"}],
        "containers": [{"name": "vm", "image": "IMAGE",
                        "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}],
    },
}
# vcsim's hosts have 2 cores and 4 GiB each: the sizes fit them, before and after the resize.
_SIZE = {"cpu": 1, "memory": "1Gi"}
_RESIZED = {"cpu": 2, "memory": "2Gi"}


def _in_vcenter(sim: VcSim, identity: str) -> str:
    """The VM of ``identity`` as vCenter (vcsim) itself has it, in one line."""
    with sim.connect() as si:
        found = vms_with_identity(si, identity)
        if not found:
            return f"no VM carries identity {identity}"
        vm = found[0]
        return (f"VM {vm.name} ({vm._moId}, instanceUuid {vm.config.instanceUuid}) on host "
                f"{vm.runtime.host.name}: {vm.runtime.powerState}, "
                f"{vm.config.hardware.numCPU} vCPU, {vm.config.hardware.memoryMB} MiB, "
                f"{len(found)} VM(s) with this identity")


def _report_guest_ip(sim: VcSim, identity: str, ip: str) -> None:
    """Plays VMware Tools: reports ``ip`` once the VM of ``identity`` is powered on."""
    try:
        report_guest_ip(sim, identity, ip)
    except AssertionError as err:
        raise SystemExit(str(err)) from None
    step(f"the VM is powered on; vcsim runs no guest, so the demo reports guest IP {ip} the way "
         "VMware Tools would (vcsim's SET.guest.ipAddress)")


def _in_nova(env: Any, identity: str) -> str:
    """The server of ``identity`` as Nova itself has it (the cloud admin's view), in one line."""
    import openstack  # the workspace's openstacksdk (the OpenStack provider's)

    conn = openstack.connect(**env.admin.as_cloud())
    try:
        resp = conn.compute.get("/servers/detail", params={"all_tenants": 1},
                                microversion="2.74")
        servers = [s for s in resp.json().get("servers", [])
                   if (s.get("metadata") or {}).get("vmlet-identity") == identity
                   and s["status"] != "DELETED"]
    finally:
        conn.close()
    if not servers:
        return f"no server carries identity {identity}"
    s = servers[0]
    flavor = s.get("flavor") or {}
    ips = [a["addr"] for nets in (s.get("addresses") or {}).values() for a in nets]
    return (f"server {s['name']} ({s['id']}) on host {s.get('OS-EXT-SRV-ATTR:host')}: "
            f"{s['status']}, flavor {flavor.get('original_name')} ({flavor.get('vcpus')} vCPU, "
            f"{flavor.get('ram')} MiB), IPs {ips or 'none'}, {len(servers)} server(s) with this "
            "identity")


@dataclass
class _Iaas:
    """What the demo needs of the IaaS behind the provider."""

    provider: str
    image: str
    where: str = ""  # how the IaaS is named when the demo shows what it holds
    look: Callable[[str], str] | None = None  # the VM of an identity, as the IaaS has it
    booted: Callable[[str], None] | None = None  # after a create: what the guest would do
    vm_spec: dict[str, Any] = field(default_factory=dict)
    has_ip: bool = True  # whether a running VM gets an IP here
    # What `kubectl exec` enters here, said before it runs, and the hostname it must answer for
    # the VM of an identity and its pod; None: exec cannot enter the VM here (guest says why).
    guest: str = ""
    hostname: Callable[[str, str], str] | None = None

    def show(self, identity: str) -> None:
        if self.look is not None:
            step(f"in {self.where}: {self.look(identity)}")


def _iaas_of(env: Environment) -> _Iaas:
    if env.iaas == "vsphere":
        sim = env.vcsim
        assert sim is not None
        if env.guests is not None:  # the environment gives the VM a guest, entered with its key
            return _Iaas("vsphere", "debian-12", "vCenter (pyvmomi against vcsim)",
                         lambda uid: _in_vcenter(sim, uid),
                         lambda uid: step("vcsim runs no guests: the environment starts one for "
                                          "the VM (sshd in a network namespace) and reports its "
                                          "IP the way VMware Tools would"),
                         vm_spec={"access": {"sshSecretName": SECRET_NAME}},
                         guest="the VM's guest over SSH, with the key of Secret "
                               f"{SECRET_NAME}: its hostname is the VM's name in vCenter",
                         hostname=lambda uid, pod: guest_hostname(_vm_name(sim, uid)))
        return _Iaas("vsphere", "debian-12", "vCenter (pyvmomi against vcsim)",
                     lambda uid: _in_vcenter(sim, uid),
                     lambda uid: _report_guest_ip(sim, uid, "10.0.0.10"),
                     guest="nothing: this machine cannot run the VMs' guests (see the warning "
                           "above), and the reported IP is not a guest's")
    if env.iaas == "openstack":
        cloud = env.openstack
        assert cloud is not None
        networks = cloud.networks
        if not networks:
            step("this OpenStack has no networks whose ports bind (its macvtap agents need "
                 "root): the VM boots without one, and so without an IP")
        return _Iaas("openstack", cloud.image_name, "Nova (openstacksdk, as the cloud admin)",
                     lambda uid: _in_nova(cloud, uid),
                     vm_spec={"networks": [{"name": networks[0]["name"]}]} if networks else {},
                     has_ip=bool(networks),
                     guest="nothing here: Nova's fake compute driver runs no guest. On a real "
                           "cloud exec goes over SSH and port-forward over TCP to the server's "
                           "address; attach is not wired to Nova's serial console")
    return _Iaas("memory", "debian-12",
                 guest="the memory provider's pretend guest: a tiny built-in shell (echo, cat, "
                       "hostname, env, sleep, sh -c) whose hostname is the pod's name",
                 hostname=lambda uid, pod: pod)


def _vm_name(sim: VcSim, identity: str) -> str:
    with sim.connect() as si:
        found = vms_with_identity(si, identity)
        return str(found[0].name) if found else ""


def _events(cp: ControlPlane, selector: str) -> str:
    """The events ``selector`` picks, oldest first, one line each.

    Timestamps have a second's resolution (the core/v1 Events the facade posts) or finer
    (eventTime, from the scheduler): within a second, the order the apiserver stored them in
    (resourceVersion) decides.
    """
    items = json.loads(cp.kubectl("get", "events", "--field-selector", selector,
                                  "-o", "json").stdout)["items"]

    def when(event: dict[str, Any]) -> str:
        series = event.get("series") or {}
        stamp = (event.get("lastTimestamp") or series.get("lastObservedTime")
                 or event.get("eventTime") or event.get("firstTimestamp")
                 or event["metadata"]["creationTimestamp"])
        return str(stamp)[:19]  # YYYY-MM-DDTHH:MM:SS

    items.sort(key=lambda e: (when(e), int(e["metadata"].get("resourceVersion") or 0)))
    rows = [(when(e)[11:], e.get("type", ""), e.get("reason", ""),
             (e.get("source") or {}).get("component") or e.get("reportingComponent", ""),
             e.get("message", "")) for e in items]
    return "\n".join(f"{t:9} {kind:8} {reason:22} {source:18} {message}"
                     for t, kind, reason, source, message in
                     [("TIME", "TYPE", "REASON", "FROM", "MESSAGE"), *rows])


def _show_pod(cp: ControlPlane, iaas: _Iaas) -> None:
    nodes = cp.kubectl("get", "nodes", "-o", "wide").stdout.rstrip()
    step(f"the facade registered one virtual node per host:\n{nodes}")
    step("applying a pod that tolerates the vmlet taint, with no nodeName")
    cp.kubectl("apply", "-f", "-", input=json.dumps(_POD).replace('"IMAGE"',
                                                                    json.dumps(iaas.image)))
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        phase = cp.kubectl("get", "pod", "demo-vm", "-o", "jsonpath={.status.phase}").stdout
        if phase == "Running":
            break
        time.sleep(0.5)
    pod = cp.kubectl("get", "pod", "demo-vm", "-o", "wide").stdout.rstrip()
    step(f"kube-scheduler bound it to a vmlet node and the provider runs it:\n{pod}")
    step(f"events, in time order:\n{_events(cp, 'involvedObject.name=demo-vm')}")
    if phase != "Running":
        raise SystemExit("the demo pod did not reach Running")
    iaas.show(cp.kubectl("get", "pod", "demo-vm", "-o", "jsonpath={.metadata.uid}").stdout)
    step("deleting the pod: a bare pod's VM is powered off and destroyed")
    cp.kubectl("delete", "pod", "demo-vm", "--timeout=60s")


def _wait_vm(cp: ControlPlane, name: str, state: str, what: str,
             check: Callable[[dict[str, Any]], bool] = lambda vm: True) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    vm: dict[str, Any] = {}
    while time.monotonic() < deadline:
        vm = json.loads(cp.kubectl("get", "vm", name, "-o", "json").stdout)
        if vm.get("status", {}).get("state") == state and check(vm):
            table = cp.kubectl("get", "vm", name, "-o", "wide").stdout.rstrip()
            step(f"{what}:\n{table}")
            return vm
        time.sleep(0.5)
    raise SystemExit(f"the demo VM did not reach {state} ({what}); last seen: "
                     f"{json.dumps(vm.get('status', {}))}")


def _show_vm(cp: ControlPlane, iaas: _Iaas, *, metrics: bool) -> None:
    def with_ip(vm: dict[str, Any]) -> bool:
        return bool(vm["status"].get("addresses")) or not iaas.has_ip

    step(f"creating VirtualMachine demo (provider {iaas.provider}, image {iaas.image}, "
         f"{_SIZE['cpu']} CPU, {_SIZE['memory']}"
         + (f", networks {[n['name'] for n in iaas.vm_spec['networks']]})"
            if iaas.vm_spec.get("networks") else ")"))
    cp.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": API_VERSION, "kind": VIRTUAL_MACHINE.kind,
        "metadata": {"name": "demo", "namespace": "default"},
        "spec": {"provider": iaas.provider, "image": iaas.image, **_SIZE, **iaas.vm_spec}}))
    uid = json.loads(cp.kubectl("get", "vm", "demo", "-o", "json").stdout)["metadata"]["uid"]
    if iaas.booted is not None:
        iaas.booted(uid)
    vm = _wait_vm(cp, "demo", STATE_RUNNING,
                  "Running with an IP on a host's node" if iaas.has_ip else
                  "Running on a host's node", with_ip)
    iaas.show(uid)
    step("stopping it (spec.replicas 0): the VM powers off and keeps its disks")
    cp.kubectl("patch", "vm", "demo", "--type=merge", "-p", '{"spec":{"replicas":0}}')
    _wait_vm(cp, "demo", STATE_STOPPED, "stopped")
    iaas.show(uid)
    step("starting it again (spec.replicas 1): the same VM powers on")
    cp.kubectl("patch", "vm", "demo", "--type=merge", "-p", '{"spec":{"replicas":1}}')
    _wait_vm(cp, "demo", STATE_RUNNING, "running again", with_ip)
    iaas.show(uid)
    step(f"resizing it to {_RESIZED['cpu']} CPU, {_RESIZED['memory']}")
    cp.kubectl("patch", "vm", "demo", "--type=merge", "-p",
               json.dumps({"spec": _RESIZED}))
    _wait_vm(cp, "demo", STATE_RUNNING, "resized",
             lambda vm: vm["status"].get("cpu") == _RESIZED["cpu"] and with_ip(vm))
    iaas.show(uid)
    source = vm["status"]["nodeName"]
    step(f"migrating it away from {source} (a VirtualMachineMigration; the scheduler picks)")
    cp.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": API_VERSION, "kind": VIRTUAL_MACHINE_MIGRATION.kind,
        "metadata": {"name": "demo-move", "namespace": "default"}, "spec": {"vmName": "demo"}}))
    _wait_vm(cp, "demo", STATE_RUNNING, "migrated",
             lambda vm: vm["status"].get("nodeName") not in (None, source) and with_ip(vm))
    iaas.show(uid)
    events = _events(cp, f"involvedObject.kind={VIRTUAL_MACHINE.kind},involvedObject.name=demo")
    step(f"the VirtualMachine's events, in time order:\n{events}")
    _use_vm(cp, iaas, uid, metrics=metrics)


def _shown(cp: ControlPlane, *args: str, timeout: float = 60,
           ok: Callable[[str], bool] = lambda out: True, lines: int = 12) -> str:
    """Run ``kubectl ARGS`` as the user would, again until it succeeds and ``ok`` holds of its
    output or ``timeout`` passes (0: once); print the command and what it printed (its last
    ``lines``; 0: the command alone). Returns its stdout ("" when it failed)."""
    deadline = time.monotonic() + timeout
    while True:
        out = cp.kubectl(*args, check=False)
        if (out.returncode == 0 and ok(out.stdout)) or time.monotonic() >= deadline:
            break
        time.sleep(2)
    print(f"$ kubectl {shlex.join(args)}", flush=True)
    if out.returncode != 0:
        print(out.stderr.rstrip(), f"(exit code {out.returncode})", sep="\n", flush=True)
        return ""
    text = out.stdout.rstrip().splitlines()
    earlier = [f"... ({len(text) - lines} earlier lines)"] if lines and len(text) > lines else []
    if lines:
        print(*earlier, *text[-lines:], sep="\n", flush=True)
    return out.stdout


def _use_vm(cp: ControlPlane, iaas: _Iaas, uid: str, *, metrics: bool) -> None:
    """What a kubelet user types next: logs, exec, top, the node's stats summary."""
    status = json.loads(cp.kubectl("get", "vm", "demo", "-o", "json").stdout)["status"]
    pod, node = status["podName"], status["nodeName"]
    step(f"using the VM as a kubelet user would (`source .vmlet/env` after `make up`): its pod "
         f"is {pod}, on node {node}; every call goes through the apiserver to the facade's "
         "kubelet API at the node's address")
    _shown(cp, "logs", pod, ok=bool, lines=10)
    step(f"kubectl exec enters {iaas.guest}")
    if iaas.hostname is not None:
        want = iaas.hostname(uid, pod)
        got = _shown(cp, "exec", pod, "--", "hostname", ok=lambda out: out.strip() == want)
        if got.strip() != want:
            raise SystemExit(f"exec answered {got.strip()!r}, not the guest's {want!r}")
        _shown(cp, "exec", pod, "--", "sh", "-c", "exit 3", timeout=0)  # its exit code
    step("the node's stats summary through the apiserver's node proxy (a few of its fields)")
    raw = _shown(cp, "get", "--raw", f"/api/v1/nodes/{node}/proxy/stats/summary", lines=0)
    figures = node_figures = False  # whether the provider reports the pod's, the node's usage
    if raw:
        summary = json.loads(raw)
        n = summary["node"]
        node_figures = bool(n.get("cpu", {}).get("usageNanoCores")
                            and n.get("memory", {}).get("workingSetBytes"))
        print(f"  node {n['nodeName']}: cpu {n.get('cpu', {}).get('usageNanoCores')} nanocores, "
              f"memory working set {n.get('memory', {}).get('workingSetBytes')} bytes, "
              f"{len(summary.get('pods', []))} pod(s)", flush=True)
        for p in summary.get("pods", []):
            if p["podRef"]["name"] != pod:
                continue
            cpu, memory = (p.get("cpu", {}).get("usageNanoCores"),
                           p.get("memory", {}).get("workingSetBytes"))
            figures = bool(cpu and memory)
            print(f"  pod {p['podRef']['namespace']}/{pod}: cpu {cpu} nanocores, memory working "
                  f"set {memory} bytes", flush=True)
    if not metrics:
        return
    step("metrics-server scrapes every node's kubelet API (each node its own address); "
         "figures show after its second scrape")
    if not (figures and node_figures):
        step("the provider reports zero usage here (a simulated IaaS measures none: vcsim's "
             "quick stats of a VM are zero, Nova's fake driver reports no CPU), and "
             "metrics-server leaves out a node or pod whose CPU or memory figure is zero")
    _shown(cp, "top", "node", timeout=60 if node_figures else 0)
    _shown(cp, "top", "pod", pod, timeout=30 if figures else 0)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vmlet-demo", description=__doc__)
    parser.add_argument("--iaas", choices=IAAS_CHOICES, default=DEFAULT_IAAS)
    args = parser.parse_args(argv)
    # SIGTERM tears down like Ctrl-C: RabbitMQ's Erlang VM, a grandchild, outlives a demo that
    # just dies.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _run(args.iaas)
    except KeyboardInterrupt as stopped:
        step(f"interrupted ({stopped}); everything was stopped")
        return 130


def _run(iaas_name: str) -> int:
    with tempfile.TemporaryDirectory(prefix="vmlet-demo-") as tmp:
        step("starting a local Kubernetes control plane (etcd, apiserver, scheduler, "
             f"controller-manager), vcsim, the {iaas_name} provider and the facade")
        started = time.monotonic()
        env = Environment(directory=Path(tmp), iaas=iaas_name).start()
        try:
            step(f"ready in {time.monotonic() - started:.1f}s")
            cp = env.control_plane
            assert cp is not None and env.vcsim is not None
            version = json.loads(cp.kubectl("version", "-o", "json").stdout)["serverVersion"]
            step(f"kubectl version: server {version['gitVersion']}")
            print(cp.kubectl("get", "--raw", "/readyz?verbose").stdout.strip().splitlines()[-1])
            with env.vcsim.connect() as si:
                dc = si.RetrieveContent().rootFolder.childEntity[0]
                hosts = [h.name for h in dc.hostFolder.childEntity[0].host]
            step(f"vcsim at {env.vcsim.url}: hosts {', '.join(hosts)}")
            iaas = _iaas_of(env)
            _show_pod(cp, iaas)
            _show_vm(cp, iaas, metrics=env.metrics_server is not None)
        finally:
            env.stop()
            step("everything stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
