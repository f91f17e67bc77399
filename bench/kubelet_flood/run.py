"""kubelet_flood: what idle strangers cost the facade's kubelet API, and whether it still answers.

One real control plane and one memory provider on loopback; the facade as its own process,
serving the kubelet API on 127.0.0.1 with a serving certificate from a CA of this run and
accepting the apiserver's kubelet-client certificate. Three measurements:

  tcp    N connections that complete TCP and send nothing: facade RSS growth per connection;
  tls    N connections that complete a TLS handshake and send nothing: the same;
  flood  F connections (half TCP only, half TLS) from S loopback source addresses, then a GET
         /pods with the apiserver's certificate timed during the flood; the facade's peak RSS
         (VmHWM) against the Deployment's memory limit, and what the facade refused.

    ~/.cache/vmlet/venv-py3.11/bin/python bench/kubelet_flood/run.py
    ... --facade-arg=--kubelet-max-connections=4096   # any facade flag, repeatable

A benchmark, never a test: it prints figures (record them in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import platform
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.flood import Flood, loopback_sources, raise_nofile, rss_kib, timed_get
from vmlet_localenv.loopbackfacade import loopback_facade
from vmlet_localenv.pki import CertificateAuthority
from vmlet_localenv.stack import Stack, eventually

REPO = Path(__file__).resolve().parents[2]
DEPLOYMENT = REPO / "k8s" / "base" / "facade" / "deployment.yaml"


def memory_limit_mib() -> int:
    """The facade Deployment's memory limit (``limits: {memory: NMi}``), in MiB."""
    found = re.search(r"limits:\s*\{memory:\s*(\d+)Mi\}", DEPLOYMENT.read_text())
    if not found:
        raise SystemExit(f"no memory limit in Mi found in {DEPLOYMENT}")
    return int(found.group(1))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="kubelet_flood", description=__doc__.splitlines()[0])
    p.add_argument("--idle", type=int, default=1000, help="connections for tcp and tls")
    p.add_argument("--flood", type=int, default=10000, help="connections of the flood")
    p.add_argument("--sources", type=int, default=200, help="source addresses of the flood")
    p.add_argument("--facade-arg", action="append", default=[], help="extra facade flag")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    nofile = raise_nofile(args.flood + args.idle + 1024)
    limit = memory_limit_mib()
    print(f"machine: {platform.node()} {platform.machine()}, python {platform.python_version()},"
          f" RLIMIT_NOFILE {nofile}; Deployment memory limit {limit} MiB")
    with loopback_facade("kubelet-flood", "flood", args.facade_arg) as lf:
        return measure(args, lf.stack, lf.port, lf.ca, lf.cp, limit)


def fresh_facade(stack: Stack, get: Callable[[], tuple[int, float]]) -> int:
    """Restart the facade (so each measurement starts from a process that never saw a
    flood); its pid once the kubelet API answers and has served a few requests."""
    if stack.facade is not None:
        stack.facade.stop()
    facade = stack.start_facade()
    assert facade.process is not None and facade.process.pid is not None
    eventually(lambda: get()[0] == 200, timeout=60, what="the kubelet API answering")
    for _ in range(20):
        get()
    time.sleep(1.0)
    return facade.process.pid


def measure(args: argparse.Namespace, stack: Stack, port: int, ca: CertificateAuthority,
            cp: ControlPlane, limit: int) -> int:
    client = (cp.pki.kubelet_client.cert, cp.pki.kubelet_client.key)

    def get() -> tuple[int, float]:
        status, seconds = timed_get("127.0.0.1", port, "/pods", ca=ca.cert_path, cert=client)
        return int(status), float(seconds)

    for kind, handshake in (("tcp", False), ("tls", True)):
        pid = fresh_facade(stack, get)
        before = rss_kib(pid)
        with Flood("127.0.0.1", port) as flood:
            count = flood.open(args.idle, loopback_sources(20), handshake=handshake)
            time.sleep(1.0)
            after = rss_kib(pid)
            held = flood.alive()
        per = (after - before) / max(held, 1)
        print(f"{kind}: {held} idle connections held of {args.idle} "
              f"(opened in {count.seconds:.1f} s, refused {count.refused}); facade RSS "
              f"{before / 1024:.1f} -> {after / 1024:.1f} MiB: {per:.1f} KiB per connection")
    pid = fresh_facade(stack, get)
    status, seconds = get()
    print(f"GET /pods before the flood: {status} in {seconds * 1000:.0f} ms; facade RSS "
          f"{rss_kib(pid) / 1024:.1f} MiB")
    half = args.flood // 2
    sources = loopback_sources(args.sources)
    with Flood("127.0.0.1", port) as flood:
        plain = flood.open(half, sources, handshake=False, deadline=60)
        tls = flood.open(args.flood - half, sources, handshake=True, deadline=60)
        status, seconds = get()
        held = flood.alive()
        rss = rss_kib(pid)
        metrics = stack.facade.metrics() if stack.facade else ""
    peak = rss_kib(pid, "VmHWM")
    print(f"flood: {args.flood} connections from {args.sources} addresses: tcp {plain}, "
          f"tls {tls}; {held} still open after the GET")
    print(f"GET /pods during the flood: {status} in {seconds * 1000:.0f} ms")
    print(f"facade RSS during the flood {rss / 1024:.1f} MiB, peak (VmHWM) {peak / 1024:.1f} MiB"
          f" (limit {limit} MiB)")
    for line in metrics.splitlines():
        if line.startswith("vmlet_facade_kubelet_api_connections") and "_created" not in line:
            print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
