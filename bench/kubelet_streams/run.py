"""kubelet_streams: throughput of the facade's kubelet API streams, on loopback.

One real control plane and one memory provider; the facade as its own process, serving the
kubelet API on 127.0.0.1 with a serving certificate of the cluster's CA. The client calls the
kubelet API directly with the apiserver's kubelet-client certificate (the identity the apiserver
uses), over TLS, and measures:

  logs          GET /containerLogs/...?follow=true of a pod whose log holds one large first-boot
                line (``--log-kib``): bytes of log received per second, over ``--rounds``
                requests (each request read until the whole log arrived, then closed);
  exec          WebSocket v5.channel.k8s.io exec of ``cat``: stdin -> stdout bytes per second,
                ``--mib`` MiB in ``--chunk-kib`` KiB messages, one window of ``--window`` in flight;
  portforward   WebSocket v4.channel.k8s.io port-forward to the memory provider's echo server:
                bytes echoed per second, as for exec;
  kubectl-exec  ``kubectl exec -i -- cat`` through the apiserver, which speaks SPDY/3.1 to the
                kubelet API: ``--mib`` MiB echoed;
  kubectl-pf    ``kubectl port-forward`` to the echo server (SPDY to the kubelet API, one TCP
                connection): ``--mib`` MiB echoed.

    ~/.cache/vmlet/venv-py3.11/bin/python bench/kubelet_streams/run.py

A benchmark, never a test: it prints figures (record them in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp

from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.flood import rss_kib
from vmlet_localenv.loopbackfacade import loopback_facade
from vmlet_localenv.stack import Stack, eventually
from vmlet_localenv.terminal import WEBSOCKET
from vmlet_localenv.tools import binary

PROVIDER = "bench"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="kubelet_streams", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=100, help="followed-log requests")
    p.add_argument("--log-kib", type=int, default=32, help="size of the pod's log, KiB")
    p.add_argument("--mib", type=int, default=32, help="MiB through exec and port-forward")
    p.add_argument("--chunk-kib", type=int, default=32, help="size of one message, KiB")
    p.add_argument("--window", type=int, default=8, help="messages in flight")
    p.add_argument("--repeat", type=int, default=3, help="runs of each; the best is printed")
    p.add_argument("--facade-arg", action="append", default=[], help="extra facade flag")
    return p.parse_args(argv)


def bench_pod(stack: Stack, log_kib: int) -> dict[str, Any]:
    """A VM pod whose first boot logs one line of about ``log_kib`` KiB (its args)."""
    pod = stack.vm_pod("bench", PROVIDER)
    pod["spec"]["containers"][0]["args"] = ["x" * 1023] * log_kib
    return pod


class Client:
    """The apiserver's side of the kubelet API: TLS with its kubelet-client certificate."""

    def __init__(self, port: int, ca: Path, cert: Path, key: Path) -> None:
        self.base = f"https://127.0.0.1:{port}"
        self.tls = ssl.create_default_context(cafile=str(ca))
        self.tls.load_cert_chain(str(cert), str(key))

    def session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.tls))


async def log_size(client: Client, ns: str) -> int:
    async with client.session() as session, session.get(
            f"{client.base}/containerLogs/{ns}/bench/vm") as answer:
        assert answer.status == 200, answer.status
        return len(await answer.read())


async def logs(client: Client, ns: str, rounds: int) -> float:
    """MB/s of followed logs."""
    size = await log_size(client, ns)
    async with client.session() as session:
        started = time.perf_counter()
        for _ in range(rounds):
            got = 0
            async with session.get(f"{client.base}/containerLogs/{ns}/bench/vm",
                                   params={"follow": "true"}) as answer:
                assert answer.status == 200, answer.status
                async for chunk in answer.content.iter_any():
                    got += len(chunk)
                    if got >= size:
                        break
        seconds = time.perf_counter() - started
    return size * rounds / seconds / 1e6


async def _pump(ws: aiohttp.ClientWebSocketResponse, channel: int, echo: int, total: int,
                chunk: int, window: int) -> float:
    """Send ``total`` bytes on ``channel`` and read them back on ``echo``; seconds taken."""
    block = bytes([channel]) + b"y" * chunk
    sent = received = 0
    started = time.perf_counter()
    while received < total:
        while sent < total and sent - received < window * chunk:
            await ws.send_bytes(block)
            sent += chunk
        message = await ws.receive()
        if message.type != aiohttp.WSMsgType.BINARY:
            raise RuntimeError(f"stream ended early: {message.type} {message.data!r}")
        data = message.data
        if data and data[0] == echo:
            received += len(data) - 1
    return time.perf_counter() - started


async def exec_cat(client: Client, ns: str, total: int, chunk: int, window: int) -> float:
    """MB/s of exec stdin -> stdout."""
    async with client.session() as session, session.ws_connect(
            f"{client.base}/exec/{ns}/bench/vm?command=cat&input=1&output=1",
            protocols=("v5.channel.k8s.io",), max_msg_size=0) as ws:
        seconds = await _pump(ws, 0, 1, total, chunk, window)
        await ws.send_bytes(bytes([255, 0]))  # v5: stdin closed
    return total / seconds / 1e6


async def port_forward(client: Client, ns: str, total: int, chunk: int, window: int) -> float:
    """MB/s echoed through a port-forward."""
    async with client.session() as session, session.ws_connect(
            f"{client.base}/portForward/{ns}/bench?port=8080",
            protocols=("v4.channel.k8s.io",), max_msg_size=0) as ws:
        for _ in range(2):  # each channel opens with the port number
            await ws.receive()
        seconds = await _pump(ws, 0, 0, total, chunk, window)
    return total / seconds / 1e6


def _kubectl(cp: ControlPlane, *args: str) -> list[str]:
    return [str(binary("kubectl")), f"--kubeconfig={cp.kubeconfig}", *args]


def kubectl_exec(cp: ControlPlane, ns: str, total: int, chunk: int) -> float:
    """MB/s of ``kubectl exec -i -- cat`` through the apiserver, which speaks SPDY to the
    kubelet API (it translates kubectl's WebSocket): stdin written by a thread, stdout counted
    until all of it came back."""
    proc = subprocess.Popen(_kubectl(cp, "exec", "-i", "-n", ns, "bench", "--", "cat"),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, **WEBSOCKET})
    assert proc.stdin is not None and proc.stdout is not None
    block = b"z" * chunk

    def feed() -> None:
        assert proc.stdin is not None
        for _ in range(total // chunk):
            proc.stdin.write(block)
        proc.stdin.flush()

    started = time.perf_counter()
    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    received = 0
    while received < total:
        data = proc.stdout.read1(1 << 20)
        if not data:
            proc.kill()
            error = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"kubectl exec ended after {received} of {total} bytes: {error}")
        received += len(data)
    seconds = time.perf_counter() - started
    writer.join(timeout=30)
    proc.stdin.close()
    proc.wait(timeout=60)
    return total / seconds / 1e6


def kubectl_port_forward(cp: ControlPlane, ns: str, total: int, chunk: int) -> float:
    """MB/s echoed through ``kubectl port-forward`` (SPDY from the apiserver to the kubelet
    API) to the memory provider's echo server, one TCP connection."""
    proc = subprocess.Popen(_kubectl(cp, "port-forward", "-n", ns, "pod/bench", ":8080",
                                     "--address=127.0.0.1"),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, **WEBSOCKET})
    try:
        assert proc.stdout is not None
        found = re.search(r"127\.0\.0\.1:(\d+) -> 8080", proc.stdout.readline())
        if not found:
            raise RuntimeError("kubectl port-forward printed no local port")
        with socket.create_connection(("127.0.0.1", int(found.group(1))), timeout=60) as conn:
            block = b"p" * chunk
            started = time.perf_counter()
            writer = threading.Thread(
                target=lambda: [conn.sendall(block) for _ in range(total // chunk)], daemon=True)
            writer.start()
            received = 0
            while received < total:
                data = conn.recv(1 << 20)
                if not data:
                    raise RuntimeError(f"port-forward ended after {received} of {total} bytes")
                received += len(data)
            seconds = time.perf_counter() - started
            writer.join(timeout=30)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return total / seconds / 1e6


async def measure(args: argparse.Namespace, client: Client, cp: ControlPlane,
                  ns: str) -> dict[str, float]:
    total, chunk = args.mib << 20, args.chunk_kib << 10
    best: dict[str, float] = {}
    for _ in range(args.repeat):
        runs = {"logs": await asyncio.wait_for(logs(client, ns, args.rounds), 300),
                "exec": await asyncio.wait_for(exec_cat(client, ns, total, chunk,
                                                        args.window), 300),
                "portforward": await asyncio.wait_for(port_forward(client, ns, total, chunk,
                                                                   args.window), 300),
                "kubectl-exec": await asyncio.to_thread(kubectl_exec, cp, ns, total, chunk),
                "kubectl-pf": await asyncio.to_thread(kubectl_port_forward, cp, ns, total,
                                                      chunk)}
        print("  run:", ", ".join(f"{k} {v:.1f} MB/s" for k, v in runs.items()), flush=True)
        for name, value in runs.items():
            best[name] = max(best.get(name, 0.0), value)
    return best


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"machine: {platform.node()} {platform.machine()}, python {platform.python_version()}")
    with loopback_facade("kubelet-streams", PROVIDER, args.facade_arg) as lf:
        cp, stack = lf.cp, lf.stack
        eventually(lambda: len(stack.ready_nodes(PROVIDER)) == 1, what="node Ready")
        ns = "streams"
        cp.kubectl("create", "namespace", ns)
        cp.kubectl("create", "-n", ns, "-f", "-", input=json.dumps(bench_pod(stack, args.log_kib)))
        eventually(lambda: stack.kubectl_json("get", "pod", "-n", ns, "bench")
                   ["status"].get("phase") == "Running", what="pod Running")
        client = Client(lf.port, lf.ca.cert_path, cp.pki.kubelet_client.cert,
                        cp.pki.kubelet_client.key)
        pid = stack.facade.process.pid if stack.facade and stack.facade.process else 0
        idle = rss_kib(pid) if pid else 0
        figures = asyncio.run(measure(args, client, cp, ns))
        busy = rss_kib(pid) if pid else 0
        print(f"facade RSS: {idle / 1024:.1f} MiB idle, {busy / 1024:.1f} MiB after the runs",
              flush=True)
    print(f"log {args.log_kib} KiB x {args.rounds} follow requests; exec and port-forward "
          f"{args.mib} MiB in {args.chunk_kib} KiB messages, {args.window} in flight; "
          f"best of {args.repeat}")
    for name, value in figures.items():
        print(f"{name:12s} {value:8.1f} MB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
