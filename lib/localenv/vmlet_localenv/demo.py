"""`make demo`: vmlet's main job on an embedded default, printed step by step.

Starts the local environment in a temporary directory, shows what runs, and tears it all down.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

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
            else:
                step(f"the {args.iaas} provider is not wired into the demo yet: the demo stops "
                     "here (control plane and vcsim were up)")
        finally:
            env.stop()
            step("everything stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
