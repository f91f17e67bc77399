"""The stats summary of a node: what Nova exposes, nothing made up.

- The node: memory in use and free from the hypervisor (`memory_mb_used`, `memory_mb`). Nova
  does not report a host's CPU usage, so the node's CPU figures carry only their time.
- Each pod on the node: its start time (launch), and, when the provider's user may read server
  diagnostics (`GET /servers/{id}/diagnostics`, admin-only by Nova's default policy), CPU time
  and utilisation, memory used, and network bytes. A 403 is remembered, so diagnostics are not
  asked for again after the first refusal.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

from vmlet.provider.v1 import kubelet_endpoint_service_pb2 as kpb
from vmlet_contract import ProviderError, podstatus

from .cloud import Cloud
from .nodes import NodeBook
from .pods import Pods

__all__ = ["Stats"]

_log = logging.getLogger(__name__)
_MIB: Final = 1024 * 1024


class Stats:
    """Builds stats summaries."""

    def __init__(self, cloud: Cloud, nodes: NodeBook, pods: Pods) -> None:
        self._cloud = cloud
        self._nodes = nodes
        self._pods = pods
        self._diagnostics = True

    async def summary(self, node: str) -> kpb.GetStatsSummaryResponse:
        host = await self._nodes.host_for(node)
        info = self._nodes.hosts.get(host)
        now = podstatus.timestamp()
        out = kpb.GetStatsSummaryResponse(node_cpu=kpb.CpuStats(time=now))
        if info is not None and info.memory_mib:
            used = info.memory_used_mib * _MIB
            out.node_memory.CopyFrom(
                kpb.MemoryStats(
                    time=now,
                    usage_bytes=used,
                    working_set_bytes=used,
                    available_bytes=max(0, info.memory_mib * _MIB - used),
                )
            )
        servers = []
        for entry in self._pods.entries():
            server = self._pods.server_of(entry)
            if server is not None and server.host == host and server.status == "ACTIVE":
                servers.append((entry, server))
        figures = await asyncio.gather(*(self._diagnose(s.id) for _, s in servers))
        for (entry, server), diag in zip(servers, figures, strict=True):
            pod = kpb.PodStats(ref=entry.pod.ref)
            started = server.launched_at or server.created
            if started is not None:
                pod.start_time.CopyFrom(podstatus.timestamp(started))
            if diag:
                _fill(pod, diag, now)
            out.pods.append(pod)
        return out

    async def _diagnose(self, server_id: str) -> dict[str, Any] | None:
        if not self._diagnostics:
            return None
        try:
            return await self._cloud.call(
                "read server diagnostics", lambda api: api.diagnostics(server_id), read=True
            )
        except ProviderError as error:
            if error.code.name == "PERMISSION_DENIED":
                self._diagnostics = False
                _log.info("server diagnostics are not readable by this user; stats without them")
            return None


def _fill(pod: kpb.PodStats, diag: dict[str, Any], now: Any) -> None:
    cpus = diag.get("cpu_details") or []
    if cpus:
        time_ns = sum(int(c.get("time") or 0) for c in cpus)
        utilisation = sum(float(c.get("utilisation") or 0) for c in cpus)
        pod.cpu.CopyFrom(
            kpb.CpuStats(
                time=now,
                usage_core_nano_seconds=time_ns,
                usage_nano_cores=int(utilisation / 100 * 1e9),
            )
        )
    memory = diag.get("memory_details") or {}
    if memory:
        used = int(memory.get("used") or 0) * _MIB
        maximum = int(memory.get("maximum") or 0) * _MIB
        pod.memory.CopyFrom(
            kpb.MemoryStats(
                time=now,
                usage_bytes=used,
                working_set_bytes=used,
                available_bytes=max(0, maximum - used),
            )
        )
    nics = diag.get("nic_details") or []
    if nics:
        pod.network.CopyFrom(
            kpb.NetworkStats(
                time=now,
                rx_bytes=sum(int(n.get("rx_octets") or 0) for n in nics),
                tx_bytes=sum(int(n.get("tx_octets") or 0) for n in nics),
            )
        )
