"""A pod's status from its Nova server and from what the provider is doing to it right now.

- No server yet: Pending, the container waiting (ContainerCreating, or the step under way).
- BUILD: Pending (ContainerCreating) with Nova's task state in the message.
- ACTIVE: Running since the server launched, ready. Pod IPs are the server's addresses, fixed
  before floating; empty when it has no port (`networks: none`): never invented.
- ACTIVE while the provider moves, resizes or rebuilds it, or MIGRATING, RESIZE, VERIFY_RESIZE,
  REBUILD, REBOOT: Running and not ready, the reason saying which (Migrating, Resizing, ...).
- SHUTOFF, SUSPENDED, PAUSED, SHELVED with nothing under way: Running with the container
  terminated (PoweredOff, Suspended, ...), exit code 0 (Nova keeps none of the guest's), not
  ready, progress STOPPED; or Pending if it never ran. A SHUTOFF server StopPod stopped carries
  `vmlet-exit-code` (137, killed), which it reports instead; so does one StopPod stopped before
  that mark is recorded and read back (the provider notes the kill first). While the provider
  starts it (a create, StartPod): waiting with PoweringOn.
- While StopPod stops it: Running and not ready (Stopping, progress BUSY), off or not yet.
- ERROR: Failed, with the reason and message of Nova's fault (see `faults.server_fault`). While
  the provider is still reading that fault (server lists leave it out; Nova records it just after
  the status), the pod keeps the state it had: Pending if the server never ran, else Running and
  not ready (Busy), so it fails once, with Nova's reason.
- Gone (deleted behind the provider's back): Failed with VMVanished.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, TypedDict

from vmlet.provider.v1 import pod_pb2
from vmlet_contract import podstatus
from vmlet_contract.progress import Progress as ProgressValue

from .faults import server_fault
from .records import ServerRecord

__all__ = ["KILLED", "Progress", "pod_status"]

#: The exit code of a guest StopPod stopped, as of a container a kubelet killed.
KILLED: Final = 137
_RESTING_OFF: Final = {
    "SHUTOFF": "PoweredOff",
    "STOPPED": "PoweredOff",
    "SUSPENDED": "Suspended",
    "PAUSED": "Paused",
    "SHELVED": "Shelved",
    "SHELVED_OFFLOADED": "Shelved",
    "RESCUE": "Rescued",
}
_IN_FLIGHT: Final = {
    "MIGRATING": "Migrating",
    "RESIZE": "Resizing",
    "VERIFY_RESIZE": "Resizing",
    "REVERT_RESIZE": "Resizing",
    "REBUILD": "Rebuilding",
    "REBOOT": "Rebooting",
    "HARD_REBOOT": "Rebooting",
    "PASSWORD": "SettingPassword",
}

# Steps of the provider's own that the contract has no value for: the closest one.
_VALUES: Final[dict[str, ProgressValue]] = {"Stopping": pod_pb2.PROGRESS_BUSY}


class _Common(TypedDict):
    provider_id: str
    container_id: str
    node_name: str
    host_ip: str


@dataclass(frozen=True)
class Progress:
    """A step the provider is taking on a pod's server, shown while it lasts."""

    reason: str  # CamelCase: ContainerCreating, PoweringOn, Stopping, Migrating, Resizing, ...
    message: str

    @property
    def value(self) -> ProgressValue | None:
        """The contract's value of the step; None: the one its reason names."""
        return _VALUES.get(self.reason)


def _image_ids(status: pod_pb2.PodStatus, server: ServerRecord | None) -> None:
    if server is not None and server.image_id:
        for container in status.container_statuses:
            container.image_id = f"glance://{server.image_id}"


def pod_status(
    pod: pod_pb2.Pod,
    server: ServerRecord | None,
    *,
    progress: Progress | None = None,
    vanished: str = "",
    server_id: str = "",
    fault_pending: bool = False,
    node_name: str = "",
    host_ip: str = "",
    killed: bool = False,
) -> pod_pb2.PodStatus:
    """The status of `pod`, whose server is `server` (None: not listed yet, with `server_id`
    when Nova has already answered the create; or gone, `vanished` then naming the server that
    was deleted behind the provider's back)."""
    status = _status(
        pod,
        server,
        progress=progress,
        vanished=vanished,
        server_id=server_id,
        fault_pending=fault_pending,
        node_name=node_name,
        host_ip=host_ip,
        killed=killed,
    )
    _image_ids(status, server)
    if server is not None and not server.gone:
        podstatus.observed_size(
            status, cpu_millis=server.vcpus * 1000, memory_bytes=server.ram_mib << 20
        )
    return status


def _status(
    pod: pod_pb2.Pod,
    server: ServerRecord | None,
    *,
    progress: Progress | None,
    vanished: str,
    server_id: str,
    fault_pending: bool,
    node_name: str,
    host_ip: str,
    killed: bool,
) -> pod_pb2.PodStatus:
    if server is None or server.gone:
        gone_id = server.id if server is not None else vanished
        if gone_id and progress is None:
            return podstatus.failed(
                pod,
                reason="VMVanished",
                message=f"server {gone_id} was deleted outside vmlet",
                provider_id=gone_id,
                node_name=node_name,
            )
        step = progress or Progress("ContainerCreating", "")
        known = "" if server is not None else server_id
        return podstatus.pending(
            pod,
            reason=step.reason,
            message=step.message,
            provider_id=known,
            container_id=f"openstack://{known}" if known else "",
        )
    common: _Common = {
        "provider_id": server.id,
        "container_id": f"openstack://{server.id}",
        "node_name": node_name,
        "host_ip": host_ip,
    }
    started = server.launched_at
    if server.status == "ERROR" and server.fault is None and fault_pending:
        said = f"Nova put server {server.name} in ERROR; reading the fault it recorded"
        if started is None:
            return podstatus.pending(pod, reason="ContainerCreating", message=said, **common)
        status = podstatus.running(pod, ips=server.ips, started_at=started, **common)
        podstatus.not_ready(status, "Busy", said)
        status.message = said
        return status
    if server.status == "ERROR":
        reason, message = server_fault(server.fault, server.name)
        return podstatus.failed(
            pod,
            reason=reason,
            message=message,
            started_at=started,
            finished_at=server.updated,
            **common,
        )
    if server.status == "BUILD":
        task = f" ({server.task_state})" if server.task_state else ""
        where = f" on {server.host}" if server.host else ""
        return podstatus.pending(
            pod,
            reason="ContainerCreating",
            message=f"Nova is building server {server.name}{task}{where}",
            **common,
        )
    if server.status == "ACTIVE" and progress is None and server.task_state is None:
        return podstatus.running(
            pod, ips=server.ips, started_at=started or server.created or _now(), **common
        )
    stopping = progress is not None and progress.reason == "Stopping"
    if server.status == "ACTIVE" or server.status in _IN_FLIGHT or stopping:
        value = None
        if progress is not None:
            reason, message, value = progress.reason, progress.message, progress.value
        else:
            reason = _IN_FLIGHT.get(server.status, "Busy")
            message = (
                f"Nova is busy with server {server.name}: {server.task_state or server.status}"
            )
        if started is None:
            return podstatus.pending(
                pod, reason=reason, message=message, progress=value, **common
            )
        status = podstatus.running(pod, ips=server.ips, started_at=started, **common)
        podstatus.not_ready(status, reason, message, value)
        status.message = message
        return status
    off_reason = _RESTING_OFF.get(server.status)
    if off_reason is not None:
        if progress is not None:
            return _waiting(pod, progress, started, common)
        message = f"server {server.name} is {server.status} in Nova"
        if started is None:
            return podstatus.pending(pod, reason=off_reason, message=message, **common)
        code = server.exit_code if server.status == "SHUTOFF" else None
        if code is None and killed and server.status == "SHUTOFF":
            code = KILLED  # StopPod's, not (yet) in the metadata this record was read from
        return _terminated(
            pod, off_reason, message, started, server.updated or started, common, code
        )
    # UNKNOWN and anything newer than this provider.
    status = podstatus.running(pod, ips=server.ips, started_at=started or _now(), **common)
    message = f"Nova reports server {server.name} as {server.status}"
    podstatus.not_ready(status, "ServerStateUnknown", message, pod_pb2.PROGRESS_STATE_UNKNOWN)
    status.phase = pod_pb2.POD_PHASE_UNKNOWN
    status.message = message
    return status


def _now() -> datetime:
    return datetime.now(UTC)


def _waiting(
    pod: pod_pb2.Pod, progress: Progress, started: datetime | None, common: _Common
) -> pod_pb2.PodStatus:
    status = podstatus.pending(pod, reason=progress.reason, message=progress.message, **common)
    if started is not None:
        # It ran before: a pod never goes back from Running to Pending.
        status.phase = pod_pb2.POD_PHASE_RUNNING
        status.start_time.CopyFrom(podstatus.timestamp(started))
    status.message = progress.message
    return status


def _terminated(
    pod: pod_pb2.Pod,
    reason: str,
    message: str,
    started: datetime,
    finished: datetime,
    common: _Common,
    killed: int | None,
) -> pod_pb2.PodStatus:
    """A server at rest: exit code 0 (Nova keeps no exit code of a guest), or `killed`, the
    code StopPod recorded."""
    status = podstatus.stopped(
        pod,
        reason=reason,
        message=message,
        exit_code=killed or 0,
        started_at=started,
        finished_at=finished,
        **common,
    )
    said = (
        f"{message}; Nova records no exit code, so 0 is reported"
        if killed is None
        else f"{message}: StopPod stopped it (killed, exit code {killed})"
    )
    for container in status.container_statuses:
        container.terminated.message = said
    return status
