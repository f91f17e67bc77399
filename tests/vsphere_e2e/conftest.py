"""The vSphere end-to-end tests' peers, started once for the package: a vcsim of three hosts of
their own (the last test restarts it) and the stack (control plane, facade, vSphere provider,
two StorageClasses); a namespace per test."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest

from tests.vsphere_e2e.vcenter import HOSTS, NODES, PROVIDER
from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.stack import Stack, eventually
from vmlet_localenv.vcsim import VcSim


@pytest.fixture(scope="package")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VcSim]:
    s = VcSim(hosts=len(HOSTS), state_dir=tmp_path_factory.mktemp("e2e-vcsim")).start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="package")
def stack(control_plane: ControlPlane, sim: VcSim,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(control_plane, tmp_path_factory.mktemp("e2e-stack"), {PROVIDER: []},
              kinds={PROVIDER: "vsphere"}, vcsim=sim)
    s.start()
    for name, reclaim in (("delete", "Delete"), ("retain", "Retain")):
        control_plane.kubectl("apply", "-f", "-", input=json.dumps({
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": f"{PROVIDER}-{name}"},
            "provisioner": f"{PROVIDER}.vmlet.io", "reclaimPolicy": reclaim,
            "allowVolumeExpansion": True, "volumeBindingMode": "Immediate",
            "parameters": {"datastore": "LocalDS_0", "provisioningType": "thin"}}))
    try:
        eventually(lambda: sorted(s.ready_nodes(PROVIDER)) == sorted(NODES),
                   what="one Ready node per vcsim host")
        yield s
    finally:
        s.stop()
        s.print_logs()


@pytest.fixture
def ns(control_plane: ControlPlane) -> Iterator[str]:
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", name)
    yield name
    # VMs go before the namespace does, so the next test finds the hosts free.
    control_plane.kubectl("delete", "vm", "--all", "-n", name, "--timeout=120s", check=False)
    control_plane.kubectl("delete", "namespace", name, "--wait=false", check=False)
