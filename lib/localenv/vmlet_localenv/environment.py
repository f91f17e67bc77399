"""The whole local environment behind `make up`: control plane, simulator, providers, facade.

``IAAS`` chooses what backs the virtual nodes: ``vsphere`` (the default: the vSphere provider
against vcsim, one virtual node per vcsim host), ``memory`` (the in-memory reference provider) or
``openstack`` (real Nova). The control plane and vcsim always run. Facade and provider talk
mutual TLS with certificates made under ``run/provider-pki`` (`ProviderPki`); the env file
names them (VMLET_PROVIDER_CA/CERT/KEY) for hack/grpcurl.sh.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.private import private_dir, write_private
from vmlet_localenv.providerpki import ProviderPki
from vmlet_localenv.services import (
    FacadeProcess,
    ProviderProcess,
    apply_crds,
    facade_kubeconfig,
    vsphere_provider,
)
from vmlet_localenv.tools import K8S_VERSION
from vmlet_localenv.vcsim import VcSim

__all__ = ["DEFAULT_IAAS", "IAAS_CHOICES", "Environment"]

IAAS_CHOICES = ("memory", "vsphere", "openstack")
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
            self._start_vmlet(run)
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
        self.facade = FacadeProcess({provider.name: provider.address},
                                    facade_kubeconfig(self.control_plane), run / "facade",
                                    pki=self.pki).start()
        self.env["VMLET_FACADE_METRICS"] = f"http://127.0.0.1:{self.facade.metrics_port}/metrics"

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
        if self.facade is not None:
            self.facade.stop()
        for provider in self.providers:
            provider.stop()
        if self.openstack is not None:
            self.openstack.stop()
        if self.vcsim is not None:
            self.vcsim.stop()
        if self.control_plane is not None:
            self.control_plane.stop()

    def _write_env(self) -> None:
        lines = [f"export {k}={shlex.quote(v)}" for k, v in sorted(self.env.items())]
        # The virtualenv's bin/ first: kubectl of the control plane's version and `kubectl vm`.
        lines.append(f'export PATH={shlex.quote(str(Path(sys.executable).parent))}:"$PATH"')
        write_private(self.directory / "env", "\n".join(lines) + "\n")
