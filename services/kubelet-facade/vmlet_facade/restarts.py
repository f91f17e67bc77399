"""restartPolicy for VMs that stop on their own, as a kubelet applies it to containers that exit.

A provider reports a VM that stopped with nothing under way (its guest shut down, or someone
powered it off in the IaaS) as the pod's container terminated with its exit code and progress
STOPPED, and does nothing more: what happens next is the pod's restartPolicy, decided here.

- Never, or OnFailure after exit code 0: the pod ends, phase Succeeded (exit code 0) or Failed,
  its container terminated (Completed or Error). The VM stays off until the pod is deleted, so
  a Job of VM pods completes, or counts a failure toward its backoffLimit.
- Always, or OnFailure after a non-zero code: the VM is powered on again (the provider's
  StartPod); the container's restartCount grows by one and its lastState keeps the run that
  ended. The first restart is at once; each next one waits the kubelet's back-off (10 s,
  doubled up to 5 minutes, forgotten after a run of 10 minutes), shown meanwhile as the
  container waiting in CrashLoopBackOff with a BackOff Warning Event.

A restart of the facade loses nothing that matters: the restart count is read back from the
pod's status, and a pod that ended keeps its phase (the controller writes no status over a
terminal one). The back-off is in memory, as a kubelet's: after a restart the next start is at
once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from google.protobuf.timestamp_pb2 import Timestamp

from vmlet.provider.v1 import pod_pb2 as pb
from vmlet_contract import ProviderError
from vmlet_facade.containerstatus import k8s_time
from vmlet_facade.kube.objects import Obj

__all__ = [
    "BACKOFF_MAX",
    "BACKOFF_START",
    "RESET_AFTER",
    "RestartManager",
    "after_a_run",
    "stopped_container",
]

log = logging.getLogger(__name__)
_sleep = asyncio.sleep  # the back-off's clock (tests make it faster)

BACKOFF_START: Final = 10.0  # the kubelet's back-off: the second restart waits this long,
BACKOFF_MAX: Final = 300.0  # doubled at each one up to this,
RESET_AFTER: Final = 600.0  # and forgotten after a run this long
_ENDED: Final = ("Succeeded", "Failed")

#: Powers the pod's VM on again (the provider's StartPod); raises ProviderError.
Start = Callable[[str], Awaitable[None]]
#: Posts an Event (pod, reason, message, warning).
Emit = Callable[..., Awaitable[None]]


@dataclass
class _Run:
    """What is known of one pod's restarts."""

    name: str  # name_namespace(uid), as a kubelet names a pod in its messages
    restarts: int  # restarts made, at least the restartCount the pod's status has
    last: Obj | None = None  # the run that ended last, as a lastState.terminated
    backoff: float = 0.0  # how long the next start waits (0: at once)
    # A restart was decided and the VM has not been seen other than stopped since: a stopped
    # status meanwhile is the same stop, not a new one.
    pending: bool = False
    due: float | None = None  # when the start is to be asked for (the clock's time)
    wait: float = 0.0  # the back-off before it
    starting: bool = False  # StartPod is being called
    ended: pb.PodStatus | None = None
    task: asyncio.Task[None] | None = None


def stopped_container(status: pb.PodStatus) -> pb.ContainerStatus | None:
    """The container of a VM that stopped on its own with nothing under way, or None."""
    if status.phase != pb.POD_PHASE_RUNNING or status.progress != pb.PROGRESS_STOPPED:
        return None
    return next((cs for cs in status.container_statuses
                 if cs.WhichOneof("state") == "terminated"), None)


def after_a_run(status: pb.PodStatus, pod: Obj | None) -> pb.PodStatus:
    """``status`` as a pod that has run reads it. A provider that lost what it knew (restarted
    while the VM was off) can only say Pending of a stopped VM; a pod never goes back from
    Running, so that is Running with the container terminated (exit code 0: the guest's is
    unknown then), which the restartPolicy then acts on."""
    if (status.phase != pb.POD_PHASE_PENDING or status.progress != pb.PROGRESS_STOPPED
            or pod is None or (pod.get("status") or {}).get("phase") != "Running"):
        return status
    out = pb.PodStatus()
    out.CopyFrom(status)
    out.phase, out.ready, out.reason = pb.POD_PHASE_RUNNING, False, ""
    why = status.reason or "PoweredOff"
    out.not_ready_reason, out.not_ready_message = why, status.message
    for cs in out.container_statuses:
        cs.ready = False
        cs.terminated.reason, cs.terminated.message = why, status.message
    return out


def _seconds(ts: Timestamp) -> float:
    return ts.seconds + ts.nanos / 1e9


def _restart_count(pod: Obj) -> int:
    counts = [int(cs.get("restartCount") or 0)
              for cs in (pod.get("status") or {}).get("containerStatuses") or []]
    return max(counts, default=0)


def _last_state(pod: Obj) -> Obj | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        last = (cs.get("lastState") or {}).get("terminated")
        if last:
            return dict(last)
    return None


def _terminated(t: pb.ContainerStateTerminated) -> Obj:
    return {"exitCode": t.exit_code, "reason": "Completed" if t.exit_code == 0 else "Error",
            **({"message": t.message} if t.message else {}),
            **({"startedAt": k8s_time(t.started_at)} if t.HasField("started_at") else {}),
            **({"finishedAt": k8s_time(t.finished_at)} if t.HasField("finished_at") else {})}


def _ended(status: pb.PodStatus, code: int, restarts: int) -> pb.PodStatus:
    """``status`` of a stopped VM as the pod's last: Succeeded or Failed by ``code``."""
    out = pb.PodStatus()
    out.CopyFrom(status)
    out.phase = pb.POD_PHASE_SUCCEEDED if code == 0 else pb.POD_PHASE_FAILED
    out.progress = pb.PROGRESS_NONE if code == 0 else pb.PROGRESS_FAILED
    out.ready, out.not_ready_reason, out.not_ready_message = False, "", ""
    out.reason = ""
    for cs in out.container_statuses:
        cs.restart_count = max(cs.restart_count, restarts)
        if cs.WhichOneof("state") == "terminated":
            cs.terminated.reason = "Completed" if cs.terminated.exit_code == 0 else "Error"
    return out


def _pod_name(pod: Obj) -> str:
    meta = pod["metadata"]
    return f"{meta['name']}_{meta.get('namespace', '')}({meta.get('uid', '')})"


class RestartManager:
    """Applies pods' restartPolicy to their VMs that stop on their own."""

    def __init__(self, start: Start, submit: Callable[[str], None], emit: Emit, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._start = start
        self._submit = submit
        self._emit = emit
        self._clock = clock
        self._runs: dict[str, _Run] = {}

    def sees(self, uid: str, pod: Obj | None, status: pb.PodStatus) -> None:
        """Takes in a status of ``pod``'s VM: a stop not acted on yet is decided here."""
        if pod is None or pod["metadata"].get("deletionTimestamp"):
            return
        if (pod.get("status") or {}).get("phase") in _ENDED:
            return  # it ended (here, or before a restart of the facade): nothing to restart
        container = stopped_container(status)
        run = self._runs.get(uid)
        if container is None:
            if run is not None and run.pending:
                run.pending = False  # the VM came back: its next stop is a new one
                if not run.starting and run.task is not None:
                    run.task.cancel()  # it came back by itself: no start to make
                    run.due = None
            return
        if run is None:
            run = self._runs[uid] = _Run(name=_pod_name(pod), restarts=_restart_count(pod),
                                         last=_last_state(pod))
        if run.pending or run.ended is not None:
            return
        t = container.terminated
        policy = pod.get("spec", {}).get("restartPolicy") or "Always"
        if policy == "Never" or (policy == "OnFailure" and t.exit_code == 0):
            log.info("pod %s ended: its VM stopped with exit code %d (restartPolicy %s)",
                     _pod_name(pod), t.exit_code, policy)
            run.ended = _ended(status, t.exit_code, run.restarts)
            self._submit(uid)
            return
        if t.HasField("started_at") and t.HasField("finished_at") and \
                _seconds(t.finished_at) - _seconds(t.started_at) >= RESET_AFTER:
            run.backoff = 0.0
        run.last = _terminated(t)
        delay, run.backoff = run.backoff, min(max(run.backoff * 2, BACKOFF_START), BACKOFF_MAX)
        run.pending, run.due, run.wait = True, self._clock() + delay, delay
        if run.task is not None:
            run.task.cancel()
        run.task = asyncio.get_running_loop().create_task(
            self._restart(uid, pod, container.name, delay), name=f"restart:{uid}")
        self._submit(uid)

    async def _restart(self, uid: str, pod: Obj, container: str, delay: float) -> None:
        if delay > 0:
            await self._emit(pod, "BackOff", f"Back-off restarting failed container {container} "
                             f"in pod {_pod_name(pod)}", warning=True)
            await _sleep(delay)
        run = self._runs.get(uid)
        while run is not None and run.due is not None:
            run.starting = True
            self._submit(uid)
            try:
                await self._start(uid)
            except Exception as err:  # the apiserver's too: tried again, never dropped
                run.starting = False
                wait = max(run.backoff, BACKOFF_START)
                said = err.message if isinstance(err, ProviderError) else str(err)
                log.warning("pod %s: its VM not started again (next try in %.0f s): %s",
                            _pod_name(pod), wait, said)
                await self._emit(pod, "FailedRestart", f"VM not started again: {said}",
                                 warning=True)
                run.due = self._clock() + wait
                self._submit(uid)
                await _sleep(wait)
                continue
            run.due, run.starting = None, False
            run.restarts += 1
            self._submit(uid)
            await self._emit(pod, "Started", f"Started container {container} again "
                             f"(restart {run.restarts}: its VM is powered on)")
            log.info("pod %s: VM started again (restart %d)", _pod_name(pod), run.restarts)
            return

    def gate(self, uid: str, status: pb.PodStatus) -> tuple[pb.PodStatus, Obj | None]:
        """The status to write for ``status`` and the lastState to report (None: the one the
        pod has): the pod's end once decided, the restart count, and the back-off."""
        run = self._runs.get(uid)
        if run is None:
            return status, None
        if run.ended is not None:
            return run.ended, None
        out = pb.PodStatus()
        out.CopyFrom(status)
        waiting = run.pending and stopped_container(status) is not None
        backing_off = (waiting and not run.starting and run.due is not None
                       and run.due > self._clock())
        for cs in out.container_statuses:
            cs.restart_count = max(cs.restart_count, run.restarts)
            if not waiting:
                continue
            if backing_off:
                cs.waiting.reason = "CrashLoopBackOff"
                cs.waiting.message = (f"back-off {run.wait:.0f}s restarting failed "
                                      f"container={cs.name} pod={run.name}")
            else:
                cs.waiting.reason, cs.waiting.message = "PoweringOn", "its VM is being started"
        if waiting:
            out.progress = pb.PROGRESS_STOPPED if backing_off else pb.PROGRESS_POWERING_ON
            out.not_ready_reason = "CrashLoopBackOff" if backing_off else "PoweringOn"
        return out, ({"terminated": run.last} if run.last else None)

    def forget(self, uid: str) -> None:
        """The pod is gone: no restart is pending for it any more."""
        run = self._runs.pop(uid, None)
        if run is not None and run.task is not None:
            run.task.cancel()

    async def stop(self) -> None:
        tasks = [r.task for r in self._runs.values() if r.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
