"""What bench/vmware counts around a phase: CPU-seconds from /proc, the facade's status patches
and CreatePod calls, kube-apiserver's requests."""

from __future__ import annotations

import os
from pathlib import Path

from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.stack import Stack

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """utime + stime of each process (this process too, as "bench"), from /proc."""
    out = {}
    for name, pid in {**pids, "bench": os.getpid()}.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[name] = (int(fields[11]) + int(fields[12])) / _TICKS
    return out


def facade_counters(stack: Stack) -> dict[str, float]:
    """Status patches and CreatePod calls (count and total seconds) the facade made so far."""
    wanted = {
        'vmlet_facade_pod_status_writes_total{result="ok"}': "status_writes",
        'vmlet_facade_provider_call_seconds_count{method="CreatePod"}': "creates",
        'vmlet_facade_provider_call_seconds_sum{method="CreatePod"}': "create_seconds",
    }
    out = dict.fromkeys(wanted.values(), 0.0)
    if stack.facade is None:
        return out
    for line in stack.facade.metrics().splitlines():
        name, _, value = line.rpartition(" ")
        if name in wanted:
            out[wanted[name]] = float(value)
    return out


def apiserver_requests(cp: ControlPlane) -> dict[str, float]:
    """kube-apiserver's request counts so far, by verb and resource (its /metrics)."""
    out: dict[str, float] = {}
    text = cp.kubectl("get", "--raw", "/metrics").stdout
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels, _, value = line.partition("} ")
        fields = dict(part.split("=", 1) for part in labels.split("{", 1)[1].split(","))
        verb = fields.get("verb", "").strip('"')
        resource = fields.get("resource", "").strip('"')
        sub = fields.get("subresource", "").strip('"')
        if verb in ("WATCH", "LIST", "GET") and resource in ("leases", "nodes"):
            continue
        key = f"{verb} {resource}{'/' + sub if sub else ''}"
        out[key] = out.get(key, 0.0) + float(value)
    return out
