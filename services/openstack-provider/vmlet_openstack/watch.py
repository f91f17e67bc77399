"""The servers as last listed, kept current by one server list per interval for all of them.

At start, and every `resync_seconds`, the watch lists every server of the project; in between it
asks only for what changed: one `GET /servers/detail?changes-since=T` per `poll_seconds`, where T
is Nova's own clock (the Date header of the previous list) minus a few seconds of overlap, so a
change committed while a list ran is never missed and clocks of provider and Nova never matter.
`changes-since` also returns deleted servers, which is how deletions are seen between full lists;
a full list catches whatever is gone for good.

Pod statuses are never fetched per pod: `Pods` hears of every changed server through the
callbacks and pushes the statuses that changed. While an operation waits for a server to move on
(`urgent()`), the list runs every `fast_poll_seconds` instead; still one list for all servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any, Final

from vmlet_contract import ProviderError, Unavailable

from .cloud import Api, Cloud
from .config import Settings
from .faults import is_unavailable
from .records import ServerRecord

__all__ = ["ServerCache", "Watch"]

_log = logging.getLogger(__name__)

_OVERLAP_SECONDS: Final = 5.0

OnChange = Callable[[ServerRecord, ServerRecord | None], None]
OnGone = Callable[[ServerRecord], None]
OnSynced = Callable[[list[ServerRecord]], None]


class ServerCache:
    """vmlet's servers by ID and by identity, and waiting for one of them to change."""

    def __init__(self) -> None:
        self.by_id: dict[str, ServerRecord] = {}
        self.seen_at: dict[str, float] = {}
        self._by_identity: dict[str, set[str]] = {}
        self._waiters: dict[str, set[asyncio.Event]] = {}

    def of_identity(self, identity: str) -> list[ServerRecord]:
        """The live servers of `identity`, oldest first."""
        ids = self._by_identity.get(identity, set())
        records = [self.by_id[i] for i in ids if i in self.by_id and not self.by_id[i].deleting]
        return sorted(records, key=lambda r: r.sort_key)

    def server_of(self, identity: str) -> ServerRecord | None:
        """The server of `identity` (the oldest, should there be two)."""
        records = self.of_identity(identity)
        return records[0] if records else None

    def apply(self, record: ServerRecord, *, fresh: bool = False) -> bool:
        """Stores `record` unless it is older than the one stored (as a list that began before
        a direct read can be; `fresh` records always win); True when the record changed."""
        old = self.by_id.get(record.id)
        if (
            record.fault is None
            and old is not None
            and old.fault is not None
            and old.status == record.status == "ERROR"
        ):
            # Server lists carry no fault; keep the one read with the server itself.
            record = dataclasses.replace(record, fault=old.fault)
        if (
            not fresh
            and old is not None
            and old.updated is not None
            and record.updated is not None
            and record.updated < old.updated
        ):
            return False
        if old is not None and old.identity and old.identity != record.identity:
            self._by_identity.get(old.identity, set()).discard(record.id)
        self.by_id[record.id] = record
        self.seen_at[record.id] = time.monotonic()
        if record.identity:
            self._by_identity.setdefault(record.identity, set()).add(record.id)
        if old != record:
            self._wake(record.id)
            return True
        return False

    def remove(self, server_id: str) -> ServerRecord | None:
        old = self.by_id.pop(server_id, None)
        self.seen_at.pop(server_id, None)
        if old is not None and old.identity:
            ids = self._by_identity.get(old.identity)
            if ids is not None:
                ids.discard(server_id)
                if not ids:
                    del self._by_identity[old.identity]
        self._wake(server_id)
        return old

    def _wake(self, server_id: str) -> None:
        for event in self._waiters.get(server_id, ()):
            event.set()

    async def wait_change(self, server_id: str, seen: ServerRecord | None, seconds: float) -> bool:
        """Waits until the record of `server_id` differs from `seen` (or the server is gone);
        False when `seconds` passed first."""
        event = asyncio.Event()
        self._waiters.setdefault(server_id, set()).add(event)
        try:
            deadline = time.monotonic() + seconds
            while self.by_id.get(server_id) == seen:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                event.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), left)
            return True
        finally:
            waiters = self._waiters.get(server_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[server_id]


def _iso(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Watch:
    """Lists servers on an interval and tells `Pods` what changed."""

    def __init__(self, cloud: Cloud, cache: ServerCache, settings: Settings) -> None:
        self._cloud = cloud
        self._cache = cache
        self._settings = settings
        self._since: float | None = None
        self._last_full = 0.0
        self._urgent = 0
        self._wake = asyncio.Event()
        self._poll_lock = asyncio.Lock()
        self.synced = asyncio.Event()
        self.on_change: OnChange = lambda new, old: None
        self.on_gone: OnGone = lambda old: None
        self.on_synced: OnSynced = lambda records: None

    @contextlib.asynccontextmanager
    async def urgent(self) -> AsyncIterator[None]:
        """Polls fast while the block runs (an operation waits for a server)."""
        self._urgent += 1
        self._wake.set()
        try:
            yield
        finally:
            self._urgent -= 1

    async def run(self, closing: asyncio.Event) -> None:
        """Lists until `closing` is set; never raises."""
        while not closing.is_set():
            try:
                await self.poll()
            except ProviderError as error:
                if not is_unavailable(error):
                    _log.warning("server list failed", extra={"error": error.message})
            except Exception:
                _log.exception("server list failed")
            interval = (
                self._settings.fast_poll_seconds if self._urgent else self._settings.poll_seconds
            )
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)
            if self._urgent and not closing.is_set():
                # Woken early: still leave Nova a breath between lists.
                await asyncio.sleep(min(0.2, self._settings.fast_poll_seconds))

    async def poll(self) -> None:
        """One list: a full one when due, else the changes since the last."""
        async with self._poll_lock:
            await self._poll()

    async def _poll(self) -> None:
        full = (
            self._since is None
            or time.monotonic() - self._last_full >= self._settings.resync_seconds
        )
        since = None if full else _iso(self._since - _OVERLAP_SECONDS)  # type: ignore[operator]
        started = time.time()
        began = time.monotonic()

        def listing(api: Api) -> tuple[list[dict[str, Any]], float | None]:
            return api.list_servers(changes_since=since)

        raw, nova_now = await self._cloud.call("list servers", listing, read=True)
        records = [ServerRecord.from_json(item) for item in raw]
        self._since = nova_now if nova_now is not None else started
        if full:
            self._last_full = time.monotonic()
            self._apply_full(records, began)
        else:
            self._apply_changes(records)

    def _apply_changes(self, records: list[ServerRecord]) -> None:
        for record in records:
            known = record.id in self._cache.by_id
            if record.gone:
                if known:
                    old = self._cache.remove(record.id)
                    if old is not None:
                        self.on_gone(old)
                continue
            if not record.identity and not known:
                continue  # not one of vmlet's
            old = self._cache.by_id.get(record.id)
            if self._cache.apply(record):
                self.on_change(record, old)

    def _apply_full(self, records: list[ServerRecord], began: float) -> None:
        mine = [r for r in records if r.identity and not r.gone]
        present = {r.id for r in mine}
        # A server read after this list began (one the provider just made) is not missing.
        missing = [
            i
            for i in self._cache.by_id
            if i not in present and self._cache.seen_at.get(i, 0.0) < began
        ]
        for server_id in missing:
            old = self._cache.remove(server_id)
            if old is not None:
                self.on_gone(old)
        for record in mine:
            old = self._cache.by_id.get(record.id)
            if self._cache.apply(record):
                self.on_change(record, old)
        first = not self.synced.is_set()
        self.synced.set()
        self.on_synced(mine)
        if first:
            _log.info("servers listed", extra={"servers": len(mine)})

    async def refresh_one(self, server_id: str) -> ServerRecord | None:
        """Reads one server now (after the provider acted on it) and stores it; None when Nova
        no longer has it."""
        try:
            raw = await self._cloud.call(
                "read server", lambda api: api.get_server(server_id), read=True
            )
        except ProviderError as error:
            if error.code.name == "NOT_FOUND":
                old = self._cache.remove(server_id)
                if old is not None:
                    self.on_gone(old)
                return None
            raise
        record = ServerRecord.from_json(raw)
        if record.gone:
            old = self._cache.remove(server_id)
            if old is not None:
                self.on_gone(old)
            return None
        old = self._cache.by_id.get(record.id)
        if self._cache.apply(record, fresh=True):
            self.on_change(record, old)
        return record

    async def wait_synced(self) -> None:
        """Waits for the first full list; Unavailable when it cannot be had now."""
        if self.synced.is_set():
            return
        await self.poll()
        if not self.synced.is_set():
            raise Unavailable("the server list is not loaded yet")
