"""vmlet's own processes, started the way a user would: providers and the facade, each on a free
loopback port, with the facade holding only the rights k8s/base/facade-rbac.yaml grants. The
vSphere provider runs against a vcsim (`vsphere_provider`). Facade and providers talk mutual TLS
with the certificates of a `ProviderPki` (this process's `default_pki()` unless one is given);
``plaintext=True`` runs them with the explicit plaintext flags instead.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from pathlib import Path

import grpc
import yaml

from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.processes import Process, free_port, wait_for
from vmlet_localenv.providerpki import ProviderPki, default_pki
from vmlet_localenv.vcsim import TEMPLATE_FOLDER, VcSim

__all__ = [
    "FACADE_USER",
    "REPO",
    "FacadeProcess",
    "ProviderProcess",
    "apply_crds",
    "facade_kubeconfig",
    "vsphere_provider",
]

REPO = Path(__file__).resolve().parents[3]
FACADE_USER = "vmlet-facade"
_MODULES = {"memory": "vmlet_memory", "vsphere": "vmlet_vmware", "openstack": "vmlet_openstack"}


def apply_crds(cp: ControlPlane) -> None:
    """Install vmlet's CustomResourceDefinitions and wait until they are served."""
    cp.kubectl("apply", "-f", str(REPO / "k8s/base/crds"))
    cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f",
               str(REPO / "k8s/base/crds"))


def facade_kubeconfig(cp: ControlPlane) -> Path:
    """Grant the facade's ClusterRole to a user of its own and return that user's kubeconfig."""
    docs = [d for d in yaml.safe_load_all((REPO / "k8s/base/facade-rbac.yaml").read_text()) if d]
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": f"{FACADE_USER}-user"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": "vmlet-facade"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                      "name": FACADE_USER}],
    }
    cp.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                      "items": [*docs, binding]}))
    return cp.user_kubeconfig(FACADE_USER)


class ProviderProcess:
    """A provider (memory, vsphere or openstack) as its own process."""

    def __init__(self, kind: str, state_dir: Path, *, args: list[str] | None = None,
                 env: dict[str, str] | None = None, name: str | None = None,
                 pki: ProviderPki | None = None, plaintext: bool = False) -> None:
        self.kind = kind
        self.pki = None if plaintext else (pki or default_pki())
        self.name = name or kind
        self.dir = state_dir
        self.port_file = state_dir / f"{self.name}.port"
        self._args = list(args or [])
        self._env = {**os.environ, **(env or {})}
        self.port = 0
        self.process: Process | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0, port: int | None = None) -> ProviderProcess:
        self.port_file.unlink(missing_ok=True)
        self.port = port or self.port or free_port()
        self.process = Process(f"provider-{self.name}", [
            sys.executable, "-m", _MODULES[self.kind], "--listen", self.address,
            "--port-file", str(self.port_file), *self._tls_args(), *self._args,
        ], log_dir=self.dir / "logs", env=self._env).start()
        wait_for(self.port_file.exists, timeout=timeout, what=f"{self.name} provider",
                 alive=self.process.check_alive)
        return self

    def _tls_args(self) -> list[str]:
        return self.pki.provider_args() if self.pki is not None else ["--insecure-plaintext"]

    def channel(self) -> grpc.Channel:
        """A channel to this provider, as the facade (mutual TLS unless plaintext)."""
        if self.pki is None:
            return grpc.insecure_channel(self.address)
        return self.pki.channel(self.address)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()


def vsphere_provider(sim: VcSim, state_dir: Path, *, name: str = "vsphere",
                     args: list[str] | None = None,
                     pki: ProviderPki | None = None) -> ProviderProcess:
    """The vSphere provider against ``sim`` (not started): clones from the simulator's template
    folder onto "VM Network", nodes named ``<name>-<host>``, and quick to notice a simulator
    that went away and came back (it reconnects within seconds)."""
    return ProviderProcess("vsphere", state_dir, name=name, env=sim.env(), pki=pki, args=[
        "--template-folder", TEMPLATE_FOLDER, "--network", "VM Network", "--node-prefix", name,
        "--keepalive-seconds", "5", "--reconnect-max-seconds", "2", "--watch-wait-seconds", "10",
        *(args or []),
    ])


class FacadeProcess:
    """The kubelet facade as its own process."""

    def __init__(self, providers: dict[str, str], kubeconfig: Path, state_dir: Path, *,
                 args: list[str] | None = None, pki: ProviderPki | None = None,
                 plaintext: bool = False) -> None:
        self.providers = providers
        self.pki = None if plaintext else (pki or default_pki())
        self.kubeconfig = kubeconfig
        self.dir = state_dir
        self._args = list(args or [])
        self.metrics_port = 0
        self.process: Process | None = None

    def start(self) -> FacadeProcess:
        self.metrics_port = free_port()
        self.process = Process("facade", [
            sys.executable, "-m", "vmlet_facade", f"--kubeconfig={self.kubeconfig}",
            *[f"--provider={n}={a}" for n, a in self.providers.items()],
            f"--metrics-addr=127.0.0.1:{self.metrics_port}",
            *(self.pki.facade_args() if self.pki is not None
              else ["--provider-insecure-plaintext"]),
            *self._args,
        ], log_dir=self.dir / "logs").start()
        wait_for(self._metrics_up, timeout=30, what="facade", alive=self.process.check_alive)
        return self

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=5) as resp:
            return str(resp.read().decode())

    def _metrics_up(self) -> bool:
        return "vmlet_facade" in self.metrics()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
