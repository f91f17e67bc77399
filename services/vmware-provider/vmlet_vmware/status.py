"""A pod's status, derived from its VM's runtime and guest properties and from what the provider
is doing to the VM right now.

- A failure (the VM vanished from vCenter): phase Failed with its reason, e.g. VMVanished.
- No VM yet: Pending, the container waiting with the step under way (ContainerCreating).
- VM powered on: Running since the VM's boot time; pod IPs from guest.ipAddress and guest.net,
  empty until the guest (VMware Tools) reports one. Ready only once there is an IP: a VM that
  has no address yet cannot serve anything.
- VM on while the provider stops it (StopPod): Running, not ready (Stopping, progress BUSY).
- VM off while the provider powers it on, cycles or stops it: Pending before the pod first ran,
  else Running with the container waiting (PoweringOn, PowerCycling, Stopping) and not ready.
- VM off or suspended with nothing under way (the guest shut down, or someone stopped it in
  vCenter): Running with the container terminated (PoweredOff, Suspended), progress STOPPED and
  not ready, or Pending if it never ran. A powered-off VM's exit code is the one its guest left
  in guestinfo.vmlet.exitCode (`guest_exit_code`), else 0; StopPod writes 137 there when the
  guest left none. The provider powers it on again only when the facade asks (StartPod, under
  the pod's restartPolicy).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypedDict

from vmlet.provider.v1 import pod_pb2
from vmlet_contract import podstatus

from .records import EXIT_CODE_KEY, VmRecord

__all__ = [
    "KILLED", "STOPPING", "Progress", "guest_exit_code", "guest_ips", "pod_ips", "pod_status",
]

#: The exit code of a VM StopPod powered off, as of a container a kubelet killed.
KILLED = 137
#: The step of a VM StopPod is powering off.
STOPPING = "Stopping"
# Steps that are no contract `Progress` name, and the value they go by.
_STEP_PROGRESS: dict[str, pod_pb2.Progress.ValueType] = {STOPPING: pod_pb2.PROGRESS_BUSY}

_INTEGER = re.compile(r"[+-]?[0-9]{1,11}")
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_SHOWN_CHARS = 64  # of a bad value, in a status message


class _Common(TypedDict):
    provider_id: str
    container_id: str
    node_name: str
    host_ip: str


@dataclass(frozen=True)
class Progress:
    """A step the provider is taking on a pod's VM, shown while it lasts."""

    reason: str  # CamelCase: ContainerCreating, Relocating, PoweringOn, PowerCycling, Stopping...
    message: str


def _usable(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast:
        return None
    return ip


def guest_ips(vm: VmRecord) -> list[str]:
    """Every usable address the guest reports, primary first, without repeats."""
    out: list[str] = []
    for text in (vm.ip, *(ip for nic in vm.nic_ips for ip in nic)):
        ip = _usable(text) if text else None
        if ip is not None and str(ip) not in out:
            out.append(str(ip))
    return out


def pod_ips(vm: VmRecord) -> list[str]:
    """The VM's pod IPs: the guest's primary address first, then the first address of the other
    IP family (Kubernetes allows one per family). Empty until the guest reports an address."""
    candidates = [vm.ip, *(ip for nic in vm.nic_ips for ip in nic)]
    usable = [(text, ip) for text in candidates if text and (ip := _usable(text)) is not None]
    if not usable:
        return []
    primary = usable[0][1]
    out = [str(primary)]
    for _, ip in usable[1:]:
        if ip.version != primary.version:
            out.append(str(ip))
            break
    return out


def guest_exit_code(text: str) -> tuple[int, str]:
    """The exit code a guest left in guestinfo.vmlet.exitCode (`text`; empty when it left none)
    and, when the value is not an integer in int32 range, a note naming it: such a value is
    exit code 1. No value is exit code 0 (a clean shutdown)."""
    value = text.strip(" \t\r\n")
    if not value:
        return 0, ""
    if _INTEGER.fullmatch(value):
        code = int(value)
        if _INT32_MIN <= code <= _INT32_MAX:
            return code, ""
    shown = ascii(value[:_SHOWN_CHARS]) + ("..." if len(value) > _SHOWN_CHARS else "")
    return 1, f"its guest left {EXIT_CODE_KEY} {shown}, not an integer in int32 range: exit code 1"


def _running(
    pod: pod_pb2.Pod,
    vm: VmRecord,
    *,
    first_started: datetime | None,
    restarts: int,
    message: str,
    common: _Common,
) -> pod_pb2.PodStatus:
    started = vm.boot_time or first_started or datetime.now(UTC)
    ips = pod_ips(vm)
    status = podstatus.running(pod, ips=ips, started_at=started, restart_count=restarts, **common)
    status.start_time.CopyFrom(podstatus.timestamp(first_started or started))
    status.message = message
    if not ips:
        podstatus.not_ready(
            status,
            "WaitingForGuestIP",
            f"VM {vm.name} runs; its guest has not reported an IP address yet (VMware Tools)",
        )
    return status


def _waiting_after_start(
    pod: pod_pb2.Pod, *, reason: str, message: str, first_started: datetime, common: _Common
) -> pod_pb2.PodStatus:
    status = podstatus.pending(
        pod, reason=reason, message=message, progress=_STEP_PROGRESS.get(reason), **common
    )
    status.phase = pod_pb2.POD_PHASE_RUNNING
    status.start_time.CopyFrom(podstatus.timestamp(first_started))
    status.message = message
    return status


def _stopped(
    pod: pod_pb2.Pod,
    vm: VmRecord,
    *,
    first_started: datetime,
    finished: datetime | None,
    restarts: int,
    killed: bool,
    common: _Common,
) -> pod_pb2.PodStatus:
    reason = "Suspended" if vm.power == "suspended" else "PoweredOff"
    # A suspended guest did not shut down: whatever it left is from before.
    code, bad = guest_exit_code(vm.exit_code) if reason == "PoweredOff" else (0, "")
    if killed and reason == "PoweredOff" and not vm.exit_code.strip():
        # StopPod wrote 137 and the cache has not seen it yet: the status must not say 0 (a
        # restartPolicy Never pod would end Succeeded) for the moment it lags.
        code = KILLED
    if killed and code == KILLED and not bad:
        said = f"StopPod powered it off (exit code {KILLED})"
    else:
        said = bad or (f"its guest left exit code {code}" if code else "")
    message = f"VM {vm.name} is {vm.power} in vCenter" + (f"; {said}" if said else "")
    status = podstatus.running(
        pod, ips=[], started_at=first_started, restart_count=restarts, **common
    )
    podstatus.not_ready(status, reason, message)
    status.message = message
    for container in status.container_statuses:
        started = container.running.started_at
        container.ClearField("running")
        container.terminated.exit_code = code
        container.terminated.reason = reason
        container.terminated.message = message
        container.terminated.started_at.CopyFrom(started)
        container.terminated.finished_at.CopyFrom(podstatus.timestamp(finished))
    return status


def pod_status(
    pod: pod_pb2.Pod,
    vm: VmRecord | None,
    *,
    progress: Progress | None = None,
    failure: tuple[str, str] | None = None,
    note: str = "",
    first_started: datetime | None = None,
    finished: datetime | None = None,
    restarts: int = 0,
    node_name: str = "",
    host_ip: str = "",
    last_vm: str = "",
    killed: bool = False,
) -> pod_pb2.PodStatus:
    """The status of `pod`, whose VM is `vm` (None: not made yet, or gone). `finished` is when
    the VM was seen stopping or vanishing (now when None); `killed` says StopPod wrote the exit
    code."""
    common: _Common = {
        "provider_id": vm.moid if vm is not None else last_vm,
        "container_id": f"vsphere://{vm.instance_uuid or vm.moid}" if vm is not None else "",
        "node_name": node_name,
        "host_ip": host_ip,
    }
    if failure is not None:
        reason, message = failure
        return podstatus.failed(
            pod,
            reason=reason,
            message=message,
            started_at=first_started,
            finished_at=finished,
            provider_id=common["provider_id"],
            container_id=common["container_id"],
            node_name=node_name,
            host_ip=host_ip,
        )
    if vm is None:
        if progress is not None:
            return podstatus.pending(
                pod, reason=progress.reason, message=progress.message, **common
            )
        return podstatus.pending(pod, reason="ContainerCreating", **common)
    if vm.powered_on:
        # Powering on is over once the VM runs, even before the provider clears the step.
        step = progress if progress is not None and progress.reason != "PoweringOn" else None
        message = step.message if step is not None else note
        status = _running(
            pod, vm, first_started=first_started, restarts=restarts, message=message,
            common=common,
        )  # fmt: skip
        if step is not None and step.reason == STOPPING:
            podstatus.not_ready(status, STOPPING, step.message, _STEP_PROGRESS[STOPPING])
        return status
    if progress is not None:
        if first_started is not None:
            return _waiting_after_start(
                pod,
                reason=progress.reason,
                message=progress.message,
                first_started=first_started,
                common=common,
            )
        return podstatus.pending(pod, reason=progress.reason, message=progress.message, **common)
    if first_started is not None:
        return _stopped(
            pod, vm, first_started=first_started, finished=finished, restarts=restarts,
            killed=killed, common=common,
        )  # fmt: skip
    return podstatus.pending(
        pod, reason="PoweredOff", message=f"VM {vm.name} is {vm.power}", **common
    )
