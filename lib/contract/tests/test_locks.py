"""Per-key locks: one key takes turns, other keys never wait, nothing is kept."""

from __future__ import annotations

import asyncio

from vmlet_contract.locks import KeyedLocks


async def test_keyed_locks_serialize_one_key_only() -> None:
    locks = KeyedLocks()
    order: list[str] = []

    async def work(key: str, name: str, pause: float) -> None:
        async with locks.hold(key):
            order.append(f"{name}+")
            await asyncio.sleep(pause)
            order.append(f"{name}-")

    await asyncio.gather(work("x", "a", 0.05), work("x", "b", 0), work("y", "c", 0))
    assert order.index("a-") < order.index("b+")
    assert order.index("c+") < order.index("a-")
    assert len(locks) == 0
