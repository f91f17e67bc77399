"""The statuses of a pod whose VM StopPod stops: the Stopping step, and the kill it ends in."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from vmlet.provider.v1 import pod_pb2
from vmlet_vmware.records import VmRecord
from vmlet_vmware.status import KILLED, STOPPING, Progress, pod_status

STARTED = datetime(2030, 1, 1, tzinfo=UTC)
POD = pod_pb2.Pod(
    ref=pod_pb2.PodRef(namespace="ns", name="web"),
    containers=[pod_pb2.Container(name="vm", image="debian-12")],
)
STEP = Progress(STOPPING, "stopping VM web-1; its guest has 30s")


def _vm(**overrides: Any) -> VmRecord:
    fields: dict[str, Any] = dict(
        moid="vm-1", name="web-1", identity="id-1", pod=("ns", "web"), pod_uid="", container="vm",
        image="debian-12", template=False, instance_uuid="u-1", power="poweredOn", host="",
        boot_time=STARTED, ip="10.0.0.5", nic_ips=(), num_cpu=1, memory_mb=512,
        cpu_hot_add=False, cpu_hot_remove=False, memory_hot_add=False, datastores=(),
    )  # fmt: skip
    fields.update(overrides)
    return VmRecord(**fields)


@pytest.mark.parametrize("ip", ["10.0.0.5", ""])
def test_a_vm_being_stopped_runs_not_ready_with_the_step(ip: str) -> None:
    status = pod_status(POD, _vm(ip=ip), progress=STEP, first_started=STARTED)
    assert (status.phase, status.progress) == (pod_pb2.POD_PHASE_RUNNING, pod_pb2.PROGRESS_BUSY)
    assert not status.ready
    assert (status.not_ready_reason, status.not_ready_message) == (STOPPING, STEP.message)
    (container,) = status.container_statuses
    assert container.HasField("running") and not container.ready


def test_a_vm_off_before_the_step_ends_waits_stopping() -> None:
    status = pod_status(POD, _vm(power="poweredOff"), progress=STEP, first_started=STARTED)
    assert (status.phase, status.progress) == (pod_pb2.POD_PHASE_RUNNING, pod_pb2.PROGRESS_BUSY)
    (container,) = status.container_statuses
    assert container.waiting.reason == STOPPING and not status.ready


def test_other_steps_on_a_running_vm_keep_it_ready() -> None:
    status = pod_status(POD, _vm(), progress=Progress("Deleting", "x"), first_started=STARTED)
    assert status.ready and status.progress == pod_pb2.PROGRESS_NONE


@pytest.mark.parametrize(
    ("text", "killed", "code", "said"),
    [
        ("137", True, KILLED, "StopPod powered it off (exit code 137)"),
        ("137", False, KILLED, "its guest left exit code 137"),  # e.g. after a provider restart
        ("", True, KILLED, "StopPod powered it off (exit code 137)"),  # the cache lags the write
        ("", False, 0, "is poweredOff in vCenter"),  # the guest shut down and left no code
        ("5", True, 5, "its guest left exit code 5"),  # the guest's own code wins
        ("x", True, 1, "not an integer"),
    ],
)
def test_a_killed_vm_says_so(text: str, killed: bool, code: int, said: str) -> None:
    vm = _vm(power="poweredOff", exit_code=text)
    status = pod_status(POD, vm, first_started=STARTED, killed=killed)
    assert (status.phase, status.progress) == (pod_pb2.POD_PHASE_RUNNING, pod_pb2.PROGRESS_STOPPED)
    (container,) = status.container_statuses
    assert (container.terminated.exit_code, container.terminated.reason) == (code, "PoweredOff")
    assert said in container.terminated.message
