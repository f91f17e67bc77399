"""The stats summary of a node: the host's and its pods' VMs' quick stats, read when asked.

vSphere's quick stats give CPU in MHz and memory in MB. CPU becomes nanocores by dividing by
the host's per-core clock (hardware.cpuInfo.hz); memory becomes bytes. For a host, usage and
working set are overallMemoryUsage, available is the rest of its memory. For a VM, usage is
hostMemoryUsage (what the VM costs the host), working set guestMemoryUsage (what the guest
actively uses), available the VM's memory minus the working set. Cumulative CPU and network
counters are not in quick stats and stay zero.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pyVmomi import vim

from vmlet.provider.v1 import kubelet_endpoint_service_pb2 as pb
from vmlet_contract import NotFound, podstatus

from .nodes import NodeBook
from .pods import Pods
from .props import retrieve_many, retrieve_one
from .session import Connection, Session

__all__ = ["stats_summary"]

_HOST_PATHS = (
    "summary.quickStats.overallCpuUsage",
    "summary.quickStats.overallMemoryUsage",
    "hardware.cpuInfo.hz",
    "hardware.memorySize",
    "runtime.bootTime",
)
_VM_PATHS = (
    "summary.quickStats.overallCpuUsage",
    "summary.quickStats.guestMemoryUsage",
    "summary.quickStats.hostMemoryUsage",
    "config.hardware.memoryMB",
    "summary.runtime.bootTime",
)
_MB = 1024 * 1024


def _num(props: dict[str, Any], path: str) -> int:
    value = props.get(path)
    return max(0, int(value)) if value is not None else 0


def _nanocores(mhz: int, hz: int) -> int:
    return (mhz * 10**15) // hz if hz > 0 else mhz * 10**6


async def stats_summary(
    session: Session, book: NodeBook, pods: Pods, node: str
) -> pb.GetStatsSummaryResponse:
    """The stats summary of node `node`; NotFound for a node not served here."""
    host = book.host_of(node)
    if host is None:
        raise NotFound(f"node {node} is not served by this provider")
    members = [
        (e, vm)
        for e in pods.table.entries()
        if (vm := pods.table.vm_of(e)) and vm.host == host.moid
    ]

    def read(conn: Connection) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        host_props = retrieve_one(conn.si, conn.mo(vim.HostSystem, host.moid), _HOST_PATHS)
        vms = [conn.mo(vim.VirtualMachine, vm.moid) for _, vm in members]
        return host_props or {}, retrieve_many(conn.si, vms, _VM_PATHS)

    host_props, vm_props = await session.call(read, doing=f"read the stats of node {node}")
    now = podstatus.timestamp()
    hz = _num(host_props, "hardware.cpuInfo.hz")
    total = _num(host_props, "hardware.memorySize")
    used = _num(host_props, "summary.quickStats.overallMemoryUsage") * _MB
    response = pb.GetStatsSummaryResponse(
        node_cpu=pb.CpuStats(
            time=now,
            usage_nano_cores=_nanocores(_num(host_props, "summary.quickStats.overallCpuUsage"), hz),
        ),
        node_memory=pb.MemoryStats(
            time=now,
            usage_bytes=used,
            working_set_bytes=used,
            available_bytes=max(0, total - used),
        ),
    )
    boot = host_props.get("runtime.bootTime")
    if isinstance(boot, datetime):
        response.node_start_time.CopyFrom(podstatus.timestamp(boot))
    for entry, vm in members:
        props = vm_props.get(vm.moid)
        if props is None:
            continue
        working = _num(props, "summary.quickStats.guestMemoryUsage") * _MB
        memory = _num(props, "config.hardware.memoryMB") * _MB
        stats = pb.PodStats(
            ref=entry.pod.ref,
            cpu=pb.CpuStats(
                time=now,
                usage_nano_cores=_nanocores(_num(props, "summary.quickStats.overallCpuUsage"), hz),
            ),
            memory=pb.MemoryStats(
                time=now,
                usage_bytes=_num(props, "summary.quickStats.hostMemoryUsage") * _MB,
                working_set_bytes=working,
                available_bytes=max(0, memory - working),
            ),
        )
        started = props.get("summary.runtime.bootTime")
        if isinstance(started, datetime):
            stats.start_time.CopyFrom(podstatus.timestamp(started))
        response.pods.append(stats)
    return response
