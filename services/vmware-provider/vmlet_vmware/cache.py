"""The provider's picture of vCenter: every host of the datacenter and every VM in the VM folder,
kept current by the watch, looked up by managed object ID, node name or identity.

Only the asyncio loop touches it. Changes come from three places:

- the watch (`apply`), the source of truth: property changes as vCenter pushes them;
- a full resync after (re)connecting (`begin_resync`/`end_resync`): whatever was not in the new
  initial update set is gone;
- read-after-write (`refresh`) right after the provider changed a VM itself, so that the next
  look-up sees the VM it just made without waiting for the watch. A refresh never overwrites a
  property the watch updated after the refresh began (each property remembers the sequence
  number of its last update), so it cannot roll the picture back. The other way round, a watch
  batch collected just before a refresh may arrive just after it (vcsim's watch lags by
  seconds under load); a watch change that contradicts a refresh of the last RECHECK_SECONDS
  is held back, and it and a refresh that the watch contradicted meanwhile ask (`on_recheck`)
  for the object to be read once more, so the picture converges on what vCenter says now
  without showing the older one in between.

Listeners hear (old, new) for every record that changed; None means absent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .records import HostRecord, VmRecord

__all__ = ["Cache", "Change", "HostListener", "Kind", "VmListener"]

_log = logging.getLogger(__name__)

#: How long after a refresh a differing watch update makes the object be read again.
RECHECK_SECONDS = 2.0

Kind = Literal["host", "vm"]
VmListener = Callable[[VmRecord | None, VmRecord | None], None]
HostListener = Callable[[HostRecord | None, HostRecord | None], None]


@dataclass(frozen=True)
class Change:
    """One object's update from the watch: enter (all properties), modify (some), leave."""

    kind: Kind
    moid: str
    op: Literal["enter", "modify", "leave"]
    props: tuple[tuple[str, str, Any], ...] = ()  # (path, op, value); op: assign/add/remove


class Cache:
    """Hosts and VMs as last seen; see the module docstring."""

    def __init__(self) -> None:
        self.hosts: dict[str, HostRecord] = {}
        self.vms: dict[str, VmRecord] = {}
        self.synced = asyncio.Event()
        self._props: dict[tuple[Kind, str], dict[str, Any]] = {}
        self._touched: dict[tuple[Kind, str], dict[str, int]] = {}
        self._seq = 0
        self._by_identity: dict[str, set[str]] = {}
        self._vm_listeners: list[VmListener] = []
        self._host_listeners: list[HostListener] = []
        self._refreshed: dict[tuple[Kind, str], float] = {}
        #: Called with (kind, moid) when the watch changed an object shortly after a refresh:
        #: the watch may have collected that change before the refresh read the object, so
        #: the object should be read once more. Set by whoever can read objects.
        self.on_recheck: Callable[[Kind, str], None] | None = None

    # Listeners.

    def on_vm(self, listener: VmListener) -> None:
        """Calls `listener(old, new)` for every VM record that changes."""
        self._vm_listeners.append(listener)

    def on_host(self, listener: HostListener) -> None:
        """Calls `listener(old, new)` for every host record that changes."""
        self._host_listeners.append(listener)

    # Look-ups.

    @property
    def seq(self) -> int:
        """The sequence number of the last update; pass it to `refresh`."""
        return self._seq

    def vms_of(self, identity: str) -> list[VmRecord]:
        """Every managed VM carrying `identity` (one, unless someone copied a VM by hand)."""
        return sorted(
            (self.vms[m] for m in self._by_identity.get(identity, ()) if m in self.vms),
            key=lambda vm: (len(vm.moid), vm.moid),
        )

    def vm_of(self, identity: str) -> VmRecord | None:
        """The VM of `identity`: the oldest one when there are several."""
        found = self.vms_of(identity)
        return found[0] if found else None

    # Updates.

    def apply(self, changes: Iterable[Change], *, resync: bool = False) -> None:
        """Applies a batch of changes from the watch.

        During a resync an enter replaces what was known of the object. Afterwards an enter of
        an object the cache already has (put there by `refresh` right after the provider made
        it) only fills in what the refresh did not see: the watch may have collected it before
        the provider's next change, and must not take back what the refresh already saw.
        """
        self._seq += 1
        now = time.monotonic()
        recheck: list[tuple[Kind, str]] = []
        for change in changes:
            key = (change.kind, change.moid)
            if change.op == "leave":
                self._drop(key)
                continue
            if change.op == "modify" and key not in self._props:
                # The watch collected this before the object was dropped (the provider destroyed
                # it, or a read found it gone); its leave follows. Taken in, it would be a
                # record of a few properties and no identity, holding the disks it had.
                continue
            merge = change.op == "enter" and not resync and key in self._props
            if change.op == "enter" and not merge:
                self._props[key] = {}
                self._touched[key] = {}
            props = self._props.setdefault(key, {})
            touched = self._touched.setdefault(key, {})
            recent = not resync and now - self._refreshed.get(key, -RECHECK_SECONDS) < (
                RECHECK_SECONDS
            )
            if recent and change.op == "modify" and self.on_recheck is not None:
                if any(_differs(props, path, op, value) for path, op, value in change.props):
                    # Contradicts a read of a moment ago: the watch's batch may be older than
                    # the read. Read once more rather than show the older picture meanwhile.
                    recheck.append(key)
                continue
            differs = False
            for path, op, value in change.props:
                if merge and (path in props or value is None):
                    # The refresh read it after the watch collected it; and an enter only
                    # fills in values, it does not take back what the refresh found missing.
                    continue
                touched[path] = self._seq
                if op in ("remove", "indirectRemove") or value is None:
                    differs = differs or path in props
                    props.pop(path, None)
                else:
                    differs = differs or props.get(path) != value
                    props[path] = value
            self._rebuild(key)
            if recent and differs:
                recheck.append(key)
        if self.on_recheck is not None:
            for kind, moid in recheck:
                self.on_recheck(kind, moid)

    def begin_resync(self, *, keep_synced: bool = False) -> int:
        """Marks the cache unsynced before a full initial update set (unless `keep_synced`: a
        new watch round on the same connection, whose picture stays good meanwhile); returns
        the sequence number to hand to `end_resync`."""
        if not keep_synced:
            self.synced.clear()
        self._seq += 1
        return self._seq

    def end_resync(self, seen: set[tuple[Kind, str]], start: int) -> None:
        """Drops whatever the initial update set did not contain (unless refreshed since it
        began) and marks the cache synced."""
        for key in [k for k in self._props if k not in seen]:
            if max(self._touched.get(key, {}).values(), default=0) <= start:
                self._drop(key)
        self.synced.set()

    def invalidate(self) -> None:
        """Marks the cache unsynced (the watch lost vCenter); records stay as last seen."""
        self.synced.clear()

    def refresh(self, kind: Kind, moid: str, props: Mapping[str, Any] | None, start: int) -> None:
        """Read-after-write: `props` as read after `start` (None: the object is gone)."""
        key = (kind, moid)
        if props is None:
            if max(self._touched.get(key, {}).values(), default=0) <= start:
                self._drop(key)
            return
        touched = self._touched.setdefault(key, {})
        self._seq += 1
        self._refreshed[key] = time.monotonic()
        current = self._props.setdefault(key, {})
        contradicted = False
        for path, value in props.items():
            if touched.get(path, 0) > start:
                contradicted = contradicted or current.get(path) != value
                continue
            touched[path] = self._seq
            if value is None:
                current.pop(path, None)
            else:
                current[path] = value
        self._rebuild(key)
        if contradicted and self.on_recheck is not None:
            # The watch changed what this read saw, after the read began; but the watch's batch
            # may have been collected before the read. Reading once more settles it.
            self.on_recheck(kind, moid)

    def forget(self, kind: Kind, moid: str) -> None:
        """Drops an object the provider destroyed itself."""
        self._drop((kind, moid))

    # Internals.

    def _drop(self, key: tuple[Kind, str]) -> None:
        self._props.pop(key, None)
        self._touched.pop(key, None)
        self._refreshed.pop(key, None)
        kind, moid = key
        if kind == "vm":
            old_vm = self.vms.pop(moid, None)
            if old_vm is not None:
                self._index(old_vm, None)
                self._emit_vm(old_vm, None)
        else:
            old_host = self.hosts.pop(moid, None)
            if old_host is not None:
                self._emit_host(old_host, None)

    def _rebuild(self, key: tuple[Kind, str]) -> None:
        kind, moid = key
        props = self._props.get(key, {})
        if kind == "vm":
            new_vm = VmRecord.from_props(moid, props)
            old_vm = self.vms.get(moid)
            if new_vm == old_vm:
                return
            self.vms[moid] = new_vm
            self._index(old_vm, new_vm)
            self._emit_vm(old_vm, new_vm)
        else:
            new_host = HostRecord.from_props(moid, props)
            old_host = self.hosts.get(moid)
            if new_host == old_host:
                return
            self.hosts[moid] = new_host
            self._emit_host(old_host, new_host)

    def _index(self, old: VmRecord | None, new: VmRecord | None) -> None:
        if old is not None and old.managed:
            members = self._by_identity.get(old.identity)
            if members is not None:
                members.discard(old.moid)
                if not members:
                    del self._by_identity[old.identity]
        if new is not None and new.managed:
            self._by_identity.setdefault(new.identity, set()).add(new.moid)

    def _emit_vm(self, old: VmRecord | None, new: VmRecord | None) -> None:
        for listener in list(self._vm_listeners):
            try:
                listener(old, new)
            except Exception:
                _log.exception("VM listener failed")

    def _emit_host(self, old: HostRecord | None, new: HostRecord | None) -> None:
        for listener in list(self._host_listeners):
            try:
                listener(old, new)
            except Exception:
                _log.exception("host listener failed")


def _differs(props: dict[str, Any], path: str, op: str, value: Any) -> bool:
    if op in ("remove", "indirectRemove") or value is None:
        return path in props
    return bool(props.get(path) != value)
