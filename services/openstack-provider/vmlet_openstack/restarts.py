"""StartPod: a pod's server that stopped on its own powered on again, keeping its ports and volumes.

Each resting state has the Nova action that wakes the server from it, all of them in microversion
2.1 and so in the provider's 2.79:

  SHUTOFF                       os-start
  SUSPENDED                     resume
  PAUSED                        unpause
  SHELVED, SHELVED_OFFLOADED    unshelve (Nova schedules an offloaded server anew; the converger
                                then moves it back to the pod's host)

The call holds the identity's lock (as create and delete do) and asks Nova for the identity's
server first. A server of another namespace is PERMISSION_DENIED, whatever the pod; a pod the
provider does not run on that server is NOT_FOUND. A server that runs, or that Nova is building
or powering on, is left as it is. ERROR, RESCUE and a server Nova is stopping are
FAILED_PRECONDITION; so is Nova's own refusal (409: a task under way), unless the server turns out
to be starting after all (a concurrent call started it). Once Nova took the action the pod shows
PoweringOn, and the converger waits for the server to run and brings it in line with its pod, as
after a create.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final

from vmlet.provider.v1 import pod_pb2
from vmlet_contract import FailedPrecondition, NotFound, check_namespace

from .podtable import PodEntry
from .records import ServerRecord
from .status import Progress
from .watch import Watch

if TYPE_CHECKING:
    from .pods import Pods

__all__ = ["Restarts", "is_starting", "wake_action"]

_log = logging.getLogger(__name__)

#: status -> (what Nova is asked to do, the action's body).
_WAKE: Final[dict[str, tuple[str, dict[str, Any]]]] = {
    "SHUTOFF": ("start", {"os-start": None}),
    "SUSPENDED": ("resume", {"resume": None}),
    "PAUSED": ("unpause", {"unpause": None}),
    "SHELVED": ("unshelve", {"unshelve": None}),
    "SHELVED_OFFLOADED": ("unshelve", {"unshelve": None}),
}
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


class Restarts:
    """StartPod over the pods' table, locks and converger; see the module docstring."""

    def __init__(self, pods: Pods, watch: Watch) -> None:
        self._pods = pods
        self._watch = watch

    async def start(self, pod: pod_pb2.Pod) -> pod_pb2.PodStatus:
        """Powers the pod's stopped server on again; its status (PoweringOn, or Running)."""
        namespace, name = pod.ref.namespace, pod.ref.name
        table = self._pods.table
        identity = pod.identity
        if not identity:  # only namespace and name: the identity the provider knows the pod by
            await self._watch.wait_synced()
            known = table.entry(namespace, name)
            if known is None:
                raise NotFound(f"pod {namespace}/{name} is not known to the OpenStack provider")
            identity = known.identity
        async with self._pods.locks.hold(identity):
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
            wake = wake_action(server)
            if wake is not None:
                await self._wake(entry, server, *wake)
            return table.status_of(entry)

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
        try:
            try:
                await converger.act(server, doing, action)
            except FailedPrecondition:  # 409: a task under way; maybe another call's start
                current = await self._watch.refresh_one(server.id)
                if current is None or not is_starting(current):
                    raise
        except BaseException:
            entry.progress = None
            table.publish(entry)
            raise
        # Nova set the task (powering-on, ...) before it answered: a call after this one leaves
        # the server alone. The converger shows PoweringOn until the server runs, then ends it.
        converger.kick(entry.identity)
