"""Made-up but consistent usage figures for GetStatsSummary.

A running machine uses a quarter of the CPU it requested (50m when it requested none) and half of
its memory request (256 MiB when none), varied by up to ±20% per identity so pods differ but a
pod's figures stay steady; cumulative counters grow with uptime. A host's figures are the sum of
its machines plus a small reserve of its own, so node >= sum(pods) always holds.
"""

from __future__ import annotations

import zlib
from datetime import UTC, datetime

from vmlet.provider.v1 import kubelet_endpoint_service_pb2 as pb
from vmlet.provider.v1 import pod_pb2
from vmlet_contract import podstatus

from .cloud import Cloud
from .machines import Machine, Power

__all__ = ["stats_summary"]

_MIB = 1 << 20
_HOST_RESERVED_BYTES = 512 * _MIB
_HOST_CPU_NANOCORES = 100_000_000


def _factor(identity: str) -> float:
    """A steady factor in [0.8, 1.2] per identity."""
    return 0.8 + (zlib.crc32(identity.encode()) % 401) / 1000


def _machine_stats(vm: Machine, now: datetime) -> pb.PodStats:
    assert vm.pod is not None and vm.started_at is not None and vm.usage is not None
    factor = _factor(vm.identity)
    uptime = max((now - vm.started_at).total_seconds(), 0.0)
    nanocores = int((vm.usage.cpu_millis * 250_000 or 50_000_000) * factor)
    memory = int((vm.usage.memory_bytes // 2 or 256 * _MIB) * factor)
    limit = sum(c.resources.memory_limit_bytes for c in vm.pod.containers)
    ceiling = max(limit or vm.usage.memory_bytes or 1024 * _MIB, memory)
    at = podstatus.timestamp(now)
    return pb.PodStats(
        ref=pod_pb2.PodRef(
            namespace=vm.pod.ref.namespace, name=vm.pod.ref.name, uid=vm.pod.ref.uid
        ),
        start_time=podstatus.timestamp(vm.started_at),
        cpu=pb.CpuStats(
            time=at, usage_nano_cores=nanocores, usage_core_nano_seconds=int(nanocores * uptime)
        ),
        memory=pb.MemoryStats(
            time=at,
            usage_bytes=memory,
            working_set_bytes=memory * 4 // 5,
            available_bytes=ceiling - memory * 4 // 5,
        ),
        network=pb.NetworkStats(
            time=at, rx_bytes=int(uptime * 2048 * factor), tx_bytes=int(uptime * 1024 * factor)
        ),
    )


def stats_summary(cloud: Cloud, node_name: str) -> pb.GetStatsSummaryResponse:
    """The figures of one host and the running machines on it."""
    host = cloud.host(node_name)
    now = datetime.now(UTC)
    pods = [
        _machine_stats(vm, now)
        for vm in cloud.machines()
        if vm.node == node_name and vm.power is Power.RUNNING and vm.pod is not None
    ]
    cpu = _HOST_CPU_NANOCORES + sum(p.cpu.usage_nano_cores for p in pods)
    cpu_total = sum(p.cpu.usage_core_nano_seconds for p in pods)
    host_uptime = max((now - host.booted_at).total_seconds(), 0.0)
    used = _HOST_RESERVED_BYTES + sum(p.memory.usage_bytes for p in pods)
    working = _HOST_RESERVED_BYTES + sum(p.memory.working_set_bytes for p in pods)
    at = podstatus.timestamp(now)
    return pb.GetStatsSummaryResponse(
        node_cpu=pb.CpuStats(
            time=at,
            usage_nano_cores=cpu,
            usage_core_nano_seconds=cpu_total + int(_HOST_CPU_NANOCORES * host_uptime),
        ),
        node_memory=pb.MemoryStats(
            time=at,
            usage_bytes=used,
            working_set_bytes=working,
            available_bytes=max(host.memory_bytes - working, 0),
        ),
        node_start_time=podstatus.timestamp(host.booted_at),
        pods=pods,
    )
