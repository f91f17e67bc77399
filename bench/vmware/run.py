"""bench/vmware: N VMs created and powered on through the facade and the vSphere provider, next
to a raw pyvmomi script doing the same clone + power-on, against the same vcsim, in one run.

One real control plane and one vcsim (three hosts) on loopback; the vSphere provider and the
facade run as their own processes, as `vmlet_localenv` starts them. Per round, two phases, their
order alternating from round to round:

  raw    a pyvmomi script: `--concurrency` threads, each with its own vCenter session, clone the
         template onto the hosts in turn (CloneVM_Task with the identity in the clone's
         extraConfig), write the identity again (ReconfigVM_Task: see below) and power the
         clone on (PowerOnVM_Task), waiting for each task with a PropertyCollector filter on
         it and WaitForUpdatesEx (told the moment the task ends, no polling; pyVim.task.
         WaitForTask trips over vcsim's task names). Time: first clone call -> last power-on
         done.
  vmlet  N bare VM pods (image debian-12, no nodeName) created through the apiserver with
         `--create-concurrency` requests in flight; the real scheduler binds them to the
         provider's nodes, the facade hands them to the provider (`--concurrency` worker
         threads towards vCenter and `--concurrency` VMs in flight, like the raw script),
         which clones, completes and powers on. Time: first create -> last pod Running (as a
         watch of the bench's own sees it: the facade writes Running once the provider has
         powered the VM on).
After each phase the bench reads the phase's VMs in vCenter (one retrieve) and checks the end
state both phases must reach: every VM powered on, carrying in extraConfig the identity asked
for (the pod's UID; a UUID of the raw script's), each identity on one VM, at the template's
size. A phase that falls short makes the run "not comparable".
(A PropertyCollector watch of the bench's own would time the power-ons in vCenter itself, but
vcsim re-collects every filter on every change, so such a watch lags by seconds under this load
and slows vcsim down for both phases.)

Both phases clone the same template with the same size, so the VMs are alike. vcsim v0.46.3
drops a clone's config (CloneVM_Task copies spec.config into a copy of the new VM's config, so
neither extraConfig nor CPU/memory reach it): a clone alone ends without its identity. So both
sides write it with a ReconfigVM_Task after the clone: the provider after reading the clone and
finding it missing, the raw script unconditionally, without the read. (Before 2026-11-26 the
raw script skipped that task, and its VMs ended without the identity the provider guarantees.)
The VMs of a phase are removed after it, untimed.

    ~/.cache/vmlet/venv-py3.11/bin/python bench/vmware/run.py --vms 100 --rounds 2
    ... --profile py-spy --py-spy /path/to/py-spy   # sample the provider during vmlet phases

A benchmark, never a test: it prints its figures and the ratio against the target (1.3x).

Modules: run (the flags, the rounds, the report), phases (the raw and vmlet phases), vcenter
(pyvmomi sessions, task waits, end state, destroying VMs), counters (CPU-seconds, facade and
apiserver counters).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from counters import apiserver_requests, cpu_seconds, facade_counters
from phases import PROVIDER, Result, raw_phase, vmlet_cleanup, vmlet_phase
from vcenter import TEMPLATE_SIZE, destroy_named

from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.processes import free_port
from vmlet_localenv.stack import Stack, eventually
from vmlet_localenv.tools import binary
from vmlet_localenv.vcsim import VcSim

TARGET_RATIO = 1.3


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/vmware", description=__doc__.splitlines()[0])
    p.add_argument("--vms", type=int, default=100, help="VMs per phase")
    p.add_argument("--rounds", type=int, default=2, help="rounds of (raw, vmlet), alternating")
    p.add_argument("--hosts", type=int, default=3, help="vcsim hosts")
    p.add_argument("--concurrency", type=int, default=8,
                   help="raw script threads (VMs in flight), and the provider's --workers "
                        "and --max-creates (VMs in flight)")
    p.add_argument("--create-concurrency", type=int, default=32,
                   help="pod creates in flight in the vmlet phase")
    p.add_argument("--scheduler-qps", type=float, default=1000,
                   help="kube-scheduler's client QPS (burst twice that); 0 keeps Kubernetes's "
                        "default 50/100, which alone takes 2 s to bind 100 pods")
    p.add_argument("--warmup", type=int, default=5, help="untimed VMs per phase first")
    p.add_argument("--provider-arg", action="append", default=[],
                   help="an extra provider flag, e.g. --provider-arg=--watch-wait-seconds=5")
    p.add_argument("--timeout", type=float, default=600, help="seconds for one phase")
    p.add_argument("--profile", choices=["none", "py-spy"], default="none",
                   help="sample the provider with py-spy during the vmlet phases")
    p.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy")
    p.add_argument("--out", type=Path, default=None, help="keep logs and profiles here")
    return p.parse_args(argv)


# -- the control plane, with the scheduler's client rate limit as asked -------------------------

class BenchControlPlane(ControlPlane):
    """ControlPlane whose kube-scheduler talks to the apiserver at ``scheduler_qps``."""

    scheduler_qps: float = 0.0

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


# -- the run ------------------------------------------------------------------------------------

def _py_spy(args: argparse.Namespace, pid: int, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([args.py_spy, "record", "--pid", str(pid), "--rate", "200",
                             "--format", "speedscope", "--subprocesses", "--nonblocking", "--gil",
                             "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="vmlet-bench-vmware-"))
    out.mkdir(parents=True, exist_ok=True)
    log(f"logs and profiles in {out}")
    cp = BenchControlPlane(state_dir=out / "controlplane")
    cp.scheduler_qps = args.scheduler_qps
    sim: VcSim | None = None
    stack: Stack | None = None
    results: list[Result] = []
    try:
        cp.start()
        sim = VcSim(hosts=args.hosts, state_dir=out / "vcsim").start()
        stack = Stack(cp, out / "stack", {PROVIDER: ["--workers", str(args.concurrency),
                                                     "--max-creates", str(args.concurrency),
                                                     "--log-level", "warning",
                                                     *args.provider_arg]},
                      kinds={PROVIDER: "vsphere"}, vcsim=sim).start()
        eventually(lambda: len(stack.ready_nodes(PROVIDER)) == args.hosts, timeout=120,
                   what="vSphere nodes Ready")
        eventually(lambda: not any(t.get("key") == "node.kubernetes.io/not-ready"
                                   for n in stack.nodes(PROVIDER)
                                   for t in n["spec"].get("taints") or []),
                   timeout=120, what="not-ready taints lifted")
        if args.warmup:
            log(f"warm-up: {args.warmup} VMs each way, untimed")
            raw_phase(sim, args.warmup, args.concurrency, "warm-raw")
            destroy_named(sim, "warm-raw", args.concurrency)
            vmlet_phase(stack, sim, args.warmup, args.create_concurrency, "warm-vmlet",
                        args.timeout)
            vmlet_cleanup(stack, sim, "warm-vmlet")
        provider = stack.providers[PROVIDER].process
        pids = {p.name: p.pid for p in cp.processes if p.pid}
        for name, process in (("vcsim", sim.process), ("provider", provider),
                              ("facade", stack.facade.process if stack.facade else None)):
            if process is not None and process.pid:
                pids[name] = process.pid
        for round_ in range(args.rounds):
            order = ("raw", "vmlet") if round_ % 2 == 0 else ("vmlet", "raw")
            for kind in order:
                time.sleep(3)
                before = cpu_seconds(pids)
                if kind == "raw":
                    prefix = f"raw{round_}"
                    result = raw_phase(sim, args.vms, args.concurrency, prefix)
                    after = cpu_seconds(pids)
                    destroy_named(sim, prefix, args.concurrency)
                else:
                    namespace = f"bench-vmlet-{round_}"
                    spy = None
                    if args.profile == "py-spy" and provider is not None and provider.pid:
                        spy = _py_spy(args, provider.pid, out / f"provider-{round_}.json")
                        time.sleep(1)
                    counters = facade_counters(stack)
                    requests = apiserver_requests(cp)
                    result = vmlet_phase(stack, sim, args.vms, args.create_concurrency,
                                         namespace, args.timeout)
                    after = cpu_seconds(pids)
                    now = facade_counters(stack)
                    requests = {k: v - requests.get(k, 0.0)
                                for k, v in apiserver_requests(cp).items()}
                    result.requests = {k: v for k, v in sorted(requests.items()) if v >= 1}
                    result.status_writes = now["status_writes"] - counters["status_writes"]
                    creates = now["creates"] - counters["creates"]
                    result.create_mean_seconds = (
                        (now["create_seconds"] - counters["create_seconds"]) / creates
                        if creates else 0.0)
                    if spy is not None:
                        spy.send_signal(signal.SIGINT)
                        spy.wait(60)
                    vmlet_cleanup(stack, sim, namespace)
                result.cpu = {k: round(v - before.get(k, 0.0), 2) for k, v in after.items()
                              if v - before.get(k, 0.0) >= 0.01}
                results.append(result)
                extra = (f", all bound at {result.bound_seconds:.2f}s, CreatePod mean "
                         f"{result.create_mean_seconds * 1000:.0f} ms, "
                         f"{result.status_writes:.0f} status patches" if kind == "vmlet" else
                         f", clone + reconfigure + power-on mean "
                         f"{result.per_vm_seconds * 1000:.0f} ms")
                log(f"round {round_ + 1} {kind}: {args.vms} VMs in {result.seconds:.2f}s "
                    f"({args.vms / result.seconds:.1f} VMs/s{extra}; load {result.load:.1f})")
                log(f"  end state in vCenter: {result.end.describe()}"
                    + ("" if result.end.complete(args.vms) else "  <-- INCOMPLETE"))
                log(f"  CPU-seconds: {result.cpu}")
                if result.requests:
                    log("  apiserver requests: " + ", ".join(
                        f"{k} {v:.0f}" for k, v in result.requests.items()))
    finally:
        if stack is not None:
            stack.stop()
        if sim is not None:
            sim.stop()
        cp.stop()
    report(args, results)
    return 0


def report(args: argparse.Namespace, results: list[Result]) -> None:
    raw = [r.seconds for r in results if r.kind == "raw"]
    vmlet = [r.seconds for r in results if r.kind == "vmlet"]
    bound = [r.bound_seconds for r in results if r.kind == "vmlet"]
    if not raw or not vmlet:
        return
    # Each round's phases ran back to back, so the ratio within a round is the least exposed
    # to the neighbours' load; the headline is the median of those.
    ratios = [v / r for r, v in zip(raw, vmlet, strict=False)]
    raw_m, vmlet_m, bound_m = (statistics.median(raw), statistics.median(vmlet),
                               statistics.median(bound))
    ratio = statistics.median(ratios)
    verdict = "meets" if ratio <= TARGET_RATIO else "misses"
    incomplete = [f"{r.kind} {r.end.describe()}" for r in results if not r.end.complete(r.vms)]
    if incomplete:
        verdict = f"not comparable, a phase left another end state ({'; '.join(incomplete)})"
    print(f"\nbench/vmware: {args.vms} VMs cloned and powered on, vcsim with {args.hosts} hosts, "
          f"{args.concurrency} threads towards vCenter, {len(raw)} round(s)")
    print(f"  machine: {os.cpu_count()} CPUs, {platform.platform()}, "
          f"{dt.date.today().isoformat()}")
    print(f"  raw pyvmomi      : median {raw_m:6.2f}s  ({args.vms / raw_m:5.1f} VMs/s)  "
          f"rounds {', '.join(f'{x:.2f}' for x in raw)}")
    print(f"  facade+provider  : median {vmlet_m:6.2f}s  ({args.vms / vmlet_m:5.1f} VMs/s)  "
          f"rounds {', '.join(f'{x:.2f}' for x in vmlet)}  (to the last pod Running)")
    print(f"                     median {bound_m:6.2f}s until the scheduler bound the last pod")
    print(f"  ratio facade+provider / raw: median of the rounds {ratio:.2f}x (per round "
          f"{', '.join(f'{x:.2f}' for x in ratios)}; of the medians {vmlet_m / raw_m:.2f}x); "
          f"target <= {TARGET_RATIO}x: {verdict}")
    if not incomplete:
        print(f"  end state, every phase of both kinds: {args.vms} VMs powered on, each with the "
              f"identity asked for in extraConfig, at {TEMPLATE_SIZE[0]} vCPU/"
              f"{TEMPLATE_SIZE[1]} MiB")
    cpu_raw = [sum((r.cpu or {}).values()) for r in results if r.kind == "raw"]
    cpu_vmlet = [sum((r.cpu or {}).values()) for r in results if r.kind == "vmlet"]
    print(f"  CPU-seconds of every process, median: raw {statistics.median(cpu_raw):.2f}, "
          f"facade+provider {statistics.median(cpu_vmlet):.2f} (ratio "
          f"{statistics.median(cpu_vmlet) / statistics.median(cpu_raw):.2f}x)")
    for kind in ("raw", "vmlet"):
        per: dict[str, list[float]] = {}
        for r in results:
            if r.kind == kind:
                for name, seconds in (r.cpu or {}).items():
                    per.setdefault(name, []).append(seconds)
        print(f"    {kind:5s}: " + ", ".join(f"{n} {statistics.median(v):.2f}"
                                              for n, v in sorted(per.items(),
                                                                 key=lambda i: -max(i[1]))))


if __name__ == "__main__":
    sys.exit(main())
