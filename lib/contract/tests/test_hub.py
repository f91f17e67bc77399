from __future__ import annotations

import asyncio

import pytest

from vmlet_contract import Hub, Unavailable


async def test_newest_per_key_and_initial_snapshot() -> None:
    hub: Hub[str] = Hub()
    box = hub.subscribe([("a", "a0")])
    hub.publish("a", "a1")
    hub.publish("b", "b1")
    hub.publish("a", "a2")
    assert await box.take() == ["a2", "b1"]


async def test_slow_reader_is_cut_off_not_waited_for() -> None:
    hub: Hub[int] = Hub(limit=3)
    slow, fast = hub.subscribe(), hub.subscribe()
    for i in range(3):
        hub.publish(i, i)
    assert await fast.take() == [0, 1, 2]
    hub.publish(3, 3)  # the slow box now holds 4 keys: closed, publishing did not wait
    with pytest.raises(Unavailable):
        await slow.take()
    assert await fast.take() == [3]


async def test_close_wakes_readers() -> None:
    hub: Hub[int] = Hub()
    box = hub.subscribe()
    reader = asyncio.ensure_future(box.take())
    await asyncio.sleep(0)
    hub.close("shutting down")
    with pytest.raises(Unavailable, match="shutting down"):
        await reader
    with pytest.raises(Unavailable, match="shutting down"):  # and a later subscriber too
        await hub.subscribe().take()
