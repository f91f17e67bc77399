"""`make demo`: vmlet's main job on an embedded default, printed step by step.

Starts the local environment in a temporary directory (by default the vSphere provider against
vcsim; `--iaas memory|openstack` for the others), shows a pod become a VM and a VirtualMachine go
through its lifecycle, each step also shown as the IaaS itself has it, and tears it all down.
vcsim runs no guests, so no VMware Tools reports a guest IP: on vsphere the demo reports one
itself, the way the tools would (vcsim's SET.guest.ipAddress), and says so. On openstack the VM
gets a port on the env's first network, whose fixed IP Neutron assigns.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.environment import DEFAULT_IAAS, IAAS_CHOICES, Environment
from vmlet_localenv.stack import report_guest_ip, vms_with_identity
from vmlet_localenv.vcsim import VcSim

__all__ = ["main"]


def step(text: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {text}", flush=True)


_POD = {
    "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "demo-vm", "namespace": "default"},
    "spec": {
        "tolerations": [{"key": "virtual-kubelet.io/provider", "operator": "Exists",
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

    def show(self, identity: str) -> None:
        if self.look is not None:
            step(f"in {self.where}: {self.look(identity)}")


def _iaas_of(env: Environment) -> _Iaas:
    if env.iaas == "vsphere":
        sim = env.vcsim
        assert sim is not None
        return _Iaas("vsphere", "debian-12", "vCenter (pyvmomi against vcsim)",
                     lambda uid: _in_vcenter(sim, uid),
                     lambda uid: _report_guest_ip(sim, uid, "10.0.0.10"))
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
                     has_ip=bool(networks))
    return _Iaas("memory", "debian-12")


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
    events = cp.kubectl("get", "events", "--field-selector", "involvedObject.name=demo-vm",
                        "-o", "custom-columns=REASON:.reason,FROM:.source.component,"
                        "MESSAGE:.message").stdout.rstrip()
    step(f"events:\n{events}")
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


def _show_vm(cp: ControlPlane, iaas: _Iaas) -> None:
    def with_ip(vm: dict[str, Any]) -> bool:
        return bool(vm["status"].get("addresses")) or not iaas.has_ip

    step(f"creating VirtualMachine demo (provider {iaas.provider}, image {iaas.image}, "
         f"{_SIZE['cpu']} CPU, {_SIZE['memory']}"
         + (f", networks {[n['name'] for n in iaas.vm_spec['networks']]})"
            if iaas.vm_spec.get("networks") else ")"))
    cp.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "vmlet.io/v1alpha1", "kind": "VirtualMachine",
        "metadata": {"name": "demo", "namespace": "default"},
        "spec": {"provider": iaas.provider, "image": iaas.image, **_SIZE, **iaas.vm_spec}}))
    uid = json.loads(cp.kubectl("get", "vm", "demo", "-o", "json").stdout)["metadata"]["uid"]
    if iaas.booted is not None:
        iaas.booted(uid)
    vm = _wait_vm(cp, "demo", "Running",
                  "Running with an IP on a host's node" if iaas.has_ip else
                  "Running on a host's node", with_ip)
    iaas.show(uid)
    step("stopping it (spec.replicas 0): the VM powers off and keeps its disks")
    cp.kubectl("patch", "vm", "demo", "--type=merge", "-p", '{"spec":{"replicas":0}}')
    _wait_vm(cp, "demo", "Stopped", "stopped")
    iaas.show(uid)
    step("starting it again (spec.replicas 1): the same VM powers on")
    cp.kubectl("patch", "vm", "demo", "--type=merge", "-p", '{"spec":{"replicas":1}}')
    _wait_vm(cp, "demo", "Running", "running again", with_ip)
    iaas.show(uid)
    step(f"resizing it to {_RESIZED['cpu']} CPU, {_RESIZED['memory']}")
    cp.kubectl("patch", "vm", "demo", "--type=merge", "-p",
               json.dumps({"spec": _RESIZED}))
    _wait_vm(cp, "demo", "Running", "resized",
             lambda vm: vm["status"].get("cpu") == _RESIZED["cpu"] and with_ip(vm))
    iaas.show(uid)
    source = vm["status"]["nodeName"]
    step(f"migrating it away from {source} (a VirtualMachineMigration; the scheduler picks)")
    cp.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "vmlet.io/v1alpha1", "kind": "VirtualMachineMigration",
        "metadata": {"name": "demo-move", "namespace": "default"}, "spec": {"vmName": "demo"}}))
    _wait_vm(cp, "demo", "Running", "migrated",
             lambda vm: vm["status"].get("nodeName") not in (None, source) and with_ip(vm))
    iaas.show(uid)
    events = cp.kubectl("get", "events", "--field-selector",
                        "involvedObject.kind=VirtualMachine,involvedObject.name=demo",
                        "--sort-by=.lastTimestamp",
                        "-o", "custom-columns=REASON:.reason,MESSAGE:.message").stdout.rstrip()
    step(f"the VirtualMachine's events:\n{events}")


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
            _show_vm(cp, iaas)
        finally:
            env.stop()
            step("everything stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
