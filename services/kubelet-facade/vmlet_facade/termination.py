"""The graceful end of a deleted pod whose VM runs, as a kubelet ends a container.

When a pod with a deletionTimestamp still has a running VM, and before the facade's DeletePod
(which powers the VM off hard, then destroys or keeps it), ``Terminations`` does, per pod and
beside the pod's worker (a grace period must not hold a worker):

1. the container's preStop hook (``hooks``), within the pod's deletion grace period
   (``metadata.deletionGracePeriodSeconds``, from the delete or the pod's
   terminationGracePeriodSeconds); a failure posts ``FailedPreStopHook`` and the end goes on;
2. a ``Killing`` Event, ``Stopping container NAME``, and the provider's StopPod with what the
   hook left of the grace (at least ``MIN_GRACE`` seconds, as a kubelet gives): the guest is asked
   to shut down (VMware Tools ShutdownGuest, Nova's soft stop) and powered off hard at the end.

Then the pod's worker goes on to DeletePod. A StopPod that fails posts ``FailedKillPod`` and the
delete goes on. A facade that restarts meanwhile begins again with the whole grace, as a kubelet
does. A pod deleted with grace 0 (``--force``) is gone from Kubernetes at once: it is deleted at
the provider without either step.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Final

from vmlet.provider.v1 import pod_pb2 as pb
from vmlet_contract import ProviderError
from vmlet_contract.requestbounds import MAX_GRACE_SECONDS
from vmlet_facade.guestactions import ExecRunner
from vmlet_facade.hooks import FAILED_PRE_STOP, PRE_STOP, hooks_of, run_hook
from vmlet_facade.kube import ApiError
from vmlet_facade.kube.objects import Obj

__all__ = ["MIN_GRACE", "Terminations", "deletion_grace", "kill"]

log = logging.getLogger(__name__)

#: The least time a guest is given to shut down after its preStop hook (a kubelet's minimum).
MIN_GRACE: Final = 2

#: Stops the pod's VM through the provider's StopPod, the guest given so many seconds.
Stop = Callable[[Obj, int], Awaitable[None]]
#: Posts an Event (pod, reason, message, warning=...).
Emit = Callable[..., Awaitable[None]]


def deletion_grace(pod: Obj) -> int:
    """The seconds a deleted pod's VM has to end: its deletionGracePeriodSeconds (30 when the
    delete did not say), within what StopPod takes."""
    grace = pod["metadata"].get("deletionGracePeriodSeconds")
    seconds = int(grace) if isinstance(grace, int) and grace >= 0 else 30
    return min(seconds, MAX_GRACE_SECONDS)


def runs(status: pb.PodStatus | None) -> bool:
    """Whether ``status`` (the provider's latest; None when unknown) may be of a running VM."""
    if status is None:
        return True  # unknown: StopPod of a VM that is off changes nothing
    return status.phase == pb.POD_PHASE_RUNNING and any(
        c.WhichOneof("state") == "running" for c in status.container_statuses)


async def kill(emit: Emit, stop: Stop, pod: Obj, grace: int, message: str) -> bool:
    """Kills the container of ``pod`` as a kubelet does when its liveness probe or postStart
    hook failed: a ``Killing`` Event (``message``), then ``stop`` (StopPod) with ``grace``
    seconds; ``FailedKillPod`` when that fails. Whether the VM was stopped. A pod being
    deleted is not killed: its termination is under way."""
    if pod["metadata"].get("deletionTimestamp"):
        return False
    await emit(pod, "Killing", message)
    try:
        await stop(pod, grace)
    except (ProviderError, ApiError) as err:
        log.warning("pod %s/%s: its VM not stopped (%s): %s", pod["metadata"]["namespace"],
                    pod["metadata"]["name"], message, err)
        await emit(pod, "FailedKillPod", f"error killing pod: {err}", warning=True)
        return False
    return True


class Terminations:
    """Ends deleted pods' running VMs gracefully; ``ended(uid)`` when one is over."""

    def __init__(self, stop: Stop, emit: Emit, ended: Callable[[str], None],
                 run: ExecRunner | None = None) -> None:
        self._stop = stop
        self._emit = emit
        self._ended = ended
        self._run = run
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._done: set[str] = set()

    def pending(self, uid: str, pod: Obj, status: pb.PodStatus | None) -> bool:
        """Whether the deleted ``pod`` must wait for its VM's graceful end before DeletePod: it
        begins here when due, and ``ended(uid)`` is called when it is over."""
        if uid in self._done:
            return False
        if uid in self._tasks:
            return True
        grace = deletion_grace(pod)
        if grace <= 0 or not runs(status):
            return False
        ip = (status.pod_ip or next(iter(status.pod_ips), "")) if status is not None else ""
        self._tasks[uid] = asyncio.get_running_loop().create_task(
            self._end(uid, pod, ip, grace), name=f"terminate:{uid}")
        return True

    def forget(self, uid: str) -> None:
        """The pod is gone: whatever was under way for it stops."""
        self._done.discard(uid)
        task = self._tasks.pop(uid, None)
        if task is not None:
            task.cancel()

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _end(self, uid: str, pod: Obj, ip: str, grace: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        try:
            for container, handler in hooks_of(pod, PRE_STOP):
                failed = await run_hook(handler, pod, container, ip, self._run,
                                        deadline - loop.time())
                if failed is not None:
                    await self._emit(pod, FAILED_PRE_STOP, failed, warning=True)
            for container in pod["spec"].get("containers") or []:
                await self._emit(pod, "Killing", f"Stopping container {container.get('name')}")
            left = max(MIN_GRACE, round(deadline - loop.time()))
            try:
                await self._stop(pod, left)
            except (ProviderError, ApiError) as err:
                log.warning("pod %s/%s: its VM not shut down before its delete: %s",
                            pod["metadata"]["namespace"], pod["metadata"]["name"], err)
                await self._emit(pod, "FailedKillPod", f"error killing pod: {err}",
                                 warning=True)
        finally:
            if self._tasks.get(uid) is asyncio.current_task():
                del self._tasks[uid]
                self._done.add(uid)
                self._ended(uid)
