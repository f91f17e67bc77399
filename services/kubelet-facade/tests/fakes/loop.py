"""Driving the event loop in unit tests without waiting for time."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from vmlet_facade.queueing import SerialWorkers

__all__ = ["fire_retries", "settle", "until"]


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
    loop = asyncio.get_running_loop()
    timers = dict(workers._timers)  # the test stands in for the clock
    delays = {key: timer.when() - loop.time() for key, timer in timers.items()}
    for key in timers:
        workers.cancel_retry(key)
        workers.submit(key)
    return delays
