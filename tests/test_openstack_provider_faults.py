"""The OpenStack provider against a real OpenStack when things go wrong, checked with
openstacksdk as the admin: concurrent creates and twin servers (Nova must hold exactly one
server per identity; the conformance suite sees the provider's answers only), a compute service
down or disabled, a server in ERROR, the provider SIGKILLed mid-create, nova-api frozen. The
provider and the OpenStack: tests/openstackprovider.py (see tests/test_openstack_provider.py
for what nova's fake driver does)."""

from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import openstack.exceptions
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

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
    servers_of,
    start_provider,
    unique,
    wait_ready,
)
from vmlet.provider.v1 import node_provider_service_pb2 as npb
from vmlet.provider.v1 import pod_lifecycle_service_pb2 as lpb
from vmlet.provider.v1 import pod_pb2
from vmlet_contract import READINESS_SERVICE
from vmlet_localenv.processes import wait_for

pytestmark = pytest.mark.openstack

TRUE = pod_pb2.CONDITION_STATUS_TRUE
UNKNOWN = pod_pb2.CONDITION_STATUS_UNKNOWN
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
openstack_env, admin, provider = (
    openstackprovider.openstack_env, openstackprovider.admin, openstackprovider.provider)


def node_stream(provider: Provider) -> Recorder:
    return Recorder(provider.node_provider.NotifyNodeStatus(npb.NotifyNodeStatusRequest()))


def test_concurrent_duplicate_creates_make_one_server(
    provider: Provider, openstack_env: Cloudside, admin: Any
) -> None:
    pod = make_pod(unique("dup"), openstack_env.node(openstack_env.compute_hosts[1]))
    with provider.cleanup(pod.identity):
        with ThreadPoolExecutor(10) as pool:
            statuses = list(pool.map(lambda _: provider.create(pod), range(10)))
        ids = {s.provider_id for s in statuses}
        assert len(ids) == 1 and "" not in ids
        wait_ready(provider, pod)
        found = servers_of(admin, pod.identity)
        assert [s["id"] for s in found] == list(ids)


def test_two_servers_of_one_identity_are_reduced_to_the_oldest(
    provider: Provider, openstack_env: Cloudside, admin: Any
) -> None:
    """What a create racing the retry of a killed provider would leave: two servers carrying one
    identity. The next look-up keeps the oldest and deletes the other."""
    host = openstack_env.compute_hosts[0]
    pod = make_pod(unique("twin"), openstack_env.node(host))
    image = admin.image.get("/images", params={"name": openstack_env.image_name}).json()["images"][
        0
    ]
    flavor = next(
        f
        for f in admin.compute.get("/flavors/detail", microversion=MV).json()["flavors"]
        if f["name"] == "m1.tiny"
    )
    vmlet = openstack_env.vmlet()
    made: list[str] = []
    with provider.cleanup(pod.identity):
        for _ in range(2):
            body = {
                "name": f"twin-{len(made)}",
                "imageRef": image["id"],
                "flavorRef": flavor["id"],
                "networks": "none",
                "metadata": {"vmlet-identity": pod.identity},
                "tags": ["vmlet", f"vmlet-id-{pod.identity}"],
            }
            resp = vmlet.compute.post("/servers", json={"server": body}, microversion=MV)
            openstack.exceptions.raise_from_response(resp)
            made.append(resp.json()["server"]["id"])
            time.sleep(1.1)  # created a second apart: the first is the oldest
        status = provider.create(pod)
        assert status.provider_id == made[0]
        eventually(
            lambda: [s["id"] for s in servers_of(admin, pod.identity)] == made[:1],
            timeout=OP_TIMEOUT,
            what="the younger twin deleted",
        )
        wait_ready(provider, pod)


def _compute_service(admin: Any, host: str) -> str:
    resp = admin.compute.get(
        "/os-services", params={"binary": "nova-compute", "host": host}, microversion=MV
    )
    openstack.exceptions.raise_from_response(resp)
    service_id: str = resp.json()["services"][0]["id"]
    return service_id


def test_a_compute_service_down_makes_its_node_not_ready(
    provider: Provider, openstack_env: Cloudside, admin: Any
) -> None:
    host = openstack_env.compute_hosts[1]
    node = openstack_env.node(host)
    service_id = _compute_service(admin, host)

    def force_down(down: bool) -> None:
        resp = admin.compute.put(
            f"/os-services/{service_id}", json={"forced_down": down}, microversion=MV
        )
        openstack.exceptions.raise_from_response(resp)

    stream = node_stream(provider)
    try:
        stream.wait(lambda u: u.node.name == node, timeout=30, what="initial node")
        force_down(True)
        update = stream.wait(
            lambda u: u.node.name == node and u.node.conditions[0].status != TRUE,
            timeout=60,
            what="node pushed NotReady",
        )
        ready_condition = update.node.conditions[0]
        assert ready_condition.status == pod_pb2.CONDITION_STATUS_FALSE
        assert ready_condition.reason == "ComputeServiceForcedDown"
        other = openstack_env.node(openstack_env.compute_hosts[0])
        listed = {n.name: n for n in provider.list_nodes()}
        assert listed[other].conditions[0].status == TRUE  # only that host's node
    finally:
        force_down(False)
    stream.wait(
        lambda u: u.node.name == node and u.node.conditions[0].status == TRUE,
        timeout=60,
        what="node pushed Ready again",
    )
    stream.close()


def test_error_server_fault_becomes_the_pods_reason(
    provider: Provider, openstack_env: Cloudside, admin: Any
) -> None:
    host = openstack_env.compute_hosts[1]
    node = openstack_env.node(host)
    service_id = _compute_service(admin, host)

    def set_status(status: str) -> None:
        body: dict[str, Any] = {"status": status}
        if status == "disabled":
            body["disabled_reason"] = "vmlet test maintenance"
        resp = admin.compute.put(f"/os-services/{service_id}", json=body, microversion=MV)
        openstack.exceptions.raise_from_response(resp)

    stream = node_stream(provider)
    pod = make_pod(unique("fault"), node)
    try:
        set_status("disabled")
        update = stream.wait(
            lambda u: u.node.name == node and u.node.unschedulable,
            timeout=60,
            what="node pushed unschedulable",
        )
        assert "vmlet test maintenance" in update.node.conditions[0].message
        with provider.cleanup(pod.identity):
            provider.create(pod)

            def failed() -> pod_pb2.PodStatus | None:
                status = provider.status(pod)
                return status if status.phase == pod_pb2.POD_PHASE_FAILED else None

            status = eventually(failed, timeout=OP_TIMEOUT, what="pod failed")
            assert status.reason == "NoValidHost", (status.reason, status.message)
            assert "No valid host" in status.message
            assert servers_of(admin, pod.identity)[0]["status"] == "ERROR"
    finally:
        set_status("enabled")
    stream.wait(
        lambda u: u.node.name == node and not u.node.unschedulable,
        timeout=60,
        what="node pushed schedulable again",
    )
    stream.close()


def test_sigkill_mid_create_then_restart_makes_one_server(
    openstack_env: Cloudside, admin: Any, tmp_path: Path
) -> None:
    first = start_provider(openstack_env, tmp_path / "first")
    pod = make_pod(unique("kill"), openstack_env.node(openstack_env.compute_hosts[0]))
    outcome: list[Any] = []

    def create() -> None:
        try:
            outcome.append(first.create(pod))
        except grpc.RpcError as exc:
            outcome.append(exc)

    caller = threading.Thread(target=create, daemon=True)
    caller.start()
    # Kill it the moment it has decided to create and is asking Nova (its log says so just
    # before the POST): the request is on its way, the answer is not back.
    log = first.process.log_path
    wait_for(
        lambda: f'"creating server" pod={NAMESPACE}/{pod.ref.name}' in log.read_text(),
        timeout=120,
        interval=0.01,
        what="the provider asking Nova for the server",
    )
    time.sleep(0.05)
    first.process.kill()
    caller.join(30)
    assert not outcome or isinstance(outcome[0], grpc.RpcError), "CreatePod answered"
    # Nova finishes the orphaned request on its own (most of the time: the kill may also have
    # come before the request left).
    with contextlib.suppress(AssertionError):
        eventually(lambda: servers_of(admin, pod.identity), timeout=30, what="orphan server")
    orphans = [s["id"] for s in servers_of(admin, pod.identity)]
    print(f"servers after the kill: {orphans}")
    second = start_provider(openstack_env, tmp_path / "second")
    try:
        with second.cleanup(pod.identity):
            status = second.create(pod)
            made = servers_of(admin, pod.identity)
            assert [s["id"] for s in made] == [status.provider_id]
            if orphans:
                assert status.provider_id == orphans[0]  # found, not made again
            wait_ready(second, pod)
            time.sleep(3)  # a few more polls: still one
            assert [s["id"] for s in servers_of(admin, pod.identity)] == [status.provider_id]
            # The pod is known to the new process (adopted from the server's metadata, then
            # claimed again by CreatePod).
            assert second.listed_named(pod.ref.name)
    finally:
        second.stop()
        first.stop()


def health(provider: Provider) -> tuple[int, int]:
    """(liveness, readiness) as the provider's health service answers them."""
    stub = health_pb2_grpc.HealthStub(provider.channel)
    live = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    ready = stub.Check(health_pb2.HealthCheckRequest(service=READINESS_SERVICE), timeout=10)
    return live.status, ready.status


def test_nova_api_outage_is_unavailable_then_recovers(
    openstack_env: Cloudside, admin: Any, tmp_path: Path
) -> None:
    provider = start_provider(openstack_env, tmp_path / "outage")
    stream = node_stream(provider)
    node = openstack_env.node(openstack_env.compute_hosts[0])
    pod = make_pod(unique("outage"), node)
    try:
        stream.wait(lambda u: u.node.name == node, timeout=30, what="initial node")
        eventually(lambda: health(provider) == (SERVING, SERVING), what="ready")
        openstack_env.stop_nova_api()
        try:

            def unavailable() -> bool:
                try:
                    provider.ping()
                except grpc.RpcError as exc:
                    return bool(exc.code() == grpc.StatusCode.UNAVAILABLE)
                return False

            eventually(unavailable, timeout=60, what="Ping UNAVAILABLE")
            # Alive (the process works), not ready (Nova does not answer).
            eventually(lambda: health(provider) == (SERVING, NOT_SERVING), what="not ready")
            with pytest.raises(grpc.RpcError) as caught:
                provider.pods.CreatePod(lpb.CreatePodRequest(pod=pod), timeout=60)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert caught.value.details()
            update = stream.wait(
                lambda u: u.node.name == node and u.node.conditions[0].status == UNKNOWN,
                timeout=60,
                what="node Ready=Unknown",
            )
            assert update.node.conditions[0].reason == "OpenStackUnreachable"
            listed = {n.name: n for n in provider.list_nodes()}
            assert listed[node].conditions[0].status == UNKNOWN
            provider.process.check_alive()
        finally:
            openstack_env.start_nova_api()
        eventually(provider.pong, timeout=120, what="Ping answers again")
        eventually(lambda: health(provider) == (SERVING, SERVING), what="ready again")
        stream.wait(
            lambda u: u.node.name == node and u.node.conditions[0].status == TRUE,
            timeout=60,
            what="node Ready=True again",
        )
        with provider.cleanup(pod.identity):
            provider.create(pod)
            wait_ready(provider, pod)
            assert len(servers_of(admin, pod.identity)) == 1
    finally:
        stream.close()
        provider.stop()
