"""The watch: one PropertyCollector, long-polled with WaitForUpdatesEx, keeps the cache current.

Per connection the provider makes its own PropertyCollector with two filters: one over a
ContainerView of every HostSystem in the datacenter, one over every VM in the VM folder (and its
subfolders), reached from a ListView of that folder (see `props.folder_list_filter_spec` for why
not a ContainerView), so one filter covers all managed VMs, however many. The first WaitForUpdatesEx
returns everything (in pages when vCenter truncates), which resyncs the cache; each later call
returns only what changed, or nothing after `watch_wait_seconds`. Nothing is polled.

The long poll occupies a thread of its own, so it never takes a worker from the calls. Any
failure (vCenter gone, session expired and with it the collector) ends the round; the next round
waits for a connection and starts over with a full resync. A long poll that times out (vcsim
under a burst of changes can take a minute to answer one) ends only the round: the session
stays, the cache stays synced with what the provider reads and writes itself, and the next
round's resync catches up once the old collector is destroyed. On shutdown CancelWaitForUpdates
wakes the thread.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Literal

from pyVmomi import vim, vmodl

from vmlet_contract import ProviderError

from .cache import Cache, Change, Kind
from .props import convert, folder_list_filter_spec, moid, view_filter_spec
from .records import HOST_PATHS, VM_PATHS
from .session import Connection, Session

__all__ = ["Watch"]

_log = logging.getLogger(__name__)


_OPS: dict[str, Literal["enter", "modify", "leave"]] = {
    "enter": "enter",
    "modify": "modify",
    "leave": "leave",
}


@dataclass
class _Handle:
    """The collector, views and filters of one round."""

    collector: Any
    views: list[Any]
    kinds: dict[str, Kind]  # filter moid -> kind


@dataclass(frozen=True)
class _Batch:
    version: str
    truncated: bool
    changes: list[Change]


def _open(conn: Connection) -> _Handle:
    content = conn.content
    inv = conn.inventory
    collector = content.propertyCollector.CreatePropertyCollector()
    views: list[Any] = []
    kinds: dict[str, Kind] = {}
    try:
        hosts = content.viewManager.CreateContainerView(
            container=conn.mo(vim.Folder, inv.host_root), type=[vim.HostSystem], recursive=True
        )
        views.append(hosts)
        flt = collector.CreateFilter(
            view_filter_spec(hosts, vim.HostSystem, HOST_PATHS), partialUpdates=True
        )
        kinds[moid(flt)] = "host"
        folder = content.viewManager.CreateListView(obj=[conn.mo(vim.Folder, inv.vm_folder)])
        views.append(folder)
        flt = collector.CreateFilter(
            folder_list_filter_spec(folder, vim.VirtualMachine, VM_PATHS), partialUpdates=True
        )
        kinds[moid(flt)] = "vm"
    except BaseException:
        _close(_Handle(collector, views, kinds))
        raise
    return _Handle(collector=collector, views=views, kinds=kinds)


def _close(handle: _Handle) -> None:
    for view in handle.views:
        try:
            view.Destroy()
        except Exception:
            _log.debug("destroying a view failed", exc_info=True)
    try:
        handle.collector.DestroyPropertyCollector()
    except Exception:
        _log.debug("destroying the collector failed", exc_info=True)


def _cancel(handle: _Handle) -> None:
    try:
        handle.collector.CancelWaitForUpdates()
    except Exception:
        _log.debug("cancelling the wait failed", exc_info=True)


def _wait(handle: _Handle, version: str, max_wait: int) -> _Batch | None:
    options = vmodl.query.PropertyCollector.WaitOptions(maxWaitSeconds=max_wait)
    update = handle.collector.WaitForUpdatesEx(version=version, options=options)
    if update is None:
        return None
    changes: list[Change] = []
    for filter_update in update.filterSet or ():
        kind = handle.kinds.get(moid(filter_update.filter))
        if kind is None:
            continue
        for obj in filter_update.objectSet or ():
            props = tuple(
                (str(c.name), str(c.op), convert(str(c.name), c.val)) for c in obj.changeSet or ()
            )
            op = _OPS.get(str(obj.kind))
            if op is not None:
                changes.append(Change(kind=kind, moid=moid(obj.obj), op=op, props=props))
    return _Batch(version=str(update.version), truncated=bool(update.truncated), changes=changes)


class Watch:
    """Runs the watch rounds; see the module docstring."""

    def __init__(self, session: Session, cache: Cache, pool: Executor) -> None:
        self._session = session
        self._cache = cache
        self._pool = pool  # one thread, for the long poll
        self._closing = False
        self._handle: _Handle | None = None
        self._synced_on: Connection | None = None  # the connection of the last full resync
        self.rounds = 0

    async def run(self) -> None:
        """Watches until `close`, starting over whenever a round ends."""
        backoff = 0.5
        while not self._closing:
            try:
                conn = await self._session.wait_connected()
            except ProviderError:
                return
            started = asyncio.get_running_loop().time()
            try:
                await self._round(conn)
            except ProviderError as exc:
                if not self._closing:
                    _log.warning("watch round ended", extra={"error": exc.message})
            except Exception:
                _log.exception("watch round failed")
            if self._session.connection is not conn:
                self._cache.invalidate()  # a new connection may be a new vCenter: resync first
            if self._closing:
                return
            if asyncio.get_running_loop().time() - started > 30:
                backoff = 0.5
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)

    async def _round(self, conn: Connection) -> None:
        session = self._session
        max_wait = session.settings.watch_wait_seconds
        handle = await session.call(_open, doing="start watching vCenter")
        self._handle = handle
        self.rounds += 1
        try:
            start = self._cache.begin_resync(keep_synced=self._synced_on is conn)
            seen: set[tuple[Kind, str]] = set()
            version, syncing = "", True
            while not self._closing and session.connection is conn:
                ver = version

                def wait(c: Connection, v: str = ver) -> _Batch | None:
                    return _wait(handle, v, max_wait)

                batch = await session.call(
                    wait, doing="watch vCenter", pool=self._pool, slow_ok=True
                )
                if batch is None:
                    if syncing:
                        self._cache.end_resync(seen, start)
                        self._synced_on, syncing = conn, False
                    continue
                version = batch.version
                if syncing:
                    seen.update((c.kind, c.moid) for c in batch.changes if c.op != "leave")
                self._cache.apply(batch.changes, resync=syncing)
                if syncing and not batch.truncated:
                    self._cache.end_resync(seen, start)
                    self._synced_on, syncing = conn, False
                    _log.info(
                        "vcenter inventory synced",
                        extra={"hosts": len(self._cache.hosts), "vms": len(self._cache.vms)},
                    )
        finally:
            self._handle = None
            if session.connection is conn and not self._closing:
                # On the watch's own thread, and awaited: a collector whose long poll vCenter
                # is still working on goes only once that is done, and the next round waits
                # for it rather than heaping a second collector on a busy vCenter.
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(self._pool, _close, handle)

    async def close(self) -> None:
        """Ends the watch, waking a long poll in flight, and destroys its collector (vCenter
        would otherwise keep it, and keep telling it every change, after the session ends)."""
        self._closing = True
        handle = self._handle
        if handle is not None:
            loop = asyncio.get_running_loop()
            try:
                await asyncio.wait_for(
                    loop.run_in_executor(self._session.pool, _cancel, handle), timeout=3
                )
                await asyncio.wait_for(
                    loop.run_in_executor(self._session.pool, _close, handle), timeout=3
                )
            except (TimeoutError, Exception):
                _log.debug("cancelling the watch did not finish")
