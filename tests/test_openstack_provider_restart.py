"""StartPod on the OpenStack provider against a real Nova (fake driver), through the provider's
gRPC server, checked as the admin sees Nova: a server stopped, suspended, paused or shelved
behind the provider's back is reported terminated (exit code 0: Nova keeps none) and powered on
again by StartPod with the Nova action its state needs; repeated and concurrent calls act once;
unknown pods, other namespaces and a server in ERROR are refused. The provider and the OpenStack:
tests/openstackprovider.py."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import openstack.exceptions
import pytest

from tests import openstackprovider
from tests.openstackprovider import (
    MV,
    OP_TIMEOUT,
    Cloudside,
    Provider,
    eventually,
    make_pod,
    server,
    servers_of,
    start_provider,
    unique,
    wait_ready,
)
from vmlet.provider.v1 import pod_lifecycle_service_pb2 as lpb
from vmlet.provider.v1 import pod_pb2

pytestmark = pytest.mark.openstack

openstack_env, admin, provider = (
    openstackprovider.openstack_env, openstackprovider.admin, openstackprovider.provider)


def start_pod(provider: Provider, pod: pod_pb2.Pod) -> pod_pb2.PodStatus:
    status: pod_pb2.PodStatus = provider.pods.StartPod(
        lpb.StartPodRequest(pod=pod), timeout=OP_TIMEOUT).status
    return status


def code_of_start(provider: Provider, pod: pod_pb2.Pod) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        start_pod(provider, pod)
    code: grpc.StatusCode = caught.value.code()
    return code


def act(admin: Any, server_id: str, action: dict[str, Any]) -> None:
    """A server action as the admin: someone working on the server in Nova."""
    resp = admin.compute.post(f"/servers/{server_id}/action", json=action, microversion=MV)
    openstack.exceptions.raise_from_response(resp)


def wait_nova(admin: Any, server_id: str, status: str) -> dict[str, Any]:
    def settled() -> dict[str, Any] | None:
        nova = server(admin, server_id)
        done = nova["status"] == status and nova["OS-EXT-STS:task_state"] is None
        return nova if done else None

    found: dict[str, Any] = eventually(settled, timeout=OP_TIMEOUT,
                                       what=f"server {server_id} {status} in Nova")
    return found


def wait_stopped(provider: Provider, pod: pod_pb2.Pod, reason: str) -> pod_pb2.PodStatus:
    """Waits until the provider reports the pod's VM stopped on its own with `reason`."""

    def stopped() -> pod_pb2.PodStatus | None:
        status = provider.status(pod)
        return status if status.progress == pod_pb2.PROGRESS_STOPPED else None

    status: pod_pb2.PodStatus = eventually(stopped, timeout=OP_TIMEOUT,
                                           what=f"pod {pod.ref.name} stopped")
    assert status.phase == pod_pb2.POD_PHASE_RUNNING and not status.ready
    assert status.not_ready_reason == reason
    terminated = status.container_statuses[0].terminated
    assert terminated.exit_code == 0 and terminated.reason == reason
    assert "no exit code" in terminated.message
    return status


def starts(admin: Any, server_id: str, kind: str = "start") -> int:
    """How many `kind` actions Nova recorded for the server."""
    resp = admin.compute.get(f"/servers/{server_id}/os-instance-actions", microversion=MV)
    openstack.exceptions.raise_from_response(resp)
    return sum(1 for a in resp.json()["instanceActions"] if a["action"] == kind)


def test_start_pod_powers_a_stopped_server_on_again_once(
    provider: Provider, openstack_env: Cloudside, admin: Any
) -> None:
    host = openstack_env.compute_hosts[0]
    pod = make_pod(unique("again"), openstack_env.node(host))
    with provider.cleanup(pod.identity):
        provider.create(pod)
        server_id = wait_ready(provider, pod).provider_id
        # A running server: nothing to do, nothing asked of Nova.
        assert start_pod(provider, pod).ready
        assert starts(admin, server_id) == 0
        act(admin, server_id, {"os-stop": None})
        wait_nova(admin, server_id, "SHUTOFF")
        wait_stopped(provider, pod, "PoweredOff")

        answer = start_pod(provider, pod)
        assert answer.provider_id == server_id
        assert answer.ready or answer.progress == pod_pb2.PROGRESS_POWERING_ON, answer
        nova = wait_nova(admin, server_id, "ACTIVE")
        assert nova["OS-EXT-SRV-ATTR:host"] == host
        status = wait_ready(provider, pod)
        assert status.phase == pod_pb2.POD_PHASE_RUNNING
        assert status.container_statuses[0].HasField("running")
        assert starts(admin, server_id) == 1
        # Again, by namespace and name only: it runs, nothing changes.
        by_name = pod_pb2.Pod(ref=pod.ref, node_name=pod.node_name, containers=pod.containers)
        assert start_pod(provider, by_name).ready
        assert start_pod(provider, pod).ready
        assert starts(admin, server_id) == 1

        # Concurrent calls for a stopped server: one start.
        act(admin, server_id, {"os-stop": None})
        wait_nova(admin, server_id, "SHUTOFF")
        wait_stopped(provider, pod, "PoweredOff")
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: start_pod(provider, pod), range(4)))
        assert {a.provider_id for a in answers} == {server_id}
        wait_nova(admin, server_id, "ACTIVE")
        wait_ready(provider, pod)
        assert starts(admin, server_id) == 2
        assert [s["id"] for s in servers_of(admin, pod.identity)] == [server_id]


@pytest.mark.parametrize(
    ("rest", "status", "reason", "wake"),
    [
        ({"suspend": None}, "SUSPENDED", "Suspended", "resume"),
        ({"pause": None}, "PAUSED", "Paused", "unpause"),
    ],
)
def test_start_pod_resumes_and_unpauses(
    provider: Provider, openstack_env: Cloudside, admin: Any,
    rest: dict[str, Any], status: str, reason: str, wake: str,
) -> None:  # fmt: skip
    pod = make_pod(unique(reason.lower()), openstack_env.node(openstack_env.compute_hosts[1]))
    with provider.cleanup(pod.identity):
        provider.create(pod)
        server_id = wait_ready(provider, pod).provider_id
        act(admin, server_id, rest)
        wait_nova(admin, server_id, status)
        wait_stopped(provider, pod, reason)
        start_pod(provider, pod)
        wait_nova(admin, server_id, "ACTIVE")
        wait_ready(provider, pod)
        assert starts(admin, server_id, wake) == 1
        assert starts(admin, server_id) == 0


def test_start_pod_unshelves_back_to_the_pods_host(
    provider: Provider, openstack_env: Cloudside, admin: Any
) -> None:
    """Shelving offloads the server (shelved_offload_time 0); unshelve schedules it anew, and
    the provider brings it back to its pod's host should Nova pick the other one."""
    host = openstack_env.compute_hosts[1]
    pod = make_pod(unique("shelf"), openstack_env.node(host))
    with provider.cleanup(pod.identity):
        provider.create(pod)
        server_id = wait_ready(provider, pod).provider_id
        act(admin, server_id, {"shelve": None})
        shelved = eventually(
            lambda: (nova := server(admin, server_id))["status"].startswith("SHELVED")
            and nova["OS-EXT-STS:task_state"] is None and nova,
            timeout=OP_TIMEOUT, what="server shelved")  # fmt: skip
        wait_stopped(provider, pod, "Shelved")
        start_pod(provider, pod)

        def back() -> dict[str, Any] | None:
            nova = server(admin, server_id)
            done = (nova["status"] == "ACTIVE" and nova["OS-EXT-STS:task_state"] is None
                    and nova["OS-EXT-SRV-ATTR:host"] == host)
            return nova if done else None

        eventually(back, timeout=OP_TIMEOUT, what=f"server unshelved ({shelved['status']})")
        assert wait_ready(provider, pod).actual_node_name == openstack_env.node(host)
        assert starts(admin, server_id, "unshelve") == 1


def test_start_pod_refusals(provider: Provider, openstack_env: Cloudside, admin: Any) -> None:
    node = openstack_env.node(openstack_env.compute_hosts[0])
    assert code_of_start(provider, make_pod(unique("nobody"), node)) == grpc.StatusCode.NOT_FOUND
    pod = make_pod(unique("mine"), node)
    with provider.cleanup(pod.identity):
        provider.create(pod)
        server_id = wait_ready(provider, pod).provider_id
        act(admin, server_id, {"os-stop": None})
        wait_nova(admin, server_id, "SHUTOFF")
        wait_stopped(provider, pod, "PoweredOff")
        # A pod of another namespace naming the server's identity: refused as create refuses it.
        other = make_pod(pod.ref.name, node, identity=pod.identity)
        other.ref.namespace = "vmlet-other"
        assert code_of_start(provider, other) == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as caught:
            provider.create(other)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # Another pod of the namespace (a new UID) does not run the server.
        stranger = make_pod(unique("stranger"), node, identity=pod.identity)
        assert code_of_start(provider, stranger) == grpc.StatusCode.NOT_FOUND
        assert server(admin, server_id)["status"] == "SHUTOFF"
        assert starts(admin, server_id) == 0
        # Nova does not power on a server in ERROR.
        act(admin, server_id, {"os-resetState": {"state": "error"}})
        wait_nova(admin, server_id, "ERROR")
        with pytest.raises(grpc.RpcError) as caught:
            start_pod(provider, pod)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "ERROR" in (caught.value.details() or "")
        assert server(admin, server_id)["status"] == "ERROR"


def test_start_pod_after_a_provider_restart(
    openstack_env: Cloudside, admin: Any, tmp_path: Path
) -> None:
    """A provider started afresh knows the pod from its server's metadata and starts it."""
    pod = make_pod(unique("reborn"), openstack_env.node(openstack_env.compute_hosts[0]))
    running = start_provider(openstack_env, tmp_path / "first")
    try:
        running.create(pod)
        server_id = wait_ready(running, pod).provider_id
        running.stop()
        act(admin, server_id, {"os-stop": None})
        wait_nova(admin, server_id, "SHUTOFF")
        running = start_provider(openstack_env, tmp_path / "second")
        wait_stopped(running, pod, "PoweredOff")
        start_pod(running, pod)
        wait_nova(admin, server_id, "ACTIVE")
        assert wait_ready(running, pod).provider_id == server_id
    finally:
        with running.cleanup(pod.identity):
            pass
        running.stop()
