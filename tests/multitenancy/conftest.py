"""The multi-tenancy tests' peers, started once for the package: a test host in a network
namespace, the stack (memory provider, vSphere on the session's vcsim, the facade's kubelet
listener in the namespace), the victim and the attacker, the victim's Secrets and its VM."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest

from tests.multitenancy.tenancy import (
    PROVIDER,
    REPO,
    STORAGE_CLASS,
    VSPHERE,
    Secrets,
    Tenant,
    VictimVM,
    make_tenant,
    start_victim_vm,
)
from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.netns import Netns, namespaces
from vmlet_localenv.stack import KUBELET_PORT, Stack, eventually, kubelet_api_args
from vmlet_localenv.vcsim import VcSim


@pytest.fixture(scope="package")
def test_host() -> Iterator[Netns]:
    with namespaces("vmlet-mten") as (host,):
        yield host


@pytest.fixture(scope="package")
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


@pytest.fixture(scope="package")
def victim(stack: Stack, control_plane: ControlPlane) -> Tenant:
    return make_tenant(control_plane, "victim")


@pytest.fixture(scope="package")
def attacker(stack: Stack, control_plane: ControlPlane) -> Tenant:
    return make_tenant(control_plane, "attacker")


@pytest.fixture(autouse=True)
def sweep(control_plane: ControlPlane, request: pytest.FixtureRequest) -> Iterator[None]:
    """After each attack, the attacker's pods go (the next attack starts from a clean slate)."""
    yield
    if "attacker" in request.fixturenames:
        ns = request.getfixturevalue("attacker").ns
        control_plane.kubectl("delete", "pods", "--all", "-n", ns, "--wait=false", check=False)


@pytest.fixture(scope="package")
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


@pytest.fixture
def crown(stack: Stack, victim: Tenant, secrets: Secrets) -> VictimVM:
    """A fresh running VM of the victim for each attack, so one attack's damage cannot hide or
    fake another's."""
    return start_victim_vm(stack, victim, secrets)
