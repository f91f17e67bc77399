"""The pods the provider runs: their entries, their statuses, and the push of every change.

An entry holds the pod as the facade last sent it (or as rebuilt from its VM's extraConfig after
a restart), its identity, the step the provider is taking on its VM, and what the provider
observed of the VM over time (first start, restarts, when it stopped, a failure). The table
listens to the cache: every change of a VM re-derives the status of the pod of its identity and
publishes it to the NotifyPods streams when it differs from the last one.

A Pending status (the VM being made, moved or powered on) is pushed only once it has stood for
PENDING_PUSH_SECONDS: steps that vCenter finishes at once then cost the facade no status patch
of their own (only the Running that follows is pushed), while a clone that takes minutes still
shows what it is doing. Every other status is pushed at once.

A VM that leaves vCenter while its pod exists (not while the provider deletes it) fails the pod
with reason VMVanished. A VM that carries a pod the table does not know (after a restart) brings
that pod back, unless the pod of its identity was deleted a moment ago (a tombstone guards against
a late watch update resurrecting it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeAlias

from vmlet.provider.v1 import pod_notifier_service_pb2, pod_pb2
from vmlet_contract import Hub, NotFound, podstatus

from .cache import Cache
from .nodes import NodeBook
from .records import VmRecord
from .status import Progress, pod_status

__all__ = ["PodEntry", "PodKey", "PodTable", "Update", "pod_key"]

_log = logging.getLogger(__name__)

PodKey = tuple[str, str]
Update: TypeAlias = pod_notifier_service_pb2.NotifyPodsResponse

#: How long a deleted pod's identity is not rebuilt from a VM's (possibly stale) extraConfig.
TOMBSTONE_SECONDS = 60.0
#: How long a Pending status stands before it is pushed (a newer status replaces it).
PENDING_PUSH_SECONDS = 2.0


def pod_key(ref: pod_pb2.PodRef) -> PodKey:
    """(namespace, name) of a pod."""
    return (ref.namespace, ref.name)


@dataclass
class PodEntry:
    """A pod the provider runs, and what it knows about its VM."""

    pod: pod_pb2.Pod
    identity: str
    progress: Progress | None = None
    failure: tuple[str, str] | None = None
    note: str = ""
    vm: str = ""  # managed object ID of the VM last seen for this pod
    first_started: datetime | None = None
    last_boot: datetime | None = None
    restarts: int = 0
    stopped_at: datetime | None = None  # when the VM was seen off (or gone) after running
    killed: bool = False  # StopPod powered the VM off and wrote its exit code
    adopted: bool = False  # rebuilt from a VM's extraConfig rather than made by CreatePod
    status: pod_pb2.PodStatus | None = field(default=None, repr=False)
    pushed: pod_pb2.PodStatus | None = field(default=None, repr=False)  # last one streamed
    push_later: asyncio.TimerHandle | None = field(default=None, repr=False)

    @property
    def key(self) -> PodKey:
        """(namespace, name)."""
        return pod_key(self.pod.ref)


class PodTable:
    """The pods of the provider and their statuses; see the module docstring."""

    def __init__(self, cache: Cache, nodes: NodeBook) -> None:
        self._cache = cache
        self._book = nodes
        self._entries: dict[PodKey, PodEntry] = {}
        self._by_identity: dict[str, PodKey] = {}
        self._deleted: dict[str, float] = {}  # identity -> when its pod was deleted
        self.hub: Hub[Update] = Hub()
        cache.on_vm(self._vm_changed)

    # Look-ups.

    def entry(self, namespace: str, name: str) -> PodEntry:
        """The pod namespace/name; NotFound when the provider does not run it."""
        entry = self._entries.get((namespace, name))
        if entry is None:
            raise NotFound(f"pod {namespace}/{name} is not known to the vSphere provider")
        return entry

    def entries(self) -> list[PodEntry]:
        """Every pod, sorted by namespace and name."""
        return [self._entries[k] for k in sorted(self._entries)]

    def holds(self, entry: PodEntry) -> bool:
        """Whether `entry` is still a pod the provider runs."""
        return self._entries.get(entry.key) is entry

    def vm_of(self, entry: PodEntry) -> VmRecord | None:
        """The VM of a pod, None when there is none (yet, or any more)."""
        return self._cache.vm_of(entry.identity)

    def snapshot(self) -> list[tuple[PodKey, Update]]:
        """The current status of every pod, for a new NotifyPods stream."""
        return [(e.key, Update(ref=e.pod.ref, status=self.status_of(e))) for e in self.entries()]

    # Status.

    def status_of(self, entry: PodEntry) -> pod_pb2.PodStatus:
        """The pod's status as last derived."""
        if entry.status is None:
            entry.status = self._derive(entry)
        return entry.status

    def _derive(self, entry: PodEntry) -> pod_pb2.PodStatus:
        vm = self._cache.vm_of(entry.identity)
        host = vm.host if vm is not None else ""
        status = pod_status(
            entry.pod,
            vm,
            progress=entry.progress,
            failure=entry.failure,
            note=entry.note,
            first_started=entry.first_started,
            finished=entry.stopped_at,
            restarts=entry.restarts,
            node_name=self._book.node_name_of(host) if host else entry.pod.node_name,
            host_ip=self._book.host_ip(host) if host else "",
            last_vm=entry.vm,
            killed=entry.killed,
        )
        if vm is not None:  # the size the VM has in vCenter (config.hardware), not the pod's
            podstatus.observed_size(
                status, cpu_millis=vm.num_cpu * 1000, memory_bytes=vm.memory_mb << 20
            )
        return status

    def publish(self, entry: PodEntry) -> None:
        """Derives the pod's status again and pushes it when it changed (a Pending one after
        PENDING_PUSH_SECONDS; see the module docstring)."""
        status = self._derive(entry)
        if status == entry.status:
            return
        entry.status = status
        if status.phase != pod_pb2.POD_PHASE_PENDING:
            self._push(entry)
        elif entry.push_later is None:
            loop = asyncio.get_running_loop()
            entry.push_later = loop.call_later(PENDING_PUSH_SECONDS, self._push, entry)

    def _push(self, entry: PodEntry) -> None:
        if entry.push_later is not None:
            entry.push_later.cancel()
            entry.push_later = None
        status = entry.status
        if status is None or status == entry.pushed or self._entries.get(entry.key) is not entry:
            return
        entry.pushed = status
        self.hub.publish(entry.key, Update(ref=entry.pod.ref, status=status))

    def progress(self, entry: PodEntry, reason: str | None, message: str = "") -> None:
        entry.progress = Progress(reason, message) if reason else None
        self.publish(entry)

    def _vm_changed(self, old: VmRecord | None, new: VmRecord | None) -> None:
        record = new if new is not None else old
        assert record is not None
        identity = record.identity if record.managed else (old.identity if old else "")
        if not identity:
            return
        key = self._by_identity.get(identity)
        if key is None and new is not None and new.managed and new.pod is not None:
            if new.pod not in self._entries:
                self._adopt_from_vm(new)
            return
        entry = self._entries.get(key) if key is not None else None
        if entry is None:
            return
        current = self._cache.vm_of(identity)
        if current is None and new is None:
            # The VM left vCenter (not merely lost its identity key for a moment).
            gone = old if old is not None else record
            deleting = entry.progress is not None and entry.progress.reason == "Deleting"
            if entry.vm == gone.moid and not deleting and entry.failure is None:
                entry.stopped_at = datetime.now(UTC)
                entry.failure = (
                    "VMVanished",
                    f"VM {gone.name} ({gone.moid}) disappeared from vCenter; vmlet does not "
                    "make it again: delete the pod (or its VirtualMachine) to start over",
                )
                _log.warning("vm vanished", extra={"pod": "/".join(entry.key), "vm": gone.moid})
        elif current is not None:
            if entry.adopted and current.pod != entry.key and entry.progress is None:
                self.drop(entry)  # the VM no longer names the pod it was rebuilt from
                return
            entry.vm = current.moid
            self.track_boot(entry, current)
        self.publish(entry)

    def track_boot(self, entry: PodEntry, vm: VmRecord) -> None:
        """Notes when the VM first ran for the pod, how often it booted again since (a newer
        boot time; an older one is a late update), and when it was last seen stopping."""
        if not vm.powered_on:
            if entry.stopped_at is None:
                entry.stopped_at = datetime.now(UTC)
            return
        entry.stopped_at = None
        entry.killed = False
        if vm.boot_time is None:
            return
        if entry.first_started is None:
            entry.first_started = vm.boot_time
        elif entry.last_boot is not None and vm.boot_time > entry.last_boot:
            entry.restarts += 1
        if entry.last_boot is None or vm.boot_time > entry.last_boot:
            entry.last_boot = vm.boot_time

    def _adopt_from_vm(self, vm: VmRecord) -> None:
        """Rebuilds the pod a VM serves from its extraConfig (after a provider restart)."""
        assert vm.pod is not None
        deleted = self._deleted.get(vm.identity)
        if deleted is not None and time.monotonic() - deleted < TOMBSTONE_SECONDS:
            return  # a late watch update of a pod deleted a moment ago, not a pod
        namespace, name = vm.pod
        pod = pod_pb2.Pod(
            ref=pod_pb2.PodRef(namespace=namespace, name=name, uid=vm.pod_uid),
            node_name=self._book.node_name_of(vm.host),
            identity=vm.identity,
            keep_on_delete=vm.keep,
            containers=[pod_pb2.Container(name=vm.container or "vm", image=vm.image)],
        )
        entry = PodEntry(pod=pod, identity=vm.identity, vm=vm.moid, adopted=True)
        self.track_boot(entry, vm)
        self._entries[vm.pod] = entry
        self._by_identity[vm.identity] = vm.pod
        self.publish(entry)

    def get(self, key: PodKey) -> PodEntry | None:
        """The pod with `key`, if the provider runs it."""
        return self._entries.get(key)

    def forget_tombstone(self, identity: str) -> None:
        """A new pod of `identity` is made: its VM may carry pods again."""
        self._deleted.pop(identity, None)

    def entry_of(self, identity: str) -> PodEntry | None:
        """The pod of `identity`, if the provider runs one."""
        key = self._by_identity.get(identity)
        return self._entries.get(key) if key is not None else None

    def bind(self, pod: pod_pb2.Pod) -> PodEntry:
        """The entry of `pod`, made or refreshed; a pod that takes over an identity from another
        pod (a VM pod made again under another name) ends the other one."""
        key = pod_key(pod.ref)
        previous = self._by_identity.get(pod.identity)
        if previous is not None and previous != key:
            old = self._entries.pop(previous, None)
            if old is not None:
                old.failure = (
                    "VMTakenOver",
                    f"the VM of identity {pod.identity} now serves pod {key[0]}/{key[1]}",
                )
                status = self._derive(old)
                self.hub.publish(previous, Update(ref=old.pod.ref, status=status))
        entry = self._entries.get(key)
        if (
            entry is None
            or entry.identity != pod.identity
            or (pod.ref.uid and entry.pod.ref.uid and pod.ref.uid != entry.pod.ref.uid)
        ):
            if entry is not None and entry.identity != pod.identity:
                self._by_identity.pop(entry.identity, None)
            entry = PodEntry(pod=pod, identity=pod.identity)
        else:
            entry.pod = pod
        self._entries[key] = entry
        self._by_identity[pod.identity] = key
        return entry

    def tombstone(self, identity: str) -> None:
        """Remembers for a while that the pod of `identity` was deleted."""
        now = time.monotonic()
        self._deleted = {k: t for k, t in self._deleted.items() if now - t < TOMBSTONE_SECONDS}
        self._deleted[identity] = now

    def drop(self, entry: PodEntry) -> None:
        """Forgets a pod."""
        if entry.push_later is not None:
            entry.push_later.cancel()
            entry.push_later = None
        if self._entries.get(entry.key) is entry:
            del self._entries[entry.key]
        if self._by_identity.get(entry.identity) == entry.key:
            del self._by_identity[entry.identity]

    def close(self, reason: str) -> None:
        """Ends every NotifyPods stream."""
        self.hub.close(reason)
