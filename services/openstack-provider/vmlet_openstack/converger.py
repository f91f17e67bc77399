"""The converger: one task per identity at a time walks a server toward what its pod wants.

One Nova action at a time: confirm a resize or migration waiting for it; wait while Nova is busy;
migrate to the pod's host (live for a running server when --migration allows and it works, cold
+ confirm otherwise); resize to the wanted flavor (resize + confirm; with a single target host
Nova may move it, and the next round moves it back); start it when it is off; then attach and
detach the pod's disks once the server is at rest. Each action is tried once per round (a refused
or failed one up to five times, backing off, when Nova was busy or had a hiccup); the pod's status
shows the step (Migrating, Resizing, PoweringOn). A server whose metadata still names another pod
(Nova takes no metadata while a server builds) is claimed for its pod first.

A server StopPod stopped (`vmlet-exit-code` in its metadata) stays off: only StartPod starts it
again, and claiming it for another pod clears the mark. While StopPod runs, the identity's rounds
are held off (`holding`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Final

from vmlet.provider.v1 import pod_pb2
from vmlet_contract import (
    FailedPrecondition,
    NotFound,
    ProviderError,
    Unavailable,
    is_retryable,
)

from . import naming
from .cloud import Cloud
from .config import Settings
from .disks import Disks, pod_disk_handles
from .podtable import PodEntry, PodTable, pod_metadata
from .records import ServerRecord
from .status import Progress
from .watch import ServerCache, Watch

__all__ = ["Converger", "Step"]

_log = logging.getLogger(__name__)

_ACTION_SETTLE_SECONDS: Final = 30.0
_ACTION_ATTEMPTS: Final = 5

#: (kind, progress, doing, action): no action means wait for Nova.
Step = tuple[str, Progress | None, str, dict[str, Any] | None]


class Converger:
    """Brings servers in line with their pods; see the module docstring."""

    def __init__(
        self,
        table: PodTable,
        cloud: Cloud,
        cache: ServerCache,
        watch: Watch,
        settings: Settings,
        disks: Disks | None,
    ) -> None:
        self._table = table
        self._cloud = cloud
        self._cache = cache
        self._watch = watch
        self._settings = settings
        self._disks = disks
        self._ops: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._held: set[str] = set()
        self._deferred: set[str] = set()

    def kick(self, identity: str) -> None:
        """Converges the identity's server (again, once the round under way ends)."""
        if identity in self._held:
            self._deferred.add(identity)
            return
        task = self._ops.get(identity)
        if task is not None and not task.done():
            self._again.add(identity)
            return
        task = asyncio.create_task(self._loop(identity), name=f"converge-{identity}")
        self._ops[identity] = task

    def converging(self, identity: str) -> bool:
        """Whether a round for `identity` is under way."""
        return identity in self._ops

    async def stop_converging(self, identity: str) -> None:
        """Cancels the identity's round and waits for it to end."""
        self._again.discard(identity)
        task = self._ops.pop(identity, None)
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    @contextlib.asynccontextmanager
    async def holding(self, identity: str) -> AsyncIterator[None]:
        """Keeps the identity's rounds off while the block runs; the round it cancelled, or one
        asked for meanwhile, runs after it."""
        cancelled = identity in self._ops
        await self.stop_converging(identity)
        self._held.add(identity)
        try:
            yield
        finally:
            self._held.discard(identity)
            if cancelled or identity in self._deferred:
                self._deferred.discard(identity)
                self.kick(identity)

    async def stop(self) -> None:
        """Cancels every round."""
        tasks = list(self._ops.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def expect(self, entry: PodEntry) -> None:
        """Shows the first step in the status right away (the answer of the call that kicks the
        converger would otherwise show the server as it still is)."""
        server = self._table.server_of(entry)
        if server is not None and entry.progress is None:
            step = self._next_step(entry, server, set())
            if step is not None and step[3] is not None:
                entry.progress = step[1]

    async def claim(self, server: ServerRecord, pod: pod_pb2.Pod) -> bool:
        """Rewrites the server's metadata for `pod` where it differs; False when Nova refuses
        for now (a server still building takes no metadata), for the converger to do later."""
        wanted = pod_metadata(pod)
        if server.keep:  # a VirtualMachine's server stays kept
            wanted[naming.META_KEEP] = "true"
        changed = {k: v for k, v in wanted.items() if server.metadata.get(k) != v}
        if not changed:
            return True
        doing = f"claim server {server.name} for pod {pod.ref.namespace}/{pod.ref.name}"
        try:
            await self._cloud.call(doing, lambda api: api.set_metadata(server.id, changed))
            if server.exit_code is not None and naming.META_POD_UID in changed:
                # Another pod's StopPod stopped it: this pod runs it.
                with contextlib.suppress(NotFound):
                    await self._cloud.call(
                        doing,
                        lambda api: api.delete_metadata_item(server.id, naming.META_EXIT_CODE),
                    )
        except FailedPrecondition:
            return False
        await self._watch.refresh_one(server.id)
        return True

    async def act(self, server: ServerRecord, doing: str, action: dict[str, Any]) -> None:
        """Asks Nova for a server action (`doing` names it in errors)."""
        await self._cloud.call(
            f"{doing} server {server.name}", lambda api: api.action(server.id, action)
        )

    async def _loop(self, identity: str) -> None:
        try:
            while True:
                self._again.discard(identity)
                await self._converge(identity)
                if identity not in self._again:
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            _log.exception("converging a server failed", extra={"identity": identity})
        finally:
            if self._ops.get(identity) is asyncio.current_task():
                del self._ops[identity]

    async def _converge(self, identity: str) -> None:
        deadline = time.monotonic() + self._settings.operation_timeout_seconds
        tried: set[str] = set()
        failures: dict[str, int] = {}
        entry = self._table.entry_of(identity)
        try:
            async with self._watch.urgent():
                while (entry := self._table.entry_of(identity)) is not None:
                    if not entry.server_id:
                        return
                    try:
                        server = await self._watch.refresh_one(entry.server_id)
                    except Unavailable:
                        await asyncio.sleep(self._settings.poll_seconds)
                        if time.monotonic() > deadline:
                            return
                        continue
                    if server is None:
                        return
                    if entry.unclaimed and server.status != "BUILD":
                        entry.unclaimed = not await self.claim(server, entry.pod)
                        if entry.unclaimed:
                            await self._cache.wait_change(server.id, server, 5)
                            continue
                    step = self._next_step(entry, server, tried)
                    if step is None:
                        await self._sync_disks(entry, server)
                        return
                    kind, progress, doing, action = step
                    entry.progress = progress
                    self._table.publish(entry)
                    if time.monotonic() > deadline:
                        entry.note = f"{doing} did not finish in time"
                        _log.warning(
                            "operation timed out", extra={"identity": identity, "step": kind}
                        )
                        return
                    if action is None:  # Nova is busy: wait for it to move on
                        await self._cache.wait_change(server.id, server, 30)
                        continue
                    tried.add(kind)
                    if not await self._try(entry, server, (kind, doing, action), failures):
                        tried.discard(kind)
        finally:
            if entry is not None:
                entry.progress = None
                self._table.publish(entry)

    async def _try(
        self,
        entry: PodEntry,
        server: ServerRecord,
        step: tuple[str, str, dict[str, Any]],
        failures: dict[str, int],
    ) -> bool:
        """Takes the step (kind, doing, action); False when it failed in a way worth another
        try this round."""
        kind, doing, action = step
        try:
            await self.act(server, doing, action)
        except ProviderError as error:
            failures[kind] = failures.get(kind, 0) + 1
            again = failures[kind] < _ACTION_ATTEMPTS and (
                isinstance(error, FailedPrecondition) or is_retryable(error.code)
            )
            _log.warning(
                "action failed",
                extra={
                    "identity": entry.identity,
                    "step": kind,
                    "error": error.message,
                    "retry": again,
                },
            )
            if again:
                # A conflict (Nova was still busy) or a hiccup: look again shortly.
                await asyncio.sleep(min(2.0 ** failures[kind], 15.0))
                return False
            entry.note = error.message
            return True
        _log.info(
            "action asked",
            extra={"identity": entry.identity, "step": kind, "server": server.id},
        )
        await self._moved_on(server)
        return True

    async def _sync_disks(self, entry: PodEntry, server: ServerRecord) -> None:
        """Attaches the pod's disks the server lacks and detaches those it dropped; a refusal
        (a disk held by another VM) shows in the pod's status."""
        wanted = pod_disk_handles(entry.pod, strict=False)
        if self._disks is None or server.status not in ("ACTIVE", "SHUTOFF"):
            return
        if not wanted and not entry.dropped_disks and not entry.check_disks:
            return
        doing = f"attaching disks {list(wanted)}" if wanted else "detaching dropped disks"
        entry.progress = Progress("ContainerCreating", doing)
        self._table.publish(entry)
        try:
            await self._disks.sync(server.id, wanted, entry.dropped_disks)
            entry.dropped_disks = frozenset()
            entry.check_disks = False
        except ProviderError as error:
            entry.note = error.message
            _log.warning(
                "disks not in line",
                extra={"identity": entry.identity, "server": server.id, "error": error.message},
            )

    async def _moved_on(self, before: ServerRecord) -> None:
        """Waits (briefly) until Nova shows the server changed after an action."""
        after = await self._watch.refresh_one(before.id)
        if after == before:
            await self._cache.wait_change(before.id, after, _ACTION_SETTLE_SECONDS)

    def _next_step(self, entry: PodEntry, server: ServerRecord, tried: set[str]) -> Step | None:
        """The next thing to do to `server` for `entry`; None when there is nothing to do."""
        if server.gone or server.status == "ERROR":
            return None
        moving = entry.progress
        if server.status == "VERIFY_RESIZE" and server.task_state is None:
            progress = moving or Progress("Resizing", f"confirming the resize of {server.name}")
            return ("confirm", progress, "confirm the resize of", {"confirmResize": None})
        if server.busy or (entry.unclaimed and server.status == "BUILD"):
            return ("wait", moving, "wait for", None)
        target = entry.host
        if server.host and target and server.host != target and server.status in (
            "ACTIVE",
            "SHUTOFF",
        ):
            return self._move(entry, server, target, tried)
        flavor = entry.flavor
        if (
            flavor is not None
            and server.flavor_name
            and server.flavor_name not in (flavor.name, flavor.id)
            and server.status in ("ACTIVE", "SHUTOFF")
            and "resize" not in tried
        ):
            return (
                "resize",
                Progress("Resizing", f"resizing server {server.name} to {flavor.name}"),
                f"resize to {flavor.name}",
                {"resize": {"flavorRef": flavor.id}},
            )
        if (server.status == "SHUTOFF" and "start" not in tried and server.exit_code is None
                and not entry.killed):
            return (
                "start",
                Progress("PoweringOn", f"starting server {server.name}"),
                "start",
                {"os-start": None},
            )
        return None

    def _move(
        self, entry: PodEntry, server: ServerRecord, target: str, tried: set[str]
    ) -> Step | None:
        text = f"moving server {server.name} from {server.host} to {target}"
        mode = self._settings.migration
        if server.status == "ACTIVE" and mode in ("auto", "live") and "live" not in tried:
            return (
                "live",
                Progress("Migrating", f"live-{text}"),
                f"live-migrate to {target}",
                {"os-migrateLive": {"host": target, "block_migration": "auto"}},
            )
        if mode in ("auto", "cold") and "cold" not in tried:
            return (
                "cold",
                Progress("Migrating", text),
                f"migrate to {target}",
                {"migrate": {"host": target}},
            )
        entry.note = f"server {server.name} is on {server.host}, not on {target}: migration failed"
        return None
