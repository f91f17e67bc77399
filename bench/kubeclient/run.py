"""kubeclient: the facade's lean asyncio client against the official `kubernetes` client, on the
same apiserver with the same kubeconfig, in one run.

One real control plane on loopback (vmlet_localenv.controlplane; the controllers that would act
on pods bound to an absent node are off: pod GC, node lifecycle, taint eviction) and 1000 pods
created up front, bound to a node that does not exist (Pending for good, nothing else writes
them). Each case is one fresh worker process (this script with ``--worker``) that imports both
clients, builds one of them from the control plane's admin kubeconfig (its client certificate),
warms up (4 x concurrency GETs, so every connection is open, and 2 calls of the case), then times
``--count`` calls of one operation at one concurrency:

  get    GET of one pod
  patch  merge patch of pods/NAME/status (the shape the facade writes; round robin over the
         1000 pods, every patch a real write)
  list   LIST of the namespace's 1000 pods

by one of three clients:

  lean      vmlet_facade.kube.KubeClient (aiohttp), ``concurrency`` asyncio tasks
  official  kubernetes.client.CoreV1Api (typed models), called from asyncio through
            ``run_in_executor`` on a ThreadPoolExecutor of ``concurrency`` threads (as
            asyncio.to_thread would, with a pool of that size); urllib3's pool keeps at least
            as many connections as there are threads (its default is 5 per core)
  raw       the same official calls with ``_preload_content=False`` and ``json.loads`` of the
            body: the official transport without its models, which is what the facade (working
            in dicts) would use

Per case: requests/s, CPU-seconds of the worker per 1000 requests (time.process_time over the
timed calls) and its peak RSS growth during the calls (VmHWM, reset through
/proc/self/clear_refs, over VmRSS once the client is built: connections, buffers, decoded
answers); apart from that, what building the client costs (RSS and CPU-s; for the official
client, the first use of CoreV1Api imports the API module and its models, which the facade does
not import today: it loads credentials with `kubernetes.config` only). Clients alternate order
round by round; the figures are the median over rounds, and ratios are official/lean and
raw/lean from the same run.

    ~/.cache/vmlet/venv-py3.11/bin/python bench/kubeclient/run.py
    ... --rounds 3 --gets 2000 --patches 1000 --lists 10 --lists-concurrent 64

A benchmark, never a test: it prints figures (record them in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import kubernetes
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from vmlet_facade.kube import ApiError, KubeClient, KubeConfig
from vmlet_facade.kube.client import PATCH_MERGE

NAMESPACE = "bench-kubeclient"
NODE = "bench-kubeclient-absent-node"  # no Node object: nothing acts on these pods
PODS = 1000
CLIENTS = ("lean", "official", "raw")
OPS = ("get", "patch", "list")
# Controllers that would act on pods bound to a node that does not exist (delete them, mark
# them NotReady, evict them), writing beside the bench; everything else runs as usual.
QUIET_CONTROLLERS = ("--controllers=-pod-garbage-collector-controller,"
                     "-node-lifecycle-controller,-taint-eviction-controller")

Call = Callable[[int], Awaitable[None]]


def pod_name(i: int) -> str:
    return f"p{i % PODS:04d}"


def pod(i: int) -> dict[str, Any]:
    """A pod bound to the absent node, tolerating everything, without a token volume."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod_name(i), "namespace": NAMESPACE,
                         "labels": {"app": "bench-kubeclient", "vmlet.io/vm": "true"}},
            "spec": {"nodeName": NODE, "automountServiceAccountToken": False,
                     "terminationGracePeriodSeconds": 0,
                     "tolerations": [{"operator": "Exists"}],
                     "containers": [{"name": "vm", "image": "debian-12",
                                     "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}]}}


def running_status(seq: int) -> dict[str, Any]:
    """A Running status of the shape the facade's status_to_k8s writes. ``seq`` (a Unix time)
    is the container's startedAt, so that no patch is a no-op for the apiserver."""
    started = dt.datetime.fromtimestamp(seq, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    now = started
    ip = f"10.89.{seq // 250 % 250}.{seq % 250 + 1}"
    conditions = [{"type": t, "status": "True", "lastTransitionTime": now, "lastProbeTime": None}
                  for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")]
    return {"status": {
        "phase": "Running", "conditions": conditions,
        "containerStatuses": [{"name": "vm", "image": "debian-12", "imageID": "debian-12",
                               "containerID": f"memory://{seq}", "ready": True,
                               "restartCount": 0, "started": True,
                               "state": {"running": {"startedAt": started}}}],
        "hostIP": "10.88.0.1", "hostIPs": [{"ip": "10.88.0.1"}], "podIP": ip,
        "podIPs": [{"ip": ip}], "reason": None, "message": None, "startTime": now}}


# -- the worker: one client, one operation, one concurrency --------------------------------------

def status_kib() -> dict[str, int]:
    """VmRSS and VmHWM of this process, KiB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0]] = int(line.split()[1])
    return out


async def drive(call: Call, count: int, concurrency: int, start: int = 0) -> None:
    """``count`` calls, ``concurrency`` in flight; call(i) gets i = start .. start+count-1."""
    next_i = start

    async def worker() -> None:
        nonlocal next_i
        while next_i < start + count:
            i = next_i
            next_i += 1
            await call(i)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def lean_calls(kc: KubeClient, seq0: int) -> dict[str, Call]:
    base = f"/api/v1/namespaces/{NAMESPACE}/pods"

    async def get(i: int) -> None:
        await kc.get(f"{base}/{pod_name(0)}")

    async def patch(i: int) -> None:
        await kc.patch(f"{base}/{pod_name(i)}/status", running_status(seq0 + i), PATCH_MERGE)

    async def list_(i: int) -> None:
        items = (await kc.get(base))["items"]
        assert len(items) == PODS, len(items)

    return {"get": get, "patch": patch, "list": list_}


def official_calls(api: k8s.CoreV1Api, pool: ThreadPoolExecutor, raw: bool,
                   seq0: int) -> dict[str, Call]:
    loop = asyncio.get_running_loop()
    extra: dict[str, Any] = {"_preload_content": False} if raw else {}

    def decoded(answer: Any) -> Any:
        if not raw:
            return answer
        body = json.loads(answer.data)
        answer.release_conn()
        return body

    def get(i: int) -> None:
        decoded(api.read_namespaced_pod(pod_name(0), NAMESPACE, **extra))

    def patch(i: int) -> None:
        decoded(api.patch_namespaced_pod_status(pod_name(i), NAMESPACE, running_status(seq0 + i),
                                                _content_type=PATCH_MERGE, **extra))

    def list_(i: int) -> None:
        answer = decoded(api.list_namespaced_pod(NAMESPACE, **extra))
        items = answer["items"] if raw else answer.items
        assert len(items) == PODS, len(items)

    def threaded(fn: Callable[[int], None]) -> Call:
        async def call(i: int) -> None:
            await loop.run_in_executor(pool, fn, i)
        return call

    return {"get": threaded(get), "patch": threaded(patch), "list": threaded(list_)}


def worker_main(args: argparse.Namespace) -> dict[str, Any]:
    """Build the client (its set-up: RSS and CPU-s), then warm up and time the calls (peak RSS
    growth over the built client); the figures as a dict."""
    c = args.concurrency
    gc.collect()
    rss0, cpu0 = status_kib()["VmRSS"], time.process_time()
    kc: KubeClient | None = None
    api: k8s.CoreV1Api | None = None
    if args.client == "lean":
        kc = KubeClient(KubeConfig.from_file(args.kubeconfig))
    else:
        configuration = k8s.Configuration()
        k8s_config.load_kube_config(config_file=args.kubeconfig,  # type: ignore[no-untyped-call]
                                    client_configuration=configuration, persist_config=False)
        configuration.connection_pool_maxsize = max(c, configuration.connection_pool_maxsize)
        api = k8s.CoreV1Api(k8s.ApiClient(configuration))  # imports the API and its models
    setup_cpu = time.process_time() - cpu0
    gc.collect()
    rss1 = status_kib()["VmRSS"]
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    figures = asyncio.run(timed_case(args, kc, api))
    return {**figures, "setup_cpu_s": setup_cpu, "setup_rss_mib": (rss1 - rss0) / 1024,
            "peak_rss_mib": (figures["hwm_kib"] - rss1) / 1024,
            "end_rss_mib": (figures["rss_kib"] - rss1) / 1024}


async def timed_case(args: argparse.Namespace, kc: KubeClient | None,
                     api: k8s.CoreV1Api | None) -> dict[str, Any]:
    c = args.concurrency
    seq0 = int(time.time())  # patches write values no earlier patch wrote
    pool = ThreadPoolExecutor(max_workers=c)
    if kc is not None:
        calls = lean_calls(kc, seq0)
    else:
        assert api is not None
        calls = official_calls(api, pool, args.client == "raw", seq0)
    try:
        await drive(calls["get"], 4 * c, c)  # every connection open
        await drive(calls[args.op], 2, min(2, c), start=PODS // 2)
        cpu0, t0 = time.process_time(), time.perf_counter()
        await drive(calls[args.op], args.count, c)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        kib = status_kib()
    finally:
        pool.shutdown(wait=True)
        if kc is not None:
            await kc.close()
        if api is not None:
            api.api_client.close()
    return {"client": args.client, "op": args.op, "concurrency": c, "count": args.count,
            "wall_s": wall, "cpu_s": cpu, "rps": args.count / wall,
            "cpu_per_1000": 1000 * cpu / args.count,
            "hwm_kib": kib["VmHWM"], "rss_kib": kib["VmRSS"]}


# -- the orchestrator ----------------------------------------------------------------------------

async def setup(kc: KubeClient) -> None:
    """The namespace (once its default ServiceAccount exists) and the 1000 pods."""
    await kc.create("/api/v1/namespaces", {"metadata": {"name": NAMESPACE}})
    deadline = time.monotonic() + 60
    while True:
        try:
            await kc.get(f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/default")
            break
        except ApiError as err:
            if not err.not_found or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)

    async def create(i: int) -> None:
        await kc.create(f"/api/v1/namespaces/{NAMESPACE}/pods", pod(i))

    await drive(create, PODS, 32)


async def cleanup(kc: KubeClient) -> None:
    """Delete the pods (at once: no kubelet finishes a graceful deletion) and the namespace."""
    grace0 = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0}
    await kc.request("DELETE", f"/api/v1/namespaces/{NAMESPACE}/pods", body=grace0,
                     request_timeout=300)
    await kc.delete(f"/api/v1/namespaces/{NAMESPACE}")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            await kc.get(f"/api/v1/namespaces/{NAMESPACE}")
        except ApiError as err:
            if err.not_found:
                return
            raise
        await asyncio.sleep(0.5)
    print(f"namespace {NAMESPACE} not gone after 120 s", file=sys.stderr)


async def with_client(kubeconfig: Path, work: Callable[[KubeClient], Awaitable[None]]) -> None:
    kc = KubeClient(KubeConfig.from_file(kubeconfig))
    try:
        await work(kc)
    finally:
        await kc.close()


def run_case(kubeconfig: Path, client: str, op: str, concurrency: int,
             count: int) -> dict[str, Any]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker", "--kubeconfig",
            str(kubeconfig), "--client", client, "--op", op, "--concurrency", str(concurrency),
            "--count", str(count)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"worker {client} {op} x{concurrency} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    mem = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
               if line.startswith("MemTotal:"))
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{os.cpu_count()} cores ({cpu}), {mem / 2**20:.0f} GiB, load average {load}; "
            f"CPython {platform.python_version()}, kubernetes {kubernetes.__version__}")


def report(results: list[dict[str, Any]], args: argparse.Namespace, started: str) -> None:
    def median(op: str, c: int, client: str, key: str) -> float:
        return float(statistics.median(
            r[key] for r in results if (r["op"], r["concurrency"], r["client"]) == (op, c, client)))

    print(f"\nkubeclient: {args.rounds} round(s), {started}; {machine()}")
    print(f"counts per case: {args.gets} GETs, {args.patches} status PATCHes, "
          f"{args.lists} (x1) / {args.lists_concurrent} (x32) LISTs of {PODS} pods; "
          "medians over rounds; ratio = client/lean")
    head = ("| operation | in flight | client | requests/s | CPU-s per 1000 requests "
            "| peak RSS growth (MiB) | ratio requests/s | ratio CPU-s | ratio RSS |")
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for op in OPS:
        for c in (1, 32):
            lean = {k: median(op, c, "lean", k) for k in ("rps", "cpu_per_1000", "peak_rss_mib")}
            for client in CLIENTS:
                m = {k: median(op, c, client, k) for k in ("rps", "cpu_per_1000",
                                                           "peak_rss_mib")}
                ratios = ("" if client == "lean" else
                          f" {m['rps'] / lean['rps']:.2f} | "
                          f"{m['cpu_per_1000'] / lean['cpu_per_1000']:.2f} | "
                          f"{m['peak_rss_mib'] / max(lean['peak_rss_mib'], 0.1):.1f} |")
                rps = f"{m['rps']:.0f}" if m["rps"] >= 100 else f"{m['rps']:.1f}"
                print(f"| {op} | {c} | {client} | {rps} | {m['cpu_per_1000']:.2f} "
                      f"| {m['peak_rss_mib']:.1f} |{ratios or ' | | |'}")
    print("\nset-up of the client, before the first request (median over every case):")
    print("| client | RSS (MiB) | CPU-s |")
    print("|---|---|---|")
    for client in CLIENTS:
        mine = [r for r in results if r["client"] == client]
        print(f"| {client} | {statistics.median(r['setup_rss_mib'] for r in mine):.1f} "
              f"| {statistics.median(r['setup_cpu_s'] for r in mine):.2f} |")
    print("\nper round (requests/s, CPU-s per 1000):")
    for r in results:
        print(f"  round {r['round']} {r['op']:5s} x{r['concurrency']:<2d} {r['client']:8s} "
              f"{r['rps']:8.1f} req/s  {r['cpu_per_1000']:7.2f} CPU-s/1000  "
              f"peak +{r['peak_rss_mib']:.1f} MiB, set-up {r['setup_rss_mib']:.1f} MiB "
              f"{r['setup_cpu_s']:.2f} CPU-s")


def orchestrate(args: argparse.Namespace) -> None:
    from vmlet_localenv.controlplane import ControlPlane

    started = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    t0 = time.monotonic()
    cp = ControlPlane(controller_manager_args=(QUIET_CONTROLLERS,)).start()
    results: list[dict[str, Any]] = []
    try:
        print(f"control plane up in {time.monotonic() - t0:.0f} s; creating {PODS} pods ...",
              flush=True)
        asyncio.run(with_client(cp.kubeconfig, setup))
        counts = {"get": args.gets, "patch": args.patches}
        for r in range(args.rounds):
            order = CLIENTS[r % 3:] + CLIENTS[:r % 3]
            for op in OPS:
                for c in (1, 32):
                    n = counts.get(op) or (args.lists if c == 1 else args.lists_concurrent)
                    for client in order:
                        result = {**run_case(cp.kubeconfig, client, op, c, n), "round": r + 1}
                        results.append(result)
                        print(f"  round {r + 1} {op:5s} x{c:<2d} {client:8s} "
                              f"{result['rps']:8.1f} req/s {result['cpu_per_1000']:7.2f} "
                              f"CPU-s/1000 peak +{result['peak_rss_mib']:.1f} MiB", flush=True)
        asyncio.run(with_client(cp.kubeconfig, cleanup))
    finally:
        cp.stop()
    report(results, args, started)
    print(f"\nwhole run {time.monotonic() - t0:.0f} s")


def main() -> None:
    p = argparse.ArgumentParser(prog="kubeclient", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3, help="rounds; the client order rotates")
    p.add_argument("--gets", type=int, default=1000, help="GETs per case")
    p.add_argument("--patches", type=int, default=500, help="status PATCHes per case")
    p.add_argument("--lists", type=int, default=6, help="LISTs per case, one in flight")
    p.add_argument("--lists-concurrent", type=int, default=32,
                   help="LISTs per case, 32 in flight")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--kubeconfig", help=argparse.SUPPRESS)
    p.add_argument("--client", choices=CLIENTS, help=argparse.SUPPRESS)
    p.add_argument("--op", choices=OPS, help=argparse.SUPPRESS)
    p.add_argument("--concurrency", type=int, help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker_main(args)))
    else:
        orchestrate(args)


if __name__ == "__main__":
    main()
