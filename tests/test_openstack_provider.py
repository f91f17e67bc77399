"""The OpenStack provider against a real OpenStack, through its real gRPC server, checked with
openstacksdk as the admin: nodes, servers, flavors, keep, resize, migration, snapshots, console
logs. (Concurrency, faults, crashes and outages: tests/test_openstack_provider_faults.py; the
provider and the OpenStack: tests/openstackprovider.py.)

The OpenStack is `vmlet_localenv.openstack.OpenStackEnv`: Keystone, Placement, Glance, Neutron
and Nova (api, conductor, scheduler, two nova-compute hosts with nova's fake virt driver) from
PyPI, on loopback, started once for this module. The provider runs as its own process
(`python -m vmlet_openstack`) with the env's clouds.yaml; the tests call it over gRPC as the
facade would and look at Nova directly as the admin to see what really happened there. What the
contract says of every provider (idempotent and concurrent creates, keep versus destroy,
identity moves, streams, error codes, malformed requests) is the conformance suite's
(tests/test_conformance.py); these tests keep what is OpenStack's.

What the fake driver does and does not do, as found here: servers go ACTIVE without a
hypervisor; the console output is a fixed three lines; live migration works (its live_migration
calls the post-migration step at once); cold migration and resize work, with confirm;
`createImage` leaves the Glance image `queued` (the fake snapshot uploads nothing), so the
snapshot test uploads the image's bytes itself, playing the hypervisor's part, before restoring
from it; server diagnostics are admin-only by Nova's policy, so the provider's stats carry none.

Set VMLET_OPENSTACK_FACTS to the facts.json of an env already running
(`python -m vmlet_localenv.openstack up --state-dir DIR` writes DIR/facts.json) to reuse it
instead of starting one; the outage test freezes and continues its nova-api like any other.
"""

from __future__ import annotations

import base64
import contextlib
import email
import json
import re
import time
from pathlib import Path
from typing import Any, cast

import grpc
import openstack.exceptions
import pytest

from tests import openstackprovider
from tests.openstackprovider import (
    MV,
    NAMESPACE,
    OP_TIMEOUT,
    Cloudside,
    Provider,
    Recorder,
    eventually,
    make_pod,
    server,
    servers_of,
    unique,
    upload_snapshot,
    wait_ready,
)
from vmlet.provider.v1 import kubelet_endpoint_service_pb2 as kpb
from vmlet.provider.v1 import pod_pb2
from vmlet.provider.v1 import virtual_machine_service_pb2 as vpb
from vmlet_contract.hostile import hostile_requests
from vmlet_localenv.openstack._mariadb import DB_PASSWORD

pytestmark = pytest.mark.openstack

TRUE = pod_pb2.CONDITION_STATUS_TRUE
openstack_env, admin, provider = (
    openstackprovider.openstack_env, openstackprovider.admin, openstackprovider.provider)


def test_nodes_are_the_compute_hosts(provider: Provider, openstack_env: Cloudside) -> None:
    nodes = {n.name: n for n in provider.list_nodes()}
    assert set(nodes) == {openstack_env.node(h) for h in openstack_env.compute_hosts}
    for host in openstack_env.compute_hosts:
        node = nodes[openstack_env.node(host)]
        ready_condition = next(c for c in node.conditions if c.type == "Ready")
        assert ready_condition.status == TRUE, ready_condition.message
        assert ready_condition.reason == "ComputeServiceUp"
        assert not node.unschedulable
        # nova's fake driver reports 1000 vCPUs and 800000 MiB per host.
        assert node.capacity["cpu"] == "1000"
        assert node.capacity["memory"] == "800000Mi"
        assert node.capacity["pods"] and node.allocatable["cpu"]
        assert node.labels["vmlet.io/openstack-host"] == host
        assert node.provider_id.startswith("openstack://")
        assert node.info.kernel_version.startswith("fake")
    assert provider.pong().provider == "openstack"


def test_create_lands_on_the_pods_host_with_flavor_and_identity(
    provider: Provider, openstack_env: Cloudside, admin: Any
) -> None:
    host = openstack_env.compute_hosts[1]
    # 1.5 CPUs and 1 GiB: the smallest flavor with 2 vCPUs and at least 1024 MiB is m1.medium.
    pod = make_pod(
        unique("place"), openstack_env.node(host), cpu_millis=1500, memory_bytes=2**30,
        user_data="#cloud-config\nhostname: placed\n",
    )  # fmt: skip
    named = make_pod(
        unique("named"), openstack_env.node(openstack_env.compute_hosts[0]), flavor="m1.small"
    )
    named.init_containers.add(name="prep", command=["mkdir", "-p", "/srv"])
    named.containers[0].args.extend(["touch", "/srv/booted"])  # args alone: the command
    with provider.cleanup(pod.identity, named.identity):
        first = provider.create(pod)
        assert first.phase == pod_pb2.POD_PHASE_PENDING
        assert first.provider_id
        provider.create(named)
        status = wait_ready(provider, pod)
        assert status.actual_node_name == openstack_env.node(host)
        assert status.pod_ip == "" and not status.pod_ips  # no ports: no address, none invented
        found = servers_of(admin, pod.identity)
        assert len(found) == 1
        nova = found[0]
        assert nova["id"] == status.provider_id == first.provider_id
        assert nova["OS-EXT-SRV-ATTR:host"] == host
        assert nova["flavor"]["original_name"] == "m1.medium"
        assert nova["metadata"]["vmlet-identity"] == pod.identity
        assert nova["metadata"]["vmlet-pod"] == pod.ref.name
        assert f"vmlet-id-{pod.identity}" in nova["tags"]
        user_data = base64.b64decode(nova["OS-EXT-SRV-ATTR:user_data"]).decode()
        assert user_data == pod.user_data
        assert nova["addresses"] == {}
        wait_ready(provider, named)
        other = servers_of(admin, named.identity)[0]
        document = email.message_from_string(
            base64.b64decode(other["OS-EXT-SRV-ATTR:user_data"]).decode()
        )
        (first_boot,) = cast(list[Any], document.get_payload())
        assert json.loads(first_boot.get_payload().partition("\n")[2])["runcmd"] == [
            ["mkdir", "-p", "/srv"], ["touch", "/srv/booted"],
        ]  # fmt: skip
        assert other["flavor"]["original_name"] == "m1.small"
        assert other["OS-EXT-SRV-ATTR:host"] == openstack_env.compute_hosts[0]


def test_bad_pods_are_refused(provider: Provider, openstack_env: Cloudside) -> None:
    node = openstack_env.node(openstack_env.compute_hosts[0])
    cases = [
        (
            make_pod(unique("img"), node, image="no-such-image"),
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
        (
            make_pod(unique("oci"), node, image="docker.io/nginx:1"),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (make_pod(unique("fl"), node, flavor="m9.huge"), grpc.StatusCode.INVALID_ARGUMENT),
        (make_pod(unique("big"), node, cpu_millis=64000), grpc.StatusCode.INVALID_ARGUMENT),
        (make_pod(unique("node"), "openstack-nowhere"), grpc.StatusCode.FAILED_PRECONDITION),
    ]
    for pod, code in cases:
        with pytest.raises(grpc.RpcError) as caught:
            provider.create(pod)
        assert caught.value.code() == code, caught.value.details()


def all_server_names(admin: Any) -> list[str]:
    resp = admin.compute.get("/servers/detail", params={"all_tenants": 1, "limit": 1000},
                             microversion=MV)
    openstack.exceptions.raise_from_response(resp)
    return sorted(str(s["name"]) for s in resp.json()["servers"])


def test_out_of_bounds_requests_are_invalid_argument(
    provider: Provider, openstack_env: Cloudside, admin: Any
) -> None:
    """cpu 2^62, memory 2^62, a 10 MB identity, 20 MB of user data, a 4 EiB disk, namespace
    a/b...: INVALID_ARGUMENT from the real server, and Nova and Cinder see nothing (the
    conformance suite checks the codes through the provider's own eyes only)."""
    node = openstack_env.node(openstack_env.compute_hosts[0])
    before = all_server_names(admin)
    stubs = {"pods": provider.pods, "vms": provider.vms}
    for case in hostile_requests(node, "openstack:image/vmlet-test-image"):
        with pytest.raises(grpc.RpcError) as caught:
            getattr(stubs[case.stub], case.method)(case.request, timeout=60)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (case.what, caught.value)
        assert "incident" not in (caught.value.details() or ""), case.what
    after = all_server_names(admin)
    assert set(after) <= set(before) and not [n for n in after if "hostile" in n]


def _env_secrets(state_dir: Path) -> list[str]:
    """Every password of the env: Keystone users (facts.json), the database's and RabbitMQ's
    (the URLs in nova.conf)."""
    facts = json.loads((state_dir / "facts.json").read_text())
    found = [facts["admin"]["password"], facts["vmlet"]["password"]]
    conf = (state_dir / "etc" / "nova.conf").read_text()
    found += re.findall(r"mysql\+pymysql://[^:]+:([^@]+)@", conf)
    found += re.findall(r"rabbit://([^:]+):([^@]+)@", conf)[0][1:]
    found += re.findall(r"(?m)^password\s*=\s*(\S+)", conf)
    return sorted(set(found))


def test_no_secret_of_the_env_on_a_command_line_or_readable_by_others(
    openstack_env: Cloudside,
) -> None:
    state = openstack_env.state_dir
    secrets = _env_secrets(state)
    assert len(secrets) >= 4
    assert DB_PASSWORD not in secrets and "guest" not in secrets  # the env's own, not defaults
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                argv = (entry / "cmdline").read_bytes().decode(errors="replace")
                assert not [s for s in secrets if s in argv], f"pid {entry.name}: {argv[:200]}"
    assert state.stat().st_mode & 0o777 == 0o700
    for path in state.rglob("*"):
        if not path.is_file() or path.is_symlink() or path.stat().st_size > 4 * 2**20:
            continue
        data = path.read_bytes()
        if any(s.encode() in data for s in secrets) or b"PRIVATE KEY" in data:
            assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others"
            assert path.suffix != ".log" or b"PRIVATE KEY" in data, f"{path} logs a password"


def test_stop_and_start_keep_the_server(
    provider: Provider, openstack_env: Cloudside, admin: Any
) -> None:
    """A kept server is SHUTOFF and no longer names a pod; the identity's next pod starts it
    again. (Keep versus destroy as such: the conformance suite's delete_* checks.)"""
    node = openstack_env.node(openstack_env.compute_hosts[0])
    pod = make_pod(unique("keep"), node, keep=True)
    with provider.cleanup(pod.identity):
        provider.create(pod)
        server_id = wait_ready(provider, pod).provider_id
        provider.delete(pod)
        kept = server(admin, server_id)
        assert kept["status"] == "SHUTOFF"
        assert "vmlet-pod" not in kept["metadata"]
        assert kept["metadata"]["vmlet-identity"] == pod.identity
        again = make_pod(unique("keep"), node, identity=pod.identity, keep=True)
        assert provider.create(again).provider_id == server_id
        assert wait_ready(provider, again).provider_id == server_id
        assert server(admin, server_id)["status"] == "ACTIVE"
        assert [s["id"] for s in servers_of(admin, pod.identity)] == [server_id]


def test_resize_to_a_fitting_flavor(
    provider: Provider, openstack_env: Cloudside, admin: Any
) -> None:
    host = openstack_env.compute_hosts[0]
    pod = make_pod(unique("resize"), openstack_env.node(host), cpu_millis=500, memory_bytes=2**28)
    with provider.cleanup(pod.identity):
        provider.create(pod)
        server_id = wait_ready(provider, pod).provider_id
        assert server(admin, server_id)["flavor"]["original_name"] == "m1.tiny"
        bigger = pod_pb2.Pod()
        bigger.CopyFrom(pod)
        bigger.containers[0].resources.cpu_request_millis = 3000  # 3 CPUs: m1.large (4 vCPUs)
        provider.update(bigger)

        def resized() -> dict[str, Any] | None:
            nova = server(admin, server_id)
            done = (
                nova["flavor"]["original_name"] == "m1.large"
                and nova["status"] == "ACTIVE"
                and nova["OS-EXT-STS:task_state"] is None
                and nova["OS-EXT-SRV-ATTR:host"] == host
            )
            return nova if done else None

        eventually(resized, timeout=OP_TIMEOUT, what="resize to m1.large, back on its host")
        status = wait_ready(provider, bigger)
        assert status.provider_id == server_id
        assert status.actual_node_name == openstack_env.node(host)


def test_migration_moves_the_server_to_the_pods_host(
    provider: Provider, openstack_env: Cloudside, admin: Any
) -> None:
    first, second = openstack_env.compute_hosts[:2]
    pod = make_pod(unique("move"), openstack_env.node(first), keep=True)
    with provider.cleanup(pod.identity):
        provider.create(pod)
        server_id = wait_ready(provider, pod).provider_id
        assert server(admin, server_id)["OS-EXT-SRV-ATTR:host"] == first
        # Running: a pod for the same VM on the other node moves it there (live migration).
        moved = make_pod(
            unique("move"), openstack_env.node(second), identity=pod.identity, keep=True
        )
        assert provider.create(moved).provider_id == server_id
        status = wait_ready(provider, moved)
        assert status.actual_node_name == openstack_env.node(second)
        nova = server(admin, server_id)
        assert nova["OS-EXT-SRV-ATTR:host"] == second
        assert nova["metadata"]["vmlet-pod"] == moved.ref.name
        # The first pod lost its VM; deleting it leaves the VM alone.
        provider.delete(pod)
        assert server(admin, server_id)["status"] == "ACTIVE"
        # Stopped: the next pod on the first node moves it back (cold migration + confirm).
        provider.delete(moved)
        assert server(admin, server_id)["status"] == "SHUTOFF"
        back = make_pod(unique("move"), openstack_env.node(first), identity=pod.identity, keep=True)
        provider.create(back)
        status = wait_ready(provider, back)
        nova = server(admin, server_id)
        assert nova["OS-EXT-SRV-ATTR:host"] == first
        assert status.actual_node_name == openstack_env.node(first)
        actions = admin.compute.get(
            f"/servers/{server_id}/os-instance-actions", microversion=MV
        ).json()["instanceActions"]
        kinds = {a["action"] for a in actions}
        assert "live-migration" in kinds and "migrate" in kinds, kinds
        assert [s["id"] for s in servers_of(admin, pod.identity)] == [server_id]


def test_snapshot_and_restore(provider: Provider, openstack_env: Cloudside, admin: Any) -> None:
    """Snapshots are Glance images of the server; a revert rebuilds the server from one, which
    is UNAVAILABLE until the image is active. (Idempotence by name and the codes: the
    conformance suite.)"""
    pod = make_pod(unique("snap"), openstack_env.node(openstack_env.compute_hosts[0]), keep=True)
    vms = provider.vms
    with provider.cleanup(pod.identity):
        provider.create(pod)
        server_id = wait_ready(provider, pod).provider_id
        original_image = server(admin, server_id)["image"]["id"]
        request = vpb.CreateSnapshotRequest(
            identity=pod.identity, name="backup-1", description="before the upgrade"
        )
        snapshot = vms.CreateSnapshot(request, timeout=OP_TIMEOUT).snapshot
        assert snapshot.name == "backup-1" and snapshot.kind == "glance-image"
        assert snapshot.identity == pod.identity
        assert snapshot.description == "before the upgrade"
        image = admin.image.get(f"/images/{snapshot.id}").json()
        assert image["vmlet-identity"] == pod.identity
        assert image.get("instance_uuid") == server_id
        revert = vpb.RevertToSnapshotRequest(identity=pod.identity, snapshot_id=snapshot.id)
        if image["status"] != "active":
            with pytest.raises(grpc.RpcError) as caught:
                vms.RevertToSnapshot(revert, timeout=60)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            upload_snapshot(admin, snapshot.id)
            eventually(
                lambda: admin.image.get(f"/images/{snapshot.id}").json()["status"] == "active",
                what="snapshot image active",
            )
        vms.RevertToSnapshot(revert, timeout=OP_TIMEOUT)
        nova = server(admin, server_id)
        assert nova["id"] == server_id
        assert nova["image"]["id"] == snapshot.id != original_image
        assert nova["status"] == "ACTIVE"
        assert nova["metadata"]["vmlet-identity"] == pod.identity
        wait_ready(provider, pod)
        delete = vpb.DeleteSnapshotRequest(identity=pod.identity, snapshot_id=snapshot.id)
        vms.DeleteSnapshot(delete, timeout=60)
        assert admin.image.get(f"/images/{snapshot.id}").status_code == 404


def test_logs_stats_and_what_is_not_served(
    provider: Provider, openstack_env: Cloudside, admin: Any
) -> None:
    host = openstack_env.compute_hosts[0]
    pod = make_pod(unique("logs"), openstack_env.node(host))
    with provider.cleanup(pod.identity):
        provider.create(pod)
        wait_ready(provider, pod)

        def logs(**kwargs: Any) -> list[str]:
            request = kpb.GetContainerLogsRequest(
                namespace=NAMESPACE, pod_name=pod.ref.name, container_name="vm", **kwargs
            )
            return [
                r.line.decode() for r in provider.endpoints.GetContainerLogs(request, timeout=60)
            ]

        # nova's fake driver has a fixed console.
        assert logs() == ["FAKE CONSOLE OUTPUT", "ANOTHER", "LAST LINE"]
        assert logs(tail_lines=1) == ["LAST LINE"]
        followed = provider.endpoints.GetContainerLogs(
            kpb.GetContainerLogsRequest(namespace=NAMESPACE, pod_name=pod.ref.name, follow=True),
            timeout=30,
        )
        stream = Recorder(followed)
        try:
            for text in ("FAKE CONSOLE OUTPUT", "ANOTHER", "LAST LINE"):
                line = stream.wait(lambda r: True, timeout=20, what=text)
                assert line.line.decode() == text
            time.sleep(2)  # polled again meanwhile: nothing new on the console, nothing sent
            assert stream.items.empty()
            assert stream.thread.is_alive()  # still following
        finally:
            stream.close()
        tail = Recorder(
            provider.endpoints.GetContainerLogs(
                kpb.GetContainerLogsRequest(
                    namespace=NAMESPACE, pod_name=pod.ref.name, follow=True, tail_lines=1
                ),
                timeout=30,
            )
        )
        try:
            assert tail.wait(lambda r: True, timeout=20, what="tail").line == b"LAST LINE"
            time.sleep(2)
            assert tail.items.empty()  # the lines before the tail are not sent on a later poll
        finally:
            tail.close()
        stats = provider.endpoints.GetStatsSummary(
            kpb.GetStatsSummaryRequest(node_name=openstack_env.node(host)), timeout=60
        )
        assert stats.node_memory.usage_bytes > 0
        names = [p.ref.name for p in stats.pods]
        assert pod.ref.name in names
        assert next(p for p in stats.pods if p.ref.name == pod.ref.name).start_time.seconds > 0

        start = kpb.ExecRequest(
            start=kpb.ExecStart(
                namespace=NAMESPACE, pod_name=pod.ref.name, command=["true"], stdout=True
            )
        )
        with pytest.raises(grpc.RpcError) as caught:
            list(provider.endpoints.Exec(iter([start]), timeout=30))
        # A server with no network has no address for SSH: the exec says so.
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "no IP yet" in (caught.value.details() or "")
        # Disks are Cinder volumes (tests/test_openstack_disks.py); their refusals are statuses.
        with pytest.raises(grpc.RpcError) as caught:
            provider.vms.CreateDisk(
                vpb.CreateDiskRequest(name="d", size_bytes=2**30, parameters={"datastore": "x"}),
                timeout=30,
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "unknown StorageClass parameters ['datastore']" in (caught.value.details() or "")
        missing = "00000000-0000-0000-0000-000000000000"
        with pytest.raises(grpc.RpcError) as caught:
            provider.vms.GetDisk(vpb.GetDiskRequest(handle=missing))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert "not found in Cinder" in (caught.value.details() or "")
        provider.vms.DeleteDisk(vpb.DeleteDiskRequest(handle=missing))
