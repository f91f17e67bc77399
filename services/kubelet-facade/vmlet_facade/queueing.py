"""One serialized worker per key (a pod UID, a VirtualMachine's namespace/name): changes to one
object are handled in order, never concurrently, while different objects proceed in parallel up
to a bound. Bursts of changes to one key coalesce into one more run.

Every SerialWorkers has a readiness gate, awaited before each run of its handler: the caches the
handler reads must have completed their initial list (``kube.informer.synced_gate``). This is
where the invariant "act only on synced caches" is enforced for every controller: a handler is
never called on a cache that is still loading, whatever submitted the key.

The facade's one retry policy lives here too: a rate-limited requeue with exponential back-off
per key (`Backoff`). A run that fails (its handler raised, or asked for ``retry``) has its key
run again after ``base * 2**n`` seconds for the n-th failure in a row, at most ``cap``; a run
that succeeds forgets the key's failures and cancels a back-off still pending. While a key waits
for its back-off, a change that asks for nothing new (``submit(key, wake=False)``: most often
the controller's own status write coming back through its watch) does not cut the wait short.
No key is ever dropped. Fixed-interval looks (``submit_after``) are polls, not failures.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["MAX_RETRY_SECONDS", "Backoff", "Gate", "SerialWorkers", "status_only_change"]

#: The longest wait before a failed key is run again, unless its controller says otherwise.
MAX_RETRY_SECONDS = 60.0

#: Awaited before each run of a handler for a key; returns once the handler may act on it.
Gate = Callable[[str], Awaitable[None]]

log = logging.getLogger(__name__)

_IGNORED_METADATA = ("resourceVersion", "managedFields")


class Backoff:
    """Exponential back-off per key: after the n-th failure in a row a key waits
    ``base * 2**(n-1)`` seconds, at most ``cap``. ``jitter`` (0 to 1) takes up to that fraction
    off each wait at random, so keys that failed together do not all come back together."""

    def __init__(self, base: float = 1.0, cap: float = MAX_RETRY_SECONDS,
                 jitter: float = 0.0) -> None:
        if base <= 0 or cap < base or not 0.0 <= jitter < 1.0:
            raise ValueError(f"bad back-off: base {base}, cap {cap}, jitter {jitter}")
        self.base, self.cap, self.jitter = base, cap, jitter
        self._failures: dict[str, int] = {}

    def failed(self, key: str, *, penalty: int = 0) -> float:
        """Count one more failure of ``key`` and return how long it waits now; ``penalty``
        doublings are added for an error not expected to clear soon."""
        n = self._failures.get(key, 0) + penalty
        self._failures[key] = n + 1
        delay = min(self.cap, self.base * 2.0 ** min(n, 62))
        if self.jitter:
            delay *= 1.0 - self.jitter * random.random()
        return delay

    def forget(self, key: str) -> None:
        """``key`` succeeded: its next failure waits ``base`` again."""
        self._failures.pop(key, None)

    def failures(self, key: str) -> int:
        """The failures of ``key`` in a row (penalties included)."""
        return self._failures.get(key, 0)


def status_only_change(old: dict[str, Any] | None, new: dict[str, Any] | None) -> bool:
    """Whether ``new`` is ``old`` with only its status (and the metadata every write bumps)
    changed: a change that asks a controller for nothing new."""
    if old is None or new is None:
        return False

    def intent(obj: dict[str, Any]) -> dict[str, Any]:
        meta = {k: v for k, v in (obj.get("metadata") or {}).items()
                if k not in _IGNORED_METADATA}
        return {**{k: v for k, v in obj.items() if k != "status"}, "metadata": meta}

    return intent(old) == intent(new)


class SerialWorkers:
    """Runs ``handler(key)`` for submitted keys: one at a time per key, ``concurrency`` overall,
    failed keys again after their ``backoff``."""

    def __init__(self, handler: Callable[[str], Awaitable[None]], *, ready: Gate,
                 concurrency: int = 64, name: str = "worker",
                 backoff: Backoff | None = None) -> None:
        self._handler = handler
        self._ready = ready
        self._sem = asyncio.Semaphore(concurrency)
        self.backoff = backoff if backoff is not None else Backoff()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._again: dict[str, bool] = {}  # key -> run again after this run (value: wake)
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._backing_off: set[str] = set()  # keys whose pending timer is a back-off
        self._failed: set[str] = set()  # keys whose current run asked for a retry
        self._name = name

    def submit(self, key: str, *, wake: bool = True) -> None:
        """Handle ``key`` soon; if it is being handled now, once more afterwards. With
        ``wake=False`` (a change that asks for nothing new) a pending back-off stands."""
        if not wake and key in self._backing_off:
            return
        if key in self._running:
            self._again[key] = self._again.get(key, False) or wake
            return
        self._running[key] = asyncio.get_running_loop().create_task(
            self._run(key), name=f"{self._name}:{key}")

    def retry(self, key: str, *, penalty: int = 0) -> float:
        """Handle ``key`` again after its back-off: the run calling this failed. ``penalty``
        lengthens the wait for an error not expected to clear soon. Returns the wait."""
        delay = self.backoff.failed(key, penalty=penalty)
        self._failed.add(key)
        self.submit_after(key, delay)
        self._backing_off.add(key)
        return delay

    def submit_after(self, key: str, delay: float) -> None:
        """Handle ``key`` after ``delay`` seconds (a poll, not a failure); an earlier timer is
        replaced."""
        self.cancel_retry(key)

        def fire() -> None:
            self._timers.pop(key, None)
            self._backing_off.discard(key)
            self.submit(key)

        self._timers[key] = asyncio.get_running_loop().call_later(delay, fire)

    def retry_pending(self, key: str) -> bool:
        """Whether a retry (or poll) of ``key`` is waiting for its time."""
        return key in self._timers

    def pending(self) -> dict[str, float]:
        """The keys waiting for a retry or poll, with the seconds each still waits."""
        now = asyncio.get_running_loop().time()
        return {key: timer.when() - now for key, timer in self._timers.items()}

    def cancel_retry(self, key: str) -> None:
        if (timer := self._timers.pop(key, None)) is not None:
            timer.cancel()
        self._backing_off.discard(key)

    async def _run(self, key: str) -> None:
        try:
            while True:
                await self._ready(key)  # outside the semaphore: a wait holds no worker slot
                async with self._sem:
                    self._failed.discard(key)
                    try:
                        await self._handler(key)
                    except asyncio.CancelledError:
                        raise
                    except Exception as err:
                        if key not in self._failed:
                            self._failed_unexpectedly(key, err)
                    else:
                        if key not in self._failed:
                            self._succeeded(key)
                wake = self._again.pop(key, None)
                if wake is None or (not wake and key in self._backing_off):
                    break
        finally:
            self._running.pop(key, None)

    def _succeeded(self, key: str) -> None:
        self.backoff.forget(key)
        if key in self._backing_off:
            self.cancel_retry(key)

    def _failed_unexpectedly(self, key: str, err: Exception) -> None:
        """The handler raised something its controller did not handle (a connection reset
        while the apiserver restarts, a bug): the key is run again after its back-off."""
        delay = self.retry(key)
        if self.backoff.failures(key) == 1:
            log.exception("%s failed for %s; again in %.0f s", self._name, key, delay)
        else:
            log.warning("%s failed for %s again (%s: %s); again in %.0f s",
                        self._name, key, type(err).__name__, err, delay)

    @property
    def busy(self) -> int:
        return len(self._running)

    async def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._backing_off.clear()
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
