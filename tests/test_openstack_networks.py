"""OpenStack networks end to end: a VirtualMachine's spec.networks become its Nova server's ports,
in order, through the real control plane, the facade and the OpenStack provider (each its own
process) on the real OpenStack of `vmlet_localenv.openstack`, checked in Neutron and Nova
themselves as the cloud admin.

The env's Neutron binds ports through the macvtap mechanism driver and a real macvtap agent per
compute host, and makes the vmlet project's networks `vmlet-net-a` and `vmlet-net-b` (see
docs/openstack-env.md); Neutron's IPAM gives each port a fixed IP. The OpenStack, the provider
and the facade are test_openstack_e2e's fixtures (with VMLET_OPENSTACK_FACTS, an env already
running is reused).
"""

from __future__ import annotations

import ipaddress
from typing import Any

import openstack.exceptions
import pytest

from tests import test_openstack_e2e as e2e
from tests.openstackprovider import Cloudside
from tests.test_openstack_e2e import (
    LONG,
    VM_API,
    Vmlet,
    apply,
    delete,
    get,
    running_vm,
    servers_of,
    settled,
    succeeded,
    vm_manifest,
    vm_state,
)
from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.stack import eventually

pytestmark = [pytest.mark.openstack, pytest.mark.controlplane]

# test_openstack_e2e's fixtures: its OpenStack, provider and facade, and a namespace per test.
cloud, admin, vmlet, ns = e2e.cloud, e2e.admin, e2e.vmlet, e2e.ns


def neutron(admin: Any, path: str, **params: Any) -> Any:
    resp = admin.network.get(path, params=params)
    openstack.exceptions.raise_from_response(resp)
    return resp.json()


@pytest.fixture(scope="module")
def networks(admin: Any) -> dict[str, dict[str, Any]]:
    """The env's networks by name, with their subnets' CIDRs."""
    found = {n["name"]: n for n in neutron(admin, "/networks")["networks"]
             if n["name"] in ("vmlet-net-a", "vmlet-net-b")}
    if len(found) != 2:
        pytest.skip("this OpenStack env made no networks whose ports bind (it needs root for "
                    "its macvtap agents; see docs/openstack-env.md)")
    for net in found.values():
        subnets = neutron(admin, "/subnets", network_id=net["id"])["subnets"]
        net["cidrs"] = [s["cidr"] for s in subnets]
    return found


def ports_of(admin: Any, server_id: str) -> list[dict[str, Any]]:
    return list(neutron(admin, "/ports", device_id=server_id)["ports"])


def test_spec_networks_become_the_servers_ports_in_order(
        vmlet: Vmlet, control_plane: ControlPlane, cloud: Cloudside, admin: Any, ns: str,
        networks: dict[str, dict[str, Any]]) -> None:
    order = ["vmlet-net-b", "vmlet-net-a"]  # not the order they were made in
    apply(control_plane, ns, vm_manifest(cloud, "twonics",
                                         networks=[{"name": n} for n in order]))
    vm = running_vm(vmlet, ns, "twonics")
    uid = vm["metadata"]["uid"]
    server = settled(admin, uid, status="ACTIVE")
    host = server["OS-EXT-SRV-ATTR:host"]

    # Nova: one NIC per network, in the order asked for (its network info cache keeps it).
    assert list(server["addresses"]) == order
    ips = [server["addresses"][n][0]["addr"] for n in order]
    for name, ip in zip(order, ips, strict=True):
        assert any(ipaddress.ip_address(ip) in ipaddress.ip_network(c)
                   for c in networks[name]["cidrs"]), (name, ip)

    # Neutron: exactly those ports, bound to the server's compute host by ML2 (macvtap).
    ports = ports_of(admin, server["id"])
    assert sorted(p["network_id"] for p in ports) == sorted(networks[n]["id"] for n in order)
    for port in ports:
        assert port["binding:host_id"] == host
        assert port["binding:vif_type"] == "macvtap"
        assert port["device_owner"] == "compute:nova"
    assert sorted(ip["ip_address"] for p in ports for ip in p["fixed_ips"]) == sorted(ips)

    # The pod and the VM show the first NIC's address: the primary one. (Kubernetes takes one
    # pod IP per family, so the second NIC's IPv4 address is Nova's and Neutron's only.)
    eventually(lambda: get(vmlet, "vm", "twonics", ns)["status"].get("addresses") == ips[:1],
               timeout=LONG, interval=1, what=f"the VM's address {ips[0]}")
    pod = get(vmlet, "pod", get(vmlet, "vm", "twonics", ns)["status"]["podName"], ns)
    assert pod["status"]["podIP"] == ips[0]
    assert [p["ip"] for p in pod["status"]["podIPs"]] == ips[:1]

    # A migration takes the ports along: Neutron binds them on the new host, the IPs stay.
    apply(control_plane, ns, {"apiVersion": VM_API, "kind": "VirtualMachineMigration",
                              "metadata": {"name": "move"}, "spec": {"vmName": "twonics"}})
    succeeded(vmlet, "vmmigration", "move", ns)
    moved = settled(admin, uid, status="ACTIVE")
    assert moved["id"] == server["id"] and moved["OS-EXT-SRV-ATTR:host"] != host
    assert list(moved["addresses"]) == order
    assert [moved["addresses"][n][0]["addr"] for n in order] == ips
    eventually(lambda: {(p["binding:host_id"], p["binding:vif_type"])
                        for p in ports_of(admin, server["id"])}
               == {(moved["OS-EXT-SRV-ATTR:host"], "macvtap")},
               timeout=LONG, interval=1, what="the ports bound on the new host")
    running_vm(vmlet, ns, "twonics")

    # Deleting the VM deletes the server and its ports.
    delete(control_plane, "vm", "twonics", ns)
    eventually(lambda: not servers_of(admin, uid) and not ports_of(admin, server["id"]),
               timeout=LONG, interval=1, what="the server and its ports deleted")


def test_network_by_id_and_a_pod_without_networks(
        vmlet: Vmlet, control_plane: ControlPlane, cloud: Cloudside, admin: Any, ns: str,
        networks: dict[str, dict[str, Any]]) -> None:
    net_a = networks["vmlet-net-a"]
    apply(control_plane, ns, vm_manifest(cloud, "byid", networks=[{"name": net_a["id"]}]),
          vm_manifest(cloud, "plain"))
    by_id = settled(admin, running_vm(vmlet, ns, "byid")["metadata"]["uid"], status="ACTIVE")
    assert list(by_id["addresses"]) == ["vmlet-net-a"]
    assert [p["network_id"] for p in ports_of(admin, by_id["id"])] == [net_a["id"]]
    # No networks: the provider's --network default, `none` here: no port, no address.
    plain = settled(admin, running_vm(vmlet, ns, "plain")["metadata"]["uid"], status="ACTIVE")
    assert plain["addresses"] == {} and ports_of(admin, plain["id"]) == []
    assert not get(vmlet, "vm", "plain", ns)["status"].get("addresses")


def test_exposed_vm_on_a_network_is_its_services_endpoint(
        vmlet: Vmlet, control_plane: ControlPlane, cloud: Cloudside, admin: Any, ns: str,
        networks: dict[str, dict[str, Any]]) -> None:
    apply(control_plane, ns, vm_manifest(
        cloud, "web", networks=[{"name": "vmlet-net-a"}],
        expose={"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}))
    vm = running_vm(vmlet, ns, "web")
    server = settled(admin, vm["metadata"]["uid"], status="ACTIVE")
    fixed = [a["addr"] for a in server["addresses"]["vmlet-net-a"]]

    def endpoints() -> list[dict[str, Any]]:
        items = vmlet.kubectl_json("get", "endpointslices", "-n", ns, "-l",
                                   "kubernetes.io/service-name=web")["items"]
        return [e for s in items for e in s.get("endpoints") or []]

    ready = eventually(lambda: [e for e in endpoints() if e["conditions"]["ready"]],
                       timeout=LONG, what="the server's fixed IP as a ready endpoint")
    assert ready[0]["addresses"] == fixed == vm["status"]["addresses"]

    # A resize of a server with ports: Nova resizes onto the other host and the provider moves
    # it back to the pod's (a live migration, which once hung waiting for a VIF event the fake
    # driver never causes). The port and its IP stay.
    control_plane.kubectl("patch", "vm", "web", "-n", ns, "--type=merge",
                          "-p", '{"spec":{"cpu":2,"memory":"2Gi"}}')
    resized = eventually(
        lambda: (v := get(vmlet, "vm", "web", ns))["status"].get("cpu") == 2
        and v["status"].get("state") == "Running" and v, timeout=LONG, interval=1,
        what="Running at the new size")
    after = settled(admin, vm["metadata"]["uid"], status="ACTIVE")
    assert after["flavor"]["vcpus"] == 2 and after["OS-EXT-SRV-ATTR:host"] == server[
        "OS-EXT-SRV-ATTR:host"]
    assert resized["status"]["addresses"] == fixed


def test_unknown_network_is_refused_with_a_reason_and_no_server(
        vmlet: Vmlet, control_plane: ControlPlane, cloud: Cloudside, admin: Any,
        ns: str, networks: dict[str, dict[str, Any]]) -> None:
    apply(control_plane, ns, vm_manifest(
        cloud, "lost", networks=[{"name": "vmlet-net-a"}, {"name": "no-such-net"}]))
    vm = eventually(lambda: vm_state(vmlet, ns, "lost", "Provisioning") if any(
        "no-such-net" in (c.get("message") or "")
        for c in get(vmlet, "vm", "lost", ns).get("status", {}).get("conditions", [])) else None,
        timeout=LONG, interval=1, what="the unknown network named in the VM's conditions")
    # FAILED_PRECONDITION (the IaaS lacks what the pod names): the facade's reason
    # PreconditionFailed, on the VM's Failure condition; retried, so a network made later is found.
    failure = next(c for c in vm["status"]["conditions"] if c["type"] == "Failure")
    assert failure["status"] == "True" and failure["reason"] == "PreconditionFailed", failure
    # The message names the networks there are, so the user can fix the spec.
    assert failure["message"].startswith(
        "network 'no-such-net' not found in Neutron; the networks there are: "), failure
    assert "vmlet-net-a" in failure["message"] and "vmlet-net-b" in failure["message"]
    pod = get(vmlet, "pod", vm["status"]["podName"], ns)
    waiting = pod["status"]["containerStatuses"][0]["state"]["waiting"]
    assert waiting["reason"] == "PreconditionFailed" and waiting["message"] == failure["message"]
    assert servers_of(admin, vm["metadata"]["uid"]) == []


def test_ambiguous_network_name_is_refused_with_the_ids(
        vmlet: Vmlet, control_plane: ControlPlane, cloud: Cloudside, admin: Any,
        ns: str, networks: dict[str, dict[str, Any]]) -> None:
    project = networks["vmlet-net-a"]["project_id"]
    made = []
    try:
        for _ in range(2):  # two tenant networks (VLANs of physnet1) with one name
            resp = admin.network.post("/networks", json={"network": {
                "name": "vmlet-twin", "project_id": project}})
            openstack.exceptions.raise_from_response(resp)
            made.append(resp.json()["network"]["id"])
        apply(control_plane, ns, vm_manifest(cloud, "twin", networks=[{"name": "vmlet-twin"}]))

        def refused() -> dict[str, Any] | None:
            pods = vmlet.kubectl_json("get", "pods", "-n", ns)["items"]
            for pod in pods:
                for cs in pod.get("status", {}).get("containerStatuses") or []:
                    waiting = cs.get("state", {}).get("waiting") or {}
                    if "ambiguous" in (waiting.get("message") or ""):
                        return dict(waiting)
            return None

        waiting = eventually(refused, timeout=LONG, interval=1, what="the ambiguous name refused")
        assert waiting["reason"] == "PreconditionFailed"
        assert all(i in waiting["message"] for i in made), waiting
        uid = get(vmlet, "vm", "twin", ns)["metadata"]["uid"]
        assert servers_of(admin, uid) == []
    finally:
        control_plane.kubectl("delete", "vm", "twin", "-n", ns, "--wait=false", check=False)
        for network_id in made:
            admin.network.delete(f"/networks/{network_id}")
