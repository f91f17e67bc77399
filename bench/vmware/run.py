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
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim, vmodl

from vmlet_facade.kube import ApiError, KubeClient, KubeConfig, list_and_watch
from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.processes import free_port
from vmlet_localenv.stack import Stack, eventually
from vmlet_localenv.tools import binary
from vmlet_localenv.vcsim import TEMPLATE_FOLDER, VcSim

PROVIDER = "vsphere"
TEMPLATE = "debian-12"
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


# -- vCenter as the bench sees it ---------------------------------------------------------------

@contextmanager
def session(sim: VcSim) -> Iterator[Any]:
    si = SmartConnect(host="127.0.0.1", port=sim.port, user=sim.username, pwd=sim.password,
                      sslContext=sim.ssl_context())
    try:
        yield si
    finally:
        Disconnect(si)


def wait_task(collector: Any, task: Any) -> Any:
    """Waits for ``task`` through ``collector`` (a PropertyCollector of the thread's session);
    returns the task's result, raises its fault."""
    pc = vmodl.query.PropertyCollector
    flt = collector.CreateFilter(pc.FilterSpec(
        objectSet=[pc.ObjectSpec(obj=task)],
        propSet=[pc.PropertySpec(type=vim.Task, pathSet=["info.state", "info.error"])]),
        partialUpdates=False)
    try:
        version, state, error = "", "", None
        while state not in ("success", "error"):
            update = collector.WaitForUpdatesEx(version=version,
                                                options=pc.WaitOptions(maxWaitSeconds=60))
            if update is None:
                continue
            version = update.version
            for fs in update.filterSet or ():
                for obj in fs.objectSet or ():
                    for change in obj.changeSet or ():
                        if change.name == "info.state":
                            state = str(change.val)
                        elif change.name == "info.error":
                            error = change.val
    finally:
        flt.Destroy()
    if state == "error":
        raise error
    return task.info.result


IDENTITY_KEY = "vmlet.identity"
#: The template's size (vmlet_localenv.vcsim makes it 1 vCPU / 512 MiB): neither phase asks for
#: another, so every VM of both phases must end with it.
TEMPLATE_SIZE = (1, 512)


@dataclass
class EndState:
    """What a phase left in vCenter, read after it (untimed)."""

    vms: int = 0  # VMs whose name starts with the phase's prefix
    powered_on: int = 0
    identified: int = 0  # carrying exactly the identities the phase asked for, each once
    sized: int = 0  # at TEMPLATE_SIZE

    def complete(self, count: int) -> bool:
        return self.vms == self.powered_on == self.identified == self.sized == count

    def describe(self) -> str:
        return (f"{self.vms} VMs, {self.powered_on} powered on, {self.identified} with their "
                f"identity in extraConfig, {self.sized} at {TEMPLATE_SIZE[0]} vCPU/"
                f"{TEMPLATE_SIZE[1]} MiB")


def end_state(sim: VcSim, prefix: str, identities: set[str]) -> EndState:
    """Reads every VM whose name starts with ``prefix`` (one RetrievePropertiesEx over a
    ContainerView) and checks it against what both phases must leave: powered on, the identity
    the phase asked for in extraConfig (each identity on exactly one VM), the template's size."""
    pc = vmodl.query.PropertyCollector
    identity_path = f'config.extraConfig["{IDENTITY_KEY}"]'
    paths = ["name", "runtime.powerState", "config.hardware.numCPU",
             "config.hardware.memoryMB", identity_path]
    with session(sim) as si:
        content = si.RetrieveContent()
        view = content.viewManager.CreateContainerView(
            content.rootFolder, [vim.VirtualMachine], True)
        try:
            spec = pc.FilterSpec(
                objectSet=[pc.ObjectSpec(obj=view, skip=True, selectSet=[pc.TraversalSpec(
                    name="view", path="view", skip=False, type=vim.view.ContainerView)])],
                propSet=[pc.PropertySpec(type=vim.VirtualMachine, pathSet=paths)])
            found: list[dict[str, Any]] = []
            result = content.propertyCollector.RetrievePropertiesEx(
                specSet=[spec], options=pc.RetrieveOptions())
            while result is not None:
                for obj in result.objects or ():
                    found.append({p.name: p.val for p in obj.propSet or ()})
                if not result.token:
                    break
                result = content.propertyCollector.ContinueRetrievePropertiesEx(
                    token=result.token)
        finally:
            view.Destroy()
    mine = [props for props in found if str(props.get("name", "")).startswith(prefix)]
    seen: dict[str, int] = {}
    for props in mine:
        value = props.get(identity_path)
        value = getattr(value, "value", value)  # an OptionValue, or the value itself
        if value:
            seen[str(value)] = seen.get(str(value), 0) + 1
    return EndState(
        vms=len(mine),
        powered_on=sum(1 for p in mine if p.get("runtime.powerState") == "poweredOn"),
        identified=sum(n for i, n in seen.items() if i in identities and n == 1),
        sized=sum(1 for p in mine if (p.get("config.hardware.numCPU"),
                                      p.get("config.hardware.memoryMB")) == TEMPLATE_SIZE))


def _destroy_collectors(collectors: list[Any]) -> None:
    """Destroys the bench's PropertyCollectors: vcsim keeps a collector that has waited for
    updates, and tells it every change, after its session logs out, which would slow every
    later phase down."""
    for collector in collectors:
        collector.DestroyPropertyCollector()


def _inventory(si: Any) -> tuple[Any, Any, list[Any], Any]:
    content = si.RetrieveContent()
    dc = content.rootFolder.childEntity[0]
    cluster = dc.hostFolder.childEntity[0]
    folder = next(f for f in dc.vmFolder.childEntity if f.name == TEMPLATE_FOLDER)
    template = next(vm for vm in folder.childEntity if vm.name == TEMPLATE)
    return dc, template, list(cluster.host), cluster.resourcePool


def destroy_named(sim: VcSim, prefix: str, concurrency: int) -> None:
    """Powers off and destroys every VM whose name starts with ``prefix``."""
    with session(sim) as si:
        content = si.RetrieveContent()
        view = content.viewManager.CreateContainerView(
            content.rootFolder, [vim.VirtualMachine], True)
        doomed = [vm._moId for vm in view.view if vm.name.startswith(prefix)]
        view.Destroy()
    local = threading.local()

    opened: list[Any] = []
    collectors: list[Any] = []
    lock = threading.Lock()

    def one(ref: str) -> None:
        if not hasattr(local, "si"):
            local.si = SmartConnect(host="127.0.0.1", port=sim.port, user=sim.username,
                                    pwd=sim.password, sslContext=sim.ssl_context())
            local.pc = local.si.content.propertyCollector.CreatePropertyCollector()
            with lock:
                opened.append(local.si)
                collectors.append(local.pc)
        vm = vim.VirtualMachine(ref, local.si._stub)
        if vm.runtime.powerState != "poweredOff":
            wait_task(local.pc, vm.PowerOffVM_Task())
        wait_task(local.pc, vm.Destroy_Task())

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, doomed))
    _destroy_collectors(collectors)
    for si in opened:
        Disconnect(si)


# -- the phases ---------------------------------------------------------------------------------

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


@dataclass
class Result:
    kind: str
    vms: int
    seconds: float  # raw: last power-on done; vmlet: last pod Running
    end: EndState  # what the phase left in vCenter, read afterwards
    bound_seconds: float = 0.0
    load: float = 0.0
    cpu: dict[str, float] | None = None  # CPU-seconds per process during the phase
    status_writes: float = 0.0  # pod status patches by the facade (vmlet)
    create_mean_seconds: float = 0.0  # mean CreatePod latency at the facade (vmlet)
    per_vm_seconds: float = 0.0  # mean clone + reconfigure + power-on time of one VM (raw)
    requests: dict[str, float] | None = None  # apiserver requests during the phase (vmlet)


def raw_phase(sim: VcSim, count: int, concurrency: int, prefix: str) -> Result:
    """Clone + power on ``count`` VMs with pyvmomi alone."""
    with session(sim) as si:
        dc, _, _, _ = _inventory(si)
        folder_ref = dc.vmFolder.CreateFolder(prefix)._moId
    local = threading.local()
    sessions: list[Any] = []
    collectors: list[Any] = []
    lock = threading.Lock()

    def setup() -> None:
        si = SmartConnect(host="127.0.0.1", port=sim.port, user=sim.username,
                          pwd=sim.password, sslContext=sim.ssl_context())
        _, template, hosts, pool = _inventory(si)
        collector = si.content.propertyCollector.CreatePropertyCollector()
        local.objs = (collector, template, hosts, pool, vim.Folder(folder_ref, si._stub))
        with lock:
            sessions.append(si)
            collectors.append(collector)

    latencies: list[float] = []
    identities = [str(uuid.uuid4()) for _ in range(count)]

    def one(index: int) -> float:
        if not hasattr(local, "objs"):
            setup()
        began = time.monotonic()
        collector, template, hosts, pool, folder = local.objs
        config = vim.vm.ConfigSpec(extraConfig=[
            vim.option.OptionValue(key=IDENTITY_KEY, value=identities[index])])
        spec = vim.vm.CloneSpec(
            location=vim.vm.RelocateSpec(host=hosts[index % len(hosts)], pool=pool),
            config=config, powerOn=False, template=False)
        vm = wait_task(collector, template.CloneVM_Task(
            folder=folder, name=f"{prefix}-{index:04d}", spec=spec))
        # vcsim's CloneVM_Task drops spec.config (it copies it into a copy of the new VM's
        # config), so the clone has no identity: written here, unconditionally (no read), as
        # the provider writes it after reading the clone. A real vCenter would need neither.
        wait_task(collector, vm.ReconfigVM_Task(spec=config))
        wait_task(collector, vm.PowerOnVM_Task())
        latencies.append(time.monotonic() - began)
        return time.monotonic()

    # Sessions are opened before the clock starts, as the provider's is.
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda _: setup() if not hasattr(local, "objs") else None,
                      range(concurrency)))
        load = os.getloadavg()[0]
        t0 = time.monotonic()
        done = list(pool.map(one, range(count)))
    _destroy_collectors(collectors)
    for si in sessions:
        Disconnect(si)
    return Result("raw", count, max(done) - t0, end_state(sim, f"{prefix}-", set(identities)),
                  load=load,
                  per_vm_seconds=statistics.mean(latencies))


def vm_pod(namespace: str, index: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"vm-{index:04d}", "namespace": namespace},
        "spec": {
            "containers": [{"name": "vm", "image": TEMPLATE}],
            "nodeSelector": {"vmlet.io/provider": PROVIDER},
            "tolerations": [{"key": "virtual-kubelet.io/provider", "operator": "Equal",
                             "value": PROVIDER, "effect": "NoSchedule"}],
            "automountServiceAccountToken": False, "enableServiceLinks": False,
        },
    }


async def _create(client: KubeClient, namespace: str, count: int, concurrency: int) -> None:
    indexes = iter(range(count))

    async def worker() -> None:
        for index in indexes:
            for attempt in range(20):
                try:
                    await client.create(f"/api/v1/namespaces/{namespace}/pods",
                                        vm_pod(namespace, index))
                    break
                except ApiError as err:
                    if err.conflict:
                        break
                    if err.status not in (429, 500, 503, 504) or attempt == 19:
                        raise
                    await asyncio.sleep(0.1 * (attempt + 1))

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def _vmlet(kubeconfig: Path, namespace: str, count: int, concurrency: int,
                 limit_seconds: float, sim: VcSim) -> Result:
    config = KubeConfig.from_file(kubeconfig)
    client, watcher = KubeClient(config), KubeClient(config)
    bound: dict[str, float] = {}
    running: dict[str, float] = {}
    uids: dict[str, str] = {}  # pod name -> UID, the identity of its VM (a bare pod)
    listening, done = asyncio.Event(), asyncio.Event()

    async def watch() -> None:
        async for event in list_and_watch(watcher, f"/api/v1/namespaces/{namespace}/pods"):
            if event.type == "RELISTED":
                listening.set()
                continue
            pod, now = event.object, time.monotonic()
            uids[pod["metadata"]["name"]] = pod["metadata"]["uid"]
            if pod.get("spec", {}).get("nodeName"):
                bound.setdefault(pod["metadata"]["name"], now)
            if (pod.get("status") or {}).get("phase") == "Running":
                running.setdefault(pod["metadata"]["name"], now)
                if len(running) >= count:
                    done.set()

    try:
        await client.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                   "metadata": {"name": namespace}})
        for _ in range(100):  # the ServiceAccount admission wants the namespace's default SA
            try:
                await client.get(f"/api/v1/namespaces/{namespace}/serviceaccounts/default")
                break
            except ApiError:
                await asyncio.sleep(0.1)
        watching = asyncio.create_task(watch())
        await asyncio.wait_for(listening.wait(), 30)
        load = os.getloadavg()[0]
        t0 = time.monotonic()
        await _create(client, namespace, count, concurrency)
        await asyncio.wait_for(done.wait(), limit_seconds)
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
        end = await asyncio.to_thread(end_state, sim, f"{namespace}-", set(uids.values()))
        return Result("vmlet", count, max(running.values()) - t0, end,
                      bound_seconds=max(bound.values()) - t0, load=load)
    finally:
        await client.close()
        await watcher.close()


def vmlet_phase(stack: Stack, sim: VcSim, count: int, concurrency: int, namespace: str,
                timeout: float) -> Result:
    return asyncio.run(_vmlet(stack.cp.kubeconfig, namespace, count, concurrency, timeout, sim))


def vmlet_cleanup(stack: Stack, sim: VcSim, namespace: str) -> None:
    """Deletes the namespace (the facade has the provider destroy each VM) and waits."""
    stack.cp.kubectl("delete", "namespace", namespace, "--wait=false")

    def gone() -> bool:
        with session(sim) as si:
            content = si.RetrieveContent()
            view = content.viewManager.CreateContainerView(
                content.rootFolder, [vim.VirtualMachine], True)
            left = [vm for vm in view.view if vm.name.startswith(f"{namespace}-")]
            view.Destroy()
            return not left

    eventually(gone, timeout=300, interval=1, what=f"the VMs of {namespace} destroyed")


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
