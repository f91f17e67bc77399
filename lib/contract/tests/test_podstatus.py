"""The PodStatus builders: phases, readiness and container states as a kubelet reports them."""

from __future__ import annotations

from datetime import UTC, datetime

from vmlet.provider.v1 import pod_pb2
from vmlet_contract import podstatus, progress

POD = pod_pb2.Pod(
    ref=pod_pb2.PodRef(namespace="ns", name="vm-1", uid="u1"),
    node_name="host-a",
    containers=[pod_pb2.Container(name="vm", image="ubuntu-24.04")],
)
T0 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def _readiness(status: pod_pb2.PodStatus) -> tuple[bool, str, str]:
    """(ready, not-ready reason, message); the builders never set the deprecated conditions."""
    assert status.HasField("ready") and not status.conditions
    return status.ready, status.not_ready_reason, status.not_ready_message


def test_pending() -> None:
    status = podstatus.pending(POD, reason="PoweringOn", message="booting", provider_id="vm-42")
    assert status.phase == pod_pb2.POD_PHASE_PENDING
    assert status.pod_ip == "" and not status.HasField("start_time")
    assert status.actual_node_name == "host-a" and status.provider_id == "vm-42"
    assert _readiness(status) == (False, "", "")
    (cs,) = status.container_statuses
    assert cs.name == "vm" and cs.image == "ubuntu-24.04" and not cs.ready
    assert cs.WhichOneof("state") == "waiting"
    assert (cs.waiting.reason, cs.waiting.message) == ("PoweringOn", "booting")


def test_running() -> None:
    status = podstatus.running(
        POD,
        ips=["10.0.0.5", "fd00::5"],
        started_at=T0,
        container_id="memory://x",
        host_ip="1.2.3.4",
    )
    assert status.phase == pod_pb2.POD_PHASE_RUNNING
    assert status.pod_ip == "10.0.0.5" and list(status.pod_ips) == ["10.0.0.5", "fd00::5"]
    assert status.host_ip == "1.2.3.4"
    assert status.start_time.ToDatetime(tzinfo=UTC) == T0
    assert _readiness(status) == (True, "", "")
    (cs,) = status.container_statuses
    assert cs.ready and cs.container_id == "memory://x"
    assert cs.running.started_at.ToDatetime(tzinfo=UTC) == T0


def test_failed() -> None:
    status = podstatus.failed(POD, reason="VMVanished", message="the VM is gone", started_at=T0)
    assert status.phase == pod_pb2.POD_PHASE_FAILED
    assert (status.reason, status.message) == ("VMVanished", "the VM is gone")
    assert _readiness(status) == (False, "", "")
    (cs,) = status.container_statuses
    assert cs.terminated.exit_code == 1 and cs.terminated.reason == "VMVanished"
    assert cs.terminated.HasField("finished_at")


def test_succeeded() -> None:
    status = podstatus.succeeded(POD, finished_at=T0)
    assert status.phase == pod_pb2.POD_PHASE_SUCCEEDED
    assert _readiness(status) == (False, "", "")
    assert status.container_statuses[0].terminated.exit_code == 0


def test_timestamp_takes_naive_times_as_utc() -> None:
    naive = datetime(2025, 1, 2, 3, 4, 5)
    assert podstatus.timestamp(naive).ToDatetime(tzinfo=UTC) == T0


def test_every_status_carries_its_progress() -> None:
    assert podstatus.pending(POD).progress == pod_pb2.PROGRESS_CREATING
    assert podstatus.pending(POD, reason="Relocating").progress == pod_pb2.PROGRESS_RELOCATING
    assert podstatus.pending(POD, reason="PoweredOff").progress == pod_pb2.PROGRESS_STOPPED
    named = podstatus.pending(POD, reason="Cloning", progress=pod_pb2.PROGRESS_CREATING)
    assert named.progress == pod_pb2.PROGRESS_CREATING
    assert podstatus.running(POD, ips=[], started_at=T0).progress == pod_pb2.PROGRESS_NONE
    assert podstatus.failed(POD, reason="VMVanished", message="").progress == (
        pod_pb2.PROGRESS_FAILED)
    assert podstatus.succeeded(POD).progress == pod_pb2.PROGRESS_NONE


def test_not_ready() -> None:
    status = podstatus.running(POD, ips=[], started_at=T0)
    podstatus.not_ready(status, "WaitingForGuestIP", "no IP yet")
    assert status.progress == pod_pb2.PROGRESS_WAITING_FOR_GUEST_IP
    assert _readiness(status) == (False, "WaitingForGuestIP", "no IP yet")
    assert not status.container_statuses[0].ready
    podstatus.not_ready(status, "ServerStateUnknown", "?", pod_pb2.PROGRESS_STATE_UNKNOWN)
    assert status.progress == pod_pb2.PROGRESS_STATE_UNKNOWN


def test_every_progress_value_has_a_name_that_names_it() -> None:
    for value in pod_pb2.Progress.values():
        if value == pod_pb2.PROGRESS_UNSPECIFIED:
            assert progress.name(value) == ""
            continue
        assert progress.of_reason(progress.name(value)) == value
    assert progress.of_reason("Shelved") == pod_pb2.PROGRESS_STOPPED
    assert progress.of_reason("SomethingElse") == pod_pb2.PROGRESS_UNSPECIFIED
    assert progress.STEPS >= progress.MOVING


def test_observed_size() -> None:
    status = podstatus.running(POD, ips=[], started_at=T0)
    podstatus.observed_size(status, cpu_millis=0, memory_bytes=2**30)
    assert not status.HasField("resources")
    podstatus.observed_size(status, cpu_millis=4000, memory_bytes=2**30)
    assert (status.resources.cpu_millis, status.resources.memory_bytes) == (4000, 2**30)
