"""Startup, readiness and liveness probes of VM pods, run by the facade as a kubelet runs them.

The facade, not the provider, runs them: it has the pod spec, writes the status they gate and
the Events they cause, and a provider knows nothing of Kubernetes (docs/architecture.md says
why at more length). One task per (pod, container, probe) while the pod's VM runs; every check
holds a slot of one shared semaphore, so a thousand probed pods make at most ``concurrency``
connections or execs at a time, whatever their periods.

- tcpSocket, httpGet and exec as ``guestactions`` does them: only the pod's own IP is probed.
- Timing as a kubelet: initialDelaySeconds, periodSeconds (10), timeoutSeconds (1),
  successThreshold (1), failureThreshold (3). A startup probe holds readiness back until it
  succeeds (``started``); readiness starts failed and turns after the thresholds.
- A probe that turns failed posts a Warning Event ``Unhealthy`` (``Readiness probe failed: ...``),
  at most one per pod and probe every ``EVENT_INTERVAL`` seconds while it keeps failing.
- A liveness probe that fails ``failureThreshold`` times in a row kills the container: ``kill``
  (the pod controller: a ``Killing`` Event and the provider's StopPod with the grace period),
  after which the pod's restartPolicy restarts the VM or ends the pod (``restarts``). Liveness
  and readiness wait for the startup probe, as a kubelet's do.
- A container's postStart hook (``hooks``) runs first, once per run of the VM: until it
  succeeded the container is not started and its probes wait; a failure posts
  ``FailedPostStartHook`` and kills the VM as a failed liveness probe does. A run whose start
  the pod already shows as started (written before a restart of the facade) had its hook.
- Checks start once the VM has an IP (until then the guest is booting, and the provider holds
  Ready back itself), after initialDelaySeconds; a VM that stops drops its probes and their
  results, and one that runs again starts them afresh (a new container, for a kubelet).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

from vmlet.provider.v1 import pod_pb2 as pb
from vmlet_facade.containerstatus import k8s_time
from vmlet_facade.guestactions import ExecRunner, act
from vmlet_facade.hooks import FAILED_POST_START, POST_START, POST_START_TIMEOUT, hooks_of, run_hook
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

#: Posts a Warning Event (pod, reason, message).
Warn = Callable[[Obj, str, str], Awaitable[None]]
#: Kills a container whose liveness probe or postStart hook failed (pod, container, grace
#: seconds, the ``Killing`` Event's message); whether its VM was stopped.
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


def pod_grace(pod: Obj) -> int:
    """The pod's terminationGracePeriodSeconds (30 unless it sets one)."""
    grace = pod.get("spec", {}).get("terminationGracePeriodSeconds")
    return int(grace) if isinstance(grace, int) and grace >= 0 else 30


def probes_of(pod: Obj) -> list[Probe]:
    """The startup, readiness and liveness probes of ``pod``'s containers."""
    out = []
    grace = pod_grace(pod)
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
                grace=int(_number(handler, "terminationGracePeriodSeconds", grace, 0))))
    return out


async def check(probe: Probe, pod: Obj, ip: str, run: ExecRunner | None) -> tuple[bool, str]:
    """One check of ``probe`` against ``pod`` (whose IP is ``ip``): (success, why not), within
    the probe's timeoutSeconds."""
    try:
        async with asyncio.timeout(probe.timeout):
            return await _check(probe, pod, ip, run)
    except TimeoutError:
        return False, f"timeout: no answer within {probe.timeout:g}s"


async def _check(probe: Probe, pod: Obj, ip: str, run: ExecRunner | None) -> tuple[bool, str]:
    handler = probe.handler
    if not any(isinstance(handler.get(k), dict) for k in ("exec", "tcpSocket", "httpGet")):
        return False, "the probe has no tcpSocket, httpGet or exec (grpc probes are not run)"
    return await act(handler, pod, probe.container, ip, run, "probe")


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
    hooked: dict[str, bool] = field(default_factory=dict)  # container -> postStart done
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
        self._killing: set[asyncio.Future[bool]] = set()

    def follow(self, uid: str, pod: Obj, ip: str, hooked: frozenset[str] = frozenset()) -> None:
        """Probe ``pod`` (its VM runs, at ``ip``) from now on, after the postStart hooks of its
        containers but those in ``hooked`` (they ran for this run); spec and IP kept current."""
        probes, hooks = probes_of(pod), hooks_of(pod, POST_START)
        if not probes and not hooks:
            self.forget(uid)
            return
        state = self._pods.get(uid)
        if state is not None:
            state.pod, state.ip = pod, ip
            return
        state = self._pods[uid] = _PodProbes(pod, ip)
        for probe in probes:
            _results(state, probe)[probe.container] = False
        hooks = [(c, h) for c, h in hooks if c not in hooked]
        state.hooked = {c: False for c, _ in hooks}
        loop = asyncio.get_running_loop()
        state.tasks = [loop.create_task(self._post_start(uid, state, container, handler),
                                        name=f"post-start:{uid}:{container}")
                       for container, handler in hooks]
        state.tasks += [loop.create_task(self._loop(uid, state, probe),
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
        not_started = frozenset(c for d in (state.started, state.hooked)
                                for c, ok in d.items() if not ok)
        not_ready = frozenset(c for c, ok in state.ready.items() if not ok) | not_started
        return not_started, not_ready

    def probed(self, uid: str) -> bool:
        return uid in self._pods

    async def stop(self) -> None:
        tasks: list[asyncio.Future[Any]] = [t for s in self._pods.values() for t in s.tasks]
        tasks += self._killing
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
            if not state.ip or not all(state.hooked.values()) or (
                    probe.kind != "startup" and not all(state.started.values())):
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
                    if await self._killed(state.pod, probe.container, probe.grace,
                                          f"Container {probe.container} failed liveness "
                                          "probe, will be restarted"):
                        return  # the VM stopped: its probes start afresh when it runs again
                    failures = 0  # not stopped: counted again before the next try
            await _sleep(probe.period)

    async def _post_start(self, uid: str, state: _PodProbes, container: str,
                          handler: Obj) -> None:
        """Runs the container's postStart hook once its VM has an IP; a failure kills the VM."""
        while not state.ip:
            await _sleep(1.0)
        # Once per run of a VM, not periodic: it takes no slot (a sleep hook would hold one).
        failed = await run_hook(handler, state.pod, container, state.ip, self._run,
                                POST_START_TIMEOUT)
        if failed is None:
            state.hooked[container] = True
            self._changed(uid)
            return
        await self._warn(state.pod, FAILED_POST_START, failed)
        while self._kill is not None and not await self._killed(
                state.pod, container, pod_grace(state.pod),
                f"Container {container} failed its postStart hook, will be restarted"):
            await _sleep(10.0)  # the VM would run with its hook failed: try the kill again

    async def _killed(self, pod: Obj, container: str, grace: int, message: str) -> bool:
        """``kill``, run to its end even when the pod's probes are dropped meanwhile (the VM
        stopping, which the kill causes, drops them)."""
        assert self._kill is not None
        task: asyncio.Future[bool] = asyncio.ensure_future(
            self._kill(pod, container, grace, message))
        self._killing.add(task)
        task.add_done_callback(self._killing.discard)
        return await asyncio.shield(task)

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
            self.follow(uid, pod, status.pod_ip or next(iter(status.pod_ips), ""),
                        _shown_started(pod, status))

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


def _shown_started(pod: Obj, status: pb.PodStatus) -> frozenset[str]:
    """The containers whose current run (``status``'s startedAt) the pod already shows started:
    their postStart hook ran before (the facade writes ``started`` only after it)."""
    shown = {c.get("name"): c for c in pod.get("status", {}).get("containerStatuses") or []}
    out = set()
    for cs in status.container_statuses:
        old = shown.get(cs.name) or {}
        since = (old.get("state") or {}).get("running", {}).get("startedAt")
        if old.get("started") and cs.running.HasField("started_at") and \
                since == k8s_time(cs.running.started_at):
            out.add(cs.name)
    return frozenset(out)
