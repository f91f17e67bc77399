"""OpenStack end to end: the real control plane, the facade and the OpenStack provider (each its
own process) on a real OpenStack (`vmlet_localenv.openstack`: Keystone, Placement, Glance,
Neutron, Nova with two fake-driver compute hosts), every step checked in Nova and Glance
themselves with openstacksdk as the cloud admin.

Pods and VirtualMachines are applied with kubectl; the real scheduler picks the nodes. Servers
boot with `networks: none`, so no VM has an address and none is asked for. Nova's fake driver
uploads nothing on a snapshot: the backup test uploads the image's bytes itself, playing the
hypervisor's part, before restoring from it (see services/openstack-provider/README.md).

Set VMLET_OPENSTACK_FACTS to the facts.json of an env already running (`python -m
vmlet_localenv.openstack up --state-dir DIR`) to reuse it instead of starting one. The outage
test freezes that env's nova-api (SIGSTOP of its process group) and continues it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import openstack
import openstack.exceptions
import pytest

from tests import openstackprovider
from tests.openstackprovider import Cloudside, upload_snapshot
from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.processes import wait_for
from vmlet_localenv.services import (
    FacadeProcess,
    ProviderProcess,
    apply_crds,
    facade_kubeconfig,
)
from vmlet_localenv.stack import eventually

pytestmark = [pytest.mark.openstack, pytest.mark.controlplane]

PROVIDER = "openstack"
VM_API = "vmlet.io/v1alpha1"
MV = "2.79"
LONG = 300.0  # one Nova operation on a busy 2-core machine, with room to spare


# The OpenStack.


# The run's OpenStack (tests/conftest.py) as the module's Cloudside: the provider tests' fixture,
# named `cloud` here.
cloud = openstackprovider.openstack_env


@pytest.fixture(scope="module")
def admin(cloud: Cloudside) -> Any:
    return cloud.admin()


def node_of(host: str) -> str:
    return f"{PROVIDER}-{host}"


def servers_of(admin: Any, identity: str) -> list[dict[str, Any]]:
    """Every server (any state but deleted) whose metadata names `identity`, as the admin sees
    them."""
    resp = admin.compute.get("/servers/detail", params={"all_tenants": 1, "limit": 1000},
                             microversion=MV)
    openstack.exceptions.raise_from_response(resp)
    return [s for s in resp.json()["servers"]
            if (s.get("metadata") or {}).get("vmlet-identity") == identity
            and s["status"] not in ("DELETED", "SOFT_DELETED")]


def the_server(admin: Any, identity: str) -> dict[str, Any]:
    found = servers_of(admin, identity)
    assert len(found) == 1, f"{len(found)} servers carry identity {identity}"
    return found[0]


def glance_images(admin: Any, name: str) -> list[dict[str, Any]]:
    resp = admin.image.get("/images", params={"name": name})
    openstack.exceptions.raise_from_response(resp)
    return list(resp.json()["images"])


# vmlet: the provider and a facade for it.


@dataclass
class Vmlet:
    cp: ControlPlane
    provider: ProviderProcess
    facade: FacadeProcess

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.cp.kubectl(*args, "-o", "json").stdout)

    def ready_status(self) -> dict[str, str]:
        items = self.kubectl_json("get", "nodes", "-l", f"vmlet.io/provider={PROVIDER}")["items"]
        return {n["metadata"]["name"]: next(c["status"] for c in n["status"]["conditions"]
                                            if c["type"] == "Ready") for n in items}


@pytest.fixture(scope="module")
def vmlet(control_plane: ControlPlane, cloud: Cloudside,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vmlet]:
    work = tmp_path_factory.mktemp("e2e-openstack-vmlet")
    env = {"OS_CLIENT_CONFIG_FILE": str(cloud.clouds_yaml), "OS_CLOUD": "vmlet"}
    provider = ProviderProcess(PROVIDER, work / "provider", env=env, args=[
        "--node-prefix", PROVIDER, "--poll-seconds", "1", "--fast-poll-seconds", "0.5",
        "--node-poll-seconds", "2", "--api-timeout-seconds", "10",
        "--operation-timeout-seconds", str(int(LONG)), "--log-format", "text"])
    lease_ns = f"vmlet-os-e2e-{uuid.uuid4().hex[:6]}"
    control_plane.kubectl("create", "namespace", lease_ns)
    apply_crds(control_plane)
    provider.start(timeout=120)
    facade = FacadeProcess({PROVIDER: provider.address}, facade_kubeconfig(control_plane),
                           work / "facade", args=["--kubelet-port", "0",
                                                  f"--leader-election-namespace={lease_ns}"])
    v = Vmlet(control_plane, provider, facade)
    try:
        facade.start()
        want = sorted(node_of(h) for h in cloud.compute_hosts)
        eventually(lambda: sorted(n for n, s in v.ready_status().items() if s == "True") == want,
                   timeout=120, what="one Ready node per compute host")
        yield v
    finally:
        facade.stop()
        provider.stop()
        for name, process in (("provider", provider.process), ("facade", facade.process)):
            if process is not None:
                print(f"--- {name}:\n{process.tail(40)}")
        control_plane.kubectl("delete", "namespace", lease_ns, "--wait=false", check=False)


@pytest.fixture
def ns(control_plane: ControlPlane) -> Iterator[str]:
    name = f"ose2e-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", name)
    yield name
    # VMs and pods go before the namespace does, so their servers are deleted in Nova.
    control_plane.kubectl("delete", "vm", "--all", "-n", name, "--timeout=100s", check=False)
    control_plane.kubectl("delete", "pod", "--all", "-n", name, "--timeout=100s", check=False)
    control_plane.kubectl("delete", "namespace", name, "--wait=false", check=False)


def apply(cp: ControlPlane, ns: str, *objs: dict[str, Any]) -> None:
    cp.kubectl("apply", "-n", ns, "-f", "-",
               input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objs)}))


def get(v: Vmlet, kind: str, name: str, ns: str) -> dict[str, Any]:
    return dict(v.kubectl_json("get", kind, name, "-n", ns))


def delete(cp: ControlPlane, kind: str, name: str, ns: str) -> None:
    """Deletes without waiting (kubectl runs under a 120 s limit), then waits up to LONG."""
    cp.kubectl("delete", kind, name, "-n", ns, "--wait=false")
    eventually(lambda: cp.kubectl("get", kind, name, "-n", ns, check=False).returncode != 0,
               timeout=LONG, interval=1, what=f"{kind} {name} deleted")


def patch(cp: ControlPlane, kind: str, name: str, ns: str, body: dict[str, Any]) -> None:
    cp.kubectl("patch", kind, name, "-n", ns, "--type=merge", "-p", json.dumps(body))


def vm_manifest(cloud: Cloudside, name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": VM_API, "kind": "VirtualMachine", "metadata": {"name": name},
            "spec": {"provider": PROVIDER, "image": cloud.image_name, "cpu": 1,
                     "memory": "512Mi", **spec}}


def vm_state(v: Vmlet, ns: str, name: str, want: str) -> dict[str, Any] | None:
    vm = get(v, "vm", name, ns)
    return vm if vm.get("status", {}).get("state") == want else None


def running_vm(v: Vmlet, ns: str, name: str, timeout: float = LONG) -> dict[str, Any]:
    found: dict[str, Any] = eventually(lambda: vm_state(v, ns, name, "Running"),
                                       timeout=timeout, interval=1,
                                       what=f"VirtualMachine {name} Running")
    return found


def succeeded(v: Vmlet, kind: str, name: str, ns: str) -> dict[str, Any]:
    found: dict[str, Any] = eventually(
        lambda: (o := get(v, kind, name, ns)).get("status", {}).get("state") == "Succeeded" and o,
        timeout=LONG, interval=1, what=f"{kind} {name} Succeeded")
    return found


def settled(admin: Any, identity: str, **want: Any) -> dict[str, Any]:
    """The identity's one server once it has no task and matches `want` (dotted keys allowed:
    flavor.original_name)."""
    def check() -> dict[str, Any] | None:
        s = the_server(admin, identity)
        if s["OS-EXT-STS:task_state"] is not None:
            return None
        for key, value in want.items():
            got: Any = s
            for part in key.split("."):
                got = got[part]
            if got != value:
                return None
        return s
    found: dict[str, Any] = eventually(check, timeout=LONG, interval=1,
                                       what=f"server of {identity}: {want}")
    return found


# Pods.


def test_pod_lands_on_the_scheduled_nodes_host_with_the_fitting_flavor(
        vmlet: Vmlet, control_plane: ControlPlane, cloud: Cloudside, admin: Any, ns: str) -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"}, "spec": {
        "nodeSelector": {"vmlet.io/provider": PROVIDER},
        "tolerations": [{"key": "virtual-kubelet.io/provider", "operator": "Equal",
                         "value": PROVIDER, "effect": "NoSchedule"}],
        # 1.5 CPUs and 1Gi: the smallest flavor with 2 vCPUs and >= 1024 MiB is m1.medium.
        "containers": [{"name": "vm", "image": cloud.image_name,
                        "resources": {"requests": {"cpu": "1500m", "memory": "1Gi"}}}]}}
    apply(control_plane, ns, pod)
    running = eventually(lambda: (p := get(vmlet, "pod", "web", ns))["status"].get("phase")
                         == "Running" and p, timeout=LONG, interval=1, what="pod Running")
    uid, node = running["metadata"]["uid"], running["spec"]["nodeName"]
    assert node in {node_of(h) for h in cloud.compute_hosts}
    server = settled(admin, uid, status="ACTIVE")
    host = server["OS-EXT-SRV-ATTR:host"]
    assert node == node_of(host), "the server is on the host behind the scheduler's node"
    labels = vmlet.kubectl_json("get", "node", node)["metadata"]["labels"]
    assert labels["vmlet.io/openstack-host"] == host
    assert server["flavor"]["original_name"] == "m1.medium"
    assert server["metadata"]["vmlet-pod"] == "web"
    ready = next(c for c in running["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"

    delete(control_plane, "pod", "web", ns)
    eventually(lambda: not servers_of(admin, uid), timeout=LONG, interval=1,
               what="a bare pod's server deleted in Nova")


# VirtualMachines.


def test_virtual_machine_lifecycle_in_nova(
        vmlet: Vmlet, control_plane: ControlPlane, cloud: Cloudside, admin: Any, ns: str) -> None:
    apply(control_plane, ns, vm_manifest(cloud, "app"))
    vm = running_vm(vmlet, ns, "app")
    uid, node = vm["metadata"]["uid"], vm["status"]["nodeName"]
    first = settled(admin, uid, status="ACTIVE")
    server_id = first["id"]
    assert node_of(first["OS-EXT-SRV-ATTR:host"]) == node
    assert first["flavor"]["original_name"] == "m1.tiny"  # 1 CPU, 512Mi

    # Stop: SHUTOFF and kept. Start: ACTIVE again, the same server.
    patch(control_plane, "vm", "app", ns, {"spec": {"replicas": 0}})
    eventually(lambda: vm_state(vmlet, ns, "app", "Stopped"), timeout=LONG, interval=1,
               what="Stopped")
    off = settled(admin, uid, status="SHUTOFF")
    assert off["id"] == server_id
    patch(control_plane, "vm", "app", ns, {"spec": {"replicas": 1}})
    running_vm(vmlet, ns, "app")
    assert settled(admin, uid, status="ACTIVE")["id"] == server_id

    # Resize: 2 CPUs and 4Gi fit m1.medium; the same server, a new flavor.
    patch(control_plane, "vm", "app", ns, {"spec": {"cpu": 2, "memory": "4Gi"}})
    resized = settled(admin, uid, status="ACTIVE", **{"flavor.original_name": "m1.medium"})
    assert resized["id"] == server_id
    eventually(lambda: (v := running_vm(vmlet, ns, "app"))["status"].get("cpu") == 2 and v,
               timeout=LONG, interval=1, what="Running at the new size")

    # Migration: the server's host changes; the same server.
    source = get(vmlet, "vm", "app", ns)["status"]["nodeName"]
    source_host = the_server(admin, uid)["OS-EXT-SRV-ATTR:host"]
    apply(control_plane, ns, {"apiVersion": VM_API, "kind": "VirtualMachineMigration",
                              "metadata": {"name": "move"}, "spec": {"vmName": "app"}})
    mig = succeeded(vmlet, "vmmigration", "move", ns)
    target = mig["status"]["targetNode"]
    assert mig["status"]["sourceNode"] == source and target != source
    moved = settled(admin, uid, status="ACTIVE")
    assert moved["id"] == server_id
    assert moved["OS-EXT-SRV-ATTR:host"] != source_host
    assert node_of(moved["OS-EXT-SRV-ATTR:host"]) == target
    running_vm(vmlet, ns, "app")

    # Backup: an image in Glance named as the snapshot.
    apply(control_plane, ns, {"apiVersion": VM_API, "kind": "VirtualMachineBackup",
                              "metadata": {"name": "nightly"}, "spec": {"vmName": "app"}})
    backup = succeeded(vmlet, "vmbackup", "nightly", ns)
    snapshot = backup["status"]["snapshotID"]
    images = glance_images(admin, f"{ns}-nightly")
    assert [i["id"] for i in images] == [snapshot]
    assert images[0]["vmlet-identity"] == uid
    assert images[0].get("instance_uuid") == server_id
    original_image = the_server(admin, uid)["image"]["id"]

    # Restore: the fake driver uploaded nothing, so upload the bytes; then rebuild from it.
    if images[0]["status"] != "active":
        upload_snapshot(admin, snapshot)
    eventually(lambda: admin.image.get(f"/images/{snapshot}").json()["status"] == "active",
               timeout=120, what="snapshot image active")
    apply(control_plane, ns, {"apiVersion": VM_API, "kind": "VirtualMachineRestore",
                              "metadata": {"name": "undo"}, "spec": {"backupName": "nightly"}})
    restore = succeeded(vmlet, "vmrestore", "undo", ns)
    assert restore["status"]["vmName"] == "app"
    rebuilt = settled(admin, uid, status="ACTIVE", **{"image.id": snapshot})
    assert rebuilt["id"] == server_id and snapshot != original_image
    running_vm(vmlet, ns, "app")

    # Delete: the server is gone from Nova.
    delete(control_plane, "vm", "app", ns)
    eventually(lambda: not servers_of(admin, uid), timeout=LONG, interval=1,
               what="server deleted in Nova")


def test_provider_sigkill_mid_create_leaves_one_server(
        vmlet: Vmlet, control_plane: ControlPlane, cloud: Cloudside, admin: Any, ns: str) -> None:
    provider = vmlet.provider
    assert provider.process is not None
    log = provider.process.log_path
    for round_, delay in enumerate((0.0, 0.3)):
        name = f"kill-{round_}"
        seen = log.stat().st_size
        apply(control_plane, ns, vm_manifest(cloud, name))
        uid = get(vmlet, "vm", name, ns)["metadata"]["uid"]

        def asking_nova(since: int = seen) -> bool:
            with log.open("rb") as f:
                f.seek(since)
                return f'"creating server" pod={ns}/'.encode() in f.read()

        # Kill it the moment it has decided to create and is asking Nova.
        wait_for(asking_nova, timeout=LONG, interval=0.01, what="the provider asking Nova")
        time.sleep(delay)
        provider.kill()
        time.sleep(2)  # the POST, if it left, reaches Nova meanwhile
        orphans = [s["id"] for s in servers_of(admin, uid)]
        print(f"round {round_}: servers after the kill: {orphans}")
        provider.start(timeout=120)  # the same address: the facade's channel reconnects
        running_vm(vmlet, ns, name)
        server = settled(admin, uid, status="ACTIVE")
        if orphans:
            assert server["id"] == orphans[0], "the orphan was found, not made again"
        time.sleep(5)  # a few more polls and retries: still one
        assert [s["id"] for s in servers_of(admin, uid)] == [server["id"]]
        delete(control_plane, "vm", name, ns)
        eventually(lambda u=uid: not servers_of(admin, u), timeout=LONG,
                   interval=1, what="server deleted")


# The Nova API goes away and comes back (last: it freezes the env's nova-api).


def test_nova_api_outage_nodes_unknown_then_ready_and_new_vms_run(
        vmlet: Vmlet, control_plane: ControlPlane, cloud: Cloudside, admin: Any, ns: str) -> None:
    nodes = sorted(node_of(h) for h in cloud.compute_hosts)
    cloud.stop_nova_api()
    try:
        eventually(lambda: (s := vmlet.ready_status()) and sorted(
            n for n, st in s.items() if st == "Unknown") == nodes, timeout=180, interval=1,
            what="nodes Ready=Unknown")
        vmlet.provider.process.check_alive()
    finally:
        cloud.start_nova_api()
    eventually(lambda: sorted(n for n, s in vmlet.ready_status().items() if s == "True")
               == nodes, timeout=180, interval=1, what="nodes Ready again")
    apply(control_plane, ns, vm_manifest(cloud, "after"))
    uid = get(vmlet, "vm", "after", ns)["metadata"]["uid"]
    running_vm(vmlet, ns, "after")
    assert settled(admin, uid, status="ACTIVE")["id"]
