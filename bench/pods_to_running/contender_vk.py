"""The contender phase: upstream virtual-kubelet (Go) with its mock provider, on the same control
plane and with the same workload as the facade and baseline phases.

The binary comes from hack/build-virtual-kubelet.sh (built once into the cache, then found there).
Its ``--nodename`` is singular, so one process serves one node: the phase runs one process per
node, each with its own kubelet port (KUBELET_PORT), metrics address and the mock provider's
capacity for that node (``--provider-config``, a JSON object keyed by node name). Its nodes carry
the labels upstream gives every node (``kubernetes.io/hostname`` among them, which the workload's
node affinity matches) and its taint, keyed ``virtual-kubelet.io/provider`` as the facade's (the
workload tolerates the key whatever its value; the value is set to ``memory``, the facade's).
The mock provider reports a pod Running as soon as it is handed one. It keeps its pods in a map
with no lock, so each process runs one pod-sync worker by default (upstream's 10 crashed it at
100 pods a node: "fatal error: concurrent map read and map write"): one worker per node
in all. CPU-seconds and RSS are summed over the processes; the phase's result names them
``virtual-kubelet``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import ipaddress
import json
import os
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from workload import PhaseResult, ProcStats, run_phase, wait_namespace_ready, wait_nodes_ready

from vmlet_facade.kube import KubeClient
from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.processes import Process, free_port

__all__ = ["ContenderRun", "VirtualKubeletContender", "add_arguments", "report_contender",
           "resolve_binary"]

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "hack" / "build-virtual-kubelet.sh"
GROUP = "virtual-kubelet"  # the name the phase's processes are summed under


def _say(message: str = "") -> None:
    print(message, flush=True)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The contender's options on run.py's parser."""
    p.add_argument("--contender", choices=["auto", "vk", "none"], default="auto",
                   help="upstream virtual-kubelet (mock provider) as a third phase per round: "
                        "vk requires it, auto runs it when hack/build-virtual-kubelet.sh gives "
                        "a binary (and --phases is both), none leaves it out")
    p.add_argument("--vk-pod-sync-workers", type=int, default=1,
                   help="virtual-kubelet's --pod-sync-workers per process (upstream's default "
                        "is 10, but its mock provider keeps its pods in a map with no lock, and "
                        "concurrent workers crash it: 'concurrent map read and map write')")


def resolve_binary(args: argparse.Namespace) -> Path | None:
    """The virtual-kubelet binary the phase runs, or None when it is left out."""
    if args.contender == "none" or (args.contender == "auto" and args.phases != "both"):
        return None
    proc = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True,
                          check=False)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode == 0 and lines and Path(lines[-1]).is_file():
        return Path(lines[-1])
    detail = proc.stderr.strip()[-2000:]
    if args.contender == "vk":
        raise SystemExit(f"--contender vk: {BUILD_SCRIPT.name} failed ({proc.returncode}):\n"
                         f"{detail}")
    _say(f"note: no virtual-kubelet contender ({BUILD_SCRIPT.name} failed: "
         f"{detail.splitlines()[-1] if detail else proc.returncode})")
    return None


def write_serving_pair(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate and key for the processes' kubelet ports (127.0.0.1)."""
    cert_path, key_path = directory / "serving.crt", directory / "serving.key"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vmlet-bench-virtual-kubelet")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(key, hashes.SHA256()))
    key_path.touch(mode=0o600)
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


class GroupStats(ProcStats):
    """ProcStats with one more worker, ``group``: the sum of several processes (CPU time, RSS,
    and VmHWM: the sum of each process's own peak)."""

    def __init__(self, pids: dict[str, int], group: str, members: dict[str, int],
                 alive: Callable[[], None]) -> None:
        super().__init__(pids, group, alive)
        self.members = members

    def cpu(self) -> dict[str, float]:
        out = super().cpu()
        out[self.worker] = sum(ProcStats(self.members, "").cpu().values())
        return out

    def member_mb(self, key: str) -> dict[str, float]:
        stats = ProcStats(self.members, "")
        return {name: (stats.peak_mb(name) if key == "VmHWM" else stats.rss_mb(name))
                for name in self.members}

    def rss_mb(self, name: str) -> float:
        return sum(self.member_mb("VmRSS").values()) if name == self.worker else \
            super().rss_mb(name)

    def peak_mb(self, name: str) -> float:
        return sum(self.member_mb("VmHWM").values()) if name == self.worker else \
            super().peak_mb(name)


class BenchParts(Protocol):
    """What the phase uses of run.py's Bench."""

    cp: ControlPlane
    args: argparse.Namespace
    work: Path
    admin: KubeClient
    watcher: KubeClient
    cp_pids: dict[str, int]

    async def requests(self) -> dict[str, float]: ...

    async def cleanup(self, ns: str, nodes: list[str]) -> None: ...


@dataclass
class ContenderRun:
    """One virtual-kubelet phase: the figures, and each process's own peak RSS."""

    round: int
    result: PhaseResult
    processes: int
    max_process_peak_mb: float


class VirtualKubeletContender:
    """Runs the virtual-kubelet phase, one process per node, and keeps what each run measured."""

    def __init__(self, binary: Path) -> None:
        self.binary = binary
        self.version = binary.name.removeprefix("virtual-kubelet-")
        self.runs: list[ContenderRun] = []

    async def phase(self, bench: BenchParts, round_: int) -> PhaseResult:
        a = bench.args
        d = bench.work / f"virtual-kubelet-{round_}"
        d.mkdir(parents=True, exist_ok=True)
        nodes = [f"bench-vk-{i}" for i in range(a.nodes)]
        ns = f"bench-vk-{round_}"
        cert, key = write_serving_pair(bench.work / "virtual-kubelet-pki")
        config = d / "mock-provider.json"
        config.write_text(json.dumps({n: {"cpu": "64", "memory": "256Gi",
                                          "pods": str(a.pods_per_node)} for n in nodes}))
        procs: dict[str, Process] = {}
        try:
            for i, node in enumerate(nodes):
                env = {**os.environ, "KUBELET_PORT": str(free_port()),
                       "APISERVER_CERT_LOCATION": str(cert), "APISERVER_KEY_LOCATION": str(key),
                       "VKUBELET_TAINT_VALUE": "memory"}
                procs[f"vk-{i}"] = Process(f"vk-{i}", [
                    str(self.binary), "--provider", "mock", "--provider-config", str(config),
                    "--nodename", node, "--kubeconfig", str(bench.cp.kubeconfig),
                    "--metrics-addr", f"127.0.0.1:{free_port()}", "--log-level", "warn",
                    "--pod-sync-workers", str(a.vk_pod_sync_workers),
                ], log_dir=d / "logs", env=env).start()

            def alive() -> None:
                for proc in [*procs.values(), *bench.cp.processes]:
                    proc.check_alive()

            deadline = time.monotonic() + 120
            while True:  # wait_nodes_ready does not see a process that died
                alive()
                try:
                    await wait_nodes_ready(bench.admin, nodes, limit_seconds=2)
                    break
                except TimeoutError:
                    if time.monotonic() > deadline:
                        raise
            await wait_namespace_ready(bench.admin, ns)
            members = {name: p.pid for name, p in procs.items() if p.pid is not None}
            stats = GroupStats({**bench.cp_pids, "bench": os.getpid()}, GROUP, members, alive)
            result = await run_phase(GROUP, bench.admin, bench.watcher, ns, a.pods, nodes,
                                     a.create_concurrency, stats, limit_seconds=a.timeout,
                                     requests=bench.requests, bare=a.bare_pods)
            peaks = stats.member_mb("VmHWM")
            self.runs.append(ContenderRun(round_, result, len(procs), max(peaks.values())))
            return result
        finally:
            await asyncio.gather(*(asyncio.to_thread(p.stop) for p in procs.values()))
            await bench.cleanup(ns, nodes)


# -- report ---------------------------------------------------------------------------------------

class _Facade(Protocol):
    @property
    def result(self) -> PhaseResult: ...

    @property
    def replicas(self) -> int: ...

    @property
    def facade_cpu(self) -> float: ...


class _Pair(Protocol):
    @property
    def round(self) -> int: ...

    @property
    def baseline(self) -> PhaseResult | None: ...

    @property
    def facade(self) -> _Facade | None: ...


def report_contender(pairs: Sequence[_Pair], contender: VirtualKubeletContender | None,
                     args: argparse.Namespace) -> None:
    """The contender's figures per round, and each facade phase against it, beside its ratio to
    the baseline of its own pair."""
    if contender is None or not contender.runs:
        return
    runs = {run.round: run for run in contender.runs}
    first = contender.runs[0]
    _say(f"  contender: upstream virtual-kubelet {contender.version}, mock provider, "
         f"{first.processes} processes (one per node: its --nodename is singular), "
         f"--pod-sync-workers {args.vk_pod_sync_workers}; its CPU-seconds and peak RSS are "
         f"summed over the processes")
    for run in contender.runs:
        r = run.result
        _say(f"  virtual-kubelet round {run.round}: {r.pods_per_second:.1f} pods/s, "
             f"{r.cpu_seconds.get(GROUP, 0.0) * 1000 / r.pods:.1f} CPU-s / 1000 pods (its "
             f"processes), {r.cpu_total:.1f} CPU-s all processes, peak RSS "
             f"{r.worker_peak_rss_mb:.0f} MB summed (largest process "
             f"{run.max_process_peak_mb:.0f} MB; before the pods {r.worker_idle_rss_mb:.0f} MB)")
    _say("  | round | facade replicas | facade pods/s | baseline pods/s | virtual-kubelet pods/s "
         "| facade/baseline | facade/VK | facade CPU-s / 1000 pods (replicas) | VK CPU-s / 1000 "
         "pods (processes) | CPU ratio VK/facade, all processes |")
    _say("  |---|---|---|---|---|---|---|---|---|---|")
    to_vk: list[float] = []
    for pair in pairs:
        f, b, this = pair.facade, pair.baseline, runs.get(pair.round)
        if f is None or this is None:
            continue
        v = this.result
        fr = f.result.pods_per_second
        to_vk.append(fr / v.pods_per_second)
        base = f"{b.pods_per_second:.1f} | " if b else "- | "
        _say(f"  | {pair.round} | {f.replicas} | {fr:.1f} | {base}{v.pods_per_second:.1f} | "
             f"{f'{fr / b.pods_per_second:.2f}' if b else '-'} | {fr / v.pods_per_second:.2f} | "
             f"{f.facade_cpu * 1000 / f.result.pods:.1f} | "
             f"{v.cpu_seconds.get(GROUP, 0.0) * 1000 / v.pods:.1f} | "
             f"{v.cpu_total / f.result.cpu_total:.2f} |")
    if to_vk:
        _say(f"  ratio facade/virtual-kubelet: mean {statistics.fmean(to_vk):.2f} "
             f"(per facade phase: {', '.join(f'{x:.2f}' for x in to_vk)})")

