"""Unit tests of the OpenStack provider's parts that need no OpenStack: fault mapping, sizing,
naming, server records, pod statuses, console diffing and settings."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
import requests
from keystoneauth1 import exceptions as ksa
from openstack import exceptions as sdk

from vmlet.provider.v1 import pod_pb2
from vmlet_contract import InvalidArgument, Unavailable
from vmlet_openstack import naming
from vmlet_openstack.cloud import Cloud
from vmlet_openstack.config import (
    ConfigError,
    Settings,
    add_openstack_arguments,
    settings_from_args,
)
from vmlet_openstack.consolelog import ConsoleJournal, new_lines
from vmlet_openstack.faults import server_fault, status_error, to_provider_error
from vmlet_openstack.records import FlavorRecord, ServerRecord
from vmlet_openstack.sizing import choose_flavor, demand_of, image_ref
from vmlet_openstack.status import Progress, pod_status

FLAVORS = [
    FlavorRecord("1", "m1.tiny", 1, 512, 1),
    FlavorRecord("2", "m1.small", 1, 2048, 10),
    FlavorRecord("3", "m1.medium", 2, 4096, 20),
    FlavorRecord("4", "m1.large", 4, 8192, 40),
]


def _pod(cpu: int = 0, memory: int = 0, flavor: str = "") -> pod_pb2.Pod:
    return pod_pb2.Pod(
        ref=pod_pb2.PodRef(namespace="ns", name="web", uid="u1"),
        identity="id-1",
        node_name="openstack-h1",
        annotations={"openstack.vmlet.io/flavor": flavor} if flavor else {},
        containers=[
            pod_pb2.Container(
                name="vm",
                image="openstack:image/debian",
                resources=pod_pb2.Resources(cpu_request_millis=cpu, memory_request_bytes=memory),
            )
        ],
    )


def _server(**overrides: Any) -> ServerRecord:
    data: dict[str, Any] = {
        "id": "s1",
        "name": "ns-web",
        "status": "ACTIVE",
        "OS-EXT-STS:task_state": None,
        "OS-EXT-SRV-ATTR:host": "h1",
        "metadata": {"vmlet-identity": "id-1", "vmlet-namespace": "ns", "vmlet-pod": "web"},
        "tags": ["vmlet"],
        "addresses": {},
        "flavor": {"original_name": "m1.tiny", "vcpus": 1, "ram": 512},
        "image": {"id": "img"},
        "OS-SRV-USG:launched_at": "2025-01-01T10:00:00.000000",
        "created": "2025-01-01T09:59:00Z",
        "updated": "2025-01-01T10:00:01Z",
    }
    data.update(overrides)
    return ServerRecord.from_json(data)


# -- faults -----


class _Resp:
    def __init__(self, status: int, text: str) -> None:
        self.status_code = status
        self.headers: dict[str, str] = {}
        self.text = text
        self.reason = "x"

    def json(self) -> Any:
        return {"badRequest": {"message": self.text}}


@pytest.mark.parametrize(
    ("status", "text", "code"),
    [
        (400, "Invalid flavorRef", grpc.StatusCode.INVALID_ARGUMENT),
        (400, "No valid host was found.", grpc.StatusCode.RESOURCE_EXHAUSTED),
        (401, "token expired", grpc.StatusCode.UNAUTHENTICATED),
        (403, "Quota exceeded for instances", grpc.StatusCode.RESOURCE_EXHAUSTED),
        (403, "Policy does not allow", grpc.StatusCode.PERMISSION_DENIED),
        (404, "Instance could not be found", grpc.StatusCode.NOT_FOUND),
        (
            409,
            "Cannot 'start' instance while it is in vm_state active",
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
        (413, "Over limit", grpc.StatusCode.RESOURCE_EXHAUSTED),
        (429, "slow down", grpc.StatusCode.UNAVAILABLE),
        (500, "Unexpected API Error", grpc.StatusCode.INTERNAL),
        (501, "not implemented", grpc.StatusCode.UNIMPLEMENTED),
        (503, "Service Unavailable", grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_http_statuses_map_to_codes(status: int, text: str, code: grpc.StatusCode) -> None:
    assert status_error(status, text, "do it").code == code
    exc = sdk.HttpException(message=text, response=_Resp(status, text), details=text)
    error = to_provider_error(exc, "create server web")
    assert error.code == code
    assert error.message.startswith("create server web: ")
    assert text in error.message


@pytest.mark.parametrize(
    "exc",
    [
        ksa.ConnectFailure("refused"),
        ksa.ConnectTimeout("slow"),
        ksa.DiscoveryFailure("no versions"),
        ksa.EndpointNotFound("no compute"),
        requests.ConnectionError("reset"),
        ConnectionRefusedError(),
    ],
)
def test_transport_errors_are_unavailable(exc: BaseException) -> None:
    error = to_provider_error(exc, "list servers")
    assert isinstance(error, Unavailable)
    assert error.message.startswith("list servers: ")


def test_wrapped_connection_errors_are_unavailable() -> None:
    try:
        try:
            raise ksa.ConnectFailure("refused")
        except ksa.ConnectFailure as inner:
            raise sdk.SDKException("Error getting compute endpoint") from inner
    except sdk.SDKException as outer:
        assert isinstance(to_provider_error(outer), Unavailable)


def test_unknown_errors_are_internal_without_a_traceback() -> None:
    error = to_provider_error(ValueError("secret=hunter2"), "x")
    assert error.code == grpc.StatusCode.INTERNAL
    assert "hunter2" not in error.message


def test_server_faults_become_reasons() -> None:
    reason, message = server_fault(
        {"code": 500, "message": "No valid host was found. There are not enough hosts."}, "web"
    )
    assert reason == "NoValidHost"
    assert "No valid host" in message and "web" in message
    assert server_fault({"message": "Something odd"}, "web")[0] == "ServerError"
    assert server_fault(None, "web")[0] == "ServerError"


# -- sizing and naming -----


def test_smallest_fitting_flavor() -> None:
    assert choose_flavor(demand_of(_pod()), FLAVORS).name == "m1.tiny"
    assert choose_flavor(demand_of(_pod(cpu=1000, memory=2**30)), FLAVORS).name == "m1.small"
    assert choose_flavor(demand_of(_pod(cpu=1001)), FLAVORS).name == "m1.medium"
    assert choose_flavor(demand_of(_pod(cpu=1500, memory=2**30)), FLAVORS).name == "m1.medium"
    assert choose_flavor(demand_of(_pod(cpu=3000)), FLAVORS).name == "m1.large"
    with pytest.raises(InvalidArgument, match="no flavor"):
        choose_flavor(demand_of(_pod(cpu=16000)), FLAVORS)


def test_flavor_annotation() -> None:
    pod = _pod(cpu=100, flavor="m1.large")
    assert choose_flavor(demand_of(pod), FLAVORS).name == "m1.large"
    pod = _pod(flavor="3")
    assert choose_flavor(demand_of(pod), FLAVORS).name == "m1.medium"
    with pytest.raises(InvalidArgument, match="m9"):
        choose_flavor(demand_of(_pod(flavor="m9")), FLAVORS)


def test_image_references() -> None:
    assert image_ref("openstack:image/debian-12") == "debian-12"
    assert image_ref("debian-12") == "debian-12"
    assert image_ref("openstack:image/ubuntu:24.04") == "ubuntu:24.04"
    uid = "5f0e2d6c-3c3a-4c1e-9a43-3f8b8d3b9f11"
    assert image_ref(uid) == uid
    for bad in ("docker.io/library/nginx:1.27", "nginx:1.27", "", "openstack:image/"):
        with pytest.raises(InvalidArgument):
            image_ref(bad)


def test_names() -> None:
    assert naming.node_name("openstack", "vmlet-compute-1") == "openstack-vmlet-compute-1"
    odd = naming.node_name("openstack", "Compute_1.example.com")
    assert odd.startswith("openstack-compute-1-example-com-") and odd == odd.lower()
    assert odd != naming.node_name("openstack", "compute-1.example.com")
    assert naming.server_name("default", "web-0") == "default-web-0"
    long = naming.server_name("n" * 40, "p" * 60)
    assert len(long) <= 63
    assert naming.identity_tag("0b7c1e52-4c1a-4a57-b3b1-8f8d5e3b0c11").startswith("vmlet-id-")
    hashed = naming.identity_tag("a/b,c")
    assert hashed.startswith("vmlet-idh-") and len(hashed) <= 60


# -- records and statuses -----


def test_server_record() -> None:
    server = _server(
        addresses={
            "net": [
                {"addr": "fe80::1", "version": 6},
                {"addr": "2001:db8::5", "version": 6},
                {"addr": "203.0.113.9", "OS-EXT-IPS:type": "floating"},
                {"addr": "10.0.0.5", "OS-EXT-IPS:type": "fixed"},
            ]
        }
    )
    assert server.ips == ("10.0.0.5", "2001:db8::5", "203.0.113.9")
    assert server.identity == "id-1"
    assert server.pod_key == ("ns", "web")
    assert server.settled and not server.busy and not server.deleting
    assert _server(**{"OS-EXT-STS:task_state": "deleting"}).deleting
    assert _server(status="DELETED").gone


def test_statuses() -> None:
    pod = _pod()
    running = pod_status(pod, _server(), node_name="openstack-h1")
    assert running.phase == pod_pb2.POD_PHASE_RUNNING
    assert running.pod_ip == "" and running.provider_id == "s1"
    assert running.container_statuses[0].ready
    assert running.container_statuses[0].image_id == "glance://img"
    building = pod_status(pod, _server(status="BUILD", **{"OS-SRV-USG:launched_at": None}))
    assert building.phase == pod_pb2.POD_PHASE_PENDING
    error = pod_status(pod, _server(status="ERROR", fault={"message": "No valid host was found"}))
    assert error.phase == pod_pb2.POD_PHASE_FAILED and error.reason == "NoValidHost"
    off = pod_status(pod, _server(status="SHUTOFF"))
    assert off.phase == pod_pb2.POD_PHASE_RUNNING
    assert off.container_statuses[0].terminated.reason == "PoweredOff"
    assert not off.container_statuses[0].ready
    starting = pod_status(pod, _server(status="SHUTOFF"), progress=Progress("PoweringOn", "x"))
    assert starting.container_statuses[0].waiting.reason == "PoweringOn"
    assert starting.phase == pod_pb2.POD_PHASE_RUNNING  # it ran before: never back to Pending
    moving = pod_status(pod, _server(status="MIGRATING", **{"OS-EXT-STS:task_state": "migrating"}))
    assert moving.phase == pod_pb2.POD_PHASE_RUNNING and not moving.ready
    assert moving.not_ready_reason == "Migrating" and not moving.conditions
    vanished = pod_status(pod, None, vanished="s1")
    assert vanished.phase == pod_pb2.POD_PHASE_FAILED and vanished.reason == "VMVanished"
    assert pod_status(pod, None).phase == pod_pb2.POD_PHASE_PENDING
    assert [s.progress for s in (running, building, error, off, starting, moving, vanished)] == [
        pod_pb2.PROGRESS_NONE, pod_pb2.PROGRESS_CREATING, pod_pb2.PROGRESS_FAILED,
        pod_pb2.PROGRESS_STOPPED, pod_pb2.PROGRESS_POWERING_ON, pod_pb2.PROGRESS_MIGRATING,
        pod_pb2.PROGRESS_FAILED,
    ]  # fmt: skip
    odd = pod_status(pod, _server(status="WEIRD"))
    assert odd.progress == pod_pb2.PROGRESS_STATE_UNKNOWN
    # The size is the flavor's as Nova reports it, not the pod's.
    assert (running.resources.cpu_millis, running.resources.memory_bytes) == (1000, 512 << 20)
    assert not vanished.HasField("resources")


def test_an_error_server_fails_once_its_fault_is_read() -> None:
    pod = _pod()
    never_ran = _server(status="ERROR", **{"OS-SRV-USG:launched_at": None})
    held = pod_status(pod, never_ran, fault_pending=True)
    assert held.phase == pod_pb2.POD_PHASE_PENDING
    assert held.container_statuses[0].waiting.reason == "ContainerCreating"
    assert "reading the fault" in held.container_statuses[0].waiting.message
    ran = pod_status(pod, _server(status="ERROR"), fault_pending=True)
    assert ran.phase == pod_pb2.POD_PHASE_RUNNING and not ran.ready
    assert ran.not_ready_reason == "Busy" and "reading the fault" in ran.not_ready_message
    read = _server(status="ERROR", fault={"message": "No valid host was found"})
    assert pod_status(pod, read, fault_pending=True).reason == "NoValidHost"
    gave_up = pod_status(pod, never_ran)
    assert gave_up.phase == pod_pb2.POD_PHASE_FAILED and gave_up.reason == "ServerError"


def test_statuses_are_stable_between_lists() -> None:
    pod = _pod()
    for server in (_server(), _server(status="SHUTOFF"), _server(status="ERROR")):
        first = pod_status(pod, server).SerializeToString(deterministic=True)
        assert pod_status(pod, server).SerializeToString(deterministic=True) == first


# -- console, settings -----


def test_new_console_lines() -> None:
    assert new_lines([], ["a", "b"]) == ["a", "b"]
    assert new_lines(["a", "b"], ["a", "b", "c"]) == ["c"]
    assert new_lines(["a", "b", "c"], ["b", "c", "d", "e"]) == ["d", "e"]  # window scrolled
    assert new_lines(["a", "b"], ["a", "b"]) == []
    assert new_lines(["x"], ["y", "z"]) == ["y", "z"]
    # What was sent was a tail (kubectl logs --tail=1 -f): it sits at the end of the window.
    assert new_lines(["c"], ["a", "b", "c"]) == []
    assert new_lines(["c"], ["a", "b", "c", "d"]) == ["d"]


def test_console_lines_keep_the_time_they_were_first_read() -> None:
    journal = ConsoleJournal()
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    t1, t2 = t0 + timedelta(seconds=5), t0 + timedelta(seconds=9)
    first = journal.stamp("s", ["a", "b"], t0)
    assert [(line.time, line.text) for line in first] == [(t0, "a"), (t0, "b")]
    again = journal.stamp("s", ["a", "b", "c"], t1)
    assert [line.time for line in again] == [t0, t0, t1]  # only the new line is new
    assert [line.time for line in journal.stamp("s", ["c"], t2)] == [t1]  # a tail read
    assert [line.time for line in journal.stamp("other", ["a"], t2)] == [t2]  # per server


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_openstack_arguments(parser)
    return parser.parse_args(list(argv))


def test_settings() -> None:
    settings = settings_from_args(_args(), env={})
    assert settings.networks_none and settings.node_prefix == "openstack"
    env = {"OS_CLOUD": "vmlet", "VMLET_OPENSTACK_NETWORK": "private, public"}
    settings = settings_from_args(_args("--workers", "3", "--migration", "cold"), env=env)
    assert settings.cloud == "vmlet" and settings.workers == 3 and settings.migration == "cold"
    assert settings.network == ("private", "public")
    with pytest.raises(ConfigError):
        settings_from_args(_args("--network", "none", "--network", "private"), env={})
    with pytest.raises(ConfigError):
        settings_from_args(_args("--workers", "0"), env={})
    with pytest.raises(ConfigError):
        settings_from_args(_args("--clouds-yaml", "/nonexistent/clouds.yaml"), env={})


def test_record_times_are_aware() -> None:
    assert _server().launched_at == datetime(2025, 1, 1, 10, 0, tzinfo=UTC)


def _flaky_cloud(
    failures: int, exc: BaseException, **settings: Any
) -> tuple[Cloud, list[int], Callable[[Any], int]]:
    """A Cloud whose API raises `exc` for the first `failures` calls, then answers 42."""
    cloud = Cloud(Settings(**settings))
    calls: list[int] = []

    def connect() -> Any:
        return object()

    cloud._connect = connect  # type: ignore[method-assign]

    def fn(api: Any) -> int:
        calls.append(1)
        if len(calls) <= failures:
            raise exc
        return 42

    return cloud, calls, fn


def test_a_read_retries_a_reset_connection() -> None:
    cloud, calls, fn = _flaky_cloud(2, requests.ConnectionError("Connection reset by peer"))
    assert asyncio.run(cloud.call("look up the server of x", fn, read=True)) == 42
    assert len(calls) == 3
    assert cloud.reachable is True


def test_a_write_is_never_repeated() -> None:
    cloud, calls, fn = _flaky_cloud(1, requests.ConnectionError("Connection refused"))
    with pytest.raises(Unavailable):
        asyncio.run(cloud.call("create server x", fn))
    assert len(calls) == 1
    assert cloud.reachable is False


def test_a_read_gives_up_at_its_deadline() -> None:
    cloud, calls, fn = _flaky_cloud(
        1000, requests.ConnectionError("Connection refused"), read_retry_seconds=1.0
    )
    started = time.monotonic()
    with pytest.raises(Unavailable, match="unreachable"):
        asyncio.run(cloud.call("list servers", fn, read=True))
    assert 0.5 < time.monotonic() - started < 3.0
    assert 3 <= len(calls) <= 6
    assert cloud.reachable is False


def test_the_unreachable_reason_does_not_name_the_call_that_found_it() -> None:
    """Ping (and the nodes) say why OpenStack is away, not "create server x": that call's name
    must not reach the Events of later, other operations."""
    cloud, _, fn = _flaky_cloud(1, requests.ConnectionError("Connection refused"))
    with pytest.raises(Unavailable, match=r"^create server x: "):
        asyncio.run(cloud.call("create server x", fn))
    assert cloud.reachable is False
    assert cloud.unreachable_reason and "create server" not in cloud.unreachable_reason
