"""Fan-out of pod status changes to every NotifyPods stream, where no stream can hold up another.

Each subscriber has its own buffer keyed by pod: a newer status of a pod replaces the one still
waiting, so a slow reader gets the latest state of every pod instead of a backlog of stale ones,
and publishing never waits. The buffer is bounded by `limit` distinct pods; a subscriber that
falls further behind than that is cut off with UNAVAILABLE and, on reconnecting, gets a fresh
snapshot, so nothing is lost either way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

from vmlet_contract import Unavailable

__all__ = ["Fanout", "Subscription"]

T = TypeVar("T")


class Subscription(Generic[T]):
    """One subscriber's buffer of pending items, newest per key."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._pending: dict[Hashable, T] = {}
        self._wake = asyncio.Event()
        self._closed: str | None = None

    def offer(self, key: Hashable, item: T) -> None:
        """Queues `item` for `key`, replacing an older item of the same key; never waits."""
        if self._closed is not None:
            return
        if key not in self._pending and len(self._pending) >= self._limit:
            self.close(f"subscriber fell more than {self._limit} pods behind; reconnect")
            return
        self._pending[key] = item
        self._wake.set()

    def close(self, reason: str) -> None:
        """Ends the subscription; the reader gets Unavailable(reason) once it asks for more."""
        if self._closed is None:
            self._closed = reason
            self._pending.clear()
            self._wake.set()

    async def next_batch(self) -> list[T]:
        """Waits for pending items and takes them all; raises Unavailable once closed."""
        while not self._pending and self._closed is None:
            self._wake.clear()
            await self._wake.wait()
        if self._closed is not None:
            raise Unavailable(self._closed)
        batch = list(self._pending.values())
        self._pending.clear()
        return batch


class Fanout(Generic[T]):
    """Publishes items to every current subscriber."""

    def __init__(self, *, limit: int = 65536) -> None:
        self._limit = limit
        self._subscribers: set[Subscription[T]] = set()
        self._closed: str | None = None

    @property
    def subscribers(self) -> int:
        """How many subscribers there are."""
        return len(self._subscribers)

    def subscribe(self, initial: Iterable[tuple[Hashable, T]] = ()) -> Subscription[T]:
        """A new subscription that first delivers `initial` (not counted against the limit)."""
        sub: Subscription[T] = Subscription(self._limit)
        if self._closed is not None:
            sub.close(self._closed)
            return sub
        for key, item in initial:
            sub._pending[key] = item
        if sub._pending:
            sub._wake.set()
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription[T]) -> None:
        """Forgets `sub`."""
        self._subscribers.discard(sub)

    def publish(self, key: Hashable, item: T) -> None:
        """Offers `item` to every subscriber; subscribers cut off for lagging are dropped."""
        for sub in list(self._subscribers):
            sub.offer(key, item)
            if sub._closed is not None:
                self._subscribers.discard(sub)

    def close(self, reason: str) -> None:
        """Ends every subscription, now and to come, with Unavailable(reason)."""
        self._closed = reason
        for sub in self._subscribers:
            sub.close(reason)
        self._subscribers.clear()
