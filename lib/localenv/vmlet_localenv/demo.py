"""`make demo`: vmlet's main job on an embedded default, printed step by step.

Starts the local environment in a temporary directory, shows what runs, and tears it all down.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.environment import IAAS_CHOICES, Environment

__all__ = ["main"]


def step(text: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {text}", flush=True)


_POD = {
    "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "demo-vm", "namespace": "default"},
    "spec": {
        "tolerations": [{"key": "virtual-kubelet.io/provider", "operator": "Exists",
                         "effect": "NoSchedule"}],
        "containers": [{"name": "vm", "image": "debian-12",
                        "resources": {"requests": {"cpu": "2", "memory": "4Gi"}}}],
    },
}


def _show_pod(cp: ControlPlane) -> None:
    nodes = cp.kubectl("get", "nodes", "-o", "wide").stdout.rstrip()
    step(f"the facade registered one virtual node per host:\n{nodes}")
    step("applying a pod that tolerates the vmlet taint, with no nodeName")
    cp.kubectl("apply", "-f", "-", input=json.dumps(_POD))
    deadline = time.monotonic() + 60
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


def _show_vm(cp: ControlPlane, provider: str) -> None:
    step(f"creating VirtualMachine demo (provider {provider}, 2 CPU, 4Gi)")
    cp.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "vmlet.io/v1alpha1", "kind": "VirtualMachine",
        "metadata": {"name": "demo", "namespace": "default"},
        "spec": {"provider": provider, "image": "debian-12", "cpu": 2, "memory": "4Gi"}}))
    vm = _wait_vm(cp, "demo", "Running", "Running with an IP on a host's node",
                  lambda vm: bool(vm["status"].get("addresses")))
    step("stopping it (spec.replicas 0): the VM powers off and keeps its disks")
    cp.kubectl("patch", "vm", "demo", "--type=merge", "-p", '{"spec":{"replicas":0}}')
    _wait_vm(cp, "demo", "Stopped", "stopped")
    step("starting it again (spec.replicas 1): the same VM powers on")
    cp.kubectl("patch", "vm", "demo", "--type=merge", "-p", '{"spec":{"replicas":1}}')
    _wait_vm(cp, "demo", "Running", "running again")
    step("resizing it to 4 CPU, 8Gi")
    cp.kubectl("patch", "vm", "demo", "--type=merge", "-p", '{"spec":{"cpu":4,"memory":"8Gi"}}')
    _wait_vm(cp, "demo", "Running", "resized", lambda vm: vm["status"].get("cpu") == 4)
    source = vm["status"]["nodeName"]
    step(f"migrating it away from {source} (a VirtualMachineMigration; the scheduler picks)")
    cp.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "vmlet.io/v1alpha1", "kind": "VirtualMachineMigration",
        "metadata": {"name": "demo-move", "namespace": "default"}, "spec": {"vmName": "demo"}}))
    _wait_vm(cp, "demo", "Running", "migrated",
             lambda vm: vm["status"].get("nodeName") not in (None, source))
    events = cp.kubectl("get", "events", "--field-selector",
                        "involvedObject.kind=VirtualMachine,involvedObject.name=demo",
                        "--sort-by=.lastTimestamp",
                        "-o", "custom-columns=REASON:.reason,MESSAGE:.message").stdout.rstrip()
    step(f"the VirtualMachine's events:\n{events}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vmlet-demo", description=__doc__)
    parser.add_argument("--iaas", choices=IAAS_CHOICES, default="memory")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="vmlet-demo-") as tmp:
        step("starting a local Kubernetes control plane (etcd, apiserver, scheduler, "
             f"controller-manager), vcsim, the {args.iaas} provider and the facade")
        started = time.monotonic()
        env = Environment(directory=Path(tmp), iaas=args.iaas).start()
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
            if args.iaas == "memory":
                _show_pod(cp)
                _show_vm(cp, "memory")
            else:
                step(f"the {args.iaas} provider is not wired into the demo yet: the demo stops "
                     "here (control plane and vcsim were up)")
        finally:
            env.stop()
            step("everything stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
