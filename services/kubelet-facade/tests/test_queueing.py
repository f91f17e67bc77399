from __future__ import annotations

import asyncio

import pytest

from vmlet_facade import queueing
from vmlet_facade.queueing import SerialWorkers


async def _ready(_key: str) -> None:
    return None


async def test_one_key_never_runs_concurrently_and_bursts_coalesce() -> None:
    running: set[str] = set()
    calls: list[str] = []

    async def handler(key: str) -> None:
        assert key not in running
        running.add(key)
        calls.append(key)
        await asyncio.sleep(0.01)
        running.discard(key)

    workers = SerialWorkers(handler, ready=_ready, concurrency=4)
    for _ in range(10):
        workers.submit("a")
    workers.submit("b")
    await asyncio.sleep(0.1)
    assert calls.count("a") == 2 and calls.count("b") == 1
    await workers.stop()


async def test_retry_after_delay_and_failures_do_not_kill_the_worker() -> None:
    seen: list[int] = []

    async def handler(key: str) -> None:
        seen.append(len(seen))
        if len(seen) == 1:
            raise RuntimeError("boom")

    workers = SerialWorkers(handler, ready=_ready)
    workers.submit("k")
    await asyncio.sleep(0.02)
    workers.submit_after("k", 0.05)
    await asyncio.sleep(0.1)
    assert seen == [0, 1] and workers.busy == 0


async def test_a_pending_retry_is_visible_until_it_fires() -> None:
    seen: list[str] = []

    async def handler(key: str) -> None:
        seen.append(key)

    workers = SerialWorkers(handler, ready=_ready)
    workers.submit_after("k", 0.05)
    assert workers.retry_pending("k") and not workers.retry_pending("other")
    await asyncio.sleep(0.1)
    assert seen == ["k"] and not workers.retry_pending("k")
    workers.submit_after("k", 10)
    workers.cancel_retry("k")
    assert not workers.retry_pending("k")
    await workers.stop()


async def test_nothing_runs_before_the_gate_opens() -> None:
    """The handler is never called while the caches it reads are loading."""
    opened = asyncio.Event()
    seen: list[str] = []

    async def gate(_key: str) -> None:
        await opened.wait()

    async def handler(key: str) -> None:
        seen.append(key)

    workers = SerialWorkers(handler, ready=gate)
    workers.submit("a")
    workers.submit("b")
    await asyncio.sleep(0.05)
    assert seen == []
    opened.set()
    await asyncio.sleep(0.05)
    assert sorted(seen) == ["a", "b"]
    await workers.stop()


async def test_a_key_whose_handler_raises_is_run_again_until_it_succeeds(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # What an apiserver SIGKILL does to a reconcile: a connection error no controller expected.
    monkeypatch.setattr(queueing, "MAX_RETRY_SECONDS", 0.01)
    seen: list[int] = []

    async def handler(key: str) -> None:
        seen.append(len(seen))
        if len(seen) <= 3:
            raise ConnectionResetError("Connection reset by peer")

    workers = SerialWorkers(handler, ready=_ready)
    workers.submit("k")
    for _ in range(100):
        if len(seen) == 4:
            break
        await asyncio.sleep(0.01)
    assert seen == [0, 1, 2, 3]
    await asyncio.sleep(0.05)
    assert seen == [0, 1, 2, 3] and not workers.retry_pending("k")
    await workers.stop()
