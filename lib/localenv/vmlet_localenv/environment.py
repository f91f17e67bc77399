"""The whole local environment behind `make up`: control plane, simulator, providers, facade.

``IAAS`` chooses what backs the virtual nodes: ``vsphere`` (the default: the vSphere provider
against vcsim, one virtual node per vcsim host), ``memory`` (the in-memory reference provider) or
``openstack`` (real Nova). The control plane, metrics-server (`kubectl top`) and vcsim always
run. Facade and provider talk mutual TLS with certificates made under ``run/provider-pki``
(`ProviderPki`); the env file names them (VMLET_PROVIDER_CA/CERT/KEY) for hack/grpcurl.sh.

Node addresses: the facade's kubelet API listens in a network namespace of its own
(``vmlet-kubelet-<random>``, `Netns` with a pool) on every address of a /28 from 198.18.0.0/15
that no route of this host covered, all of them local in that namespace and routed to it from
the host; each virtual node advertises its own address of that pool as InternalIP
(--node-ip-pool), so the apiserver's node proxy (``kubectl get --raw
/api/v1/nodes/<n>/proxy/stats/summary``) and metrics-server reach every node. Nothing outside
this machine is touched; `stop` (``make down``) removes the namespace and its routes. Without
root or iproute2 the nodes fall back to the provider's loopback addresses, with a warning. The
environment's `CsrApprover` approves the facade's kubelet-serving CSRs for those nodes and
addresses (and nothing else), so the kubelet API serves with no manual step.

Guests (IAAS=vsphere): vcsim runs none, so `GuestStandIn` gives every running VM one (an sshd
in a network namespace whose hostname is the VM's name, reported as the VM's guest IP); the
Secret they accept, ``vmlet-guest-ssh`` (VMLET_GUEST_SSH_SECRET), is made in ``default``: a
VirtualMachine naming it in spec.access.sshSecretName can be exec'd into and port-forwarded to.
"""

from __future__ import annotations

import shlex
import shutil
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.csrapprover import CsrApprover
from vmlet_localenv.guests import SECRET_NAME, GuestStandIn, GuestsUnavailable
from vmlet_localenv.metricsserver import MetricsServer
from vmlet_localenv.netns import Netns, NetnsUnavailable
from vmlet_localenv.private import private_dir, write_private
from vmlet_localenv.processes import wait_for
from vmlet_localenv.providerpki import ProviderPki
from vmlet_localenv.services import (
    FacadeProcess,
    ProviderProcess,
    apply_crds,
    facade_kubeconfig,
    vsphere_provider,
)
from vmlet_localenv.stack import KUBELET_PORT, kubelet_api_args
from vmlet_localenv.tools import K8S_VERSION
from vmlet_localenv.vcsim import VcSim

__all__ = ["DEFAULT_IAAS", "IAAS_CHOICES", "Environment"]

IAAS_CHOICES = ("memory", "vsphere", "openstack")


def _listens(address: str, port: int) -> bool:
    try:
        socket.create_connection((address, port), timeout=1).close()
    except OSError:
        return False
    return True
DEFAULT_IAAS = "vsphere"


@dataclass
class Environment:
    """Starts and stops the local environment; records how to reach it in ``<dir>/env``."""

    directory: Path
    iaas: str = DEFAULT_IAAS
    control_plane: ControlPlane | None = None
    vcsim: VcSim | None = None
    providers: list[ProviderProcess] = field(default_factory=list)
    facade: FacadeProcess | None = None
    openstack: Any = None  # an OpenStackEnv when IAAS=openstack
    pki: ProviderPki | None = None
    kubelet_host: Netns | None = None  # where the kubelet API listens, at the nodes' addresses
    approver: CsrApprover | None = None
    guests: GuestStandIn | None = None  # IAAS=vsphere: a guest for each running VM
    metrics_server: MetricsServer | None = None  # `kubectl top`
    env: dict[str, str] = field(default_factory=dict)

    def start(self) -> Environment:
        if self.iaas not in IAAS_CHOICES:
            raise ValueError(f"IAAS must be one of {', '.join(IAAS_CHOICES)}, not {self.iaas!r}")
        run = self.directory / "run"
        shutil.rmtree(run, ignore_errors=True)
        private_dir(self.directory)
        private_dir(run)
        try:
            self.control_plane = ControlPlane(state_dir=run / "controlplane").start()
            kubeconfig = self.directory / "kubeconfig"
            write_private(kubeconfig, self.control_plane.kubeconfig.read_bytes())
            self.env.update({"KUBECONFIG": str(kubeconfig.resolve()), "VMLET_IAAS": self.iaas,
                             "VMLET_K8S_VERSION": K8S_VERSION})
            # vcsim is cheap and every vSphere test and demo wants it, so it always runs.
            self.vcsim = VcSim(state_dir=run / "vcsim").start()
            self.env.update(self.vcsim.env())
            self.metrics_server = MetricsServer(self.control_plane, run / "metrics-server").start()
            self._start_vmlet(run)
            if self.iaas == "vsphere":
                self._start_guests(run)
        except BaseException:
            self.stop()
            raise
        self._write_env()
        return self

    def _start_vmlet(self, run: Path) -> None:
        assert self.control_plane is not None
        apply_crds(self.control_plane)
        self.pki = ProviderPki.create(run / "provider-pki")
        self.env.update(self.pki.env())
        if self.iaas == "openstack":
            provider = self._start_openstack(run)
        elif self.iaas == "vsphere":
            assert self.vcsim is not None
            provider = vsphere_provider(self.vcsim, run / "providers", pki=self.pki).start()
        else:
            provider = ProviderProcess("memory", run / "providers", args=["--nodes", "2"],
                                       pki=self.pki).start()
        self.providers.append(provider)
        self.env[f"VMLET_PROVIDER_{provider.name.upper()}"] = provider.address
        self.approver = CsrApprover(self.control_plane.server,
                                    self.control_plane.ssl_context()).start()
        record = self.directory / "kubelet-netns.json"
        Netns.remove_recorded(record)  # left by a run that was killed
        try:
            self.kubelet_host = Netns.make("vmlet-kubelet", pool_prefix=28)
            self.kubelet_host.record(record)
            kubelet = kubelet_api_args(self.control_plane, self.kubelet_host)
        except NetnsUnavailable as err:
            print(f"warning: the nodes keep loopback addresses, which the apiserver will not "
                  f"proxy to: {err}", file=sys.stderr)
            kubelet = []
        self.facade = FacadeProcess({provider.name: provider.address},
                                    facade_kubeconfig(self.control_plane), run / "facade",
                                    args=kubelet, pki=self.pki).start()
        self.env["VMLET_FACADE_METRICS"] = f"http://127.0.0.1:{self.facade.metrics_port}/metrics"
        if self.kubelet_host is not None:
            self._wait_kubelet_api(self.kubelet_host.ip)

    def _wait_kubelet_api(self, address: str, timeout: float = 120.0) -> None:
        """Return once the facade's kubelet API listens (it does once the approver let its
        serving certificate through), so the first `kubectl logs` after `make up` works."""
        assert self.facade is not None and self.facade.process is not None
        wait_for(lambda: _listens(address, KUBELET_PORT), timeout=timeout,
                 what=f"the kubelet API at {address}:{KUBELET_PORT}",
                 alive=self.facade.process.check_alive)

    def _start_guests(self, run: Path) -> None:
        assert self.vcsim is not None and self.control_plane is not None
        try:
            self.guests = GuestStandIn(self.vcsim, run / "guests",
                                       records=self.directory / "guest-netns").start()
        except GuestsUnavailable as err:
            print(f"warning: VMs get no guest, so kubectl exec and port-forward cannot enter "
                  f"them: {err}", file=sys.stderr)
            return
        self.guests.apply_secret(self.control_plane)
        self.env["VMLET_GUEST_SSH_SECRET"] = SECRET_NAME

    def _start_openstack(self, run: Path) -> ProviderProcess:
        """Real Nova (two fake compute hosts) and the OpenStack provider in front of it."""
        from vmlet_localenv.openstack import OpenStackEnv, installed

        why = installed()
        if why is not None:
            raise RuntimeError(f"{why}: run hack/openstack/install.sh (make setup does)")
        self.openstack = OpenStackEnv(run / "openstack").start()
        clouds = {"OS_CLIENT_CONFIG_FILE": str(self.openstack.facts()["clouds_yaml"]),
                  "OS_CLOUD": "vmlet"}
        self.env.update(clouds)
        return ProviderProcess("openstack", run / "providers", env=clouds,
                               pki=self.pki).start(timeout=120)

    def stop(self) -> None:
        if self.guests is not None:
            self.guests.stop()
        if self.facade is not None:
            self.facade.stop()
        if self.approver is not None:
            self.approver.stop()
        if self.kubelet_host is not None:
            self.kubelet_host.remove()
            (self.directory / "kubelet-netns.json").unlink(missing_ok=True)
        for provider in self.providers:
            provider.stop()
        if self.openstack is not None:
            self.openstack.stop()
        if self.vcsim is not None:
            self.vcsim.stop()
        if self.metrics_server is not None:
            self.metrics_server.stop()
        if self.control_plane is not None:
            self.control_plane.stop()

    def _write_env(self) -> None:
        lines = [f"export {k}={shlex.quote(v)}" for k, v in sorted(self.env.items())]
        # The virtualenv's bin/ first: kubectl of the control plane's version and `kubectl vm`.
        lines.append(f'export PATH={shlex.quote(str(Path(sys.executable).parent))}:"$PATH"')
        write_private(self.directory / "env", "\n".join(lines) + "\n")
