"""The plumbing of a notification stream: a backend's mailbox, relayed until it closes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TypeVar

from ..hub import Mailbox

__all__ = ["relay"]

T = TypeVar("T")


async def relay(box: Mailbox[T], release: Callable[[Mailbox[T]], None]) -> AsyncIterator[T]:
    """Yields what arrives in `box`, oldest key first, until it is closed (the reader then gets
    UNAVAILABLE with the reason, and reconnects); `release` gives the mailbox back whatever
    ends the stream (the caller gone, a shutdown)."""
    try:
        while True:
            for item in await box.take():
                yield item
    finally:
        release(box)
