"""PodLifecycleService: idempotent by identity, moves, kept VMs, admission, errors."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from vmlet.provider.v1 import pod_lifecycle_service_pb2 as pl
from vmlet.provider.v1 import pod_notifier_service_pb2 as pn
from vmlet.provider.v1 import pod_pb2
from vmlet.provider.v1 import virtual_machine_service_pb2 as vmpb
from vmlet_memory.cloud import CloudOptions
from vmlet_memory.podrules import FAIL_CREATE_ANNOTATION, START_DELAY_ANNOTATION
from vmlet_memory.testing import Harness, make_pod, running_provider

pytestmark = pytest.mark.timeout(60)

RUNNING, PENDING = pod_pb2.POD_PHASE_RUNNING, pod_pb2.POD_PHASE_PENDING


async def _create(mp: Harness, pod: pod_pb2.Pod) -> pod_pb2.PodStatus:
    reply = await mp.lifecycle.CreatePod(pl.CreatePodRequest(pod=pod))
    status: pod_pb2.PodStatus = reply.status
    return status


async def _pods(mp: Harness) -> list[pod_pb2.PodWithStatus]:
    return list((await mp.lifecycle.GetPods(pl.GetPodsRequest())).pods)


async def test_create_runs_the_pod_with_an_address(mp: Harness) -> None:
    status = await _create(mp, make_pod("web-0"))
    assert status.phase == RUNNING
    assert status.pod_ip.startswith("10.88.") and list(status.pod_ips) == [status.pod_ip]
    assert status.actual_node_name == "vmlet-memory-0" and status.host_ip == "127.0.0.1"
    assert status.container_statuses[0].container_id.startswith("memory://")
    got = await mp.lifecycle.GetPod(pl.GetPodRequest(namespace="default", name="web-0"))
    assert got.pod.identity == "uid-web-0" and got.status == status
    only = await mp.lifecycle.GetPodStatus(
        pl.GetPodStatusRequest(namespace="default", name="web-0")
    )
    assert only.status == status


async def test_concurrent_creates_of_one_identity_make_one_vm(mp: Harness) -> None:
    pod = make_pod("vm-a", identity="vm-uid-a")
    statuses = await asyncio.gather(*(_create(mp, pod) for _ in range(20)))
    assert len({s.provider_id for s in statuses}) == 1
    assert len({s.pod_ip for s in statuses}) == 1
    assert len(await _pods(mp)) == 1
    assert len(list(mp.provider.cloud.machines())) == 1


async def test_create_again_on_another_node_moves_the_vm(mp: Harness) -> None:
    first = await _create(mp, make_pod("vm-b", node="vmlet-memory-0"))
    moved = await _create(mp, make_pod("vm-b", node="vmlet-memory-1"))
    assert moved.actual_node_name == "vmlet-memory-1"
    assert (moved.provider_id, moved.pod_ip) == (first.provider_id, first.pod_ip)
    hosts = mp.provider.cloud.hosts
    assert (hosts["vmlet-memory-0"].used_pods, hosts["vmlet-memory-1"].used_pods) == (0, 1)


async def test_a_new_pod_for_an_identity_takes_the_vm_over(mp: Harness) -> None:
    old = await _create(mp, make_pod("vm-c-1", identity="vm-c", node="vmlet-memory-0"))
    sub = mp.notifier.NotifyPods(pn.NotifyPodsRequest())
    await sub.read()  # the initial snapshot of vm-c-1
    new = await _create(mp, make_pod("vm-c-2", identity="vm-c", node="vmlet-memory-1"))
    assert (new.provider_id, new.pod_ip) == (old.provider_id, old.pod_ip)
    assert new.actual_node_name == "vmlet-memory-1"
    updates: dict[str, pod_pb2.PodStatus] = {}
    while len(updates) < 2:
        update = await sub.read()
        updates[update.ref.name] = update.status
    assert updates["vm-c-1"].phase == pod_pb2.POD_PHASE_FAILED
    assert updates["vm-c-1"].reason == "VMTakenOver"
    assert updates["vm-c-2"].phase == RUNNING
    sub.cancel()
    # The old pod's delete leaves the VM alone: it belongs to vm-c-2 now.
    await mp.lifecycle.DeletePod(pl.DeletePodRequest(pod=make_pod("vm-c-1", identity="vm-c")))
    assert [p.pod.ref.name for p in await _pods(mp)] == ["vm-c-2"]


async def test_keep_on_delete_stops_the_vm_and_a_new_pod_powers_it_on(mp: Harness) -> None:
    pod = make_pod("vm-d-1", identity="vm-d", keep_on_delete=True)
    first = await _create(mp, pod)
    await mp.lifecycle.DeletePod(pl.DeletePodRequest(pod=pod))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await mp.lifecycle.GetPod(pl.GetPodRequest(namespace="default", name="vm-d-1"))
    assert info.value.code() is grpc.StatusCode.NOT_FOUND
    vm = mp.provider.cloud.machine("vm-d")
    assert vm.power == "Stopped" and vm.pod is None
    assert mp.provider.cloud.hosts["vmlet-memory-0"].used_pods == 0

    again = await _create(mp, make_pod("vm-d-2", identity="vm-d", node="vmlet-memory-1"))
    assert again.phase == RUNNING
    assert (again.provider_id, again.pod_ip) == (first.provider_id, first.pod_ip)
    assert again.actual_node_name == "vmlet-memory-1"
    texts = [line.text for line in vm.log]
    assert texts.count("powered on") == 2 and "powered off" in texts


async def test_delete_destroys_and_frees_the_address(mp: Harness) -> None:
    pod = make_pod("vm-e")
    status = await _create(mp, pod)
    await mp.lifecycle.DeletePod(pl.DeletePodRequest(pod=pod))
    assert await _pods(mp) == []
    assert list(mp.provider.cloud.machines()) == []
    assert mp.provider.cloud.ips.in_use == 0
    assert status.pod_ip  # it had one


async def test_a_kept_vm_stays_kept_until_deleted_as_a_virtual_machine(mp: Harness) -> None:
    pod = make_pod("vm-f", identity="vm-f", keep_on_delete=True)
    await _create(mp, pod)
    await mp.lifecycle.DeletePod(pl.DeletePodRequest(pod=pod))
    assert len(list(mp.provider.cloud.machines())) == 1
    # Recorded as kept at creation: a pod's delete without keep does not destroy it...
    await mp.lifecycle.DeletePod(
        pl.DeletePodRequest(pod=pod_pb2.Pod(identity="vm-f", keep_on_delete=False))
    )
    assert len(list(mp.provider.cloud.machines())) == 1
    # ...nor does a delete for another namespace; the VirtualMachine's deletion does.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await mp.vms.DeleteVirtualMachine(
            vmpb.DeleteVirtualMachineRequest(identity="vm-f", namespace="other")
        )
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
    await mp.vms.DeleteVirtualMachine(
        vmpb.DeleteVirtualMachineRequest(identity="vm-f", namespace="default")
    )
    assert list(mp.provider.cloud.machines()) == []


async def test_deleting_an_unknown_pod_succeeds(mp: Harness) -> None:
    await mp.lifecycle.DeletePod(pl.DeletePodRequest(pod=make_pod("never-made")))
    await mp.lifecycle.DeletePod(pl.DeletePodRequest(pod=pod_pb2.Pod()))


async def test_update_changes_resources_and_annotations(mp: Harness) -> None:
    await _create(mp, make_pod("vm-g", cpu_millis=1000))
    host = mp.provider.cloud.hosts["vmlet-memory-0"]
    assert host.used_cpu_millis == 1000
    changed = make_pod("vm-g", cpu_millis=4000, annotations={"a": "b"})
    reply = await mp.lifecycle.UpdatePod(pl.UpdatePodRequest(pod=changed))
    assert reply.status.phase == RUNNING
    assert host.used_cpu_millis == 4000
    got = await mp.lifecycle.GetPod(pl.GetPodRequest(namespace="default", name="vm-g"))
    assert got.pod.annotations["a"] == "b"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await mp.lifecycle.UpdatePod(pl.UpdatePodRequest(pod=make_pod("nope")))
    assert info.value.code() is grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("pod", "code"),
    [
        (make_pod("x", identity="", uid=""), grpc.StatusCode.INVALID_ARGUMENT),
        (make_pod("x", node=""), grpc.StatusCode.INVALID_ARGUMENT),
        (make_pod("x", node="elsewhere"), grpc.StatusCode.FAILED_PRECONDITION),
        (make_pod("x", disks=("no-such-disk",)), grpc.StatusCode.FAILED_PRECONDITION),
        (
            make_pod("x", annotations={FAIL_CREATE_ANNOTATION: "UNAVAILABLE: vCenter is down"}),
            grpc.StatusCode.UNAVAILABLE,
        ),
        (make_pod("x", cpu_millis=65_000), grpc.StatusCode.RESOURCE_EXHAUSTED),
    ],
)
async def test_create_errors(mp: Harness, pod: pod_pb2.Pod, code: grpc.StatusCode) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _create(mp, pod)
    assert info.value.code() is code
    assert info.value.details()
    assert list(mp.provider.cloud.machines()) == []
    assert mp.provider.cloud.ips.in_use == 0


def _with_image(image: str) -> pod_pb2.Pod:
    pod = make_pod("x")
    pod.containers[0].image = image
    return pod


@pytest.mark.parametrize(
    "image", ["", "   ", "memory:", "docker.io/library/nginx:1.27", "nginx:1.27", "a b"]
)
async def test_a_malformed_image_is_invalid_argument(mp: Harness, image: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _create(mp, _with_image(image))
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert f"image {image!r} does not name a memory image" in (info.value.details() or "")
    assert list(mp.provider.cloud.machines()) == []


async def test_images_are_any_name_or_the_given_ones(mp: Harness) -> None:
    for image in ("memory:debian-12", "debian-12", "ubuntu-24.04"):
        assert (await _create(mp, _with_image(image))).phase == RUNNING
        await mp.lifecycle.DeletePod(pl.DeletePodRequest(pod=_with_image(image)))
    async with running_provider(CloudOptions(images=("debian-12",))) as few:
        assert (await _create(few, _with_image("memory:debian-12"))).phase == RUNNING
        await few.lifecycle.DeletePod(pl.DeletePodRequest(pod=make_pod("x")))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _create(few, _with_image("memory:debian-13"))
        assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert info.value.details() == (
            "image 'debian-13' does not exist in the memory IaaS; it has debian-12")
        assert list(few.provider.cloud.machines()) == []


async def test_networks_are_any_name_or_the_given_ones(mp: Harness) -> None:
    joins = make_pod("x")
    joins.networks.add(name="anything")
    assert (await _create(mp, joins)).phase == RUNNING
    await mp.lifecycle.DeletePod(pl.DeletePodRequest(pod=joins))
    async with running_provider(CloudOptions(networks=("pod-network",))) as few:
        known = make_pod("x")
        known.networks.add(name="pod-network")
        assert (await _create(few, known)).phase == RUNNING
        await few.lifecycle.DeletePod(pl.DeletePodRequest(pod=known))
        unknown = make_pod("y")
        unknown.networks.add(name="pod-network")
        unknown.networks.add(name="lost")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _create(few, unknown)
        assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert info.value.details() == ("network 'lost' does not exist in the memory IaaS; the "
                                        "networks there are: pod-network")
        assert list(few.provider.cloud.machines()) == []


async def test_a_pod_name_cannot_run_two_identities(mp: Harness) -> None:
    await _create(mp, make_pod("same", identity="one"))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _create(mp, make_pod("same", identity="two"))
    assert info.value.code() is grpc.StatusCode.ALREADY_EXISTS


async def test_a_full_node_refuses_more_pods() -> None:
    async with running_provider(CloudOptions(nodes=1, pods=2)) as mp:
        await _create(mp, make_pod("a"))
        await _create(mp, make_pod("b"))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _create(mp, make_pod("c"))
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "pods (2/2 in use)" in (info.value.details() or "")


async def test_addresses_are_unique_and_run_out() -> None:
    async with running_provider(CloudOptions(nodes=1, ip_base="10.9.0.0/29")) as mp:
        ips = {(await _create(mp, make_pod(f"p{i}"))).pod_ip for i in range(6)}
        assert ips == {f"10.9.0.{i}" for i in range(1, 7)}
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _create(mp, make_pod("p7"))
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert mp.provider.cloud.hosts["vmlet-memory-0"].used_pods == 6


async def test_start_delay_keeps_the_pod_pending_then_runs_it() -> None:
    async with running_provider(CloudOptions(start_delay_seconds=0.3)) as mp:
        status = await _create(mp, make_pod("slow"))
        assert status.phase == PENDING and status.pod_ip == ""
        assert status.container_statuses[0].waiting.reason == "PoweringOn"
        for _ in range(50):
            await asyncio.sleep(0.05)
            reply = await mp.lifecycle.GetPodStatus(
                pl.GetPodStatusRequest(namespace="default", name="slow")
            )
            if reply.status.phase == RUNNING:
                break
        assert reply.status.phase == RUNNING and reply.status.pod_ip
        # A per-pod annotation overrides the flag.
        fast = await _create(mp, make_pod("fast", annotations={START_DELAY_ANNOTATION: "0"}))
        assert fast.phase == RUNNING


async def test_get_pods_lists_every_node(mp: Harness) -> None:
    await _create(mp, make_pod("n0", node="vmlet-memory-0"))
    await _create(mp, make_pod("n1", node="vmlet-memory-1"))
    assert sorted(p.status.actual_node_name for p in await _pods(mp)) == [
        "vmlet-memory-0",
        "vmlet-memory-1",
    ]


async def test_a_move_to_a_full_node_changes_nothing() -> None:
    async with running_provider(CloudOptions(pods=1)) as mp:
        await _create(mp, make_pod("a", node="vmlet-memory-0"))
        await _create(mp, make_pod("b", node="vmlet-memory-1"))
        for call in (mp.lifecycle.CreatePod, mp.lifecycle.UpdatePod):
            request_type = (
                pl.CreatePodRequest if call is mp.lifecycle.CreatePod else pl.UpdatePodRequest
            )
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call(request_type(pod=make_pod("a", node="vmlet-memory-1")))
            assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        hosts = mp.provider.cloud.hosts
        assert (hosts["vmlet-memory-0"].used_pods, hosts["vmlet-memory-1"].used_pods) == (1, 1)
        status = await mp.lifecycle.GetPodStatus(
            pl.GetPodStatusRequest(namespace="default", name="a")
        )
        assert status.status.actual_node_name == "vmlet-memory-0"


async def test_a_vm_is_never_adopted_or_deleted_for_another_namespace(mp: Harness) -> None:
    """A pod of namespace "attacker" naming the identity of a VM of "default" gets nothing."""
    await _create(mp, make_pod("victim", identity="victim-vm", keep_on_delete=True))
    hostile = make_pod("steal", identity="victim-vm", namespace="attacker")
    for call in (mp.lifecycle.CreatePod(pl.CreatePodRequest(pod=hostile)),
                 mp.lifecycle.DeletePod(pl.DeletePodRequest(pod=hostile))):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
        assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "another namespace" in str(refused.value.details())
    vm = mp.provider.cloud.machine("victim-vm")
    assert vm.key == ("default", "victim") and vm.namespace == "default" and vm.keep
