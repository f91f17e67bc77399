"""bench/openstack: N Nova servers created through the facade and the OpenStack provider, next to
a raw openstacksdk loop creating the same servers, on the same real Nova, in one run.

One real control plane and one real OpenStack (`vmlet_localenv.openstack`: Keystone, Placement,
Glance, Neutron, Nova 2025.2 with two fake-driver compute hosts) on loopback; the provider and
the facade run as their own processes. Per round, two phases, their order alternating:

  raw    openstacksdk as the provider's user: `--concurrency` threads (the provider's
         `--workers`), each with its own connection, POST /servers (the image, flavor m1.tiny,
         `networks: none`, the compute hosts in turn through `host`, microversion 2.79), while
         one poller lists the phase's servers every `--poll-seconds` until all are ACTIVE.
         Time: first create call -> all ACTIVE seen.
  vmlet  N pods (the image, requests 500m/512Mi, so m1.tiny; tolerating the provider's taint,
         no nodeName) created together with one `kubectl apply` of a List; the real scheduler
         binds them, the facade hands them to the provider, which boots them on the nodes'
         hosts. Time: first create -> every pod Running as `kubectl get` sees it (the facade
         writes Running once the provider has seen the server ACTIVE).
After each phase the bench counts the phase's ACTIVE servers in Nova as the admin; its servers
are removed after it, untimed.

    ~/.cache/vmlet/venv-py3.11/bin/python bench/openstack/run.py --servers 50
    ... --facts DIR/facts.json   # an env already up (python -m vmlet_localenv.openstack up)

A benchmark, never a test: it prints its figures and the ratio against the target (1.3x).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openstack
import openstack.exceptions

from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.openstack import OpenStackEnv
from vmlet_localenv.openstack.client import sdk_connection
from vmlet_localenv.services import FacadeProcess, ProviderProcess, apply_crds, facade_kubeconfig
from vmlet_localenv.stack import eventually

PROVIDER = "openstack"
FLAVOR = "m1.tiny"
MV = "2.79"
TARGET_RATIO = 1.3


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/openstack", description=__doc__.splitlines()[0])
    p.add_argument("--servers", type=int, default=50, help="servers per phase")
    p.add_argument("--rounds", type=int, default=1, help="rounds of (raw, vmlet), alternating")
    p.add_argument("--concurrency", type=int, default=8,
                   help="raw loop threads, and the provider's --workers")
    p.add_argument("--poll-seconds", type=float, default=0.5,
                   help="the raw poller's interval, the provider's --fast-poll-seconds and the "
                        "bench's own look at the pods")
    p.add_argument("--warmup", type=int, default=2, help="untimed servers per phase first")
    p.add_argument("--timeout", type=float, default=900, help="seconds for one phase")
    p.add_argument("--facts", type=Path, default=None,
                   help="facts.json of an OpenStack env already up (else one is started)")
    p.add_argument("--out", type=Path, default=None, help="keep logs here")
    return p.parse_args(argv)


@dataclass
class Facts:
    clouds_yaml: Path
    hosts: tuple[str, ...]
    image: str

    def connect(self, cloud: str) -> Any:
        return sdk_connection(self.clouds_yaml, cloud)


@dataclass
class Result:
    kind: str
    seconds: float
    active: int
    load: float
    cpu: dict[str, float] = field(default_factory=dict)


def servers(admin: Any) -> list[dict[str, Any]]:
    resp = admin.compute.get("/servers/detail", params={"all_tenants": 1, "limit": 1000},
                             microversion=MV)
    openstack.exceptions.raise_from_response(resp)
    return list(resp.json()["servers"])


def wait_gone(admin: Any, keep: Any, what: str, timeout: float = 600) -> None:
    eventually(lambda: not [s for s in servers(admin) if keep(s)], timeout=timeout, interval=1,
               what=what)


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for name, pid in pids.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[name] = (int(fields[11]) + int(fields[12])) / tick
    return out


# -- raw openstacksdk -------------------------------------------------------------------------


def raw_phase(facts: Facts, count: int, concurrency: int, poll: float, prefix: str,
              timeout: float) -> Result:
    vmlet = facts.connect("vmlet")
    image = vmlet.image.get("/images", params={"name": facts.image}).json()["images"][0]["id"]
    flavor = next(f["id"] for f in vmlet.compute.get("/flavors", microversion=MV).json()["flavors"]
                  if f["name"] == FLAVOR)
    local = threading.local()

    def one(index: int) -> str:
        conn = local.conn
        body = {"name": f"{prefix}-{index}", "imageRef": image, "flavorRef": flavor,
                "networks": "none", "host": facts.hosts[index % len(facts.hosts)],
                "metadata": {"vmlet-bench": prefix}}
        resp = conn.compute.post("/servers", json={"server": body}, microversion=MV)
        openstack.exceptions.raise_from_response(resp)
        return str(resp.json()["server"]["id"])

    with ThreadPoolExecutor(concurrency, initializer=lambda: setattr(
            local, "conn", facts.connect("vmlet"))) as pool:
        # every worker's connection authenticated before the clock starts
        list(pool.map(lambda _: local.conn.compute.get("/flavors", microversion=MV),
                      range(concurrency * 2)))
        start = time.monotonic()
        futures = [pool.submit(one, i) for i in range(count)]
        ids: set[str] = set()
        done_at = None
        deadline = start + timeout
        while time.monotonic() < deadline:
            mine = [s for s in vmlet.compute.get(
                "/servers/detail", params={"name": f"^{prefix}-", "limit": 1000},
                microversion=MV).json()["servers"]]
            errors = [s["name"] for s in mine if s["status"] == "ERROR"]
            if errors:
                raise RuntimeError(f"raw servers in ERROR: {errors}")
            if len(mine) == count and all(s["status"] == "ACTIVE" for s in mine):
                done_at = time.monotonic()
                break
            time.sleep(poll)
        ids = {f.result() for f in futures}
    if done_at is None:
        raise RuntimeError(f"raw phase: not all {count} servers ACTIVE in {timeout:.0f}s")
    admin = facts.connect("vmlet-admin")
    active = sum(1 for s in servers(admin) if s["id"] in ids and s["status"] == "ACTIVE")
    return Result("raw", done_at - start, active, os.getloadavg()[0])


def raw_cleanup(facts: Facts, prefix: str, concurrency: int) -> None:
    admin = facts.connect("vmlet-admin")
    mine = [s["id"] for s in servers(admin)
            if (s.get("metadata") or {}).get("vmlet-bench") == prefix]
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda i: admin.compute.delete(f"/servers/{i}", microversion=MV), mine))
    wait_gone(admin, lambda s: s["id"] in mine, f"{prefix} servers deleted")


# -- through vmlet ----------------------------------------------------------------------------


def pod(facts: Facts, index: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"vm-{index}"}, "spec": {
        "nodeSelector": {"vmlet.io/provider": PROVIDER},
        "tolerations": [{"key": "virtual-kubelet.io/provider", "operator": "Equal",
                         "value": PROVIDER, "effect": "NoSchedule"}],
        "containers": [{"name": "vm", "image": facts.image,
                        "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}}}]}}


def pods_running(cp: ControlPlane, namespace: str) -> tuple[int, list[str]]:
    items = json.loads(cp.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)["items"]
    return (sum(1 for p in items if p["status"].get("phase") == "Running"),
            [p["metadata"]["uid"] for p in items])


def vmlet_phase(cp: ControlPlane, facts: Facts, count: int, poll: float, namespace: str,
                timeout: float) -> Result:
    cp.kubectl("create", "namespace", namespace)
    manifest = json.dumps({"apiVersion": "v1", "kind": "List",
                           "items": [pod(facts, i) for i in range(count)]})
    start = time.monotonic()
    cp.kubectl("apply", "-n", namespace, "-f", "-", input=manifest)
    deadline = start + timeout
    done_at = None
    uids: list[str] = []
    while time.monotonic() < deadline:
        running, uids = pods_running(cp, namespace)
        if running == count:
            done_at = time.monotonic()
            break
        time.sleep(poll)
    if done_at is None:
        raise RuntimeError(f"vmlet phase: not all {count} pods Running in {timeout:.0f}s")
    admin = facts.connect("vmlet-admin")
    wanted = set(uids)
    active = sum(1 for s in servers(admin) if s["status"] == "ACTIVE"
                 and (s.get("metadata") or {}).get("vmlet-identity") in wanted)
    return Result("vmlet", done_at - start, active, os.getloadavg()[0])


def vmlet_cleanup(cp: ControlPlane, facts: Facts, namespace: str) -> None:
    _, uids = pods_running(cp, namespace)
    cp.kubectl("delete", "pods", "--all", "-n", namespace, "--wait=false")
    wanted = set(uids)
    wait_gone(facts.connect("vmlet-admin"),
              lambda s: (s.get("metadata") or {}).get("vmlet-identity") in wanted,
              f"{namespace} servers deleted")
    cp.kubectl("delete", "namespace", namespace, "--wait=false")


# -- the run ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="vmlet-bench-openstack-"))
    out.mkdir(parents=True, exist_ok=True)
    log(f"logs in {out}")
    env: OpenStackEnv | None = None
    cp = ControlPlane(state_dir=out / "controlplane")
    provider: ProviderProcess | None = None
    facade: FacadeProcess | None = None
    results: list[Result] = []
    try:
        if args.facts:
            raw = json.loads(args.facts.read_text())
        else:
            log("starting an OpenStack")
            env = OpenStackEnv(out / "openstack")
            env.start()
            raw = env.facts()
        facts = Facts(Path(raw["clouds_yaml"]), tuple(raw["compute_hosts"]), raw["image"]["name"])
        cp.start()
        apply_crds(cp)
        lease_ns = "vmlet-bench-openstack"
        cp.kubectl("create", "namespace", lease_ns)
        provider = ProviderProcess(PROVIDER, out / "provider", env={
            "OS_CLIENT_CONFIG_FILE": str(facts.clouds_yaml), "OS_CLOUD": "vmlet"}, args=[
            "--node-prefix", PROVIDER, "--workers", str(args.concurrency),
            "--fast-poll-seconds", str(args.poll_seconds), "--log-level", "warning"]).start(120)
        facade = FacadeProcess({PROVIDER: provider.address}, facade_kubeconfig(cp),
                               out / "facade", args=["--kubelet-port", "0",
                                                     f"--leader-election-namespace={lease_ns}",
                                                     "--log-level", "warning"]).start()
        nodes = {f"{PROVIDER}-{h}" for h in facts.hosts}

        def ready_untainted() -> bool:
            items = json.loads(cp.kubectl("get", "nodes", "-o", "json").stdout)["items"]
            ok = {n["metadata"]["name"] for n in items
                  if any(c["type"] == "Ready" and c["status"] == "True"
                         for c in n["status"]["conditions"])
                  and not any(t.get("key") == "node.kubernetes.io/not-ready"
                              for t in n["spec"].get("taints") or [])}
            return nodes <= ok

        eventually(ready_untainted, timeout=180, what="OpenStack nodes Ready")
        if args.warmup:
            log(f"warm-up: {args.warmup} servers each way, untimed")
            raw_phase(facts, args.warmup, args.concurrency, args.poll_seconds, "warm-raw",
                      args.timeout)
            raw_cleanup(facts, "warm-raw", args.concurrency)
            vmlet_phase(cp, facts, args.warmup, args.poll_seconds, "warm-vmlet", args.timeout)
            vmlet_cleanup(cp, facts, "warm-vmlet")
        pids = {p.name: p.pid for p in cp.processes if p.pid}
        for name, proc in (("provider", provider.process), ("facade", facade.process)):
            if proc is not None and proc.pid:
                pids[name] = proc.pid
        if env is not None:
            pids.update({k: int(v) for k, v in env.facts().get("pids", {}).items()})
        else:
            pids.update({k: int(v) for k, v in raw.get("pids", {}).items()})
        for round_ in range(args.rounds):
            order = ("raw", "vmlet") if round_ % 2 == 0 else ("vmlet", "raw")
            for kind in order:
                time.sleep(3)
                before = cpu_seconds(pids)
                if kind == "raw":
                    prefix = f"raw{round_}-{uuid.uuid4().hex[:4]}"
                    result = raw_phase(facts, args.servers, args.concurrency, args.poll_seconds,
                                       prefix, args.timeout)
                    after = cpu_seconds(pids)
                    raw_cleanup(facts, prefix, args.concurrency)
                else:
                    namespace = f"bench-os-{round_}-{uuid.uuid4().hex[:4]}"
                    result = vmlet_phase(cp, facts, args.servers, args.poll_seconds, namespace,
                                         args.timeout)
                    after = cpu_seconds(pids)
                    vmlet_cleanup(cp, facts, namespace)
                result.cpu = {k: round(v - before.get(k, 0.0), 1) for k, v in after.items()
                              if v - before.get(k, 0.0) >= 0.5}
                results.append(result)
                log(f"round {round_ + 1} {kind}: {args.servers} servers in {result.seconds:.2f}s"
                    f" ({args.servers / result.seconds:.2f}/s; {result.active} ACTIVE in Nova;"
                    f" load {result.load:.1f})")
                log(f"  CPU-seconds: {result.cpu}")
    finally:
        if facade is not None:
            facade.stop()
        if provider is not None:
            provider.stop()
        cp.stop()
        if env is not None:
            env.stop()
    report(args, results)
    return 0


def report(args: argparse.Namespace, results: list[Result]) -> None:
    raw = [r.seconds for r in results if r.kind == "raw"]
    vmlet = [r.seconds for r in results if r.kind == "vmlet"]
    if not raw or not vmlet:
        print("bench/openstack: no complete round")
        return
    raw_m, vmlet_m = statistics.median(raw), statistics.median(vmlet)
    ratio = vmlet_m / raw_m
    print(f"\nbench/openstack: {args.servers} servers ({FLAVOR}, networks none) on "
          f"{len(set(r.kind for r in results))} paths, real Nova 2025.2 (fake driver), "
          f"{args.rounds} round(s)")
    print(f"  machine: {os.cpu_count()} CPUs, {platform.platform()}")
    print(f"  raw openstacksdk : median {raw_m:6.2f}s  ({args.servers / raw_m:5.2f} servers/s)  "
          f"runs {[round(x, 2) for x in raw]}")
    print(f"  facade+provider  : median {vmlet_m:6.2f}s  ({args.servers / vmlet_m:5.2f} servers/s)"
          f"  runs {[round(x, 2) for x in vmlet]}")
    print(f"  ratio facade+provider / raw: {ratio:.2f}x (target <= {TARGET_RATIO}x: "
          f"{'met' if ratio <= TARGET_RATIO else 'NOT met'})")
    for r in results:
        print(f"  {r.kind:5s} {r.seconds:7.2f}s  ACTIVE {r.active}  load {r.load:4.1f}  "
              f"cpu {r.cpu}")


if __name__ == "__main__":
    sys.exit(main())
