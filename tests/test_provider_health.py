"""Provider health tells the truth: liveness ("") stays SERVING while the IaaS is away, readiness
(`READINESS_SERVICE`) is NOT_SERVING until it answers again.

The vSphere provider runs as its own process against vcsim (the helpers of
tests/vmwareprovider.py), with its plaintext health-only port, the one Kubernetes' probes
use, and its mutual TLS port, the one the facade uses. vCenter goes away twice: frozen (SIGSTOP:
it accepts connections and never answers, the hard case) and killed (SIGKILL, then started again
on the same port). Each time readiness turns NOT_SERVING within a bound set by the provider's
keep-alive and HTTP timeout, liveness stays SERVING throughout, and readiness comes back.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.providerprocess import Provider
from tests.vmwareprovider import start_provider
from vmlet_contract import READINESS_SERVICE
from vmlet_localenv.processes import free_port
from vmlet_localenv.vcsim import VcSim

pytestmark = [pytest.mark.vcsim, pytest.mark.timeout(300)]

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
KEEPALIVE_SECONDS = 1
HTTP_TIMEOUT_SECONDS = 6
#: How long a provider may take to notice: a keep-alive round, its timeout, and some slack.
NOTICE_SECONDS = KEEPALIVE_SECONDS + HTTP_TIMEOUT_SECONDS + 8


class Health:
    """The health service of a provider, through the probes' port and through the facade's."""

    def __init__(self, provider: Provider, health_port: int) -> None:
        self._probe = grpc.insecure_channel(f"127.0.0.1:{health_port}")
        self._stubs = (
            health_pb2_grpc.HealthStub(self._probe),
            health_pb2_grpc.HealthStub(provider.channel),
        )

    def statuses(self) -> set[tuple[int, int]]:
        """(liveness, readiness) as each port answers them."""
        out = set()
        for stub in self._stubs:
            live = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            ready = stub.Check(health_pb2.HealthCheckRequest(service=READINESS_SERVICE), timeout=5)
            out.add((live.status, ready.status))
        return out

    def close(self) -> None:
        self._probe.close()


def within(seconds: float, check: Callable[[], bool], what: str) -> float:
    """Polls `check` until true; returns how long that took, fails past `seconds`."""
    started = time.monotonic()
    while not check():
        elapsed = time.monotonic() - started
        assert elapsed < seconds, f"{what} not within {seconds:.0f}s"
        time.sleep(0.2)
    return time.monotonic() - started


def test_readiness_follows_vcenter_and_liveness_stays_serving(tmp_path: Path) -> None:
    sim = VcSim(state_dir=tmp_path / "vcsim").start()
    assert sim.process is not None
    health_port = free_port()
    try:
        provider = start_provider(
            sim, tmp_path / "provider",
            "--health-listen", f"127.0.0.1:{health_port}",
            "--keepalive-seconds", str(KEEPALIVE_SECONDS),
            "--http-timeout-seconds", str(HTTP_TIMEOUT_SECONDS),
            "--watch-wait-seconds", "3",
        )  # fmt: skip
    except BaseException:
        sim.stop()
        raise
    health = Health(provider, health_port)
    ready = {(SERVING, SERVING)}
    not_ready = {(SERVING, NOT_SERVING)}
    try:
        within(30, lambda: health.statuses() == ready, "ready once vCenter answers")

        # A vCenter that hangs: connections are accepted, nothing is answered.
        sim.process.signal(signal.SIGSTOP)
        try:
            took = within(NOTICE_SECONDS, lambda: health.statuses() == not_ready, "not ready")
            print(f"frozen vCenter noticed in {took:.1f}s")
            for _ in range(5):  # and it stays so, alive, while vCenter stays away
                assert health.statuses() == not_ready
                time.sleep(0.5)
        finally:
            sim.process.signal(signal.SIGCONT)
        took = within(NOTICE_SECONDS, lambda: health.statuses() == ready, "ready after SIGCONT")
        print(f"thawed vCenter noticed in {took:.1f}s")
        provider.ping()

        # A vCenter that is gone, then back (a fresh one, on the same port).
        sim.process.signal(signal.SIGKILL)
        took = within(NOTICE_SECONDS, lambda: health.statuses() == not_ready, "not ready")
        print(f"killed vCenter noticed in {took:.1f}s")
        sim.restart()
        took = within(NOTICE_SECONDS, lambda: health.statuses() == ready, "ready after restart")
        print(f"restarted vCenter noticed in {took:.1f}s")
        provider.ping()
        provider.process.check_alive()
    finally:
        health.close()
        provider.stop()
        print(provider.process.tail(30))
        sim.stop()
