"""Driving the event loop in unit tests without waiting for time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from vmlet_facade.queueing import SerialWorkers

__all__ = ["Background", "fire_retries", "settle", "until"]


async def settle(rounds: int = 100) -> None:
    """Let every task that can run without waiting for time run (``rounds`` loop turns)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


async def until(condition: Callable[[], Any], rounds: int = 5000) -> None:
    """Turn the loop until ``condition()`` is true; AssertionError after ``rounds`` turns."""
    for _ in range(rounds):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


def fire_retries(workers: SerialWorkers) -> dict[str, float]:
    """Run now the retries ``workers`` have waiting; return each key's remaining delay (s)."""
    delays = workers.pending()  # the test stands in for the clock
    for key in delays:
        workers.cancel_retry(key)
        workers.submit(key)
    return delays


class Background:
    """What a test runs in the background (controllers' ``run``), ended with the test: the
    tasks are cancelled, then each ``stop`` given is awaited, in order."""

    def __init__(self) -> None:
        self._tasks: list[asyncio.Future[Any]] = []
        self._stops: list[Callable[[], Awaitable[None]]] = []

    def run(self, work: Awaitable[Any], *stops: Callable[[], Awaitable[None]]) -> None:
        """Run ``work`` until the test ends, then await ``stops``."""
        self._tasks.append(asyncio.ensure_future(work))
        self.at_end(*stops)

    def at_end(self, *stops: Callable[[], Awaitable[None]]) -> None:
        """Await ``stops`` when the test ends."""
        self._stops.extend(stops)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for stop in self._stops:
            await stop()
