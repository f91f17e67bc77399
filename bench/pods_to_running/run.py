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
from pathlib import Path

from profiles import summarize
from workload import PhaseResult, ProcStats, run_phase, wait_namespace_ready, wait_nodes_ready

from vmlet_facade.kube import ApiError, KubeClient, KubeConfig
from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.processes import Process, free_port
from vmlet_localenv.services import FacadeProcess, ProviderProcess, facade_kubeconfig
from vmlet_localenv.tools import binary

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TARGET_RATIO = 0.7
TARGET_RSS_MB = 150.0


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
    p.add_argument("--out", type=Path, default=None,
                   help="keep logs and profiles here (default: a temporary directory, removed "
                        "at the end unless --profile is given)")
    args = p.parse_args(argv)
    if not args.pods_per_node:
        args.pods_per_node = max(300, math.ceil(1.2 * args.pods / args.nodes))
    return args


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
                 profile_env: str) -> None:
        super().__init__(providers, kubeconfig, state_dir)
        self._profile_env = profile_env

    def start(self) -> ProfiledFacade:
        self.metrics_port = free_port()
        self.process = Process("facade", [
            sys.executable, str(HERE / "profiled_facade.py"), f"--kubeconfig={self.kubeconfig}",
            *[f"--provider={n}={a}" for n, a in self.providers.items()],
            f"--metrics-addr=127.0.0.1:{self.metrics_port}",
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

    async def facade(self, tag: str) -> PhaseResult:
        a = self.args
        d = self.work / f"facade-{tag}"
        nodes = [f"vmlet-memory-{i}" for i in range(a.nodes)]
        ns = f"bench-facade-{tag}"
        provider = ProviderProcess("memory", d, args=[
            "--nodes", str(a.nodes), "--node-prefix", "vmlet-memory",
            "--pods", str(a.pods_per_node), "--cpu", "64", "--memory", "256Gi"]).start()
        profiler = Profiler(a, self.work, tag)
        env = profiler.facade_env()
        facade = (ProfiledFacade({"memory": provider.address}, self.facade_kc, d,
                                 profile_env=env) if env else
                  FacadeProcess({"memory": provider.address}, self.facade_kc, d)).start()
        try:
            await wait_nodes_ready(self.admin, nodes)
            await wait_namespace_ready(self.admin, ns)
            stats = self._stats("facade", {"facade": facade.process,
                                           "provider": provider.process})
            assert facade.process is not None and facade.process.pid is not None
            pid = facade.process.pid
            await profiler.start(pid)
            result = await run_phase("facade", self.admin, self.watcher, ns, a.pods, nodes,
                                     a.create_concurrency, stats, limit_seconds=a.timeout,
                                   requests=self.requests)
            await profiler.stop(pid)
        finally:
            facade.stop()
            provider.stop()
            await self.cleanup(ns, nodes)
        if profiler.kind != "none" and profiler.path.exists():
            _say(f"--- {profiler.kind} of the facade, round {tag} ({profiler.path}) ---")
            _say(summarize(profiler.kind, profiler.path))
        return result

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
                                   requests=self.requests)
        finally:
            kubelet.stop()
            await self.cleanup(ns, nodes)

    async def cleanup(self, ns: str, nodes: list[str]) -> None:
        """Force-delete the phase's pods (no kubelet is left to finish a graceful deletion),
        then its namespace and nodes; wait until the namespace is gone."""
        grace0 = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0}
        for path, body in ([(f"/api/v1/namespaces/{ns}/pods", grace0),
                            (f"/api/v1/namespaces/{ns}", None)]
                           + [(f"/api/v1/nodes/{n}", None) for n in nodes]):
            try:
                await self.admin.request("DELETE", path, body=body, request_timeout=300)
            except ApiError as err:
                if not err.not_found:
                    raise
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                await self.admin.get(f"/api/v1/namespaces/{ns}")
            except ApiError as err:
                if err.not_found:
                    return
                raise
            await asyncio.sleep(0.5)
        raise TimeoutError(f"namespace {ns} not gone after 180s")

    async def run(self) -> list[PhaseResult]:
        a = self.args
        results: list[PhaseResult] = []
        if a.warmup:
            # The first phase on a fresh control plane pays for its warm-up (watch caches
            # initialising, controllers starting): an untimed baseline phase takes that.
            _say(f"warm-up: {a.warmup} pods through the baseline, not counted ...")
            await self.baseline("warmup", pods=a.warmup)
            await asyncio.sleep(a.settle)
        for r in range(1, a.rounds + 1):
            order = ["baseline", "facade"]
            if a.order == "facade-first" or (a.order == "alternate" and r % 2 == 0):
                order.reverse()
            if a.phases != "both":
                order = [a.phases]
            for kind in order:
                _say(f"round {r}: {kind} ...")
                result = await (self.facade(str(r)) if kind == "facade"
                                else self.baseline(str(r)))
                _say(f"round {r}: {describe(result)}")
                results.append(result)
                await asyncio.sleep(a.settle)
        return results


# -- report -------------------------------------------------------------------------------------

def describe(r: PhaseResult) -> str:
    worker = "facade" if r.kind == "facade" else "baseline-kubelet"
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

        async def go() -> list[PhaseResult]:
            bench = Bench(cp, facade_kc, args, work)
            try:
                return await bench.run()
            finally:
                await bench.close()

        results = asyncio.run(go())
    finally:
        cp.stop()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    report(results, args)
    if keep:
        _say(f"  logs and profiles kept in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
