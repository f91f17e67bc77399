"""A guest that shuts itself down, and StartPod: exit codes, restarts, restarts of the provider."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from vmlet.provider.v1 import kubelet_endpoint_service_pb2 as ke
from vmlet.provider.v1 import pod_lifecycle_service_pb2 as pl
from vmlet.provider.v1 import pod_pb2
from vmlet_memory.cloud import CloudOptions
from vmlet_memory.podrules import EXIT_AFTER_ANNOTATION
from vmlet_memory.testing import Harness, make_pod, running_provider

pytestmark = pytest.mark.timeout(60)

RUNNING = pod_pb2.POD_PHASE_RUNNING


async def _status(mp: Harness, name: str) -> pod_pb2.PodStatus:
    reply = await mp.lifecycle.GetPodStatus(pl.GetPodStatusRequest(namespace="default",
                                                                    name=name))
    status: pod_pb2.PodStatus = reply.status
    return status


async def _until(mp: Harness, name: str, what: str) -> pod_pb2.PodStatus:
    deadline = asyncio.get_running_loop().time() + 10.0
    while True:
        status = await _status(mp, name)
        if status.container_statuses[0].WhichOneof("state") == what:
            return status
        assert asyncio.get_running_loop().time() < deadline, status
        await asyncio.sleep(0.05)


def _assert_stopped(status: pod_pb2.PodStatus, code: int) -> None:
    (container,) = status.container_statuses
    assert status.phase == RUNNING and status.progress == pod_pb2.PROGRESS_STOPPED
    assert not status.ready and status.not_ready_reason == "PoweredOff"
    assert container.terminated.exit_code == code
    assert container.terminated.reason == "PoweredOff"
    assert container.terminated.finished_at.seconds >= container.terminated.started_at.seconds > 0
    assert str(code) in container.terminated.message


async def _poweroff(mp: Harness, name: str, *args: str) -> int:
    async def requests() -> AsyncIterator[ke.ExecRequest]:
        yield ke.ExecRequest(start=ke.ExecStart(namespace="default", pod_name=name,
                                                command=["poweroff", *args], stdout=True))
    code = -1
    async for response in mp.endpoints.Exec(requests()):
        if response.WhichOneof("kind") == "exit":
            code = response.exit.exit_code
    return code


async def test_exit_after_stops_the_guest_with_its_code_until_start_pod(mp: Harness) -> None:
    pod = make_pod("job-0", annotations={EXIT_AFTER_ANNOTATION: "0.3:3"})
    first = (await mp.lifecycle.CreatePod(pl.CreatePodRequest(pod=pod))).status
    assert first.container_statuses[0].WhichOneof("state") == "running"
    stopped = await _until(mp, "job-0", "terminated")
    _assert_stopped(stopped, 3)
    assert stopped.pod_ip == "" and stopped.provider_id == first.provider_id
    # A create again (a retry, a facade restart) does not power it on: only StartPod does.
    again = (await mp.lifecycle.CreatePod(pl.CreatePodRequest(pod=pod))).status
    assert again.container_statuses[0].WhichOneof("state") == "terminated"
    await asyncio.sleep(0.5)
    assert (await _status(mp, "job-0")).container_statuses[0].WhichOneof("state") == "terminated"
    started = (await mp.lifecycle.StartPod(pl.StartPodRequest(pod=pod))).status
    assert started.container_statuses[0].WhichOneof("state") == "running"
    assert started.pod_ip == first.pod_ip
    # Each boot runs the guest again: it stops again, with the same code.
    _assert_stopped(await _until(mp, "job-0", "terminated"), 3)


async def test_start_pod_leaves_a_running_vm_alone_and_refuses_unknown_pods(
        mp: Harness) -> None:
    pod = make_pod("web-0")
    await mp.lifecycle.CreatePod(pl.CreatePodRequest(pod=pod))
    before = await _status(mp, "web-0")
    started = (await mp.lifecycle.StartPod(pl.StartPodRequest(pod=pod))).status
    assert started.container_statuses[0].running.started_at == \
        before.container_statuses[0].running.started_at
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mp.lifecycle.StartPod(pl.StartPodRequest(pod=make_pod("nobody")))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mp.lifecycle.StartPod(pl.StartPodRequest(pod=make_pod("web-0", identity="other")))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_poweroff_in_the_guest_shell(mp: Harness) -> None:
    pod = make_pod("vm-0")
    await mp.lifecycle.CreatePod(pl.CreatePodRequest(pod=pod))
    assert await _poweroff(mp, "vm-0", "banana") == 2
    assert await _poweroff(mp, "vm-0", "300") == 2
    assert (await _status(mp, "vm-0")).container_statuses[0].WhichOneof("state") == "running"
    assert await _poweroff(mp, "vm-0", "7") == 0
    _assert_stopped(await _until(mp, "vm-0", "terminated"), 7)
    host = mp.provider.cloud.hosts["vmlet-memory-0"]
    assert host.used_pods == 0  # a stopped VM holds no share of its host
    await mp.lifecycle.StartPod(pl.StartPodRequest(pod=pod))
    assert host.used_pods == 1
    assert await _poweroff(mp, "vm-0") == 0
    _assert_stopped(await _until(mp, "vm-0", "terminated"), 0)


@pytest.mark.parametrize("spec", ["soon", "1:256", "-1", "2:x"])
async def test_a_malformed_exit_after_is_refused(mp: Harness, spec: str) -> None:
    pod = make_pod("bad", annotations={EXIT_AFTER_ANNOTATION: spec})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mp.lifecycle.CreatePod(pl.CreatePodRequest(pod=pod))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert EXIT_AFTER_ANNOTATION in (err.value.details() or "")


async def test_a_stopped_guest_stays_stopped_across_a_provider_restart(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    pod = make_pod("job-1", annotations={EXIT_AFTER_ANNOTATION: "0:4"})
    async with running_provider(state_file=state) as mp:
        await mp.lifecycle.CreatePod(pl.CreatePodRequest(pod=pod))
        _assert_stopped(await _until(mp, "job-1", "terminated"), 4)
    async with running_provider(state_file=state) as mp:
        _assert_stopped(await _status(mp, "job-1"), 4)
        assert mp.provider.cloud.hosts["vmlet-memory-0"].used_pods == 0
        started = (await mp.lifecycle.StartPod(pl.StartPodRequest(pod=pod))).status
        assert started.container_statuses[0].WhichOneof("state") == "running"


async def test_a_slow_start_again_keeps_the_pod_running_while_it_boots() -> None:
    async with running_provider(CloudOptions(start_delay_seconds=0.5)) as mp:
        pod = make_pod("slow", annotations={EXIT_AFTER_ANNOTATION: "0:0"})
        first = (await mp.lifecycle.CreatePod(pl.CreatePodRequest(pod=pod))).status
        assert first.phase == pod_pb2.POD_PHASE_PENDING  # its first boot: not run yet
        await _until(mp, "slow", "terminated")
        again = (await mp.lifecycle.StartPod(pl.StartPodRequest(pod=pod))).status
        assert again.phase == RUNNING and again.progress == pod_pb2.PROGRESS_POWERING_ON
        assert again.container_statuses[0].waiting.reason == "PoweringOn" and not again.ready
        await _until(mp, "slow", "terminated")


async def test_stop_pod_kills_the_guest_with_137_until_start_pod(mp: Harness) -> None:
    pod = make_pod("live")
    await mp.lifecycle.CreatePod(pl.CreatePodRequest(pod=pod))
    stopped = (await mp.lifecycle.StopPod(pl.StopPodRequest(pod=pod, grace_seconds=30))).status
    _assert_stopped(stopped, 137)
    assert mp.provider.cloud.hosts["vmlet-memory-0"].used_pods == 0
    again = (await mp.lifecycle.StopPod(pl.StopPodRequest(pod=pod))).status
    assert again == stopped  # off already: nothing changes
    started = (await mp.lifecycle.StartPod(pl.StartPodRequest(pod=pod))).status
    assert started.container_statuses[0].WhichOneof("state") == "running"
    for bad in (make_pod("nobody"), make_pod("live", identity="other")):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await mp.lifecycle.StopPod(pl.StopPodRequest(pod=bad))
        assert err.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await mp.lifecycle.StopPod(pl.StopPodRequest(pod=pod, grace_seconds=-1))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
