"""A thousand pods through the gRPC boundary, as the facade benchmark makes them (no timing
asserted here: benchmarks live in bench/)."""

from __future__ import annotations

import asyncio
import time

import pytest

from vmlet.provider.v1 import pod_lifecycle_service_pb2 as pl
from vmlet.provider.v1 import pod_notifier_service_pb2 as pn
from vmlet_memory.cloud import CloudOptions
from vmlet_memory.testing import make_pod, running_provider

pytestmark = pytest.mark.timeout(120)


async def test_a_thousand_pods(capsys: pytest.CaptureFixture[str]) -> None:
    async with running_provider(CloudOptions(nodes=4)) as mp:
        watcher = mp.notifier.NotifyPods(pn.NotifyPodsRequest())
        await asyncio.sleep(0.1)
        started = time.perf_counter()
        pods = [make_pod(f"p{i}", node=f"vmlet-memory-{i % 4}") for i in range(1000)]
        statuses = await asyncio.gather(
            *(mp.lifecycle.CreatePod(pl.CreatePodRequest(pod=pod)) for pod in pods)
        )
        elapsed = time.perf_counter() - started
        assert len({s.status.pod_ip for s in statuses}) == 1000
        seen: set[str] = set()
        while len(seen) < 1000:
            seen.add((await asyncio.wait_for(watcher.read(), 10)).ref.name)
        watcher.cancel()
        listed = (await mp.lifecycle.GetPods(pl.GetPodsRequest())).pods
        assert len(listed) == 1000
    with capsys.disabled():
        print(f"\n1000 CreatePod calls over loopback gRPC: {elapsed:.2f}s ({1000 / elapsed:.0f}/s)")
