"""Unit tests of StartPod's choice of Nova action (`restarts.wake_action`) and of the status of a
server that stopped on its own; StartPod against Nova: tests/test_openstack_provider_restart.py."""

from __future__ import annotations

from typing import Any

import pytest

from vmlet.provider.v1 import pod_pb2
from vmlet_contract import FailedPrecondition
from vmlet_openstack.records import ServerRecord
from vmlet_openstack.restarts import wake_action
from vmlet_openstack.status import pod_status


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
