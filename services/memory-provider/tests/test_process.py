"""The provider as its own process: port file, health, graceful SIGTERM, state across restarts."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import vmlet_contract
import vmlet_memory
from vmlet.provider.v1 import pod_lifecycle_service_pb2 as pl
from vmlet.provider.v1 import pod_lifecycle_service_pb2_grpc as pl_grpc
from vmlet.provider.v1 import pod_notifier_service_pb2 as pn
from vmlet.provider.v1 import pod_notifier_service_pb2_grpc as pn_grpc
from vmlet_memory.testing import make_pod

pytestmark = pytest.mark.timeout(60)


def _env() -> dict[str, str]:
    # The child imports the very code under test, wherever this process found it.
    roots = [str(Path(m.__file__ or "").parent.parent) for m in (vmlet_contract, vmlet_memory)]
    path = os.pathsep.join([*roots, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**os.environ, "PYTHONPATH": path}


class Process:
    """A provider process and the port it reported."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc, self.port = proc, port

    async def stderr(self) -> str:
        assert self.proc.stderr is not None
        return (await self.proc.stderr.read()).decode()


async def _start(tmp_path: Path, *extra: str) -> Process:
    port_file = tmp_path / "port"
    port_file.unlink(missing_ok=True)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vmlet_memory", "--listen", "127.0.0.1:0",
        "--port-file", str(port_file), "--log-format", "text",
        *(extra or ("--insecure-plaintext",)),
        env=_env(), stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while not port_file.exists():
        if proc.returncode is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"provider did not start: {await proc.stderr.read()!r}")  # type: ignore[union-attr]
        await asyncio.sleep(0.05)
    return Process(proc, int(port_file.read_text()))


@pytest.fixture
async def cleanup() -> AsyncIterator[list[Process]]:
    started: list[Process] = []
    yield started
    for p in started:
        if p.proc.returncode is None:
            p.proc.kill()
            await p.proc.wait()


async def test_sigterm_stops_gracefully_and_quickly(tmp_path: Path, cleanup: list[Process]) -> None:
    p = await _start(tmp_path)
    cleanup.append(p)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{p.port}") as ch:
        for service in ("", vmlet_contract.READINESS_SERVICE):  # no IaaS to lose: ready
            reply = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=5
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
        # An open NotifyPods stream must not hold the shutdown up.
        stream = pn_grpc.PodNotifierServiceStub(ch).NotifyPods(pn.NotifyPodsRequest())
        await asyncio.sleep(0.2)
        started = time.monotonic()
        p.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(p.proc.wait(), 10)
        elapsed = time.monotonic() - started
        stream.cancel()
    log = await p.stderr()
    assert code == 0, log
    assert elapsed < 3, (elapsed, log)
    assert "received signal" in log and "provider stopped" in log


async def test_state_file_survives_a_process_restart(
    tmp_path: Path, cleanup: list[Process]
) -> None:
    state = tmp_path / "state.json"
    p = await _start(tmp_path, "--insecure-plaintext", "--state-file", str(state))
    cleanup.append(p)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{p.port}") as ch:
        status = (
            await pl_grpc.PodLifecycleServiceStub(ch).CreatePod(
                pl.CreatePodRequest(pod=make_pod("survivor")), timeout=5
            )
        ).status
    p.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(p.proc.wait(), 10) == 0

    q = await _start(tmp_path, "--insecure-plaintext", "--state-file", str(state))
    cleanup.append(q)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{q.port}") as ch:
        got = await pl_grpc.PodLifecycleServiceStub(ch).GetPod(
            pl.GetPodRequest(namespace="default", name="survivor"), timeout=5
        )
    assert got.status.pod_ip == status.pod_ip
    q.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(q.proc.wait(), 10) == 0


async def test_bad_flags_fail_fast(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vmlet_memory", "--listen", "127.0.0.1:0", "--cpu", "lots",
        env=_env(), stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    code = await asyncio.wait_for(proc.wait(), 20)
    assert code != 0


async def test_no_plaintext_without_its_flag(tmp_path: Path) -> None:
    """Without TLS flags the provider refuses to start (usage, exit 2) instead of serving
    plaintext; with --insecure-plaintext it serves and says loudly that it does."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vmlet_memory", "--listen", "127.0.0.1:0",
        env=_env(), stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert await asyncio.wait_for(proc.wait(), 20) == 2
    assert proc.stderr is not None
    err = (await proc.stderr.read()).decode()
    assert "mutual TLS" in err and "--insecure-plaintext" in err and "Traceback" not in err

    p = await _start(tmp_path, "--insecure-plaintext")
    p.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(p.proc.wait(), 10) == 0
    log = await p.stderr()
    assert "level=warning" in log and "PLAINTEXT" in log, log
