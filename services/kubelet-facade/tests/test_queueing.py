from __future__ import annotations

import asyncio
from typing import Any

import pytest

from vmlet_facade.queueing import Backoff, SerialWorkers, status_only_change


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


async def test_a_key_whose_handler_raises_is_run_again_until_it_succeeds() -> None:
    # What an apiserver SIGKILL does to a reconcile: a connection error no controller expected.
    seen: list[int] = []

    async def handler(key: str) -> None:
        seen.append(len(seen))
        if len(seen) <= 3:
            raise ConnectionResetError("Connection reset by peer")

    workers = SerialWorkers(handler, ready=_ready, backoff=Backoff(base=0.001, cap=0.01))
    workers.submit("k")
    for _ in range(100):
        if len(seen) == 4:
            break
        await asyncio.sleep(0.01)
    assert seen == [0, 1, 2, 3]
    await asyncio.sleep(0.05)
    assert seen == [0, 1, 2, 3] and not workers.retry_pending("k")
    assert workers.backoff.failures("k") == 0  # forgotten on success
    await workers.stop()


def test_the_back_off_doubles_per_key_up_to_its_cap_and_a_success_forgets_it() -> None:
    backoff = Backoff(base=1.0, cap=10.0)
    assert [backoff.failed("a") for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert backoff.failed("b") == 1.0  # per key
    assert backoff.failed("c", penalty=3) == 8.0 and backoff.failed("c") == 10.0
    backoff.forget("a")
    assert backoff.failures("a") == 0 and backoff.failed("a") == 1.0
    waits = [backoff.failed("b") for _ in range(5000)]  # no overflow however long it fails
    assert waits[:4] == [2.0, 4.0, 8.0, 10.0] and set(waits[3:]) == {10.0}


def test_jitter_only_shortens_a_wait_and_bad_settings_are_refused() -> None:
    backoff = Backoff(base=4.0, cap=60.0, jitter=0.25)
    waits = [backoff.failed(str(n)) for n in range(200)]
    assert all(3.0 <= w <= 4.0 for w in waits) and len(set(waits)) > 1
    for bad in ({"base": 0.0}, {"base": 2.0, "cap": 1.0}, {"jitter": 1.0}):
        with pytest.raises(ValueError):
            Backoff(**bad)


async def test_retry_waits_its_back_off_and_a_status_change_does_not_cut_it_short() -> None:
    """A run that asks for a retry waits; ``submit(wake=False)`` (the controller's own status
    write coming back) leaves the wait alone, ``submit()`` (a real change) runs at once, and its
    success cancels the wait and forgets the failures."""
    fail = [True]
    seen: list[str] = []

    async def handler(key: str) -> None:
        seen.append(key)
        if fail[0]:
            workers.retry(key)

    workers = SerialWorkers(handler, ready=_ready)
    workers.submit("k")
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert seen == ["k"] and workers.retry_pending("k")
    assert 0.9 < workers.pending()["k"] <= 1.0
    workers.submit("k", wake=False)
    await asyncio.sleep(0.01)
    assert seen == ["k"]
    workers.submit("k")  # a change that asks for something new
    await asyncio.sleep(0.01)
    assert seen == ["k", "k"] and 1.9 < workers.pending()["k"] <= 2.0  # doubled
    fail[0] = False
    workers.submit("k")
    await asyncio.sleep(0.01)
    assert seen == ["k", "k", "k"] and not workers.retry_pending("k")
    assert workers.backoff.failures("k") == 0
    await workers.stop()


async def test_a_status_change_during_a_failing_run_does_not_run_it_again() -> None:
    release = asyncio.Event()
    seen: list[str] = []

    async def handler(key: str) -> None:
        seen.append(key)
        await release.wait()
        workers.retry(key)

    workers = SerialWorkers(handler, ready=_ready)
    workers.submit("k")
    await asyncio.sleep(0)
    workers.submit("k", wake=False)  # its own status write, while it runs
    release.set()
    await asyncio.sleep(0.01)
    assert seen == ["k"] and workers.retry_pending("k")
    await workers.stop()


async def test_a_poll_is_not_a_failure_and_survives_the_success_that_set_it() -> None:
    seen: list[str] = []

    async def handler(key: str) -> None:
        seen.append(key)
        workers.submit_after(key, 5.0)  # look again later: not a failure

    workers = SerialWorkers(handler, ready=_ready)
    workers.submit("k")
    await asyncio.sleep(0.01)
    assert workers.retry_pending("k") and workers.backoff.failures("k") == 0
    workers.submit("k", wake=False)  # a poll pending is no back-off: this runs
    await asyncio.sleep(0.01)
    assert seen == ["k", "k"]
    await workers.stop()


def test_a_status_only_change_is_told_from_a_change_of_intent() -> None:
    old: dict[str, Any] = {"metadata": {"name": "a", "resourceVersion": "1", "generation": 1},
           "spec": {"replicas": 1}, "status": {"state": "Running"}}
    status = {**old, "metadata": {**old["metadata"], "resourceVersion": "2"},
              "status": {"state": "Failed"}}
    spec = {**old, "spec": {"replicas": 0}}
    deleted = {**old, "metadata": {**old["metadata"], "deletionTimestamp": "now"}}
    assert status_only_change(old, status)
    assert not status_only_change(old, spec) and not status_only_change(old, deleted)
    assert not status_only_change(None, old) and not status_only_change(old, None)
