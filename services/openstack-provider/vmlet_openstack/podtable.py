"""The pods the provider runs: their entries, their statuses, and the push of every change.

An entry holds the pod as the facade last sent it (or as rebuilt from its server's metadata
after a restart), the compute host of its node, the flavor and disks its server should have, and
the step the provider is taking on it. The table listens to the watch's single server list
(`on_change`, `on_gone`, `on_synced`): the status of the pod of every changed server is worked out
(`status.pod_status`) and pushed to NotifyPods when it differs from the last one pushed. After a
restart, pods are adopted from server metadata on the first full list, so GetPods and NotifyPods
know them again, unless the pod was deleted a moment ago (a tombstone guards against a late list
resurrecting it).

A server in ERROR fails its pod once, with Nova's fault: server lists leave the fault out, so it
is read with the server itself, and until then the pod keeps the state it had.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from vmlet.provider.v1 import pod_notifier_service_pb2, pod_pb2
from vmlet_contract import Hub, InvalidArgument, Mailbox, NotFound, ProviderError, podstatus

from . import naming
from .nodes import NodeBook
from .records import FlavorRecord, ServerRecord
from .status import Progress, pod_status
from .watch import ServerCache, Watch

__all__ = [
    "PodEntry",
    "PodKey",
    "PodTable",
    "PodUpdate",
    "pod_from_metadata",
    "pod_key",
    "pod_metadata",
    "validate_pod",
]

_log = logging.getLogger(__name__)

PodKey = tuple[str, str]
PodUpdate = pod_notifier_service_pb2.NotifyPodsResponse

_TOMBSTONE_SECONDS: Final = 600.0
# A minute in all: under load the conductor records a fault seconds after the ERROR status.
_FAULT_READ_DELAYS: Final = (0.0, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)


@dataclass
class PodEntry:
    """A pod the provider runs, and what its server should become."""

    pod: pod_pb2.Pod
    host: str  # the compute host of the pod's node
    flavor: FlavorRecord | None = None  # None: whatever it has
    server_id: str = ""
    progress: Progress | None = None
    note: str = ""
    vanished: str = ""
    fingerprint: bytes = b""
    unclaimed: bool = False  # the server's metadata still names another pod
    dropped_disks: frozenset[str] = frozenset()  # disks an update took from the pod
    check_disks: bool = False  # a claimed server may hold vmlet volumes its pod no longer names
    # StopPod powered the server off: it is reported killed (exit code 137) even before the
    # code is recorded in its metadata and read back, or when recording it failed.
    killed: bool = False

    @property
    def key(self) -> PodKey:
        return pod_key(self.pod)

    @property
    def identity(self) -> str:
        return self.pod.identity


def pod_key(pod: pod_pb2.Pod) -> PodKey:
    """(namespace, name) of a pod."""
    return (pod.ref.namespace, pod.ref.name)


def validate_pod(pod: pod_pb2.Pod) -> None:
    """InvalidArgument unless `pod` names itself, its identity, its node and one container."""
    if not pod.ref.namespace or not pod.ref.name:
        raise InvalidArgument("the pod has no namespace or name")
    if not pod.identity:
        raise InvalidArgument(f"pod {pod.ref.namespace}/{pod.ref.name} has no identity")
    if not pod.node_name:
        raise InvalidArgument(f"pod {pod.ref.namespace}/{pod.ref.name} is bound to no node")
    if len(pod.containers) != 1:
        raise InvalidArgument(
            f"pod {pod.ref.namespace}/{pod.ref.name} has {len(pod.containers)} containers; "
            "a VM pod has exactly one"
        )


def pod_metadata(pod: pod_pb2.Pod) -> dict[str, str]:
    """The server metadata that ties a server to `pod` (see `naming`)."""
    container = pod.containers[0] if pod.containers else pod_pb2.Container()
    values = {
        naming.META_IDENTITY: pod.identity,
        naming.META_NAMESPACE: pod.ref.namespace,
        naming.META_POD: pod.ref.name,
        naming.META_POD_UID: pod.ref.uid,
        naming.META_NODE: pod.node_name,
        naming.META_CONTAINER: container.name,
        naming.META_IMAGE: container.image,
        naming.META_KEEP: "true" if pod.keep_on_delete else "false",
        naming.META_OWNER_NAMESPACE: pod.ref.namespace,
    }
    return {k: naming.truncate(v) for k, v in values.items()}


def pod_from_metadata(record: ServerRecord) -> pod_pb2.Pod:
    """The pod a server's metadata names, as far as metadata can tell (after a restart)."""
    md = record.metadata
    return pod_pb2.Pod(
        ref=pod_pb2.PodRef(
            namespace=md.get(naming.META_NAMESPACE, ""),
            name=md.get(naming.META_POD, ""),
            uid=md.get(naming.META_POD_UID, ""),
        ),
        node_name=md.get(naming.META_NODE, ""),
        identity=record.identity,
        keep_on_delete=record.keep,
        containers=[
            pod_pb2.Container(
                name=md.get(naming.META_CONTAINER, "") or "vm",
                image=md.get(naming.META_IMAGE, ""),
            )
        ],
    )


def _fingerprint(status: pod_pb2.PodStatus) -> bytes:
    copy = pod_pb2.PodStatus()
    copy.CopyFrom(status)
    for container in copy.container_statuses:
        if container.HasField("terminated"):
            container.terminated.ClearField("finished_at")
    return copy.SerializeToString(deterministic=True)


def _ignore(identity: str) -> None:
    del identity


class PodTable:
    """The pods the provider runs; see the module docstring.

    `kick` (the converger's) is called for a server that needs bringing in line after a restart;
    `dedupe` for an identity the list shows with more than one server; `ran_again` for a server
    that runs with the exit code StopPod recorded."""

    def __init__(self, cache: ServerCache, watch: Watch, nodes: NodeBook) -> None:
        self._cache = cache
        self._watch = watch
        self._nodes = nodes
        self.hub: Hub[PodUpdate] = Hub()
        self.kick: Callable[[str], None] = _ignore
        self.dedupe: Callable[[str], None] = _ignore
        self.converging: Callable[[str], bool] = lambda identity: False
        self.ran_again: Callable[[ServerRecord], None] = lambda record: None
        self._entries: dict[PodKey, PodEntry] = {}
        self._by_identity: dict[str, PodKey] = {}
        self._tombstones: dict[str, float] = {}
        self._reading_fault: set[str] = set()  # servers whose ERROR fault is being read
        self._background: set[asyncio.Task[Any]] = set()
        watch.on_change = self.on_change
        watch.on_gone = self.on_gone
        watch.on_synced = self.on_synced

    # -- reading -----
    def server_of(self, entry: PodEntry) -> ServerRecord | None:
        """The server `entry` runs on, as the cache has it."""
        if entry.server_id and entry.server_id in self._cache.by_id:
            return self._cache.by_id[entry.server_id]
        return self._cache.server_of(entry.identity)

    def status_of(self, entry: PodEntry) -> pod_pb2.PodStatus:
        """The pod's status now."""
        server = self.server_of(entry)
        host = server.host if server is not None else None
        status = pod_status(
            entry.pod,
            server,
            progress=entry.progress,
            vanished=entry.vanished,
            server_id=entry.server_id,
            fault_pending=server is not None and server.id in self._reading_fault,
            node_name=self._nodes.node_of(host) if host else "",
            host_ip=self._nodes.host_ip(host),
            killed=entry.killed,
        )
        if entry.note and not status.message:
            status.message = entry.note
        return status

    async def wait_entry(self, namespace: str, name: str) -> PodEntry:
        """The entry of the pod, once the first list is in; NotFound when there is none."""
        entry = self._entries.get((namespace, name))
        if entry is None and not self._watch.synced.is_set():
            await self._watch.wait_synced()
            entry = self._entries.get((namespace, name))
        if entry is None:
            raise NotFound(f"pod {namespace}/{name} is not known to the OpenStack provider")
        return entry

    async def get(self, namespace: str, name: str) -> tuple[pod_pb2.Pod, pod_pb2.PodStatus]:
        """The pod and its status; NotFound when the provider does not run it."""
        entry = await self.wait_entry(namespace, name)
        return entry.pod, self.status_of(entry)

    async def all_pods(self) -> list[pod_pb2.PodWithStatus]:
        """Every pod with its status, once the first list is in."""
        await self._watch.wait_synced()
        return [
            pod_pb2.PodWithStatus(pod=e.pod, status=self.status_of(e))
            for e in list(self._entries.values())
        ]

    def subscribe(self) -> Mailbox[PodUpdate]:
        """A NotifyPods mailbox that starts with every pod's status."""
        snapshot = [
            (e.key, PodUpdate(ref=e.pod.ref, status=self.status_of(e)))
            for e in self._entries.values()
        ]
        return self.hub.subscribe(snapshot)

    def entries(self) -> list[PodEntry]:
        """The pods the provider runs now."""
        return list(self._entries.values())

    def entry(self, namespace: str, name: str) -> PodEntry | None:
        return self._entries.get((namespace, name))

    def entry_of(self, identity: str) -> PodEntry | None:
        """The entry of the pod that runs `identity` now."""
        key = self._by_identity.get(identity)
        return self._entries.get(key) if key is not None else None

    def holder_of(self, identity: str) -> PodKey | None:
        """The key of the pod registered for `identity`."""
        return self._by_identity.get(identity)

    def show_progress(self, identity: str, progress: Progress | None) -> None:
        """Shows (None: ends) a step taken on the identity's server in its pod's status."""
        entry = self.entry_of(identity)
        if entry is not None:
            entry.progress = progress
            self.publish(entry)

    def publish(self, entry: PodEntry) -> None:
        """Pushes the entry's status when it differs from the last one pushed."""
        if self._entries.get(entry.key) is not entry:
            return
        status = self.status_of(entry)
        fingerprint = _fingerprint(status)
        if fingerprint != entry.fingerprint:
            entry.fingerprint = fingerprint
            self.hub.publish(entry.key, PodUpdate(ref=entry.pod.ref, status=status))

    # -- registry -----
    def register(self, pod: pod_pb2.Pod, host: str) -> PodEntry:
        """The entry of `pod`, new or updated; the pod that ran its identity before fails with
        VMTakenOver."""
        key = pod_key(pod)
        holder = self._by_identity.get(pod.identity)
        if holder is not None and holder != key:
            old = self._entries.pop(holder, None)
            if old is not None:
                _log.info(
                    "VM handed over to another pod",
                    extra={"identity": pod.identity, "from": "/".join(holder), "to": "/".join(key)},
                )
                status = podstatus.failed(
                    old.pod,
                    reason="VMTakenOver",
                    message=f"pod {key[0]}/{key[1]} now runs this VM",
                )
                self.hub.publish(holder, PodUpdate(ref=old.pod.ref, status=status))
        entry = self._entries.get(key)
        if entry is not None and entry.identity != pod.identity:
            self._by_identity.pop(entry.identity, None)
            entry = None
        if entry is None:
            entry = PodEntry(pod=pod, host=host)
            self._entries[key] = entry
        else:
            entry.pod, entry.host = pod, host
        entry.vanished = ""
        entry.note = ""
        self._by_identity[pod.identity] = key
        self._tombstones.pop(pod.ref.uid or "/".join(key), None)
        return entry

    def forget(self, entry: PodEntry) -> None:
        """Drops the entry, leaving a tombstone so a late list does not adopt it again."""
        if self._entries.get(entry.key) is entry:
            del self._entries[entry.key]
        if self._by_identity.get(entry.identity) == entry.key:
            del self._by_identity[entry.identity]
        self._tombstones[entry.pod.ref.uid or "/".join(entry.key)] = time.monotonic()

    # -- what the watch sees -----
    def on_change(self, record: ServerRecord, old: ServerRecord | None) -> None:
        """A server changed (or was seen for the first time)."""
        entry = self.entry_of(record.identity)
        if entry is None:
            return
        if not entry.server_id:
            entry.server_id = record.id
        if record.status == "ACTIVE" and record.settled and record.exit_code is None:
            entry.killed = False  # it runs again, and no kill is on record any more
        if (record.status == "ERROR" and record.fault is None
                and record.id not in self._reading_fault):
            self._reading_fault.add(record.id)
            self.spawn(self._read_fault(record.id, entry.key))
        self.publish(entry)
        if (
            record.status == "VERIFY_RESIZE"
            and record.task_state is None
            and not self.converging(record.identity)
        ):
            self.kick(record.identity)  # heal a resize left unconfirmed (e.g. by a restart)
        if len(self._cache.of_identity(record.identity)) > 1:
            self.dedupe(record.identity)
        if record.exit_code is not None and record.status == "ACTIVE" and record.settled:
            self.ran_again(record)

    async def _read_fault(self, server_id: str, key: PodKey) -> None:
        """Nova records the fault just after the server turns ERROR: read until it shows."""
        try:
            for delay in _FAULT_READ_DELAYS:
                await asyncio.sleep(delay)
                try:
                    record = await self._watch.refresh_one(server_id)
                except ProviderError as error:  # Nova slow or away: the next round tries again
                    _log.warning("cannot read an ERROR server's fault yet",
                                 extra={"server": server_id, "error": error.message})
                    continue
                if record is None or record.status != "ERROR" or record.fault is not None:
                    return
        finally:
            self._reading_fault.discard(server_id)
            entry = self._entries.get(key)
            if entry is not None:
                self.publish(entry)  # Failed now, with the fault or without one

    def on_gone(self, old: ServerRecord) -> None:
        """A server left Nova's list."""
        entry = self.entry_of(old.identity)
        if entry is None or entry.server_id != old.id:
            return
        survivor = self._cache.server_of(old.identity)
        if survivor is not None:
            entry.server_id = survivor.id
        elif entry.progress is None or entry.progress.reason != "Deleting":
            entry.vanished = old.id
            _log.warning("server vanished", extra={"pod": "/".join(entry.key), "server": old.id})
        self.publish(entry)

    def on_synced(self, records: list[ServerRecord]) -> None:
        """A full list came in: adopt the pods that servers name and the table does not know."""
        now = time.monotonic()
        self._tombstones = {
            k: t for k, t in self._tombstones.items() if now - t < _TOMBSTONE_SECONDS
        }
        for record in records:
            key = record.pod_key
            if key is None or key in self._entries or record.identity in self._by_identity:
                continue
            uid = record.metadata.get(naming.META_POD_UID, "")
            if (uid or "/".join(key)) in self._tombstones:
                continue
            pod = pod_from_metadata(record)
            host = self._nodes.host_of_node(pod.node_name) or record.host or ""
            entry = PodEntry(pod=pod, host=host, server_id=record.id)
            self._entries[key] = entry
            self._by_identity[record.identity] = key
            _log.info(
                "pod adopted from server metadata",
                extra={"pod": "/".join(key), "server": record.id},
            )
            self.publish(entry)
            if record.status == "VERIFY_RESIZE" or (host and record.host and host != record.host):
                self.kick(record.identity)

    # -- background work -----
    def spawn(self, coro: Any) -> None:
        """Runs `coro` in the background; its failure is logged, and `stop` cancels it."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_log_failure)

    async def stop(self) -> None:
        """Cancels the background work."""
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        _log.warning("background task failed", extra={"error": str(exc)})
