"""Unit tests of StartPod's choice of Nova action (`restarts.wake_action`), of what StopPod stops
or refuses, of the status of a server that stopped on its own or was stopped by StopPod, and of
the converger leaving such a server off; both calls against Nova:
tests/test_openstack_provider_restart.py."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from vmlet.provider.v1 import pod_pb2
from vmlet_contract import FailedPrecondition, Unavailable
from vmlet_openstack.cloud import Cloud
from vmlet_openstack.config import Settings
from vmlet_openstack.converger import Converger
from vmlet_openstack.naming import META_EXIT_CODE
from vmlet_openstack.nodes import NodeBook
from vmlet_openstack.podtable import PodEntry, PodTable
from vmlet_openstack.records import ServerRecord
from vmlet_openstack.restarts import KILLED, _late, is_off, stop_refusal, wake_action
from vmlet_openstack.status import Progress, pod_status
from vmlet_openstack.watch import ServerCache, Watch


def _server(status: str, task: str | None = None) -> ServerRecord:
    data: dict[str, Any] = {
        "id": "s1",
        "name": "ns-web",
        "status": status,
        "OS-EXT-STS:task_state": task,
        "metadata": {"vmlet-identity": "id-1", "vmlet-namespace": "ns", "vmlet-pod": "web"},
        "OS-SRV-USG:launched_at": "2025-01-01T10:00:00.000000",
        "updated": "2025-01-01T11:00:00Z",
    }
    return ServerRecord.from_json(data)


@pytest.mark.parametrize(
    ("status", "task", "action"),
    [
        ("SHUTOFF", None, {"os-start": None}),
        ("SUSPENDED", None, {"resume": None}),
        ("PAUSED", None, {"unpause": None}),
        ("SHELVED", None, {"unshelve": None}),
        ("SHELVED_OFFLOADED", None, {"unshelve": None}),
        # A task Nova itself refuses the action for (409, FAILED_PRECONDITION): asked anyway.
        ("SHUTOFF", "image_snapshot", {"os-start": None}),
    ],
)
def test_each_resting_state_has_its_action(status: str, task: str | None, action: Any) -> None:
    wake = wake_action(_server(status, task))
    assert wake is not None and wake[1] == action


@pytest.mark.parametrize(
    ("status", "task"),
    [
        ("ACTIVE", None),
        ("ACTIVE", "image_snapshot"),
        ("BUILD", "spawning"),
        ("SHUTOFF", "powering-on"),
        ("SUSPENDED", "resuming"),
        ("PAUSED", "unpausing"),
        ("SHELVED_OFFLOADED", "unshelving"),
        ("REBOOT", "reboot_started"),
        ("MIGRATING", "migrating"),
    ],
)
def test_running_or_starting_is_left_alone(status: str, task: str | None) -> None:
    assert wake_action(_server(status, task)) is None


@pytest.mark.parametrize(
    ("status", "task", "says"),
    [
        ("ERROR", None, "in ERROR"),
        ("ACTIVE", "powering-off", "stopping"),
        ("ACTIVE", "shelving", "stopping"),
        ("RESCUE", None, "RESCUE"),
        ("VERIFY_RESIZE", None, "VERIFY_RESIZE"),
    ],
)
def test_what_cannot_be_started_is_refused(status: str, task: str | None, says: str) -> None:
    with pytest.raises(FailedPrecondition, match=says):
        wake_action(_server(status, task))


def test_a_server_stopped_on_its_own_exits_0_and_says_why() -> None:
    pod = pod_pb2.Pod(
        ref=pod_pb2.PodRef(namespace="ns", name="web"),
        identity="id-1",
        containers=[pod_pb2.Container(name="vm", image="openstack:image/x")],
    )
    status = pod_status(pod, _server("SHUTOFF"))
    assert status.phase == pod_pb2.POD_PHASE_RUNNING and not status.ready
    assert status.progress == pod_pb2.PROGRESS_STOPPED
    assert status.not_ready_reason == "PoweredOff"
    terminated = status.container_statuses[0].terminated
    assert terminated.exit_code == 0 and terminated.reason == "PoweredOff"
    assert "no exit code" in terminated.message
    assert terminated.finished_at.ToJsonString() == "2025-01-01T11:00:00Z"
    assert terminated.started_at.ToJsonString() == "2025-01-01T10:00:00Z"
    assert status.start_time.ToJsonString() == "2025-01-01T10:00:00Z"


# -- StopPod -----


def _pod() -> pod_pb2.Pod:
    return pod_pb2.Pod(
        ref=pod_pb2.PodRef(namespace="ns", name="web", uid="u1"),
        identity="id-1",
        node_name="openstack-h1",
        containers=[pod_pb2.Container(name="vm", image="openstack:image/x")],
    )


def _killed(status: str, task: str | None = None, code: str = "137") -> ServerRecord:
    server = _server(status, task)
    return dataclasses.replace(server, metadata={**server.metadata, META_EXIT_CODE: code})


@pytest.mark.parametrize(
    ("status", "task", "off"),
    [
        ("SHUTOFF", None, True),
        ("SUSPENDED", None, True),
        ("PAUSED", None, True),
        ("SHELVED", None, True),
        ("SHELVED_OFFLOADED", None, True),
        ("ACTIVE", None, False),
        ("ACTIVE", "powering-off", False),
        ("SHUTOFF", "powering-on", False),
        ("BUILD", "spawning", False),
        ("MIGRATING", "migrating", False),
    ],
)
def test_what_stop_pod_finds_off(status: str, task: str | None, off: bool) -> None:
    assert is_off(_server(status, task)) is off


@pytest.mark.parametrize(
    ("status", "task", "says"),
    [
        ("ERROR", None, "in ERROR"),
        ("RESCUE", None, "RESCUE"),
        ("ACTIVE", None, ""),
        ("ACTIVE", "powering-off", ""),
        ("RESCUE", "unrescuing", ""),  # Nova is busy: stopped once it is done
        ("VERIFY_RESIZE", None, ""),
    ],
)
def test_what_stop_pod_refuses(status: str, task: str | None, says: str) -> None:
    refusal = stop_refusal(_server(status, task))
    assert (says in refusal) if says else refusal == ""


def test_a_stop_past_its_deadline() -> None:
    """Still powering off: Nova forces it after its shutdown_timeout, so retry; anything else:
    Nova did not stop it."""
    assert isinstance(_late(_server("ACTIVE", "powering-off")), Unavailable)
    late = _late(_server("MIGRATING", "migrating"))
    assert isinstance(late, FailedPrecondition) and "MIGRATING (task migrating)" in late.message


def test_the_exit_code_is_read_from_the_metadata() -> None:
    assert _server("SHUTOFF").exit_code is None
    assert _killed("SHUTOFF").exit_code == KILLED == 137
    assert _killed("SHUTOFF", code="three").exit_code is None


def test_a_server_stop_pod_stopped_exits_137() -> None:
    status = pod_status(_pod(), _killed("SHUTOFF"))
    assert status.phase == pod_pb2.POD_PHASE_RUNNING and not status.ready
    assert status.progress == pod_pb2.PROGRESS_STOPPED
    assert status.not_ready_reason == "PoweredOff"
    terminated = status.container_statuses[0].terminated
    assert terminated.exit_code == 137 and terminated.reason == "PoweredOff"
    assert "StopPod" in terminated.message and "no exit code" not in terminated.message
    # Only SHUTOFF is what StopPod leaves; a running server with a stale mark runs.
    assert pod_status(_pod(), _killed("SUSPENDED")).container_statuses[0].terminated.exit_code == 0
    assert pod_status(_pod(), _killed("ACTIVE")).ready


def test_a_kill_not_recorded_yet_still_exits_137() -> None:
    """StopPod stopped the server and its mark is not in the record the status is made of (the
    metadata write failed, or the cache has not read it back): killed, 137, all the same."""
    status = pod_status(_pod(), _server("SHUTOFF"), killed=True)
    terminated = status.container_statuses[0].terminated
    assert terminated.exit_code == KILLED and "StopPod stopped it" in terminated.message
    assert pod_status(_pod(), _server("SHUTOFF")).container_statuses[0].terminated.exit_code == 0
    # only SHUTOFF is what StopPod leaves: a suspended server was not killed by it
    suspended = pod_status(_pod(), _server("SUSPENDED"), killed=True)
    assert suspended.container_statuses[0].terminated.exit_code == 0


def test_the_kill_is_forgotten_once_the_server_runs_with_no_mark() -> None:
    _, table = _converger()
    entry = PodEntry(pod=_pod(), host="", server_id="s1", killed=True)
    table._entries[entry.key] = entry
    table._by_identity[entry.identity] = entry.key
    table.on_change(_killed("SHUTOFF"), None)
    assert entry.killed  # off, and recorded: the record says 137 from now on
    table.on_change(_server("ACTIVE"), None)
    assert not entry.killed


@pytest.mark.parametrize("status", ["ACTIVE", "SHUTOFF"])
def test_a_server_being_stopped_is_running_and_busy(status: str) -> None:
    progress = Progress("Stopping", "stopping server ns-web (os-stop)")
    for server in (_server(status, "powering-off" if status == "ACTIVE" else None),
                   _killed(status)):
        pod_status_ = pod_status(_pod(), server, progress=progress)
        assert pod_status_.phase == pod_pb2.POD_PHASE_RUNNING and not pod_status_.ready
        assert pod_status_.progress == pod_pb2.PROGRESS_BUSY
        assert pod_status_.not_ready_reason == "Stopping"
        assert pod_status_.container_statuses[0].HasField("running")


def _converger() -> tuple[Converger, PodTable]:
    settings = Settings()
    cloud = Cloud(settings)
    cache = ServerCache()
    watch = Watch(cloud, cache, settings)
    table = PodTable(cache, watch, NodeBook(cloud, settings))
    return Converger(table, cloud, cache, watch, settings, None), table


def test_the_converger_leaves_a_killed_server_off() -> None:
    converger, _ = _converger()
    entry = PodEntry(pod=_pod(), host="", server_id="s1")
    step = converger._next_step(entry, _server("SHUTOFF"), set())
    assert step is not None and step[0] == "start"
    assert converger._next_step(entry, _killed("SHUTOFF"), set()) is None
    # StopPod killed it and its mark is not recorded (or not read back) yet: still left off
    entry.killed = True
    assert converger._next_step(entry, _server("SHUTOFF"), set()) is None


async def test_rounds_are_held_off_while_a_stop_runs() -> None:
    converger, _ = _converger()
    rounds: list[str] = []
    release = asyncio.Event()

    async def converge(identity: str) -> None:
        rounds.append(identity)
        await release.wait()

    converger._converge = converge
    converger.kick("id-1")
    await asyncio.sleep(0)
    assert rounds == ["id-1"]
    async with converger.holding("id-1"):
        assert not converger.converging("id-1")  # the round under way was cancelled
        converger.kick("id-1")
        await asyncio.sleep(0)
        assert rounds == ["id-1"] and not converger.converging("id-1")
    await asyncio.sleep(0)
    assert rounds == ["id-1", "id-1"]  # it runs again once the stop is over
    release.set()
    await converger.stop()
    async with converger.holding("id-2"):
        pass
    assert not converger.converging("id-2")  # nothing to resume
