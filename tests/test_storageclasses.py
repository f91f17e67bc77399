"""The StorageClass each overlay ships (k8s/overlays/*/storageclass.yaml), as a user gets it.

- Rendered with `kubectl kustomize`, every overlay holds exactly one StorageClass, of its own
  provider: its provisioner is a driver name the facade resolves (provider_of_driver) to the
  provider the overlay's vmlet-providers file names, it is not the cluster's default, and its
  parameters are ones that provider takes; docs/operations.md names each class and parameter.
- On the real control plane every shipped class passes a server dry run, and the memory
  overlay's class, applied exactly as rendered, serves a claim on a facade with a memory provider
  named `memory` (the overlay's name): a disk in the IaaS, a PersistentVolume bound with the
  requested size, grown when the claim grows, deleted with the claim. Made the default with the
  command docs/operations.md gives, it serves a claim that names no class.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from tests.deploy_support import OVERLAYS, Obj, kustomize
from vmlet.provider.v1 import disk_service_pb2_grpc as disk_grpc
from vmlet.provider.v1 import virtual_machine_service_pb2 as vm_pb
from vmlet_facade.providerfile import parse_providers
from vmlet_facade.provisioning import PROVISIONED_BY, provider_of_driver
from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.services import REPO
from vmlet_localenv.stack import Stack, eventually
from vmlet_openstack.disks import DISK_PARAMETERS as OPENSTACK_PARAMETERS
from vmlet_vmware.disks import DISK_PARAMETERS as VSPHERE_PARAMETERS

PROVIDER = "memory"  # the name the memory overlay gives its provider: the class names it
CLASS = "vmlet-memory"
DEFAULT = "storageclass.kubernetes.io/is-default-class"
# The keys each provider takes (None: any key, none acted on).
PARAMETERS: dict[str, tuple[str, ...] | None] = {
    "memory": None, "vsphere": VSPHERE_PARAMETERS, "openstack": OPENSTACK_PARAMETERS}


def shipped_class(overlay: str) -> Obj:
    """The one StorageClass of ``overlay`` as kustomize renders it."""
    classes = [d for d in kustomize(f"k8s/overlays/{overlay}") if d["kind"] == "StorageClass"]
    assert len(classes) == 1, f"{overlay}: {[c['metadata']['name'] for c in classes]}"
    return classes[0]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_ships_one_class_of_its_provider(overlay: str) -> None:
    docs = kustomize(f"k8s/overlays/{overlay}")
    sc = shipped_class(overlay)
    providers = next(d for d in docs if d["kind"] == "ConfigMap"
                     and d["metadata"]["name"] == "vmlet-providers")
    served = parse_providers(providers["data"]["providers"])
    assert sc["metadata"]["name"] == f"vmlet-{overlay}"
    assert "namespace" not in sc["metadata"], "a StorageClass is cluster-scoped"
    assert provider_of_driver(sc["provisioner"]) == overlay
    assert overlay in served, f"{sc['provisioner']} names no provider the overlay serves"
    assert DEFAULT not in (sc["metadata"].get("annotations") or {}), "the user picks the default"
    assert sc["allowVolumeExpansion"] is True
    # The provisioner does not read the scheduler's selected-node annotation (see the docs).
    assert sc["volumeBindingMode"] == "Immediate"
    assert sc["reclaimPolicy"] == "Delete"
    known = PARAMETERS[overlay]
    if known is not None:
        assert set(sc.get("parameters") or {}) <= set(known), known

    operations = (REPO / "docs/operations.md").read_text()
    assert f"`{sc['metadata']['name']}`" in operations
    assert f"`{sc['provisioner']}`" in operations
    for key in known or ():
        assert f"`{key}`" in operations, f"docs/operations.md does not name {key}"


def test_every_shipped_class_passes_a_server_dry_run(control_plane: ControlPlane) -> None:
    items = [shipped_class(o) for o in OVERLAYS]
    result = control_plane.kubectl("apply", "--dry-run=server", "-f", "-", check=False,
                                   input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                     "items": items}))
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr, result.stderr


@pytest.fixture(scope="module")
def stack(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Stack]:
    """A facade with a memory provider named like the overlay's, and the memory overlay's
    StorageClass applied as shipped (removed afterwards unless it was there before)."""
    existed = control_plane.kubectl("get", "storageclass", CLASS, check=False).returncode == 0
    s = Stack(control_plane, tmp_path_factory.mktemp("scstack"), {PROVIDER: ["--nodes", "1"]})
    s.start()
    try:
        control_plane.kubectl("apply", "-f", "-", input=json.dumps(shipped_class("memory")))
        yield s
    finally:
        s.stop()
        if not existed:
            control_plane.kubectl("delete", "storageclass", CLASS, "--ignore-not-found")


@pytest.fixture
def ns(control_plane: ControlPlane) -> Iterator[str]:
    name = f"sc-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", name)
    yield name
    # Claims first, while the facade runs: their disks go with them (reclaimPolicy Delete).
    control_plane.kubectl("delete", "pvc", "--all", "-n", name, "--wait=true")
    control_plane.kubectl("delete", "namespace", name, "--wait=false")


def claim(name: str, size: str, klass: str | None = CLASS) -> Obj:
    spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"],
                            "resources": {"requests": {"storage": size}}}
    if klass is not None:
        spec["storageClassName"] = klass
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
            "spec": spec}


def get(stack: Stack, kind: str, name: str, ns: str | None = None) -> Obj:
    return dict(stack.kubectl_json("get", kind, name, *(["-n", ns] if ns else [])))


def bound(stack: Stack, ns: str, name: str) -> Obj | None:
    pvc = get(stack, "pvc", name, ns)
    return pvc if pvc.get("status", {}).get("phase") == "Bound" else None


def disk(stack: Stack, handle: str) -> vm_pb.Disk | None:
    """The disk in the IaaS (the provider's DiskService), None when it has none."""
    with stack.channel(PROVIDER) as channel:
        try:
            found: vm_pb.Disk = disk_grpc.DiskServiceStub(channel).GetDisk(
                vm_pb.GetDiskRequest(handle=handle), timeout=10).disk
            return found
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise


def test_claim_of_the_shipped_class_binds_grows_and_goes(stack: Stack,
                                                         control_plane: ControlPlane,
                                                         ns: str) -> None:
    control_plane.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(claim("data", "3Gi")))
    # The first claim may wait for this facade to win the leader Lease from an earlier one.
    pvc = eventually(lambda: bound(stack, ns, "data"), timeout=90, what="claim Bound")
    assert pvc["status"]["capacity"]["storage"] == "3Gi"
    pv = get(stack, "pv", pvc["spec"]["volumeName"])
    assert pv["metadata"]["annotations"][PROVISIONED_BY] == f"{PROVIDER}.vmlet.io"
    assert pv["spec"]["csi"]["driver"] == f"{PROVIDER}.vmlet.io"
    assert pv["spec"]["storageClassName"] == CLASS
    assert pv["spec"]["capacity"]["storage"] == "3Gi"
    assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Delete"
    handle = pv["spec"]["csi"]["volumeHandle"]
    made = disk(stack, handle)
    assert made is not None and made.size_bytes == 3 * 2**30
    assert made.name == pv["metadata"]["name"]

    control_plane.kubectl("patch", "pvc", "data", "-n", ns, "--type=merge", "-p",
                          '{"spec":{"resources":{"requests":{"storage":"4Gi"}}}}')
    eventually(lambda: get(stack, "pvc", "data", ns)["status"].get("capacity", {}).get(
        "storage") == "4Gi", what="claim grown")
    grown = disk(stack, handle)
    assert grown is not None and grown.size_bytes == 4 * 2**30

    control_plane.kubectl("delete", "pvc", "data", "-n", ns)
    eventually(lambda: disk(stack, handle) is None, what="disk deleted with its claim")
    eventually(lambda: control_plane.kubectl("get", "pv", pv["metadata"]["name"],
                                             check=False).returncode != 0, what="PV deleted")


def test_made_default_it_serves_a_claim_without_a_class(stack: Stack,
                                                       control_plane: ControlPlane,
                                                       ns: str) -> None:
    """The command of docs/operations.md; the class is made not-default again afterwards."""
    patch = ["patch", "storageclass", CLASS, "-p"]
    control_plane.kubectl(*patch, json.dumps({"metadata": {"annotations": {DEFAULT: "true"}}}))
    try:
        control_plane.kubectl("apply", "-n", ns, "-f", "-",
                              input=json.dumps(claim("plain", "1Gi", klass=None)))
        pvc = eventually(lambda: bound(stack, ns, "plain"), timeout=90, what="claim Bound")
        assert pvc["spec"]["storageClassName"] == CLASS
        assert pvc["status"]["capacity"]["storage"] == "1Gi"
    finally:
        control_plane.kubectl(*patch, json.dumps({"metadata": {"annotations": {DEFAULT: None}}}))
