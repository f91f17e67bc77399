"""probes: what the facade's probe engine costs at 1000 probed pods, and that its load is bounded.

One `vmlet_facade.probes.ProbeManager` in this process probes N pods' readiness (tcpSocket, or
httpGet) with periodSeconds P, all against one server on 127.0.0.1 run as a separate process (so
its work is not counted here). Each round runs for D seconds and reports, side by side in one
run: probes per second, this process's CPU-seconds per 1000 probes and in all, the RSS the
probed pods added, and the most checks in flight at once (never more than the semaphore's
``--concurrency``, whatever N and P). Round 0 follows no pod: the idle cost of the same loop.

    ~/.cache/vmlet/venv-py3.11/bin/python bench/probes/run.py
    ... --pods 1000 --period 1 --seconds 30 --handler http

A benchmark, never a test: it prints figures (record them in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from vmlet_facade import probes
from vmlet_facade.probes import ProbeManager

SERVER = """
import asyncio, sys
async def serve(reader, writer):
    await reader.readline()
    writer.write(b"HTTP/1.1 200 OK\\r\\nContent-Length: 0\\r\\n\\r\\n")
    await writer.drain()
    writer.close()
async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", 0, backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()
asyncio.run(main())
"""


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pod(i: int, port: int, handler: str, period: int) -> dict[str, Any]:
    action = {"tcpSocket": {"port": port}} if handler == "tcp" else {
        "httpGet": {"port": port, "path": "/healthz"}}
    return {"metadata": {"name": f"p{i}", "namespace": "bench", "uid": f"u{i}"},
            "spec": {"containers": [{"name": "vm", "image": "debian-12", "readinessProbe": {
                **action, "periodSeconds": period, "failureThreshold": 3}}]}}


async def round_(pods: int, port: int, args: argparse.Namespace) -> dict[str, float]:
    checks = {"done": 0, "in_flight": 0, "peak": 0}
    check = probes.check

    async def counted(probe: Any, pod: Any, ip: str, run: Any) -> tuple[bool, str]:
        checks["in_flight"] += 1
        checks["peak"] = max(checks["peak"], checks["in_flight"])
        try:
            result: tuple[bool, str] = await check(probe, pod, ip, run)
            return result
        finally:
            checks["in_flight"] -= 1
            checks["done"] += 1

    probes.check = counted

    async def warn(pod: Any, reason: str, message: str) -> None:
        print(f"  event {reason}: {message}", file=sys.stderr)

    manager = ProbeManager(lambda uid: None, warn, concurrency=args.concurrency)
    rss0, cpu0 = rss_kib(), time.process_time()
    for i in range(pods):
        manager.follow(f"u{i}", pod(i, port, args.handler, args.period), "127.0.0.1")
    await asyncio.sleep(args.seconds)
    cpu = time.process_time() - cpu0
    rss = rss_kib() - rss0
    ready = sum(1 for i in range(pods) if not manager.verdict(f"u{i}")[1])
    await manager.stop()
    probes.check = check
    done = checks["done"]
    return {"pods": pods, "probes_per_s": done / args.seconds, "cpu_s": cpu,
            "cpu_per_1000": 1000 * cpu / done if done else 0.0, "rss_mib": rss / 1024,
            "peak_in_flight": checks["peak"], "ready": ready}


async def rounds(args: argparse.Namespace, port: int) -> None:
    print(f"machine: {platform.node()} {platform.machine()}, {platform.python_version()}; "
          f"{args.handler} readiness probes, periodSeconds {args.period}, "
          f"{args.seconds:g} s a round, concurrency {args.concurrency}")
    print("pods  probes/s  cpu-s  cpu-s/1000 probes  +RSS MiB  peak in flight  ready")
    for pods in (0, args.pods):
        r = await round_(pods, port, args)
        print(f"{r['pods']:>4}  {r['probes_per_s']:>8.1f}  {r['cpu_s']:>5.2f}  "
              f"{r['cpu_per_1000']:>17.3f}  {r['rss_mib']:>8.1f}  "
              f"{r['peak_in_flight']:>14}  {r['ready']:>5}")


def main(args: argparse.Namespace) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        asyncio.run(rounds(args, int(server.stdout.readline())))
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=1000)
    parser.add_argument("--period", type=int, default=1, help="periodSeconds of every probe")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--handler", choices=("tcp", "http"), default="tcp")
    main(parser.parse_args())
