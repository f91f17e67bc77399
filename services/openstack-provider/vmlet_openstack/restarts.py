"""StartPod and StopPod: a pod's server powered on again, or off as a killed container, keeping
its ports and volumes.

Both hold the identity's lock (as create and delete do) and ask Nova for the identity's server
first. A server of another namespace is PERMISSION_DENIED, whatever the pod; a pod the provider
does not run on that server is NOT_FOUND.

Start. Each resting state has the Nova action that wakes the server from it, all of them in
microversion 2.1 and so in the provider's 2.79:

  SHUTOFF                       os-start
  SUSPENDED                     resume
  PAUSED                        unpause
  SHELVED, SHELVED_OFFLOADED    unshelve (Nova schedules an offloaded server anew; the converger
                                then moves it back to the pod's host)

A server that runs, or that Nova is building or powering on, is left as it is. ERROR, RESCUE and
a server Nova is stopping are FAILED_PRECONDITION; so is Nova's own refusal (409: a task under
way), unless the server turns out to be starting after all (a concurrent call started it). The
exit code StopPod recorded is cleared first (Nova takes no metadata while a task runs, nor on a
shelved server: that one loses it once it runs again). Once Nova took the action the pod shows
PoweringOn, and the converger waits for the server to run and brings it in line with its pod, as
after a create.

Stop. `os-stop` asks the guest to shut down and Nova powers the server off once its compute
host's `shutdown_timeout` (60 s by default) has passed. Nova takes no timeout per request and has
no faster hard stop, so `grace_seconds` cannot change that: the call waits for SHUTOFF up to
grace_seconds plus `_STOP_MARGIN_SECONDS` (Nova's default timeout and its own work), then is
UNAVAILABLE while Nova is still powering the server off, FAILED_PRECONDITION when it will not.
A server Nova is busy with is stopped once Nova is done; a server at rest (SHUTOFF, SUSPENDED,
PAUSED, SHELVED) is left as it is; ERROR and RESCUE are FAILED_PRECONDITION. Once the server is
SHUTOFF it gets `vmlet-exit-code: 137` (Nova keeps no exit code of a guest), which its status
reports, and the call answers. Meanwhile the pod shows Stopping and the converger's rounds are
held off, so none starts the server again. The kill is noted on the pod's entry before the mark
is written: until the mark is read back, or if writing it fails, the status still says 137 and
the converger still leaves the server off.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any, Final

from vmlet.provider.v1 import pod_pb2
from vmlet_contract import (
    FailedPrecondition,
    NotFound,
    ProviderError,
    Unavailable,
    check_namespace,
)

from . import naming
from .cloud import Cloud
from .podtable import PodEntry
from .records import ServerRecord
from .status import KILLED, Progress
from .watch import ServerCache, Watch

if TYPE_CHECKING:
    from .pods import Pods

__all__ = ["KILLED", "Restarts", "is_off", "is_starting", "stop_refusal", "wake_action"]

_log = logging.getLogger(__name__)

_STOP_MARGIN_SECONDS: Final = 90.0
# Asked again when Nova's stop failed (the server ACTIVE again, with no task).
_STOP_ASK_SECONDS: Final = 10.0

#: status -> (what Nova is asked to do, the action's body).
_WAKE: Final[dict[str, tuple[str, dict[str, Any]]]] = {
    "SHUTOFF": ("start", {"os-start": None}),
    "SUSPENDED": ("resume", {"resume": None}),
    "PAUSED": ("unpause", {"unpause": None}),
    "SHELVED": ("unshelve", {"unshelve": None}),
    "SHELVED_OFFLOADED": ("unshelve", {"unshelve": None}),
}
# Statuses of a server at rest, powered off.
_OFF: Final = frozenset({"SHUTOFF", "SUSPENDED", "PAUSED", "SHELVED", "SHELVED_OFFLOADED"})
# Statuses of a server that runs or is on its way to running without being asked.
_RUNNING: Final = frozenset({"ACTIVE", "BUILD", "REBOOT", "HARD_REBOOT", "MIGRATING", "PASSWORD"})
# Nova's task states (nova.compute.task_states) of a server being made or powered on...
_STARTING_TASKS: Final = frozenset({
    "scheduling", "block_device_mapping", "networking", "spawning", "powering-on", "resuming",
    "unpausing", "unshelving", "rebooting", "reboot_pending", "reboot_started",
    "rebooting_hard", "reboot_pending_hard", "reboot_started_hard",
})  # fmt: skip
# ... and of one being stopped.
_STOPPING_TASKS: Final = frozenset({
    "powering-off", "suspending", "pausing", "shelving", "shelving_image_pending_upload",
    "shelving_image_uploading", "shelving_offloading",
})  # fmt: skip


def is_starting(server: ServerRecord) -> bool:
    """Whether `server` runs or is being made or powered on: nothing for StartPod to do."""
    if server.task_state in _STARTING_TASKS:
        return True
    return server.status in _RUNNING and server.task_state not in _STOPPING_TASKS


def wake_action(server: ServerRecord) -> tuple[str, dict[str, Any]] | None:
    """The action (what it does, its body) that powers `server` on; None when it runs or is
    starting. FailedPrecondition when no action can: ERROR, RESCUE, being stopped, or busy."""
    if is_starting(server):
        return None
    task = f" (task {server.task_state})" if server.task_state else ""
    if server.task_state in _STOPPING_TASKS:
        raise FailedPrecondition(
            f"Nova is stopping server {server.name}{task}; start the pod once it is off"
        )
    if server.status == "ERROR":
        raise FailedPrecondition(
            f"server {server.name} is in ERROR in Nova, which does not power it on; the pod's "
            "status has Nova's fault"
        )
    wake = _WAKE.get(server.status)
    if wake is None:
        raise FailedPrecondition(
            f"server {server.name} is {server.status} in Nova{task}: it cannot be started from "
            "there"
        )
    return wake


def is_off(server: ServerRecord) -> bool:
    """Whether `server` rests powered off (SHUTOFF, SUSPENDED, PAUSED, SHELVED): nothing for
    StopPod to do."""
    return server.status in _OFF and server.task_state is None


def stop_refusal(server: ServerRecord) -> str:
    """Why StopPod cannot stop `server` (ERROR, RESCUE); empty when it can, now or once Nova is
    done with it."""
    if server.status == "ERROR":
        return (
            f"server {server.name} is in ERROR in Nova, which does not stop it; the pod's status "
            "has Nova's fault"
        )
    if server.status == "RESCUE" and server.task_state is None:
        return f"server {server.name} is in RESCUE in Nova: it cannot be stopped from there"
    return ""


class Restarts:
    """StartPod and StopPod over the pods' table, locks and converger; see the module
    docstring."""

    def __init__(self, pods: Pods, cloud: Cloud, cache: ServerCache, watch: Watch) -> None:
        self._pods = pods
        self._cloud = cloud
        self._cache = cache
        self._watch = watch
        self._healing: set[str] = set()

    async def start(self, pod: pod_pb2.Pod) -> pod_pb2.PodStatus:
        """Powers the pod's stopped server on again; its status (PoweringOn, or Running)."""
        identity = await self._identity(pod)
        async with self._pods.locks.hold(identity):
            entry, server = await self._target(pod, identity)
            wake = wake_action(server)
            if wake is not None:
                await self._wake(entry, server, *wake)
            return self._pods.table.status_of(entry)

    async def stop(self, pod: pod_pb2.Pod, grace_seconds: int) -> pod_pb2.PodStatus:
        """Powers the pod's server off as killed (exit code 137) and keeps it; its status once
        the server is off."""
        identity = await self._identity(pod)
        async with self._pods.locks.hold(identity):
            entry, server = await self._target(pod, identity)
            if not is_off(server):
                if why := stop_refusal(server):
                    raise FailedPrecondition(why)
                deadline = time.monotonic() + max(grace_seconds, 0) + _STOP_MARGIN_SECONDS
                async with self._pods.converger.holding(identity):
                    await self._power_off(entry, server, deadline)
            return self._pods.table.status_of(entry)

    def ran_again(self, server: ServerRecord) -> None:
        """`server` runs with the exit code of a StopPod (started in Nova, or unshelved): the
        code goes, as StartPod's would, or the next shutdown would report it."""
        if server.id not in self._healing:
            self._healing.add(server.id)
            self._pods.table.spawn(self._heal(server))

    async def _identity(self, pod: pod_pb2.Pod) -> str:
        if pod.identity:
            return pod.identity
        # Only namespace and name: the identity the provider knows the pod by.
        await self._watch.wait_synced()
        known = self._pods.table.entry(pod.ref.namespace, pod.ref.name)
        if known is None:
            raise NotFound(
                f"pod {pod.ref.namespace}/{pod.ref.name} is not known to the OpenStack provider"
            )
        return known.identity

    async def _target(self, pod: pod_pb2.Pod, identity: str) -> tuple[PodEntry, ServerRecord]:
        """The pod's entry and its server, asked of Nova now; under the identity's lock."""
        namespace, name = pod.ref.namespace, pod.ref.name
        table = self._pods.table
        servers = await self._pods.lookup(identity)
        server = servers[0] if servers else None
        if server is not None:
            check_namespace(server.owner_namespace, namespace, identity)
        await self._watch.wait_synced()
        entry = table.entry(namespace, name)
        if (server is None or entry is None or entry.identity != identity
                or not self._pods.owns(pod if pod.identity else entry.pod, server)):
            raise NotFound(f"the OpenStack provider runs no server for pod {namespace}/{name}")
        entry.server_id = server.id
        return entry, server

    async def _wake(
        self, entry: PodEntry, server: ServerRecord, doing: str, action: dict[str, Any]
    ) -> None:
        table, converger = self._pods.table, self._pods.converger
        entry.progress = Progress("PoweringOn", f"{doing} of server {server.name} asked of Nova")
        entry.note = ""
        table.publish(entry)
        _log.info(
            "powering a stopped server on again",
            extra={"pod": "/".join(entry.key), "server": server.id, "action": doing},
        )
        cleared = False
        try:
            if server.exit_code is not None and not server.status.startswith("SHELVED"):
                await self._forget_kill(server)
                cleared = True
            try:
                await converger.act(server, doing, action)
            except FailedPrecondition:  # 409: a task under way; maybe another call's start
                current = await self._watch.refresh_one(server.id)
                if current is None or not is_starting(current):
                    raise
        except BaseException:
            if cleared:  # not started: still the guest StopPod killed
                await self._mark_killed(server, quietly=True)
            entry.progress = None
            table.publish(entry)
            raise
        # Nova set the task (powering-on, ...) before it answered: a call after this one leaves
        # the server alone. The converger shows PoweringOn until the server runs, then ends it.
        converger.kick(entry.identity)

    async def _power_off(self, entry: PodEntry, server: ServerRecord, deadline: float) -> None:
        table = self._pods.table
        entry.progress = Progress("Stopping", f"stopping server {server.name} (os-stop)")
        entry.note = ""
        table.publish(entry)
        _log.info("stopping a server", extra={"pod": "/".join(entry.key), "server": server.id})
        try:
            if await self._until_off(server, deadline):
                entry.killed = True  # reported at once, whether or not the record below is
                await self._mark_killed(server)
        finally:
            entry.progress = None
            table.publish(entry)

    async def _until_off(self, server: ServerRecord, deadline: float) -> bool:
        """Stops `server` and waits until it is off; whether a stop (this call's, or one found
        under way) took it there."""
        stopping = False
        asked = -_STOP_ASK_SECONDS
        current: ServerRecord | None = server
        async with self._watch.urgent():
            while True:
                if current is None:
                    raise NotFound(f"server {server.name} was deleted while it was stopped")
                stopping = stopping or current.task_state == "powering-off"
                if is_off(current):
                    return stopping
                if why := stop_refusal(current):
                    raise FailedPrecondition(why)
                now = time.monotonic()
                if now > deadline:
                    raise _late(current)
                if (current.status == "ACTIVE" and current.task_state is None
                        and now - asked >= _STOP_ASK_SECONDS):
                    asked = now
                    try:
                        await self._pods.converger.act(current, "stop", {"os-stop": None})
                        stopping = True
                    except FailedPrecondition:
                        # 409: a task Nova took meanwhile is waited for; anything else (a
                        # locked server) is Nova's answer.
                        current = await self._watch.refresh_one(server.id)
                        if current is not None and current.status == "ACTIVE" and current.settled:
                            raise
                        continue
                else:
                    await self._cache.wait_change(server.id, current, min(5.0, deadline - now))
                current = await self._watch.refresh_one(server.id)

    async def _mark_killed(self, server: ServerRecord, *, quietly: bool = False) -> None:
        """Records the kill on the server (and in the cache, before the status shows it)."""
        try:
            await self._cloud.call(
                f"record the exit code of server {server.name}",
                lambda api: api.set_metadata_item(server.id, naming.META_EXIT_CODE, str(KILLED)),
            )
            await self._watch.refresh_one(server.id)
        except ProviderError as error:
            if not quietly:
                raise
            _log.warning("exit code not recorded again",
                         extra={"server": server.id, "error": error.message})

    async def _forget_kill(self, server: ServerRecord) -> None:
        with contextlib.suppress(NotFound):
            await self._cloud.call(
                f"clear the exit code of server {server.name}",
                lambda api: api.delete_metadata_item(server.id, naming.META_EXIT_CODE),
            )

    async def _heal(self, server: ServerRecord) -> None:
        try:
            async with self._pods.locks.hold(server.identity):
                current = await self._watch.refresh_one(server.id)
                if (current is not None and current.exit_code is not None
                        and current.status == "ACTIVE" and current.task_state is None):
                    await self._forget_kill(current)
        finally:
            self._healing.discard(server.id)


def _late(server: ServerRecord) -> ProviderError:
    """The error of a stop past its deadline."""
    if server.task_state == "powering-off":
        return Unavailable(
            f"Nova is still stopping server {server.name}: it powers the server off once its "
            "shutdown_timeout has passed; retry"
        )
    task = f" (task {server.task_state})" if server.task_state else ""
    return FailedPrecondition(
        f"Nova has not stopped server {server.name}: it is {server.status}{task}"
    )
