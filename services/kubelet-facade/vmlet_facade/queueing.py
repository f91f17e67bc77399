"""One serialized worker per key (a pod UID): changes to one object are handled in order, never
concurrently, while different objects proceed in parallel up to a bound. Bursts of changes to one
key coalesce into one more run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

__all__ = ["SerialWorkers"]

log = logging.getLogger(__name__)


class SerialWorkers:
    """Runs ``handler(key)`` for submitted keys: one at a time per key, ``concurrency`` overall."""

    def __init__(self, handler: Callable[[str], Awaitable[None]], *, concurrency: int = 64,
                 name: str = "worker") -> None:
        self._handler = handler
        self._sem = asyncio.Semaphore(concurrency)
        self._running: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._name = name

    def submit(self, key: str) -> None:
        """Handle ``key`` soon; if it is being handled now, once more afterwards."""
        if key in self._running:
            self._again.add(key)
            return
        self._running[key] = asyncio.get_running_loop().create_task(
            self._run(key), name=f"{self._name}:{key}")

    def submit_after(self, key: str, delay: float) -> None:
        """Handle ``key`` after ``delay`` seconds (a retry); an earlier retry timer is replaced."""
        if (timer := self._timers.pop(key, None)) is not None:
            timer.cancel()

        def fire() -> None:
            self._timers.pop(key, None)
            self.submit(key)

        self._timers[key] = asyncio.get_running_loop().call_later(delay, fire)

    def retry_pending(self, key: str) -> bool:
        """Whether a retry of ``key`` is waiting for its time."""
        return key in self._timers

    def cancel_retry(self, key: str) -> None:
        if (timer := self._timers.pop(key, None)) is not None:
            timer.cancel()

    async def _run(self, key: str) -> None:
        try:
            while True:
                async with self._sem:
                    try:
                        await self._handler(key)
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        log.exception("%s failed for %s", self._name, key)
                if key not in self._again:
                    break
                self._again.discard(key)
        finally:
            self._running.pop(key, None)

    @property
    def busy(self) -> int:
        return len(self._running)

    async def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
