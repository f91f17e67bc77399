"""The memory provider's real server refuses requests out of the contract's bounds."""

from __future__ import annotations

import grpc
import pytest

from vmlet.provider.v1 import pod_lifecycle_service_pb2 as pl
from vmlet_contract.hostile import hostile_requests
from vmlet_memory.testing import Harness, make_pod

pytestmark = pytest.mark.timeout(60)


async def test_hostile_requests_are_invalid_argument_and_change_nothing(mp: Harness) -> None:
    await mp.lifecycle.CreatePod(pl.CreatePodRequest(pod=make_pod("victim", namespace="a")))
    before = list(mp.provider.cloud.machines())
    stubs = {"pods": mp.lifecycle, "vms": mp.vms}
    for case in hostile_requests("vmlet-memory-0", "ubuntu-24.04"):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await getattr(stubs[case.stub], case.method)(case.request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (case.what, err.value)
        assert "incident" not in (err.value.details() or ""), case.what
    assert list(mp.provider.cloud.machines()) == before
    got = await mp.lifecycle.GetPods(pl.GetPodsRequest())
    assert [p.pod.ref.name for p in got.pods] == ["victim"]
