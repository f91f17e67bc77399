"""Startup, readiness and liveness probes of VM pods, run by the facade as a kubelet runs them.

The facade, not the provider, runs them: it has the pod spec, writes the status they gate and
the Events they cause, and a provider knows nothing of Kubernetes (docs/architecture.md says
why at more length). One task per (pod, container, probe) while the pod's VM runs; every check
holds a slot of one shared semaphore, so a thousand probed pods make at most ``concurrency``
connections or execs at a time, whatever their periods.

- tcpSocket: a TCP connection to the pod's IP and port; httpGet: an HTTP/1.1 GET there (https
  without verifying the certificate, as a kubelet), 200-399 is success; exec: the command run in
  the guest through the provider's Exec (the path of ``kubectl exec``), exit 0 is success.
- Only the pod's own IP is probed: a probe ``host`` naming another address fails, so a tenant
  cannot make the facade reach into its own network.
- Timing as a kubelet: initialDelaySeconds, periodSeconds (10), timeoutSeconds (1),
  successThreshold (1), failureThreshold (3). A startup probe holds readiness back until it
  succeeds (``started``); readiness starts failed and turns after the thresholds.
- A probe that turns failed posts a Warning Event ``Unhealthy`` (``Readiness probe failed: ...``),
  at most one per pod and probe every ``EVENT_INTERVAL`` seconds while it keeps failing.
- A liveness probe that fails ``failureThreshold`` times in a row kills the container: ``kill``
  (the pod controller: a ``Killing`` Event and the provider's StopPod with the grace period),
  after which the pod's restartPolicy restarts the VM or ends the pod (``restarts``). Liveness
  and readiness wait for the startup probe, as a kubelet's do.
- Checks start once the VM has an IP (until then the guest is booting, and the provider holds
  Ready back itself), after initialDelaySeconds; a VM that stops drops its probes and their
  results, and one that runs again starts them afresh (a new container, for a kubelet).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

from vmlet.provider.v1 import pod_pb2 as pb
from vmlet_facade.kube.objects import Obj

__all__ = [
    "EVENT_INTERVAL",
    "ExecRunner",
    "Probe",
    "ProbeManager",
    "check",
    "probes_of",
]

log = logging.getLogger(__name__)

#: At most one Unhealthy Event per pod and probe this often while a probe keeps failing.
EVENT_INTERVAL: Final = 300.0
_sleep = asyncio.sleep  # the probe loops' clock (tests make it faster)
_KINDS: Final = (("startup", "startupProbe"), ("readiness", "readinessProbe"),
                 ("liveness", "livenessProbe"))

#: Runs ``command`` in the pod's guest: (exit code, output or why it could not run).
ExecRunner = Callable[[Obj, str, list[str]], Awaitable[tuple[int, str]]]
#: Posts a Warning Event (pod, reason, message).
Warn = Callable[[Obj, str, str], Awaitable[None]]
#: Kills a container whose liveness probe failed (pod, container, grace seconds, why); whether
#: its VM was stopped.
Kill = Callable[[Obj, str, int, str], Awaitable[bool]]


@dataclass(frozen=True)
class Probe:
    """One probe of one container, with the kubelet's defaults filled in."""

    kind: str  # "startup", "readiness" or "liveness"
    container: str
    handler: Obj  # the probe object: tcpSocket, httpGet or exec, and the timing fields
    initial_delay: float
    period: float
    timeout: float
    success_threshold: int
    failure_threshold: int
    grace: int = 30  # a liveness kill's: the probe's terminationGracePeriodSeconds, else the pod's

    @property
    def title(self) -> str:
        return self.kind.capitalize()


def _number(handler: Obj, key: str, default: float, least: float) -> float:
    value = handler.get(key)
    return max(float(value), least) if isinstance(value, (int, float)) else default


def probes_of(pod: Obj) -> list[Probe]:
    """The startup, readiness and liveness probes of ``pod``'s containers."""
    out = []
    grace = pod.get("spec", {}).get("terminationGracePeriodSeconds")
    pod_grace = int(grace) if isinstance(grace, int) and grace >= 0 else 30
    for container in pod.get("spec", {}).get("containers") or []:
        for kind, key in _KINDS:
            handler = container.get(key)
            if not isinstance(handler, dict):
                continue
            out.append(Probe(
                kind=kind, container=str(container.get("name", "")), handler=handler,
                initial_delay=_number(handler, "initialDelaySeconds", 0.0, 0.0),
                period=_number(handler, "periodSeconds", 10.0, 1.0),
                timeout=_number(handler, "timeoutSeconds", 1.0, 1.0),
                success_threshold=int(_number(handler, "successThreshold", 1, 1)),
                failure_threshold=int(_number(handler, "failureThreshold", 3, 1)),
                grace=int(_number(handler, "terminationGracePeriodSeconds", pod_grace, 0))))
    return out


def _port(value: object, container: Obj) -> int | None:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(value, int):
        return value if 0 < value < 65536 else None
    for port in container.get("ports") or []:
        if port.get("name") == value:
            return int(port["containerPort"])
    return None


def _container(pod: Obj, name: str) -> Obj:
    return next((c for c in pod.get("spec", {}).get("containers") or []
                 if c.get("name") == name), {})


def _target(action: Obj, ip: str) -> str | None:
    """Why the probe may not go where it asks (another host than the pod's IP), or None."""
    host = action.get("host")
    if host and host != ip:
        return f"vmlet probes only the pod's own IP ({ip or 'none yet'}), not host {host}"
    if not ip:
        return "the pod has no IP yet"
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        return f"the pod's IP {ip!r} is not an address"
    return None


async def _tcp(ip: str, port: int) -> tuple[bool, str]:
    try:
        _, writer = await asyncio.open_connection(ip, port)
    except OSError as err:
        return False, f"dial tcp {ip}:{port}: {_said(err)}"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True, ""


def _said(err: BaseException) -> str:
    return getattr(err, "strerror", None) or str(err) or type(err).__name__


def _insecure() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # as a kubelet: probes do not verify certificates
    return context


async def _http(action: Obj, ip: str, port: int) -> tuple[bool, str]:
    scheme = str(action.get("scheme", "HTTP")).upper()
    path = str(action.get("path") or "/")
    if not path.startswith("/") or any(c in path for c in "\r\n "):
        return False, f"path {path!r} is not an absolute path"
    headers = {"Host": f"{ip}:{port}" if ":" not in ip else f"[{ip}]:{port}",
               "User-Agent": "vmlet-probe", "Accept": "*/*", "Connection": "close"}
    for header in action.get("httpHeaders") or []:
        name, value = str(header.get("name", "")), str(header.get("value", ""))
        if name and ":" not in name and not any(c in name + value for c in "\r\n"):
            headers[name] = value  # a header that would split the request is dropped
    request = f"GET {path} HTTP/1.1\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    url = f"{scheme.lower()}://{ip}:{port}{path}"
    try:
        reader, writer = await asyncio.open_connection(
            ip, port, ssl=_insecure() if scheme == "HTTPS" else None)
        try:
            writer.write(request.encode())
            await writer.drain()
            line = await reader.readline()
        finally:
            writer.close()
    except (OSError, ssl.SSLError) as err:
        return False, f'Get "{url}": {_said(err)}'
    parts = line.decode("latin-1").split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        return False, f'Get "{url}": not an HTTP answer'
    code = int(parts[1])
    if 200 <= code < 400:
        return True, ""
    return False, f"HTTP probe failed with statuscode: {code}"


async def check(probe: Probe, pod: Obj, ip: str, run: ExecRunner | None) -> tuple[bool, str]:
    """One check of ``probe`` against ``pod`` (whose IP is ``ip``): (success, why not), within
    the probe's timeoutSeconds."""
    try:
        async with asyncio.timeout(probe.timeout):
            return await _check(probe, pod, ip, run)
    except TimeoutError:
        return False, f"timeout: no answer within {probe.timeout:g}s"


async def _check(probe: Probe, pod: Obj, ip: str, run: ExecRunner | None) -> tuple[bool, str]:
    handler, container = probe.handler, _container(pod, probe.container)
    if isinstance(action := handler.get("exec"), dict):
        command = [str(a) for a in action.get("command") or []]
        if not command:
            return False, "the exec probe has no command"
        if run is None:
            return False, "exec probes cannot reach this pod's provider"
        code, said = await run(pod, probe.container, command)
        return code == 0, "" if code == 0 else (said or f"command exited with {code}")
    for kind in ("tcpSocket", "httpGet"):
        action = handler.get(kind)
        if not isinstance(action, dict):
            continue
        refused = _target(action, ip)
        if refused is not None:
            return False, refused
        port = _port(action.get("port"), container)
        if port is None:
            return False, (f"port {action.get('port')!r} is not a port of container "
                           f"{probe.container}")
        if kind == "tcpSocket":
            return await _tcp(ip, port)
        return await _http(action, ip, port)
    return False, "the probe has no tcpSocket, httpGet or exec (grpc probes are not run)"


def _results(state: _PodProbes, probe: Probe) -> dict[str, bool]:
    return {"startup": state.started, "readiness": state.ready}.get(probe.kind, state.alive)


@dataclass
class _PodProbes:
    """The probes of one pod and what they found."""

    pod: Obj
    ip: str
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    started: dict[str, bool] = field(default_factory=dict)  # container -> startup succeeded
    ready: dict[str, bool] = field(default_factory=dict)  # container -> readiness succeeded
    alive: dict[str, bool] = field(default_factory=dict)  # container -> liveness succeeded
    warned: dict[tuple[str, str], float] = field(default_factory=dict)  # probe -> when


class ProbeManager:
    """Runs the probes of the pods whose VMs run; ``changed(uid)`` when a result turns."""

    def __init__(self, changed: Callable[[str], None], warn: Warn,
                 run: ExecRunner | None = None, *, kill: Kill | None = None,
                 concurrency: int = 64) -> None:
        self._changed = changed
        self._warn = warn
        self._run = run
        self._kill = kill
        self._slots = asyncio.Semaphore(concurrency)
        self._pods: dict[str, _PodProbes] = {}

    def follow(self, uid: str, pod: Obj, ip: str) -> None:
        """Probe ``pod`` (its VM runs, at ``ip``) from now on; its spec and IP kept current."""
        probes = probes_of(pod)
        if not probes:
            self.forget(uid)
            return
        state = self._pods.get(uid)
        if state is not None:
            state.pod, state.ip = pod, ip
            return
        state = self._pods[uid] = _PodProbes(pod, ip)
        for probe in probes:
            _results(state, probe)[probe.container] = False
        loop = asyncio.get_running_loop()
        state.tasks = [loop.create_task(self._loop(uid, state, probe),
                                        name=f"probe:{uid}:{probe.container}:{probe.kind}")
                       for probe in probes]

    def forget(self, uid: str) -> None:
        """Stop probing the pod (its VM stopped, or it is gone); its results are dropped."""
        state = self._pods.pop(uid, None)
        for task in state.tasks if state is not None else []:
            task.cancel()

    def verdict(self, uid: str) -> tuple[frozenset[str], frozenset[str]]:
        """(containers not started, containers not ready) by their probes; both empty when the
        pod is not probed."""
        state = self._pods.get(uid)
        if state is None:
            return frozenset(), frozenset()
        not_started = frozenset(c for c, ok in state.started.items() if not ok)
        not_ready = frozenset(c for c, ok in state.ready.items() if not ok) | not_started
        return not_started, not_ready

    def probed(self, uid: str) -> bool:
        return uid in self._pods

    async def stop(self) -> None:
        tasks = [t for s in self._pods.values() for t in s.tasks]
        self._pods.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _loop(self, uid: str, state: _PodProbes, probe: Probe) -> None:
        results = _results(state, probe)
        successes = failures = 0
        await _sleep(probe.initial_delay)
        while True:
            # A VM that runs but has no IP yet is still booting (the provider holds Ready back
            # meanwhile): its checks would fail on the boot, not on the guest, so none counts.
            if not state.ip or (probe.kind != "startup" and not all(state.started.values())):
                await _sleep(min(probe.period, 1.0))
                continue
            async with self._slots:
                try:
                    ok, why = await check(probe, state.pod, state.ip, self._run)
                except Exception as err:  # a probe's own fault is a failed probe, not a crash
                    log.warning("probe %s of %s failed to run: %r", probe.kind, uid, err)
                    ok, why = False, "the probe could not be run"
            successes, failures = (successes + 1, 0) if ok else (0, failures + 1)
            if ok and not results[probe.container] and successes >= probe.success_threshold:
                results[probe.container] = True
                self._changed(uid)
                if probe.kind == "startup":
                    return  # a startup probe is done once it succeeds
            elif not ok and failures >= probe.failure_threshold:
                if results[probe.container]:
                    results[probe.container] = False
                    self._changed(uid)
                await self._tell(state, probe, why)
                if probe.kind == "liveness" and self._kill is not None:
                    if await self._kill(state.pod, probe.container, probe.grace, why):
                        return  # the VM stopped: its probes start afresh when it runs again
                    failures = 0  # not stopped: counted again before the next try
            await _sleep(probe.period)

    async def _tell(self, state: _PodProbes, probe: Probe, why: str) -> None:
        key = (probe.container, probe.kind)
        now = time.monotonic()
        if now - state.warned.get(key, -EVENT_INTERVAL) < EVENT_INTERVAL:
            return
        state.warned[key] = now
        await self._warn(state.pod, "Unhealthy", f"{probe.title} probe failed: {why}")

    def sees(self, uid: str, pod: Obj | None, status: pb.PodStatus) -> None:
        """The provider's latest ``status`` of the pod: probe it while its VM runs."""
        stopped = any(c.WhichOneof("state") != "running" for c in status.container_statuses)
        if pod is None or status.phase != pb.POD_PHASE_RUNNING or stopped:
            self.forget(uid)
        else:
            self.follow(uid, pod, status.pod_ip or next(iter(status.pod_ips), ""))

    def gate(self, uid: str, status: pb.PodStatus) -> tuple[pb.PodStatus, frozenset[str]]:
        """``status`` as the pod's probes leave it (not ready while a probe holds a container
        back), and the containers whose startup probe has not succeeded yet."""
        not_started, not_ready = self.verdict(uid)
        if not not_ready:
            return status, not_started
        gated = pb.PodStatus()
        gated.CopyFrom(status)
        for container in gated.container_statuses:
            if container.name in not_ready or not container.name:
                container.ready = False
        if not gated.HasField("ready") or gated.ready:
            gated.ready = False
            gated.not_ready_reason = "ContainersNotReady"
            gated.not_ready_message = (
                f"containers with unready status: [{' '.join(sorted(not_ready))}]")
        return gated, not_started
