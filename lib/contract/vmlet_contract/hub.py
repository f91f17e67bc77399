"""Fan-out of status changes (pods, nodes) to every open stream, newest per key.

Each subscriber has its own mailbox keyed by pod or node: a newer item for a key replaces the one
still waiting, so a slow reader gets the latest state of everything rather than a backlog, and
publishing never waits. A mailbox holding more than `limit` distinct keys is closed (the reader
gets UNAVAILABLE and, reconnecting, a fresh snapshot), so memory stays bounded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

from vmlet_contract.errors import Unavailable

__all__ = ["Hub", "Mailbox"]

T = TypeVar("T")


class Mailbox(Generic[T]):
    """One subscriber's pending items, newest per key."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._items: dict[Hashable, T] = {}
        self._ready = asyncio.Event()
        self._closed: str | None = None

    @property
    def closed(self) -> bool:
        """Whether the mailbox was closed."""
        return self._closed is not None

    def put(self, key: Hashable, item: T) -> None:
        """Leaves `item` for `key`, replacing an older one; never waits."""
        if self._closed is not None:
            return
        if key not in self._items and len(self._items) >= self._limit:
            self.close(f"the reader fell more than {self._limit} items behind; reconnect")
            return
        self._items[key] = item
        self._ready.set()

    def close(self, reason: str) -> None:
        """Closes the mailbox; the reader gets Unavailable(reason) at its next `take`."""
        if self._closed is None:
            self._closed = reason
            self._items.clear()
            self._ready.set()

    async def take(self) -> list[T]:
        """Waits for items and takes them all, oldest key first."""
        while not self._items and self._closed is None:
            self._ready.clear()
            await self._ready.wait()
        if self._closed is not None:
            raise Unavailable(self._closed)
        items = list(self._items.values())
        self._items.clear()
        return items


class Hub(Generic[T]):
    """Publishes items to every mailbox."""

    def __init__(self, *, limit: int = 65536) -> None:
        self._limit = limit
        self._mailboxes: set[Mailbox[T]] = set()
        self._closed: str | None = None

    def subscribe(self, initial: Iterable[tuple[Hashable, T]] = ()) -> Mailbox[T]:
        """A new mailbox that starts with `initial`."""
        box: Mailbox[T] = Mailbox(max(self._limit, 1))
        if self._closed is not None:
            box.close(self._closed)
            return box
        for key, item in initial:
            box._items[key] = item
        if box._items:
            box._ready.set()
        self._mailboxes.add(box)
        return box

    def unsubscribe(self, box: Mailbox[T]) -> None:
        """Forgets `box`."""
        self._mailboxes.discard(box)

    def publish(self, key: Hashable, item: T) -> None:
        """Puts `item` in every mailbox; drops mailboxes that were closed for lagging."""
        for box in list(self._mailboxes):
            box.put(key, item)
            if box.closed:
                self._mailboxes.discard(box)

    def close(self, reason: str) -> None:
        """Closes every mailbox, now and to come."""
        self._closed = reason
        for box in self._mailboxes:
            box.close(reason)
        self._mailboxes.clear()
