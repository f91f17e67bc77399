"""One serialized worker per key (a pod UID): changes to one object are handled in order, never
concurrently, while different objects proceed in parallel up to a bound. Bursts of changes to one
key coalesce into one more run.

Every SerialWorkers has a readiness gate, awaited before each run of its handler: the caches the
handler reads must have completed their initial list (``kube.informer.synced_gate``). This is
where the invariant "act only on synced caches" is enforced for every controller: a handler is
never called on a cache that is still loading, whatever submitted the key.

No key is ever dropped: a handler that raises something its controller did not handle (a
connection reset while the apiserver restarts, a bug) has its key run again after a back-off
(1 s doubling to ``MAX_RETRY_SECONDS``), until a run succeeds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

__all__ = ["MAX_RETRY_SECONDS", "Gate", "SerialWorkers"]

#: The longest wait before a key whose handler raised is run again.
MAX_RETRY_SECONDS = 60.0

#: Awaited before each run of a handler for a key; returns once the handler may act on it.
Gate = Callable[[str], Awaitable[None]]

log = logging.getLogger(__name__)


class SerialWorkers:
    """Runs ``handler(key)`` for submitted keys: one at a time per key, ``concurrency`` overall."""

    def __init__(self, handler: Callable[[str], Awaitable[None]], *, ready: Gate,
                 concurrency: int = 64, name: str = "worker") -> None:
        self._handler = handler
        self._ready = ready
        self._sem = asyncio.Semaphore(concurrency)
        self._running: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._failures: dict[str, int] = {}  # key -> handler runs that raised in a row
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
                await self._ready(key)  # outside the semaphore: a wait holds no worker slot
                async with self._sem:
                    try:
                        await self._handler(key)
                        self._failures.pop(key, None)
                    except asyncio.CancelledError:
                        raise
                    except Exception as err:
                        failures = self._failures.get(key, 0)
                        self._failures[key] = failures + 1
                        delay = min(MAX_RETRY_SECONDS, 2.0 ** failures)
                        if failures == 0:
                            log.exception("%s failed for %s; again in %.0f s",
                                          self._name, key, delay)
                        else:
                            log.warning("%s failed for %s again (%s: %s); again in %.0f s",
                                        self._name, key, type(err).__name__, err, delay)
                        if key not in self._timers:
                            self.submit_after(key, delay)
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
