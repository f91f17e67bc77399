"""PodNotifierService: a snapshot on connect, then every change, to every subscriber."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from vmlet.provider.v1 import pod_lifecycle_service_pb2 as pl
from vmlet.provider.v1 import pod_notifier_service_pb2 as pn
from vmlet.provider.v1 import pod_pb2
from vmlet_memory.cloud import CloudOptions
from vmlet_memory.testing import Harness, make_pod, running_provider

pytestmark = pytest.mark.timeout(60)


async def _read(call: object, n: int) -> list[pn.NotifyPodsResponse]:
    return [await asyncio.wait_for(call.read(), 5) for _ in range(n)]  # type: ignore[attr-defined]


async def test_snapshot_on_connect_then_changes(mp: Harness) -> None:
    for name in ("a", "b"):
        await mp.lifecycle.CreatePod(pl.CreatePodRequest(pod=make_pod(name)))
    call = mp.notifier.NotifyPods(pn.NotifyPodsRequest())
    snapshot = await _read(call, 2)
    assert sorted(u.ref.name for u in snapshot) == ["a", "b"]
    assert all(u.status.phase == pod_pb2.POD_PHASE_RUNNING for u in snapshot)

    await mp.lifecycle.CreatePod(pl.CreatePodRequest(pod=make_pod("c")))
    (change,) = await _read(call, 1)
    assert change.ref.name == "c" and change.status.pod_ip
    call.cancel()


async def test_pending_then_running_is_pushed() -> None:
    async with running_provider(CloudOptions(start_delay_seconds=0.2)) as mp:
        call = mp.notifier.NotifyPods(pn.NotifyPodsRequest())
        await asyncio.sleep(0.05)  # let the stream open before the change
        await mp.lifecycle.CreatePod(pl.CreatePodRequest(pod=make_pod("slow")))
        phases = [u.status.phase for u in await _read(call, 2)]
        assert phases == [pod_pb2.POD_PHASE_PENDING, pod_pb2.POD_PHASE_RUNNING]
        call.cancel()


async def test_many_subscribers_each_get_everything(mp: Harness) -> None:
    calls = [mp.notifier.NotifyPods(pn.NotifyPodsRequest()) for _ in range(5)]
    await asyncio.sleep(0.1)
    await mp.lifecycle.CreatePod(pl.CreatePodRequest(pod=make_pod("x")))
    for call in calls:
        (update,) = await _read(call, 1)
        assert update.ref.name == "x"
        call.cancel()


async def test_a_subscriber_that_never_reads_does_not_hold_up_others(mp: Harness) -> None:
    stuck = mp.notifier.NotifyPods(pn.NotifyPodsRequest())  # opened, never read
    live = mp.notifier.NotifyPods(pn.NotifyPodsRequest())
    await asyncio.sleep(0.1)
    for i in range(300):
        pod = make_pod(f"p{i}", node=f"vmlet-memory-{i % 2}")
        await mp.lifecycle.CreatePod(pl.CreatePodRequest(pod=pod))
    names = {u.ref.name for u in await _read(live, 300)}
    assert len(names) == 300
    stuck.cancel()
    live.cancel()


async def test_shutdown_ends_streams_with_unavailable() -> None:
    async with running_provider() as mp:
        call = mp.notifier.NotifyPods(pn.NotifyPodsRequest())
        await asyncio.sleep(0.1)
        await mp.server.stop(5)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(call.read(), 5)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
