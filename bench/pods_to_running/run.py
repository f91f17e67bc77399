"""pods_to_running: how fast pods reach Running through the facade, against the apiserver-bound
limit measured in the same run.

One real control plane (etcd, kube-apiserver, kube-scheduler, kube-controller-manager) on
loopback; per round, two phases with the same workload (N pods, no nodeName, created with the same
bounded concurrency, bound by the real scheduler, counted by a watcher of their own):

  facade    the memory provider (enough nodes and pod slots) and the facade, both as processes;
  baseline  bare Nodes of the same shape and a minimal "kubelet" process (baseline_kubelet.py)
            that patches each bound pod's status to Running as soon as it sees it.

Each phase reports pods/s = N / (time from the first create to the last pod seen Running), and
the worker's (facade's / baseline kubelet's) peak RSS (VmHWM). Phases alternate order round by
round so neither always runs on a warmer or fuller cluster. Every phase cleans up after itself
(processes, pods, namespace, nodes); the control plane is stopped at the end.

    ~/.cache/vmlet/venv-py3.11/bin/python bench/pods_to_running/run.py --pods 1000
    ... --profile py-spy     # sample the facade during its measured window (py-spy on PATH)
    ... --profile cprofile   # cProfile the facade during its measured window
    ... --profile tracemalloc  # where the facade's Python memory is at the end
    ... --replicas 1,2,4     # the facade phase with 1, 2 and 4 replicas (--shard-nodes)
    ... --contender vk       # upstream virtual-kubelet (mock provider) too: contender_vk.py

A benchmark, never a test: it prints figures and passes no judgement beyond naming the targets.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from contender_vk import VirtualKubeletContender, add_arguments, report_contender, resolve_binary
from profiles import summarize
from workload import PhaseResult, ProcStats, run_phase, wait_namespace_ready, wait_nodes_ready

from vmlet_facade.kube import ApiError, KubeClient, KubeConfig
from vmlet_facade.shards import NODE_ANNOTATION, SHARD_LABEL
from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.processes import Process, free_port
from vmlet_localenv.services import FacadeProcess, ProviderProcess, facade_kubeconfig
from vmlet_localenv.tools import binary

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TARGET_RATIO = 0.7
TARGET_RSS_MB = 150.0
# Several replicas (issue 19): pods/s against the baseline, and each replica's peak RSS.
TARGET_SHARDED_RATIO = 0.9
TARGET_RSS_BASE_MB, TARGET_RSS_PER_1000_MB = 60.0, 30.0
SHARD_NAMESPACE = "vmlet-bench-shards"  # the replicas' --leader-election-namespace


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="pods_to_running", description=__doc__.splitlines()[0])
    p.add_argument("--pods", type=int, default=1000, help="pods per phase")
    p.add_argument("--rounds", type=int, default=2,
                   help="rounds of (baseline, facade); the order alternates between rounds")
    p.add_argument("--order", choices=["alternate", "baseline-first", "facade-first"],
                   default="alternate")
    p.add_argument("--phases", choices=["both", "facade", "baseline"], default="both")
    p.add_argument("--nodes", type=int, default=4, help="nodes in each phase")
    p.add_argument("--pods-per-node", type=int, default=0,
                   help="pod slots per node (default: max(300, 1.2 * pods / nodes))")
    p.add_argument("--create-concurrency", type=int, default=32,
                   help="pod creates in flight, both phases")
    p.add_argument("--status-workers", type=int, default=32,
                   help="baseline status patches in flight (the facade's default status workers)")
    p.add_argument("--scheduler-qps", type=float, default=1000,
                   help="kube-scheduler's client QPS (burst twice that); 0 keeps Kubernetes's "
                        "default 50/100, which caps both phases at ~55 pods/s")
    p.add_argument("--warmup", type=int, default=300,
                   help="pods of an untimed baseline phase before the first round (0: none)")
    p.add_argument("--timeout", type=float, default=600, help="seconds for one phase")
    p.add_argument("--settle", type=float, default=5, help="seconds of quiet between phases")
    p.add_argument("--profile", choices=["none", "py-spy", "cprofile", "tracemalloc"],
                   default="none", help="profile the facade during its measured window")
    p.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy",
                   help="the py-spy binary")
    p.add_argument("--py-spy-native", action="store_true", help="py-spy --native")
    p.add_argument("--replicas", type=_replicas, default=[1],
                   help="facade replicas in the facade phase, or a list (1,2,4): one facade "
                        "phase of each per round, each paired with a baseline phase; more "
                        "than one replica implies --shard-nodes")
    p.add_argument("--shard-nodes", action="store_true",
                   help="run the facade with --shard-nodes even as a single replica")
    p.add_argument("--bare-pods", action="store_true",
                   help="pods that do not tolerate node outages (as a user's bare pod may be): "
                        "the facade patches each before making its VM. By default they carry "
                        "the tolerations a VirtualMachine's pod has")
    p.add_argument("--out", type=Path, default=None,
                   help="keep logs and profiles here (default: a temporary directory, removed "
                        "at the end unless --profile is given)")
    add_arguments(p)
    args = p.parse_args(argv)
    if args.profile != "none" and max(args.replicas) > 1:
        p.error("--profile profiles a single facade: use it with --replicas 1")
    if not args.pods_per_node:
        args.pods_per_node = max(300, math.ceil(1.2 * args.pods / args.nodes))
    args.vk_binary = resolve_binary(args)  # builds it (or finds it cached) unless left out
    return args


def _replicas(text: str) -> list[int]:
    try:
        counts = [int(n) for n in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("replicas are counted from 1")
    return counts


def _say(message: str = "") -> None:
    print(message, flush=True)


# -- the control plane, with the scheduler's client rate limit as asked ---------------------------

class BenchControlPlane(ControlPlane):
    """ControlPlane whose kube-scheduler talks to the apiserver at ``scheduler_qps``.

    kube-scheduler's client defaults to 50 QPS (burst 100): one bind per pod, so with the
    defaults every phase is capped at ~55 pods/s by the scheduler's own rate limiter, whoever
    makes the pods Running. Raising it makes the baseline the apiserver-bound limit.
    """

    scheduler_qps: float = 0.0  # 0: the Kubernetes default

    def _start_scheduler(self) -> None:
        if not self.scheduler_qps:
            super()._start_scheduler()
            return
        kc = self._component_kubeconfig("scheduler", self.pki.scheduler)
        config = self.dir / "scheduler-config.yaml"
        config.write_text(
            "apiVersion: kubescheduler.config.k8s.io/v1\n"
            "kind: KubeSchedulerConfiguration\n"
            f"clientConnection: {{kubeconfig: '{kc}', qps: {self.scheduler_qps}, "
            f"burst: {int(2 * self.scheduler_qps)}}}\n"
            "leaderElection: {leaderElect: false}\n")
        self._spawn("kube-scheduler", [
            str(binary("kube-scheduler")), f"--config={config}",
            f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
            "--bind-address=127.0.0.1", f"--secure-port={free_port()}",
            f"--cert-dir={self.dir / 'scheduler-certs'}", "--v=1",
        ])


# -- the facade under a profiler ------------------------------------------------------------------

class ProfiledFacade(FacadeProcess):
    """The facade started through profiled_facade.py (cProfile / tracemalloc by signal)."""

    def __init__(self, providers: dict[str, str], kubeconfig: Path, state_dir: Path, *,
                 profile_env: str, args: list[str] | None = None) -> None:
        super().__init__(providers, kubeconfig, state_dir, args=args)
        self._profile_env = profile_env

    def start(self) -> ProfiledFacade:
        self.metrics_port = free_port()
        self.process = Process("facade", [
            sys.executable, str(HERE / "profiled_facade.py"), f"--kubeconfig={self.kubeconfig}",
            *[f"--provider={n}={a}" for n, a in self.providers.items()],
            f"--metrics-addr=127.0.0.1:{self.metrics_port}",
            *(self.pki.facade_args() if self.pki is not None
              else ["--provider-insecure-plaintext"]),
            *self._args,
        ], log_dir=self.dir / "logs",
            env={**os.environ, "VMLET_BENCH_PROFILE": self._profile_env}).start()
        deadline = time.monotonic() + 60
        while True:
            self.process.check_alive()
            try:
                if "vmlet_facade" in self.metrics():
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("facade not serving metrics after 60s")
            time.sleep(0.2)


class Profiler:
    """Starts and stops the chosen profiler around a facade's measured window."""

    def __init__(self, args: argparse.Namespace, out: Path, tag: str) -> None:
        self.kind = args.profile
        self.args = args
        suffix = {"py-spy": "txt", "cprofile": "pstats", "tracemalloc": "snapshot"}
        self.path = out / f"facade-{tag}.{suffix.get(self.kind, 'none')}"
        self._spy: subprocess.Popen[bytes] | None = None

    def facade_env(self) -> str | None:
        return f"{self.kind}:{self.path}" if self.kind in ("cprofile", "tracemalloc") else None

    def _attach_py_spy(self, pid: int) -> None:
        argv = [self.args.py_spy, "record", "--pid", str(pid), "--rate", "200",
                "--format", "raw", "--nonblocking", "-o", str(self.path)]
        if self.args.py_spy_native:
            argv.append("--native")
        with self.path.with_suffix(".log").open("wb") as log:
            self._spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log)

    async def start(self, pid: int) -> None:
        if self.kind == "py-spy":
            self._attach_py_spy(pid)
            await asyncio.sleep(1.5)  # attached and sampling before the first create
        elif self.kind == "cprofile":
            os.kill(pid, signal.SIGUSR1)

    async def stop(self, pid: int) -> None:
        if self.kind == "py-spy" and self._spy is not None:
            self._spy.send_signal(signal.SIGINT)
            await asyncio.to_thread(self._spy.wait, 60)
        elif self.kind in ("cprofile", "tracemalloc"):
            self.path.unlink(missing_ok=True)
            os.kill(pid, signal.SIGUSR2)
            deadline = time.monotonic() + 120
            size = -1
            while time.monotonic() < deadline:  # written when its size stops changing
                now = self.path.stat().st_size if self.path.exists() else -1
                if now > 0 and now == size:
                    break
                size = now
                await asyncio.sleep(1.0)


# -- several replicas: who serves which node ------------------------------------------------------

@dataclass
class ReplicaFigures:
    name: str
    pid: int
    peak_rss_mb: float  # VmHWM when the last pod is Running
    idle_rss_mb: float  # VmRSS with its nodes served, before the first create
    nodes: int  # nodes whose shard Lease it held at the end
    pods: int  # the phase's pods on those nodes

    @property
    def rss_target_mb(self) -> float:
        return TARGET_RSS_BASE_MB + TARGET_RSS_PER_1000_MB * self.pods / 1000


@dataclass
class FacadePhase:
    result: PhaseResult
    replicas: int
    sharded: bool
    served: list[ReplicaFigures] = field(default_factory=list)

    @property
    def facade_cpu(self) -> float:
        """CPU-seconds of all the facade replicas in the window."""
        return sum(sec for name, sec in self.result.cpu_seconds.items()
                   if name.startswith("facade"))


def _pid(process: Process | None) -> int:
    assert process is not None and process.pid is not None
    return int(process.pid)


async def shard_holders(client: KubeClient) -> dict[str, int]:
    """node -> pid of the replica holding its shard Lease (holderIdentity <hostname>-<pid>)."""
    listing = await client.get(
        f"/apis/coordination.k8s.io/v1/namespaces/{SHARD_NAMESPACE}/leases",
        labelSelector=SHARD_LABEL)
    out = {}
    for lease in listing.get("items") or []:
        holder = lease.get("spec", {}).get("holderIdentity") or ""
        node = (lease["metadata"].get("annotations") or {}).get(NODE_ANNOTATION)
        if node and holder.rpartition("-")[2].isdigit():
            out[node] = int(holder.rpartition("-")[2])
    return out


async def wait_shards_served(client: KubeClient, nodes: list[str], pids: set[int],
                             replicas: int, limit_seconds: float = 300) -> None:
    """Until every node's shard Lease is held by one of ``pids`` and none holds more than its
    share (the first replica up takes every node, then gives them back one per round)."""
    share = math.ceil(len(nodes) / replicas)
    deadline = time.monotonic() + limit_seconds
    while True:
        held = await shard_holders(client)
        counts = {pid: sum(1 for p in held.values() if p == pid) for pid in pids}
        if all(held.get(n) in pids for n in nodes) and max(counts.values()) <= share:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"shards not served after {limit_seconds:.0f}s: {held}")
        await asyncio.sleep(1.0)


# -- phases ---------------------------------------------------------------------------------------

class Bench:
    def __init__(self, cp: ControlPlane, facade_kc: Path, args: argparse.Namespace,
                 work: Path) -> None:
        self.cp = cp
        self.facade_kc = facade_kc
        self.args = args
        self.work = work
        config = KubeConfig.from_file(cp.kubeconfig)
        self.admin = KubeClient(config, max_connections=64)
        self.watcher = KubeClient(config, max_connections=4)
        self.cp_pids = {p.name: p.pid for p in cp.processes if p.pid is not None}
        self.contender = VirtualKubeletContender(args.vk_binary) if args.vk_binary else None

    async def close(self) -> None:
        await self.admin.close()
        await self.watcher.close()

    def _stats(self, worker: str, procs: dict[str, Process | None]) -> ProcStats:
        pids = {**self.cp_pids, "bench": os.getpid()}  # the bench: creates and the watcher
        for name, proc in procs.items():
            assert proc is not None and proc.pid is not None
            pids[name] = proc.pid

        def alive() -> None:
            for proc in [*procs.values(), *self.cp.processes]:
                assert proc is not None
                proc.check_alive()

        return ProcStats(pids, worker, alive)

    async def requests(self) -> dict[str, float]:
        """apiserver_request_total by verb, resource and subresource (codes summed)."""
        text = await asyncio.to_thread(self.cp.get, "/metrics")
        out: dict[str, float] = {}
        for line in text.splitlines():
            if not line.startswith("apiserver_request_total{"):
                continue
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            key = f"{labels.get('verb')} {labels.get('resource')}"
            if labels.get("subresource"):
                key += "/" + labels["subresource"]
            if not labels.get("code", "200").startswith("2"):
                key += f" ({labels.get('code')})"
            out[key] = out.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
        return out

    async def facade(self, tag: str, replicas: int = 1) -> FacadePhase:
        a = self.args
        d = self.work / f"facade-{tag}"
        nodes = [f"vmlet-memory-{i}" for i in range(a.nodes)]
        ns = f"bench-facade-{tag}"
        sharded = replicas > 1 or a.shard_nodes
        provider = ProviderProcess("memory", d, args=[
            "--nodes", str(a.nodes), "--node-prefix", "vmlet-memory",
            "--pods", str(a.pods_per_node), "--cpu", "64", "--memory", "256Gi"]).start()
        profiler = Profiler(a, self.work, tag)
        env = profiler.facade_env()
        facades: dict[str, FacadeProcess] = {}
        try:
            if sharded:
                await self._namespace(SHARD_NAMESPACE)
            for i in range(replicas):
                name = "facade" if replicas == 1 else f"facade-{i}"
                # Each replica its own kubelet API port: only one of them could bind 10250.
                extra = ["--shard-nodes", f"--leader-election-namespace={SHARD_NAMESPACE}",
                         f"--kubelet-port={free_port()}"] if sharded else []
                rd = d if replicas == 1 else d / name
                facades[name] = (
                    ProfiledFacade({"memory": provider.address}, self.facade_kc, rd,
                                   profile_env=env, args=extra) if env else
                    FacadeProcess({"memory": provider.address}, self.facade_kc, rd,
                                  args=extra)).start()
            pids = {name: _pid(f.process) for name, f in facades.items()}
            if sharded:
                await wait_shards_served(self.admin, nodes, set(pids.values()), replicas)
            await wait_nodes_ready(self.admin, nodes)
            await wait_namespace_ready(self.admin, ns)
            held = await shard_holders(self.admin) if sharded else {}
            stats = self._stats(next(iter(facades)), {
                **{name: f.process for name, f in facades.items()},
                "provider": provider.process})
            idle = {name: stats.rss_mb(name) for name in facades}
            pid = pids[next(iter(facades))]
            await profiler.start(pid)
            result = await run_phase("facade", self.admin, self.watcher, ns, a.pods, nodes,
                                     a.create_concurrency, stats, limit_seconds=a.timeout,
                                     requests=self.requests, bare=a.bare_pods)
            await profiler.stop(pid)
            served = await self._served(ns, nodes, pids, stats, idle,
                                        held if sharded else None)
        finally:
            for f in facades.values():
                f.stop()
            provider.stop()
            await self.cleanup(ns, nodes)
            if sharded:
                await self.admin.delete(  # members, shards, cluster leader: a clean slate
                    f"/apis/coordination.k8s.io/v1/namespaces/{SHARD_NAMESPACE}/leases")
        if profiler.kind != "none" and profiler.path.exists():
            _say(f"--- {profiler.kind} of the facade, round {tag} ({profiler.path}) ---")
            _say(summarize(profiler.kind, profiler.path))
        return FacadePhase(result, replicas, sharded, served)

    async def _namespace(self, name: str) -> None:
        try:
            await self.admin.create("/api/v1/namespaces", {
                "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        except ApiError as err:
            if not err.conflict:
                raise

    async def _served(self, ns: str, nodes: list[str], pids: dict[str, int], stats: ProcStats,
                      idle: dict[str, float], held_before: dict[str, int] | None,
                      ) -> list[ReplicaFigures]:
        """Each replica's peak RSS, and the nodes and pods it served: the nodes whose shard
        Leases it holds at the end (all nodes when not sharded)."""
        held = await shard_holders(self.admin) if held_before is not None else {}
        if held_before is not None and held != held_before:
            _say(f"  note: shards moved during the window: {held_before} -> {held}")
        listing = await self.admin.get(f"/api/v1/namespaces/{ns}/pods")
        per_node: dict[str, int] = {}
        for pod in listing.get("items") or []:
            node = pod.get("spec", {}).get("nodeName", "")
            per_node[node] = per_node.get(node, 0) + 1
        out = []
        for name, pid in pids.items():
            mine = [n for n in nodes if held_before is None or held.get(n) == pid]
            out.append(ReplicaFigures(name, pid, stats.peak_mb(name), idle[name], len(mine),
                                      sum(per_node.get(n, 0) for n in mine)))
        return out

    async def baseline(self, tag: str, pods: int | None = None) -> PhaseResult:
        a = self.args
        d = self.work / f"baseline-{tag}"
        d.mkdir(parents=True, exist_ok=True)
        nodes = [f"bench-baseline-{i}" for i in range(a.nodes)]
        ns = f"bench-baseline-{tag}"
        ready = d / "ready"
        kubelet = Process("baseline-kubelet", [
            sys.executable, str(HERE / "baseline_kubelet.py"), "--kubeconfig", str(self.facade_kc),
            "--nodes", ",".join(nodes), "--pods-per-node", str(a.pods_per_node),
            "--workers", str(a.status_workers), "--ready-file", str(ready),
        ], log_dir=d / "logs").start()
        try:
            deadline = time.monotonic() + 60
            while not ready.exists():
                kubelet.check_alive()
                if time.monotonic() > deadline:
                    raise TimeoutError("baseline kubelet not ready after 60s")
                await asyncio.sleep(0.2)
            await wait_nodes_ready(self.admin, nodes)
            await wait_namespace_ready(self.admin, ns)
            stats = self._stats("baseline-kubelet", {"baseline-kubelet": kubelet})
            return await run_phase("baseline", self.admin, self.watcher, ns, pods or a.pods, nodes,
                                   a.create_concurrency, stats, limit_seconds=a.timeout,
                                   requests=self.requests, bare=a.bare_pods)
        finally:
            kubelet.stop()
            await self.cleanup(ns, nodes)

    async def cleanup(self, ns: str, nodes: list[str]) -> None:
        """Force-delete the phase's pods (no kubelet is left to finish a graceful deletion),
        then its namespace and nodes; wait until the namespace is gone."""
        grace0 = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0}
        deadline = time.monotonic() + 180 + self.args.pods / 20
        for path, body in ([(f"/api/v1/namespaces/{ns}/pods", grace0),
                            (f"/api/v1/namespaces/{ns}", None)]
                           + [(f"/api/v1/nodes/{n}", None) for n in nodes]):
            while True:
                try:
                    await self.admin.request("DELETE", path, body=body, request_timeout=300)
                    break
                except ApiError as err:
                    if err.not_found:
                        break
                    # The apiserver ends a request at its 60 s timeout (its connection closed,
                    # a 503 here) while deleting thousands of pods goes on: ask again.
                    if err.status not in (503, 504) or time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(2)
        while time.monotonic() < deadline:
            try:
                await self.admin.get(f"/api/v1/namespaces/{ns}")
            except ApiError as err:
                if err.not_found:
                    return
                raise
            await asyncio.sleep(0.5)
        raise TimeoutError(f"namespace {ns} not gone in time")

    async def run(self) -> list[Pair]:
        """Per round, per replica count, a baseline and a facade phase; their order alternates
        from one pair to the next (so from round to round with a single replica count)."""
        a = self.args
        pairs: list[Pair] = []
        if a.warmup:
            # The first phase on a fresh control plane pays for its warm-up (watch caches
            # initialising, controllers starting): an untimed baseline phase takes that.
            _say(f"warm-up: {a.warmup} pods through the baseline, not counted ...")
            await self.baseline("warmup", pods=a.warmup)
            await asyncio.sleep(a.settle)
        k = 0
        for r in range(1, a.rounds + 1):
            await self._contend(r, first=True)
            for replicas in a.replicas:
                order = ["baseline", "facade"]
                if a.order == "facade-first" or (a.order == "alternate" and k % 2 == 1):
                    order.reverse()
                k += 1
                if a.phases != "both":
                    order = [a.phases]
                pair = Pair(r, replicas)
                for kind in order:
                    tag = str(r) if len(a.replicas) == 1 else f"{r}-{replicas}"
                    label = "facade" if replicas == 1 else f"facade x{replicas}"
                    _say(f"round {r}: {label if kind == 'facade' else kind} ...")
                    if kind == "facade":
                        pair.facade = await self.facade(tag, replicas)
                        result = pair.facade.result
                    else:
                        result = pair.baseline = await self.baseline(tag)
                    _say(f"round {r}: {describe(result)}")
                    await asyncio.sleep(a.settle)
                if pair.facade is not None and pair.facade.sharded:
                    _say(describe_replicas(pair))
                pairs.append(pair)
            await self._contend(r, first=False)
        return pairs

    async def _contend(self, r: int, first: bool) -> None:
        """The contender's phase, once a round: first in odd rounds, last in even ones."""
        if self.contender is not None and (r % 2 == 1) == first:
            _say(f"round {r}: virtual-kubelet (contender) ...")
            _say(f"round {r}: {describe(await self.contender.phase(self, r))}")
            await asyncio.sleep(self.args.settle)


@dataclass
class Pair:
    """A facade phase of ``replicas`` replicas and the baseline phase next to it."""

    round: int
    replicas: int
    baseline: PhaseResult | None = None
    facade: FacadePhase | None = None


# -- report -------------------------------------------------------------------------------------

def describe(r: PhaseResult) -> str:
    worker = {"baseline": "baseline-kubelet"}.get(r.kind, r.kind)
    cpu = ", ".join(f"{name} {sec:.1f}" for name, sec in sorted(
        r.cpu_seconds.items(), key=lambda kv: -kv[1]))
    reqs = ", ".join(f"{key} {n:.0f}" for key, n in sorted(r.requests.items(),
                                                           key=lambda kv: -kv[1]))
    return (f"{r.kind}: {r.pods} pods Running in {r.running_s:.1f}s = "
            f"{r.pods_per_second:.1f} pods/s (all created {r.created_s:.1f}s, "
            f"all bound {r.bound_s:.1f}s); {worker} RSS {r.worker_idle_rss_mb:.0f} MB before, "
            f"peak {r.worker_peak_rss_mb:.0f} MB; load average {r.load[0]:.1f} -> {r.load[1]:.1f}"
            f"\n    CPU-seconds in the window: {r.cpu_total:.1f} = {cpu}"
            f"\n    apiserver requests in the window: {reqs}")


def describe_replicas(pair: Pair) -> str:
    assert pair.facade is not None
    f = pair.facade
    lines = [f"round {pair.round}: facade x{f.replicas} (--shard-nodes), "
             f"{f.facade_cpu:.1f} CPU-seconds over all replicas"]
    lines += [f"    {r.name} (pid {r.pid}): {r.nodes} nodes, {r.pods} pods, peak RSS "
              f"{r.peak_rss_mb:.0f} MB (target <= {r.rss_target_mb:.0f}; before the pods "
              f"{r.idle_rss_mb:.0f})" for r in f.served]
    return "\n".join(lines)


def report_replicas(pairs: list[Pair], args: argparse.Namespace) -> None:
    """One line per facade phase: its pods/s next to the baseline's of the same pair, CPU per
    1000 pods, and each replica's peak RSS against 60 MB + 30 MB per 1000 pods it served."""
    _say(f"  several replicas: pods/s ratio target >= {TARGET_SHARDED_RATIO}, each replica's "
         f"peak RSS <= {TARGET_RSS_BASE_MB:.0f} MB + {TARGET_RSS_PER_1000_MB:.0f} MB per 1000 "
         f"pods served")
    _say("  | round | replicas | facade pods/s | baseline pods/s | ratio | facade CPU-s / 1000 "
         "pods (all replicas) | baseline-kubelet CPU-s / 1000 pods | CPU ratio baseline/facade, "
         "all processes | per replica: nodes, pods, peak RSS MB (target; before the pods) |")
    _say("  |---|---|---|---|---|---|---|---|---|")
    for pair in pairs:
        f, b = pair.facade, pair.baseline
        if f is None:
            continue
        per1000 = 1000 / f.result.pods
        ratio = f"{f.result.pods_per_second / b.pods_per_second:.2f}" if b else "-"
        base_rate = f"{b.pods_per_second:.1f}" if b else "-"
        base_cpu = (f"{b.cpu_seconds.get('baseline-kubelet', 0.0) * 1000 / b.pods:.1f}"
                    if b else "-")
        cpu_ratio = f"{b.cpu_total / f.result.cpu_total:.2f}" if b else "-"
        replicas = "; ".join(
            f"{r.name}: {r.nodes}, {r.pods}, {r.peak_rss_mb:.0f} ({r.rss_target_mb:.0f}; "
            f"{r.idle_rss_mb:.0f})" for r in f.served)
        shard = "" if f.sharded else " (not sharded)"
        _say(f"  | {pair.round} | {f.replicas}{shard} | {f.result.pods_per_second:.1f} | "
             f"{base_rate} | {ratio} | {f.facade_cpu * per1000:.1f} | {base_cpu} | {cpu_ratio} | "
             f"{replicas} |")


def machine() -> str:
    mem = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem = int(line.split()[1]) // 2**20
    return f"{os.cpu_count()} cores, {mem} GiB, {platform.python_implementation()} " \
           f"{platform.python_version()}"


def report(results: list[PhaseResult], args: argparse.Namespace) -> None:
    by = {k: [r for r in results if r.kind == k] for k in ("baseline", "facade")}
    _say()
    _say(f"pods_to_running: {args.pods} pods, {args.nodes} nodes x {args.pods_per_node} slots, "
         f"{args.rounds} round(s) ({args.order}), create concurrency {args.create_concurrency}, "
         f"baseline status workers {args.status_workers}, scheduler QPS "
         f"{args.scheduler_qps or 'default (50)'}; {machine()}; "
         f"{dt.date.today().isoformat()}")
    for kind, rs in by.items():
        if rs:
            rates = " ".join(f"{r.pods_per_second:6.1f}" for r in rs)
            _say(f"  {kind:9s} pods/s per round: {rates}   mean "
                 f"{statistics.fmean(r.pods_per_second for r in rs):.1f}")
    if by["baseline"] and by["facade"]:
        ratios = [f.pods_per_second / b.pods_per_second
                  for f, b in zip(by["facade"], by["baseline"], strict=False)]
        mean_ratio = (statistics.fmean(r.pods_per_second for r in by["facade"])
                      / statistics.fmean(r.pods_per_second for r in by["baseline"]))
        _say(f"  ratio facade/baseline: {mean_ratio:.2f} (per round: "
             f"{', '.join(f'{x:.2f}' for x in ratios)}); target >= {TARGET_RATIO}")
        median_ratio = statistics.median(ratios)
        _say(f"  median of the per-round ratios: {median_ratio:.2f}")
        cpu = {k: statistics.fmean(r.cpu_total for r in rs) for k, rs in by.items()}
        parts = {k: {name: statistics.fmean(r.cpu_seconds.get(name, 0.0) for r in rs)
                     for name in rs[0].cpu_seconds} for k, rs in by.items()}
        for kind in ("baseline", "facade"):
            detail = ", ".join(f"{n} {v:.1f}" for n, v in sorted(parts[kind].items(),
                                                                key=lambda kv: -kv[1]))
            _say(f"  {kind:9s} CPU-seconds for {args.pods} pods, all processes: "
                 f"{cpu[kind]:.1f} ({detail})")
        _say(f"  CPU ratio baseline/facade: {cpu['baseline'] / cpu['facade']:.2f} (an estimate of "
             f"the pods/s ratio when the {os.cpu_count()} cores, not other tenants, limit)")
    if by["facade"]:
        peak = max(r.worker_peak_rss_mb for r in by["facade"])
        idle = max(r.worker_idle_rss_mb for r in by["facade"])
        note = " (tracemalloc inflates it)" if args.profile == "tracemalloc" else ""
        _say(f"  facade peak RSS: {peak:.0f} MB{note} (RSS with nodes registered, before the "
             f"pods: {idle:.0f} MB); target < {TARGET_RSS_MB:.0f} MB")
    if by["baseline"]:
        _say(f"  baseline kubelet peak RSS: "
             f"{max(r.worker_peak_rss_mb for r in by['baseline']):.0f} MB")


def install_crds(cp: ControlPlane) -> None:
    """Apply vmlet's CRDs, as a user does before running the facade (its VM controllers watch
    them; without them they retry 404s through the whole run)."""
    crds = REPO / "k8s" / "base" / "crds"
    if crds.is_dir() and any(crds.glob("*.yaml")):
        cp.kubectl("apply", "-f", str(crds))
        cp.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    keep = args.out is not None or args.profile != "none"
    work = args.out or Path(tempfile.mkdtemp(prefix="vmlet-bench-ptr-"))
    work.mkdir(parents=True, exist_ok=True)
    cp = BenchControlPlane(state_dir=work / "controlplane")
    cp.scheduler_qps = args.scheduler_qps
    _say(f"pods_to_running: starting a control plane (work dir {work}) ...")
    try:
        cp.start()
        install_crds(cp)
        facade_kc = facade_kubeconfig(cp)

        async def go() -> tuple[list[Pair], VirtualKubeletContender | None]:
            bench = Bench(cp, facade_kc, args, work)
            try:
                return await bench.run(), bench.contender
            finally:
                await bench.close()

        pairs, contender = asyncio.run(go())
    finally:
        cp.stop()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    if len(args.replicas) == 1:  # one facade shape: today's summary over the rounds
        report([r for p in pairs for r in (p.baseline, p.facade.result if p.facade else None)
                if r is not None], args)
    else:
        _say()
        _say(f"pods_to_running: {args.pods} pods, {args.nodes} nodes x {args.pods_per_node} "
             f"slots, replicas {','.join(map(str, args.replicas))}, {args.rounds} round(s) "
             f"({args.order}); {machine()}; {dt.date.today().isoformat()}")
    if any(p.facade is not None and p.facade.sharded for p in pairs):
        report_replicas(pairs, args)
    report_contender(pairs, contender, args)
    if keep:
        _say(f"  logs and profiles kept in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
