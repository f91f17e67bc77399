"""One asyncio lock per VM identity, so calls for one VM take turns and calls for different VMs
never wait for each other. A lock exists only while someone holds or waits for it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

__all__ = ["IdentityLocks"]


class IdentityLocks:
    """Per-identity locks; see the module docstring."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._locks)

    @asynccontextmanager
    async def hold(self, identity: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(identity, asyncio.Lock())
        self._users[identity] = self._users.get(identity, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._users[identity] -= 1
            if self._users[identity] == 0:
                del self._users[identity]
                del self._locks[identity]
