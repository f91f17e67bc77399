"""StartPod and StopPod on the OpenStack provider against a real Nova (fake driver), through the
provider's gRPC server, checked as the admin sees Nova: a server stopped, suspended, paused or
shelved behind the provider's back is reported terminated (exit code 0: Nova keeps none) and
powered on again by StartPod with the Nova action its state needs; StopPod stops a server
(os-stop) and marks it killed (exit code 137) until StartPod; repeated and concurrent calls act
once; unknown pods, other namespaces and a server in ERROR are refused. The provider and the
OpenStack: tests/openstackprovider.py."""

from __future__ import annotations

import time
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


def stop_pod(provider: Provider, pod: pod_pb2.Pod, grace: int = 30) -> pod_pb2.PodStatus:
    status: pod_pb2.PodStatus = provider.pods.StopPod(
        lpb.StopPodRequest(pod=pod, grace_seconds=grace), timeout=OP_TIMEOUT).status
    return status


def code_of_stop(provider: Provider, pod: pod_pb2.Pod) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        stop_pod(provider, pod)
    code: grpc.StatusCode = caught.value.code()
    return code


def assert_killed(status: pod_pb2.PodStatus, server_id: str) -> None:
    """The status of a pod whose server StopPod stopped: terminated, exit code 137."""
    assert status.provider_id == server_id
    assert status.phase == pod_pb2.POD_PHASE_RUNNING and not status.ready, status
    assert status.progress == pod_pb2.PROGRESS_STOPPED, status
    terminated = status.container_statuses[0].terminated
    assert terminated.exit_code == 137 and terminated.reason == "PoweredOff", terminated


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


def exit_code_of(admin: Any, server_id: str) -> str | None:
    metadata: dict[str, str] = server(admin, server_id).get("metadata") or {}
    return metadata.get("vmlet-exit-code")


def test_stop_pod_kills_the_server_until_start_pod(
    provider: Provider, openstack_env: Cloudside, admin: Any
) -> None:
    host = openstack_env.compute_hosts[0]
    pod = make_pod(unique("kill"), openstack_env.node(host))
    with provider.cleanup(pod.identity):
        provider.create(pod)
        server_id = wait_ready(provider, pod).provider_id
        stream = provider.stream()
        try:
            stream.wait(pod.ref.name, lambda s: s.ready, timeout=30)  # subscribed
            answer = stop_pod(provider, pod)
            # While Nova stopped it the pod was Running, not ready, with the step shown.
            stopping = stream.wait(pod.ref.name, lambda s: s.not_ready_reason == "Stopping",
                                   timeout=30)
            assert stopping.phase == pod_pb2.POD_PHASE_RUNNING and not stopping.ready
            assert stopping.progress == pod_pb2.PROGRESS_BUSY
        finally:
            stream.close()
        assert_killed(answer, server_id)
        nova = server(admin, server_id)
        assert nova["status"] == "SHUTOFF" and nova["OS-EXT-SRV-ATTR:host"] == host
        assert nova["metadata"]["vmlet-exit-code"] == "137"
        assert_killed(provider.status(pod), server_id)
        assert starts(admin, server_id, "stop") == 1
        # Stopped: nothing asked of Nova again.
        assert_killed(stop_pod(provider, pod, grace=0), server_id)
        assert starts(admin, server_id, "stop") == 1
        # Neither an update nor time makes the provider start it again.
        provider.pods.UpdatePod(lpb.UpdatePodRequest(pod=pod), timeout=OP_TIMEOUT)
        time.sleep(5)
        assert server(admin, server_id)["status"] == "SHUTOFF"
        assert exit_code_of(admin, server_id) == "137"
        assert_killed(provider.status(pod), server_id)
        assert starts(admin, server_id) == 0

        start_pod(provider, pod)
        wait_nova(admin, server_id, "ACTIVE")
        assert exit_code_of(admin, server_id) is None
        status = wait_ready(provider, pod)
        assert status.container_statuses[0].HasField("running")
        assert starts(admin, server_id) == 1

        # Concurrent calls: one stop.
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: stop_pod(provider, pod), range(4)))
        for each in answers:
            assert_killed(each, server_id)
        assert server(admin, server_id)["status"] == "SHUTOFF"
        assert starts(admin, server_id, "stop") == 2
        assert [s["id"] for s in servers_of(admin, pod.identity)] == [server_id]


def test_stop_pod_of_a_server_stopped_in_nova_changes_nothing(
    provider: Provider, openstack_env: Cloudside, admin: Any
) -> None:
    pod = make_pod(unique("off"), openstack_env.node(openstack_env.compute_hosts[1]))
    with provider.cleanup(pod.identity):
        provider.create(pod)
        server_id = wait_ready(provider, pod).provider_id
        act(admin, server_id, {"os-stop": None})
        wait_nova(admin, server_id, "SHUTOFF")
        wait_stopped(provider, pod, "PoweredOff")
        answer = stop_pod(provider, pod)
        assert answer.container_statuses[0].terminated.exit_code == 0
        assert starts(admin, server_id, "stop") == 1  # the admin's
        assert exit_code_of(admin, server_id) is None


def test_stop_pod_refusals(provider: Provider, openstack_env: Cloudside, admin: Any) -> None:
    node = openstack_env.node(openstack_env.compute_hosts[0])
    assert code_of_stop(provider, make_pod(unique("nobody"), node)) == grpc.StatusCode.NOT_FOUND
    pod = make_pod(unique("mine"), node)
    with provider.cleanup(pod.identity):
        provider.create(pod)
        server_id = wait_ready(provider, pod).provider_id
        other = make_pod(pod.ref.name, node, identity=pod.identity)
        other.ref.namespace = "vmlet-other"
        assert code_of_stop(provider, other) == grpc.StatusCode.PERMISSION_DENIED
        stranger = make_pod(unique("stranger"), node, identity=pod.identity)
        assert code_of_stop(provider, stranger) == grpc.StatusCode.NOT_FOUND
        assert server(admin, server_id)["status"] == "ACTIVE"
        assert starts(admin, server_id, "stop") == 0
        assert wait_ready(provider, pod).ready
        # Started in Nova behind the provider's back: the kill is forgotten, as by StartPod.
        assert_killed(stop_pod(provider, pod), server_id)
        act(admin, server_id, {"os-start": None})
        wait_nova(admin, server_id, "ACTIVE")
        eventually(lambda: exit_code_of(admin, server_id) is None, timeout=60,
                   what="the exit code cleared")
        assert wait_ready(provider, pod).ready


def test_stop_pod_survives_a_provider_restart(
    openstack_env: Cloudside, admin: Any, tmp_path: Path
) -> None:
    """The exit code lives on the server: a provider started afresh reports it."""
    pod = make_pod(unique("killed"), openstack_env.node(openstack_env.compute_hosts[1]))
    running = start_provider(openstack_env, tmp_path / "first")
    try:
        running.create(pod)
        server_id = wait_ready(running, pod).provider_id
        assert_killed(stop_pod(running, pod), server_id)
        running.stop()
        running = start_provider(openstack_env, tmp_path / "second")
        assert_killed(eventually(lambda: running.status(pod), timeout=OP_TIMEOUT,
                                 what="the pod adopted"), server_id)
        start_pod(running, pod)
        wait_nova(admin, server_id, "ACTIVE")
        assert wait_ready(running, pod).provider_id == server_id
        assert exit_code_of(admin, server_id) is None
    finally:
        with running.cleanup(pod.identity):
            pass
        running.stop()
