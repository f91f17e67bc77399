"""Startup and readiness probes (vmlet_facade.probes): each handler against a real socket on
loopback, the kubelet's thresholds, the startup gate, Events and the status they gate."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from vmlet.provider.v1 import pod_pb2 as pb
from vmlet_facade import probes
from vmlet_facade.probes import Probe, ProbeManager, check, probes_of

Obj = dict[str, Any]
IP = "127.0.0.1"


def _pod(**container: Any) -> Obj:
    return {"metadata": {"name": "web", "namespace": "ns", "uid": "u1"},
            "spec": {"containers": [{"name": "vm", "image": "debian-12",
                                     "ports": [{"name": "http", "containerPort": 1}],
                                     **container}]}}


def _probe(handler: Obj, kind: str = "readiness") -> Probe:
    return probes_of(_pod(**{f"{kind}Probe": handler}))[0]


@contextlib.asynccontextmanager
async def _server(answer: bytes | None) -> AsyncIterator[int]:
    """A server on loopback that answers every request with ``answer`` (None: never)."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        if answer is None:
            await asyncio.sleep(30)
        writer.write(answer or b"")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, IP, 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def _closed_port() -> int:
    server = await asyncio.start_server(lambda r, w: None, IP, 0)
    port = int(server.sockets[0].getsockname()[1])
    server.close()
    await server.wait_closed()
    return port


def test_the_kubelets_defaults_are_filled_in() -> None:
    probe = _probe({"tcpSocket": {"port": 22}})
    assert (probe.initial_delay, probe.period, probe.timeout, probe.success_threshold,
            probe.failure_threshold) == (0.0, 10.0, 1.0, 1, 3)
    assert [p.kind for p in probes_of(_pod(startupProbe={}, readinessProbe={},
                                           livenessProbe={}))] == ["startup", "readiness",
                                                                   "liveness"]


async def test_tcp_and_http_checks_against_a_real_socket() -> None:
    pod = _pod()
    async with _server(b"") as port:
        assert await check(_probe({"tcpSocket": {"port": port}}), pod, IP, None) == (True, "")
    closed = await _closed_port()
    ok, why = await check(_probe({"tcpSocket": {"port": closed}}), pod, IP, None)
    assert not ok and why.startswith(f"dial tcp {IP}:{closed}: ")
    async with _server(b"HTTP/1.1 204 No Content\r\n\r\n") as port:
        assert (await check(_probe({"httpGet": {"port": port, "path": "/ok"}}), pod, IP,
                            None)) == (True, "")
    async with _server(b"HTTP/1.1 503 Unavailable\r\n\r\n") as port:
        assert (await check(_probe({"httpGet": {"port": port}}), pod, IP, None)) == (
            False, "HTTP probe failed with statuscode: 503")
    async with _server(None) as port:
        assert (await check(_probe({"httpGet": {"port": port}}), pod, IP, None)) == (
            False, "timeout: no answer within 1s")


async def test_a_named_port_is_the_containers_and_only_the_pods_ip_is_probed() -> None:
    async with _server(b"HTTP/1.1 200 OK\r\n\r\n") as port:
        pod = _pod(ports=[{"name": "http", "containerPort": port}])
        assert await check(_probe({"httpGet": {"port": "http"}}), pod, IP, None) == (True, "")
        ok, why = await check(_probe({"tcpSocket": {"port": port, "host": "10.1.2.3"}}), pod,
                              IP, None)
        assert not ok and why == (f"vmlet reaches only the pod's own IP ({IP}), "
                                  "not host 10.1.2.3")
    assert await check(_probe({"tcpSocket": {"port": 22}}), _pod(), "", None) == (
        False, "the pod has no IP yet")
    assert (await check(_probe({"tcpSocket": {"port": "nope"}}), _pod(), IP, None))[1] == (
        "port 'nope' is not a port of container vm")
    assert (await check(_probe({"grpc": {"port": 1}}), _pod(), IP, None))[0] is False


async def test_an_exec_check_runs_in_the_guest_and_exit_zero_is_success() -> None:
    ran: list[tuple[str, list[str]]] = []

    async def run(pod: Obj, container: str, command: list[str]) -> tuple[int, str]:
        ran.append((container, command))
        return (0, "") if command == ["true"] else (1, "no such file")

    assert await check(_probe({"exec": {"command": ["true"]}}), _pod(), "", run) == (True, "")
    assert await check(_probe({"exec": {"command": ["test", "-e", "/x"]}}), _pod(), "",
                       run) == (False, "no such file")
    assert ran == [("vm", ["true"]), ("vm", ["test", "-e", "/x"])]
    assert (await check(_probe({"exec": {"command": ["true"]}}), _pod(), "", None))[0] is False


class Recorder:
    """The ProbeManager's callbacks: which pods changed, and the Events posted."""

    def __init__(self) -> None:
        self.changes: list[str] = []
        self.events: list[tuple[str, str]] = []

    def changed(self, uid: str) -> None:
        self.changes.append(uid)

    async def warn(self, pod: Obj, reason: str, message: str) -> None:
        self.events.append((reason, message))


Exec = Callable[[Obj, str, list[str]], Awaitable[tuple[int, str]]]


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    """Probe periods in hundredths: a period of 1 s takes 10 ms."""
    sleep = asyncio.sleep
    monkeypatch.setattr(probes, "_sleep", lambda seconds: sleep(seconds / 100))


async def _until(condition: Callable[[], bool]) -> None:
    """Wait (on the real clock: the probes sleep on it) until ``condition()``, 5 s at most."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached")


async def test_readiness_turns_after_its_thresholds_and_warns_once(fast: None) -> None:
    answer = {"code": 1}

    async def run(pod: Obj, container: str, command: list[str]) -> tuple[int, str]:
        return answer["code"], "not yet"

    seen = Recorder()
    manager = ProbeManager(seen.changed, seen.warn, run)
    pod = _pod(readinessProbe={"exec": {"command": ["ready"]}, "periodSeconds": 1,
                               "successThreshold": 2, "failureThreshold": 2})
    manager.follow("u1", pod, IP)
    assert manager.verdict("u1") == (frozenset(), frozenset({"vm"}))  # starts not ready
    await _until(lambda: bool(seen.events))
    assert seen.events == [("Unhealthy", "Readiness probe failed: not yet")]
    answer["code"] = 0
    await _until(lambda: seen.changes == ["u1"])
    assert manager.verdict("u1") == (frozenset(), frozenset())
    answer["code"] = 1
    await _until(lambda: seen.changes == ["u1", "u1"])
    assert manager.verdict("u1")[1] == {"vm"}
    await asyncio.sleep(0.05)
    assert len(seen.events) == 1  # at most one Unhealthy per EVENT_INTERVAL while failing
    manager.forget("u1")
    assert not manager.probed("u1") and manager.verdict("u1") == (frozenset(), frozenset())
    await manager.stop()


async def test_a_startup_probe_holds_readiness_back_until_it_succeeds(fast: None) -> None:
    ran: list[str] = []
    started = {"ok": False}

    async def run(pod: Obj, container: str, command: list[str]) -> tuple[int, str]:
        ran.append(command[0])
        return (0 if command[0] == "ready" or started["ok"] else 1), ""

    seen = Recorder()
    manager = ProbeManager(seen.changed, seen.warn, run)
    manager.follow("u1", _pod(startupProbe={"exec": {"command": ["booted"]}, "periodSeconds": 1},
                              readinessProbe={"exec": {"command": ["ready"]},
                                              "periodSeconds": 1}), IP)
    await _until(lambda: ran.count("booted") >= 3)
    assert "ready" not in ran
    assert manager.verdict("u1") == (frozenset({"vm"}), frozenset({"vm"}))
    assert seen.events[0] == ("Unhealthy", "Startup probe failed: command exited with 1")
    started["ok"] = True
    await _until(lambda: manager.verdict("u1") == (frozenset(), frozenset()))
    assert "ready" in ran
    await manager.stop()


async def test_the_gate_keeps_a_running_pod_not_ready_and_names_the_containers() -> None:
    seen = Recorder()
    manager = ProbeManager(seen.changed, seen.warn)
    running = pb.PodStatus(phase=pb.POD_PHASE_RUNNING, ready=True, pod_ip="198.18.0.9")
    running.container_statuses.add(name="vm", ready=True).running.SetInParent()
    pod = _pod(readinessProbe={"tcpSocket": {"port": 9}, "initialDelaySeconds": 3600})
    manager.sees("u1", pod, running)
    gated, not_started = manager.gate("u1", running)
    assert not gated.ready and gated.not_ready_reason == "ContainersNotReady"
    assert gated.not_ready_message == "containers with unready status: [vm]"
    assert not gated.container_statuses[0].ready and not not_started
    assert running.ready  # the provider's status is not changed
    manager.sees("u1", pod, pb.PodStatus(phase=pb.POD_PHASE_PENDING))
    assert not manager.probed("u1")
    assert manager.gate("u1", running) == (running, frozenset())
    await manager.stop()


async def test_no_check_counts_before_the_vm_has_an_ip(fast: None) -> None:
    """A VM still booting has no IP: its checks would fail on the boot, hiding the real cause in
    the one Unhealthy Event allowed, so none is run until the provider reports an IP."""
    ran: list[str] = []

    async def run(pod: Obj, container: str, command: list[str]) -> tuple[int, str]:
        ran.append(command[0])
        return 1, "no"

    seen = Recorder()
    manager = ProbeManager(seen.changed, seen.warn, run)
    pod = _pod(readinessProbe={"exec": {"command": ["ready"]}, "periodSeconds": 1,
                               "failureThreshold": 1})
    booting = pb.PodStatus(phase=pb.POD_PHASE_RUNNING)
    manager.sees("u1", pod, booting)
    await asyncio.sleep(0.1)
    assert not ran and not seen.events
    booting.pod_ip = "198.18.0.9"
    manager.sees("u1", pod, booting)
    await _until(lambda: bool(seen.events))
    assert ran and seen.events == [("Unhealthy", "Readiness probe failed: no")]
    await manager.stop()


async def test_a_failing_liveness_probe_kills_after_its_threshold_and_waits_for_startup(
        fast: None) -> None:
    answers = {"started": 1, "alive": 0}
    kills: list[tuple[str, int, str]] = []
    stops = {"ok": False}

    async def run(pod: Obj, container: str, command: list[str]) -> tuple[int, str]:
        return answers[command[0]], f"{command[0]} said no"

    async def kill(pod: Obj, container: str, grace: int, why: str) -> bool:
        kills.append((container, grace, why))
        return stops["ok"]

    seen = Recorder()
    manager = ProbeManager(seen.changed, seen.warn, run, kill=kill)
    pod = _pod(startupProbe={"exec": {"command": ["started"]}, "periodSeconds": 1},
               livenessProbe={"exec": {"command": ["alive"]}, "periodSeconds": 1,
                              "failureThreshold": 2, "terminationGracePeriodSeconds": 7})
    manager.follow("u1", pod, IP)
    answers["alive"] = 1  # failing from the start, but not checked before startup succeeds
    await asyncio.sleep(0.1)
    assert kills == []
    answers["started"] = 0
    await _until(lambda: bool(kills))
    assert kills[0] == ("vm", 7, "Container vm failed liveness probe, will be restarted")
    assert ("Unhealthy", "Liveness probe failed: alive said no") in seen.events
    # A kill that did not stop the VM is tried again after the threshold counts again.
    await _until(lambda: len(kills) >= 2)
    stops["ok"] = True
    count = len(kills)
    await asyncio.sleep(0.1)
    assert len(kills) <= count + 1  # once it stopped the VM, its loop ended
    await manager.stop()


def test_a_liveness_kill_takes_the_pods_grace_unless_the_probe_has_its_own() -> None:
    pod = _pod(livenessProbe={"tcpSocket": {"port": 22}})
    pod["spec"]["terminationGracePeriodSeconds"] = 12
    (probe,) = probes_of(pod)
    assert (probe.kind, probe.grace) == ("liveness", 12)
    assert probes_of(_pod(livenessProbe={"tcpSocket": {"port": 22}}))[0].grace == 30
