"""A machine as the contract shows it: its pod's status (powering on, running, stopped by its
own guest, taken over) and its VirtualMachine record."""

from __future__ import annotations

from typing import Any, Final

from vmlet.provider.v1 import pod_pb2, virtual_machine_service_pb2
from vmlet_contract import podstatus

from .hosts import Usage, usage_of
from .machines import Machine, Power

__all__ = ["HOST_IP", "status_of", "taken_over", "vm_record"]

HOST_IP: Final = "127.0.0.1"


def status_of(vm: Machine) -> pod_pb2.PodStatus | None:
    """The status of the pod `vm` serves; None when it serves none."""
    if vm.pod is None:
        return None
    common: dict[str, Any] = {"provider_id": vm.provider_id, "container_id": vm.container_id,
              "node_name": vm.node, "host_ip": HOST_IP}
    if vm.power is Power.RUNNING or (vm.restarting and vm.started_at is not None):
        assert vm.started_at is not None
        status = podstatus.running(vm.pod, ips=[vm.ip], started_at=vm.started_at, **common)
        if vm.power is not Power.RUNNING:  # the pod ran before: it stays Running while it boots
            for container in status.container_statuses:
                container.waiting.reason = "PoweringOn"
                container.waiting.message = f"VM is powering on again on {vm.node}"
            podstatus.not_ready(status, "PoweringOn", "its VM is powering on again")
    elif vm.exited is not None:
        status = podstatus.stopped(
            vm.pod, reason="PoweredOff",
            message=f"VM {vm.uuid} is off: it stopped with exit code {vm.exited}",
            exit_code=vm.exited, started_at=vm.started_at, finished_at=vm.finished_at, **common)
    else:
        status = podstatus.pending(
            vm.pod, reason="PoweringOn", message=f"VM is powering on on {vm.node}", **common
        )
    podstatus.observed_size(status, cpu_millis=vm.size[0], memory_bytes=vm.size[1])
    return status


def taken_over(old: pod_pb2.Pod, vm: Machine, new_pod: str) -> pod_pb2.PodStatus:
    """The last status of pod `old`, whose machine `vm` now serves `new_pod` (namespace/name)."""
    return podstatus.failed(old, reason="VMTakenOver",
                            message=f"VM {vm.identity} now serves pod {new_pod}",
                            node_name=vm.node, host_ip=HOST_IP, provider_id=vm.provider_id)


def vm_record(vm: Machine, disk_handles: list[str]) -> virtual_machine_service_pb2.VirtualMachine:
    """`vm` as VirtualMachineService reports it, with the handles of its attached disks."""
    usage = usage_of(vm.pod) if vm.pod is not None else Usage(pods=0)
    power = (virtual_machine_service_pb2.POWER_STATE_OFF if vm.power is Power.STOPPED
             else virtual_machine_service_pb2.POWER_STATE_ON)
    return virtual_machine_service_pb2.VirtualMachine(
        identity=vm.identity, provider_id=vm.provider_id, name=vm.uuid, power_state=power,
        node_name=vm.node, cpus=-(-usage.cpu_millis // 1000), memory_bytes=usage.memory_bytes,
        ip_addresses=[vm.ip] if vm.power is Power.RUNNING else [], disk_handles=disk_handles)
