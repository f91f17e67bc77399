"""The measured part, the same in both phases: N pods created with bounded concurrency, a watcher
of their own that notes when each is bound and Running, and /proc readings of the processes that
do the work.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmlet_facade.kube import ApiError, KubeClient, list_and_watch

__all__ = [
    "TAINT_KEY",
    "PhaseResult",
    "ProcStats",
    "create_pods",
    "pod_manifest",
    "run_phase",
    "wait_namespace_ready",
    "wait_nodes_ready",
]

# The facade's default node taint; the baseline nodes carry the same one.
TAINT_KEY = "virtual-kubelet.io/provider"
_TICKS = os.sysconf("SC_CLK_TCK")

Obj = dict[str, Any]


# What vmlet's own VM pods carry (vmapi.provider_tolerations): the node-outage taints tolerated
# for ever, which a facade otherwise adds to each pod with a PATCH before it makes its VM.
OUTAGE_TOLERATIONS = [
    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"},
    {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"},
]


def pod_manifest(namespace: str, index: int, nodes: list[str], *, bare: bool = False) -> Obj:
    """A pod that only the phase's nodes accept, with no nodeName: the scheduler binds it. It
    tolerates node outages as a VirtualMachine's pod does, unless ``bare`` (a user's pod that
    says nothing of them: the apiserver gives it 300 s, and the facade patches it)."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"p-{index:05d}", "namespace": namespace,
                     "labels": {"app": "pods-to-running"}},
        "spec": {
            "containers": [{"name": "main", "image": "debian-12",
                            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}],
            "tolerations": [{"key": TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"},
                            *([] if bare else OUTAGE_TOLERATIONS)],
            # Both phases' pods carry the same affinity, so the scheduler does the same work.
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{
                    "key": "kubernetes.io/hostname", "operator": "In", "values": nodes}]}]}}},
        },
    }


async def create_pods(client: KubeClient, namespace: str, count: int, nodes: list[str],
                      concurrency: int, *, bare: bool = False) -> float:
    """Create ``count`` pods with ``concurrency`` requests in flight; return when the last is in."""
    counter = iter(range(count))

    async def worker() -> None:
        for index in counter:
            body = pod_manifest(namespace, index, nodes, bare=bare)
            for attempt in range(20):
                try:
                    await client.create(f"/api/v1/namespaces/{namespace}/pods", body)
                    break
                except ApiError as err:
                    if err.conflict:  # created by an earlier attempt that timed out for us
                        break
                    if err.status not in (429, 500, 503, 504) or attempt == 19:
                        raise
                    await asyncio.sleep(0.1 * (attempt + 1))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.monotonic()


@dataclass
class Progress:
    """When each pod of the namespace was first seen bound and first seen Running."""

    bound: dict[str, float] = field(default_factory=dict)
    running: dict[str, float] = field(default_factory=dict)
    events: int = 0


async def _watch(client: KubeClient, namespace: str, count: int, progress: Progress,
                 listening: asyncio.Event, done: asyncio.Event) -> None:
    async for event in list_and_watch(client, f"/api/v1/namespaces/{namespace}/pods"):
        if event.type == "SYNCED":
            listening.set()
            continue
        progress.events += 1
        pod = event.object
        name = pod["metadata"]["name"]
        now = time.monotonic()
        if pod.get("spec", {}).get("nodeName"):
            progress.bound.setdefault(name, now)
        if (pod.get("status") or {}).get("phase") == "Running":
            progress.running.setdefault(name, now)
            if len(progress.running) >= count:
                done.set()
                return


@dataclass
class PhaseResult:
    """What one phase measured; times are seconds from the first create request."""

    kind: str
    pods: int
    created_s: float
    bound_s: float
    running_s: float
    worker_peak_rss_mb: float = 0.0  # VmHWM of the facade / baseline kubelet at the end
    worker_idle_rss_mb: float = 0.0  # VmRSS of it just before the first create
    cpu_seconds: dict[str, float] = field(default_factory=dict)  # per process, during the run
    requests: dict[str, float] = field(default_factory=dict)  # apiserver requests, during the run
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average at the start and the end

    @property
    def cpu_total(self) -> float:
        return sum(self.cpu_seconds.values())

    @property
    def pods_per_second(self) -> float:
        return self.pods / self.running_s


def _log(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


async def run_phase(kind: str, client: KubeClient, watch_client: KubeClient, namespace: str,
                    count: int, nodes: list[str], concurrency: int, stats: ProcStats,
                    *, limit_seconds: float,
                    requests: Callable[[], Awaitable[dict[str, float]]] | None = None,
                    bare: bool = False) -> PhaseResult:
    """Create the pods, wait until all are Running, and return the figures."""
    progress = Progress()
    listening, done = asyncio.Event(), asyncio.Event()
    watcher = asyncio.create_task(_watch(watch_client, namespace, count, progress, listening,
                                         done))
    await asyncio.wait_for(listening.wait(), 30)
    idle_rss = stats.rss_mb(stats.worker)
    requests_before = await requests() if requests else {}
    load_before = os.getloadavg()[0]
    cpu_before = stats.cpu()
    t0 = time.monotonic()
    creator = asyncio.create_task(create_pods(client, namespace, count, nodes, concurrency,
                                              bare=bare))
    deadline = t0 + limit_seconds
    try:
        while not done.is_set():
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{kind}: {len(progress.running)}/{count} Running, "
                    f"{len(progress.bound)} bound after {limit_seconds:.0f}s")
            if creator.done() and (error := creator.exception()) is not None:
                raise error
            stats.check_alive()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 5)
            _log(f"{kind}: {time.monotonic() - t0:5.1f}s bound {len(progress.bound):5d} "
                 f"running {len(progress.running):5d} / {count}")
        created_at = await creator
    finally:
        creator.cancel()
        watcher.cancel()
        await asyncio.gather(creator, watcher, return_exceptions=True)
    cpu_after = stats.cpu()
    peak = stats.peak_mb(stats.worker)
    requests_after = await requests() if requests else {}
    return PhaseResult(
        kind=kind, pods=count, created_s=created_at - t0,
        bound_s=max(progress.bound.values()) - t0,
        running_s=max(progress.running.values()) - t0,
        worker_peak_rss_mb=peak, worker_idle_rss_mb=idle_rss,
        cpu_seconds={name: cpu_after[name] - cpu_before.get(name, 0.0) for name in cpu_after},
        requests={k: n - requests_before.get(k, 0.0) for k, n in requests_after.items()
                  if n - requests_before.get(k, 0.0) >= 1},
        load=(load_before, os.getloadavg()[0]),
    )


# -- readiness -----------------------------------------------------------------------------------

async def wait_nodes_ready(client: KubeClient, names: list[str],
                           limit_seconds: float = 120) -> None:
    """Until every node is Ready and the node lifecycle controller has lifted its not-ready
    taint (until then the scheduler would not place a pod there)."""
    deadline = time.monotonic() + limit_seconds
    while True:
        pending = []
        for name in names:
            try:
                node = await client.get(f"/api/v1/nodes/{name}")
            except ApiError as err:
                if not err.not_found:
                    raise
                pending.append(name)
                continue
            ready = any(c["type"] == "Ready" and c["status"] == "True"
                        for c in node.get("status", {}).get("conditions") or [])
            tainted = any(t["key"].startswith("node.kubernetes.io/")
                          for t in node.get("spec", {}).get("taints") or [])
            if not ready or tainted:
                pending.append(name)
        if not pending:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"nodes not ready: {', '.join(pending)}")
        await asyncio.sleep(0.5)


async def wait_namespace_ready(client: KubeClient, namespace: str,
                               limit_seconds: float = 60) -> None:
    """Create ``namespace`` and wait for what pods in it need: the default ServiceAccount
    (admission refuses pods without it) and kube-root-ca.crt (their projected token volume)."""
    await client.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                               "metadata": {"name": namespace}})
    deadline = time.monotonic() + limit_seconds
    for path in (f"/api/v1/namespaces/{namespace}/serviceaccounts/default",
                 f"/api/v1/namespaces/{namespace}/configmaps/kube-root-ca.crt"):
        while True:
            try:
                await client.get(path)
                break
            except ApiError as err:
                if not err.not_found or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)


# -- /proc ---------------------------------------------------------------------------------------

class ProcStats:
    """CPU time and memory of named processes, read from /proc."""

    def __init__(self, pids: dict[str, int], worker: str,
                 alive: Callable[[], None] | None = None) -> None:
        self.pids = pids
        self.worker = worker
        self._alive = alive

    def check_alive(self) -> None:
        if self._alive is not None:
            self._alive()

    def cpu(self) -> dict[str, float]:
        out = {}
        for name, pid in self.pids.items():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[name] = (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime
        return out

    def _status(self, name: str, key: str) -> float:
        for line in Path(f"/proc/{self.pids[name]}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # kB -> MiB
        return 0.0

    def rss_mb(self, name: str) -> float:
        return self._status(name, "VmRSS")

    def peak_mb(self, name: str) -> float:
        return self._status(name, "VmHWM")
