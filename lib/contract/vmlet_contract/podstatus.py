"""Builders of the PodStatus messages every provider sends.

A provider knows whether its VM is being made, running, failed or stopped; these functions turn
that into a `PodStatus` with the phase, whether the pod is ready (and, when a running VM is not,
why), one container status per container of the pod the way a kubelet would report them, and the
`Progress` value the facade acts on (from the CamelCase reason when not given). They build no pod
conditions: those are Kubernetes' vocabulary, and the facade alone derives them from these facts.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from vmlet.provider.v1 import pod_pb2
from vmlet_contract import progress as progresses

__all__ = [
    "failed",
    "not_ready",
    "observed_size",
    "pending",
    "running",
    "stopped",
    "succeeded",
    "timestamp",
]

def timestamp(when: datetime | None = None) -> Timestamp:
    """A protobuf Timestamp of `when` (now when None); naive datetimes are taken as UTC."""
    when = datetime.now(UTC) if when is None else when
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    ts = Timestamp()
    ts.FromDatetime(when)
    return ts


def not_ready(
    status: pod_pb2.PodStatus,
    reason: str,
    message: str,
    progress: progresses.Progress | None = None,
) -> None:
    """Turns `status` not ready (a VM that runs but cannot serve, or was stopped in the IaaS):
    `ready` false with `reason` and `message` as the not-ready reason and message, every
    container not ready, and `progress` the value `reason` names unless given."""
    status.ready = False
    status.not_ready_reason = reason
    status.not_ready_message = message
    for container in status.container_statuses:
        container.ready = False
    status.progress = progresses.of_reason(reason) if progress is None else progress


def observed_size(status: pod_pb2.PodStatus, *, cpu_millis: int, memory_bytes: int) -> None:
    """Records on `status` the size the VM has in the IaaS (a vCPU is 1000 millis); a size the
    IaaS did not report (zero) is left unset."""
    if cpu_millis > 0 and memory_bytes > 0:
        status.resources.CopyFrom(
            pod_pb2.VmResources(cpu_millis=cpu_millis, memory_bytes=memory_bytes)
        )


def _status(
    pod: pod_pb2.Pod,
    phase: pod_pb2.PodPhase.ValueType,
    *,
    ready: bool,
    reason: str,
    message: str,
    provider_id: str,
    node_name: str,
    host_ip: str,
    ips: Sequence[str],
    started_at: datetime | None,
    progress: progresses.Progress,
) -> pod_pb2.PodStatus:
    status = pod_pb2.PodStatus(
        phase=phase,
        progress=progress,
        ready=ready,
        reason=reason,
        message=message,
        pod_ip=ips[0] if ips else "",
        pod_ips=list(ips),
        host_ip=host_ip,
        provider_id=provider_id,
        actual_node_name=node_name or pod.node_name,
    )
    if started_at is not None:
        status.start_time.CopyFrom(timestamp(started_at))
    return status


def _container(
    container: pod_pb2.Container, *, container_id: str, ready: bool, restart_count: int
) -> pod_pb2.ContainerStatus:
    return pod_pb2.ContainerStatus(
        name=container.name,
        image=container.image,
        image_id=container.image,
        container_id=container_id,
        ready=ready,
        restart_count=restart_count,
    )


def pending(
    pod: pod_pb2.Pod,
    *,
    reason: str = "ContainerCreating",
    message: str = "",
    provider_id: str = "",
    container_id: str = "",
    node_name: str = "",
    host_ip: str = "",
    progress: progresses.Progress | None = None,
) -> pod_pb2.PodStatus:
    """A pod whose VM is being made or powered on: phase Pending, containers waiting with
    `reason` (e.g. ContainerCreating, PoweringOn); `progress` is the value `reason` names
    unless given."""
    # The pod-level reason stays empty for Pending; the waiting container carries it.
    status = _status(
        pod,
        pod_pb2.POD_PHASE_PENDING,
        ready=False,
        reason="",
        message="",
        provider_id=provider_id,
        node_name=node_name,
        host_ip=host_ip,
        ips=(),
        started_at=None,
        progress=progresses.of_reason(reason) if progress is None else progress,
    )
    for c in pod.containers:
        cs = _container(c, container_id=container_id, ready=False, restart_count=0)
        cs.waiting.reason = reason
        cs.waiting.message = message
        status.container_statuses.append(cs)
    return status


def running(
    pod: pod_pb2.Pod,
    *,
    ips: Sequence[str],
    started_at: datetime,
    provider_id: str = "",
    container_id: str = "",
    node_name: str = "",
    host_ip: str = "",
    restart_count: int = 0,
) -> pod_pb2.PodStatus:
    """A pod whose VM is powered on: phase Running, ready, `ips` (primary first; may be empty
    until the guest reports one) and the time it started."""
    status = _status(
        pod,
        pod_pb2.POD_PHASE_RUNNING,
        ready=True,
        reason="",
        message="",
        provider_id=provider_id,
        node_name=node_name,
        host_ip=host_ip,
        ips=ips,
        started_at=started_at,
        progress=pod_pb2.PROGRESS_NONE,
    )
    for c in pod.containers:
        cs = _container(c, container_id=container_id, ready=True, restart_count=restart_count)
        cs.running.started_at.CopyFrom(timestamp(started_at))
        status.container_statuses.append(cs)
    return status


def _terminated(
    pod: pod_pb2.Pod,
    phase: pod_pb2.PodPhase.ValueType,
    *,
    exit_code: int,
    reason: str,
    message: str,
    started_at: datetime | None,
    finished_at: datetime | None,
    provider_id: str,
    container_id: str,
    node_name: str,
    host_ip: str,
    ips: Sequence[str],
) -> pod_pb2.PodStatus:
    status = _status(
        pod,
        phase,
        ready=False,
        reason=reason,
        message=message,
        provider_id=provider_id,
        node_name=node_name,
        host_ip=host_ip,
        ips=ips,
        started_at=started_at,
        progress=pod_pb2.PROGRESS_FAILED if exit_code else pod_pb2.PROGRESS_NONE,
    )
    for c in pod.containers:
        cs = _container(c, container_id=container_id, ready=False, restart_count=0)
        cs.terminated.exit_code = exit_code
        cs.terminated.reason = reason
        cs.terminated.message = message
        if started_at is not None:
            cs.terminated.started_at.CopyFrom(timestamp(started_at))
        cs.terminated.finished_at.CopyFrom(timestamp(finished_at))
        status.container_statuses.append(cs)
    return status


def failed(
    pod: pod_pb2.Pod,
    *,
    reason: str,
    message: str,
    exit_code: int = 1,
    started_at: datetime | None = None,
    finished_at: datetime | None = None,
    provider_id: str = "",
    container_id: str = "",
    node_name: str = "",
    host_ip: str = "",
    ips: Sequence[str] = (),
) -> pod_pb2.PodStatus:
    """A pod whose VM failed or vanished: phase Failed with a CamelCase `reason` (e.g.
    VMVanished, ProviderCreateFailed) and a message a user can act on."""
    return _terminated(
        pod,
        pod_pb2.POD_PHASE_FAILED,
        exit_code=exit_code or 1,
        reason=reason,
        message=message,
        started_at=started_at,
        finished_at=finished_at,
        provider_id=provider_id,
        container_id=container_id,
        node_name=node_name,
        host_ip=host_ip,
        ips=ips,
    )


def succeeded(
    pod: pod_pb2.Pod,
    *,
    reason: str = "Completed",
    message: str = "",
    started_at: datetime | None = None,
    finished_at: datetime | None = None,
    provider_id: str = "",
    container_id: str = "",
    node_name: str = "",
    host_ip: str = "",
) -> pod_pb2.PodStatus:
    """A pod whose VM finished its work (an operation pod): phase Succeeded, exit code 0."""
    return _terminated(
        pod,
        pod_pb2.POD_PHASE_SUCCEEDED,
        exit_code=0,
        reason=reason,
        message=message,
        started_at=started_at,
        finished_at=finished_at,
        provider_id=provider_id,
        container_id=container_id,
        node_name=node_name,
        host_ip=host_ip,
        ips=(),
    )


def stopped(
    pod: pod_pb2.Pod,
    *,
    reason: str,
    message: str,
    exit_code: int,
    started_at: datetime | None,
    finished_at: datetime | None,
    provider_id: str = "",
    container_id: str = "",
    node_name: str = "",
    host_ip: str = "",
) -> pod_pb2.PodStatus:
    """A pod whose VM stopped on its own with nothing under way (the guest shut down, or it was
    powered off in the IaaS): phase Running, for the pod has not ended (the facade decides that
    under its restartPolicy), not ready with `reason` (e.g. PoweredOff), progress STOPPED, and
    its container terminated with the guest's `exit_code` (0 for a clean shutdown)."""
    status = _terminated(
        pod,
        pod_pb2.POD_PHASE_RUNNING,
        exit_code=exit_code,
        reason=reason,
        message=message,
        started_at=started_at,
        finished_at=finished_at,
        provider_id=provider_id,
        container_id=container_id,
        node_name=node_name,
        host_ip=host_ip,
        ips=(),
    )
    status.reason = ""  # the pod has not ended: the reason is the container's and not-ready's
    not_ready(status, reason, message, pod_pb2.PROGRESS_STOPPED)
    return status
