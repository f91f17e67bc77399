"""Usage figures in the kubelet's shapes: the Summary API (/stats/summary) and the resource
metrics (/metrics/resource), both from the provider's GetStatsSummary.

A VM pod has one container (the VM), so a pod's figures are also its first container's. The
Summary carries what the contract has (CPU, memory, network, start times); metrics-server and
``kubectl top`` need no more than CPU and working set.

metrics-server reads CPU only as a cumulative counter (core-seconds, whose rate it takes over two
scrapes) and drops a node or container whose counter is zero. A provider that reports only a
rate (the vSphere one: quick stats have no counter) gets one made here (`CpuCounters`): the rate
integrated over the times of successive reports, starting from the rate times the uptime when
first seen. A facade that restarts starts over from that estimate, which metrics-server may take
for a counter reset for one window.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from google.protobuf.timestamp_pb2 import Timestamp

from vmlet.provider.v1 import kubelet_endpoint_service_pb2 as kep
from vmlet_facade.kube.objects import Obj

__all__ = ["COUNTERS", "CpuCounters", "resource_metrics", "summary"]

ContainerNames = Callable[[str, str], list[str]]

_FORGET_AFTER = 600.0  # seconds without a report before a made-up counter is dropped


def _seconds(stamp: Timestamp) -> float:
    return stamp.seconds + stamp.nanos / 1e9


class CpuCounters:
    """Cumulative CPU time (core-nanoseconds) for what a provider reports only as a rate."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[float, float, int]] = {}  # key: (at, total, rate)

    def total(self, key: str, cpu: kep.CpuStats, start: Timestamp | None = None) -> int:
        """``cpu``'s cumulative usage: the provider's when it reports one, else the rate
        integrated (trapezoids) since ``key`` was first seen, from ``rate * (at - start)``."""
        if cpu.usage_core_nano_seconds or not key:
            return int(cpu.usage_core_nano_seconds)
        at = _seconds(cpu.time) if cpu.HasField("time") else time.time()
        rate = int(cpu.usage_nano_cores)
        previous = self._seen.get(key)
        if previous is None:
            since = _seconds(start) if start is not None and start.seconds else at
            total = rate * max(at - since, 0.0)
        elif at <= previous[0]:
            return int(previous[1])  # the same report again, or an older one
        else:
            total = previous[1] + (previous[2] + rate) / 2 * (at - previous[0])
        self._forget(at)
        self._seen[key] = (at, total, rate)
        return int(total)

    def _forget(self, now: float) -> None:
        for key in [k for k, (at, _, _) in self._seen.items() if now - at > _FORGET_AFTER]:
            del self._seen[key]


COUNTERS = CpuCounters()  # the process's: /stats/summary and /metrics/resource agree


def _time(stamp: Timestamp) -> str:
    return str(stamp.ToJsonString()) if stamp.seconds or stamp.nanos else ""


def _cpu(cpu: kep.CpuStats, total: int) -> Obj:
    return {"time": _time(cpu.time), "usageNanoCores": cpu.usage_nano_cores,
            "usageCoreNanoSeconds": total}


def _memory(memory: kep.MemoryStats) -> Obj:
    return {"time": _time(memory.time), "availableBytes": memory.available_bytes,
            "usageBytes": memory.usage_bytes, "workingSetBytes": memory.working_set_bytes}


def _network(network: kep.NetworkStats) -> Obj:
    iface = {"name": "eth0", "rxBytes": network.rx_bytes, "txBytes": network.tx_bytes}
    return {"time": _time(network.time), **iface, "interfaces": [iface]}


def summary(node: str, stats: kep.GetStatsSummaryResponse, containers: ContainerNames,
            counters: CpuCounters = COUNTERS) -> Obj:
    """The kubelet's stats/v1alpha1 Summary of ``node``."""
    pods = []
    for pod in stats.pods:
        entry: Obj = {
            "podRef": {"name": pod.ref.name, "namespace": pod.ref.namespace, "uid": pod.ref.uid},
            "startTime": _time(pod.start_time),
            "containers": [],
            "volume": [],
        }
        if pod.HasField("cpu"):
            entry["cpu"] = _cpu(pod.cpu, counters.total(_pod_key(pod), pod.cpu, pod.start_time))
        if pod.HasField("memory"):
            entry["memory"] = _memory(pod.memory)
        if pod.HasField("network"):
            entry["network"] = _network(pod.network)
        for name in containers(pod.ref.namespace, pod.ref.name)[:1]:
            container: Obj = {"name": name, "startTime": _time(pod.start_time)}
            for key in ("cpu", "memory"):
                if key in entry:
                    container[key] = entry[key]
            entry["containers"].append(container)
        pods.append(entry)
    node_doc: Obj = {"nodeName": node, "systemContainers": [],
                     "startTime": _time(stats.node_start_time)}
    if stats.HasField("node_cpu"):
        node_doc["cpu"] = _cpu(stats.node_cpu, counters.total(
            _node_key(node), stats.node_cpu, stats.node_start_time))
    if stats.HasField("node_memory"):
        node_doc["memory"] = _memory(stats.node_memory)
    return {"node": node_doc, "pods": pods}


def _ms(stamp: Timestamp) -> str:
    return str(stamp.seconds * 1000 + stamp.nanos // 1_000_000)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _pod_key(pod: kep.PodStats) -> str:
    return f"pod/{pod.ref.uid}" if pod.ref.uid else ""


def _node_key(node: str | None) -> str:
    return f"node/{node}" if node else ""


def resource_metrics(stats: kep.GetStatsSummaryResponse, containers: ContainerNames,
                     counters: CpuCounters = COUNTERS, *, node: str | None = None) -> str:
    """The kubelet's /metrics/resource exposition (Prometheus text format 0.0.4) of ``node``
    (without its name, a node reporting only a CPU rate gets no counter made up)."""
    out: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: list[tuple[str, float, str]]) -> None:
        out.append(f"# HELP {name} [STABLE] {help_text}")
        out.append(f"# TYPE {name} {kind}")
        for labels, value, at in samples:
            out.append(f"{name}{labels} {_number(value)} {at}".rstrip())

    def pod_labels(pod: kep.PodStats, container: str | None = None) -> str:
        parts = [f'namespace="{_label(pod.ref.namespace)}"', f'pod="{_label(pod.ref.name)}"']
        if container is not None:
            parts.insert(0, f'container="{_label(container)}"')
        return "{" + ",".join(parts) + "}"

    with_cpu = [p for p in stats.pods if p.HasField("cpu")]
    cpu_seconds = [counters.total(_pod_key(p), p.cpu, p.start_time) / 1e9 for p in with_cpu]
    with_memory = [p for p in stats.pods if p.HasField("memory")]
    first = {(p.ref.namespace, p.ref.name): (containers(p.ref.namespace, p.ref.name) or [""])[0]
             for p in stats.pods}
    family("container_cpu_usage_seconds_total", "counter",
           "Cumulative cpu time consumed by the container in core-seconds",
           [(pod_labels(p, first[(p.ref.namespace, p.ref.name)]), total, _ms(p.cpu.time))
            for p, total in zip(with_cpu, cpu_seconds, strict=True)])
    family("container_memory_working_set_bytes", "gauge",
           "Current working set of the container in bytes",
           [(pod_labels(p, first[(p.ref.namespace, p.ref.name)]),
             float(p.memory.working_set_bytes), _ms(p.memory.time)) for p in with_memory])
    family("container_start_time_seconds", "gauge",
           "Start time of the container since unix epoch in seconds",
           [(pod_labels(p, first[(p.ref.namespace, p.ref.name)]),
             float(p.start_time.seconds), "") for p in stats.pods if p.HasField("start_time")])
    if stats.HasField("node_cpu"):
        family("node_cpu_usage_seconds_total", "counter",
               "Cumulative cpu time consumed by the node in core-seconds",
               [("", counters.total(_node_key(node), stats.node_cpu,
                                    stats.node_start_time) / 1e9, _ms(stats.node_cpu.time))])
    if stats.HasField("node_memory"):
        family("node_memory_working_set_bytes", "gauge",
               "Current working set of the node in bytes",
               [("", float(stats.node_memory.working_set_bytes), _ms(stats.node_memory.time))])
    family("pod_cpu_usage_seconds_total", "counter",
           "Cumulative cpu time consumed by the pod in core-seconds",
           [(pod_labels(p), total, _ms(p.cpu.time))
            for p, total in zip(with_cpu, cpu_seconds, strict=True)])
    family("pod_memory_working_set_bytes", "gauge", "Current working set of the pod in bytes",
           [(pod_labels(p), float(p.memory.working_set_bytes), _ms(p.memory.time))
            for p in with_memory])
    family("resource_scrape_error", "gauge",
           "1 if there was an error while getting container metrics, 0 otherwise",
           [("", 0.0, "")])
    return "\n".join(out) + "\n"
