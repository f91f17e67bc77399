"""The provider kit: the contract's servicers over fake backends, served on loopback."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vmlet.provider.v1 import disk_service_pb2_grpc as dpb_grpc
from vmlet.provider.v1 import kubelet_endpoint_service_pb2 as kpb
from vmlet.provider.v1 import kubelet_endpoint_service_pb2_grpc as kpb_grpc
from vmlet.provider.v1 import node_pb2, pod_pb2
from vmlet.provider.v1 import node_provider_service_pb2 as npb
from vmlet.provider.v1 import node_provider_service_pb2_grpc as npb_grpc
from vmlet.provider.v1 import pod_lifecycle_service_pb2 as lpb
from vmlet.provider.v1 import pod_lifecycle_service_pb2_grpc as lpb_grpc
from vmlet.provider.v1 import pod_notifier_service_pb2 as ppb
from vmlet.provider.v1 import pod_notifier_service_pb2_grpc as ppb_grpc
from vmlet.provider.v1 import virtual_machine_service_pb2 as vpb
from vmlet.provider.v1 import virtual_machine_service_pb2_grpc as vpb_grpc
from vmlet_contract import (
    Hub,
    Mailbox,
    NotFound,
    PermissionDenied,
    ProviderServer,
    ProviderServicers,
    Unavailable,
    containerlogs,
)
from vmlet_contract.kit import LogSource, unsupported

pytestmark = pytest.mark.timeout(60)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Line:
    time: datetime
    text: str


def _pod(name: str, *containers: str) -> pod_pb2.Pod:
    return pod_pb2.Pod(
        ref=pod_pb2.PodRef(namespace="ns", name=name, uid=f"uid-{name}"),
        containers=[pod_pb2.Container(name=c, image="img") for c in containers],
    )


@dataclass
class FakeBackend:
    """Every backend of the kit at once, over a dict of pods; records what reached it."""

    pods: dict[tuple[str, str], pod_pb2.Pod] = field(default_factory=dict)
    log: list[Line] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    pod_hub: Hub[ppb.NotifyPodsResponse] = field(default_factory=Hub)
    node_hub: Hub[npb.NotifyNodeStatusResponse] = field(default_factory=Hub)
    unsubscribed: asyncio.Event = field(default_factory=asyncio.Event)
    reachable: bool = True

    # PodLifecycleBackend
    async def create_pod(self, pod: pod_pb2.Pod) -> pod_pb2.PodStatus:
        self.pods[(pod.ref.namespace, pod.ref.name)] = pod
        self.pod_hub.publish(pod.ref.name, ppb.NotifyPodsResponse(ref=pod.ref))
        return pod_pb2.PodStatus(phase=pod_pb2.POD_PHASE_PENDING)

    async def update_pod(self, pod: pod_pb2.Pod) -> pod_pb2.PodStatus:
        return await self.create_pod(pod)

    async def delete_pod(self, pod: pod_pb2.Pod) -> None:
        self.pods.pop((pod.ref.namespace, pod.ref.name), None)

    async def start_pod(self, pod: pod_pb2.Pod) -> pod_pb2.PodStatus:
        return await self.create_pod(pod)

    async def stop_pod(self, pod: pod_pb2.Pod, grace_seconds: int) -> pod_pb2.PodStatus:
        return await self.create_pod(pod)

    async def get_pod(self, namespace: str, name: str) -> tuple[pod_pb2.Pod, pod_pb2.PodStatus]:
        return await self.pod_spec(namespace, name), pod_pb2.PodStatus(pod_ip="10.0.0.1")

    async def list_pods(self) -> list[pod_pb2.PodWithStatus]:
        return [pod_pb2.PodWithStatus(pod=p) for p in self.pods.values()]

    # PodNotifierBackend
    def subscribe_pods(self) -> Mailbox[ppb.NotifyPodsResponse]:
        initial = [(p.ref.name, ppb.NotifyPodsResponse(ref=p.ref)) for p in self.pods.values()]
        return self.pod_hub.subscribe(initial)

    def unsubscribe_pods(self, box: Mailbox[ppb.NotifyPodsResponse]) -> None:
        self.pod_hub.unsubscribe(box)
        self.unsubscribed.set()

    # NodeProviderBackend
    async def list_nodes(self) -> list[node_pb2.Node]:
        return [node_pb2.Node(name="node-0")]

    async def ping(self) -> None:
        if not self.reachable:
            raise Unavailable("the IaaS is unreachable")

    def subscribe_nodes(self) -> Mailbox[npb.NotifyNodeStatusResponse]:
        node = node_pb2.Node(name="node-0")
        return self.node_hub.subscribe([("node-0", npb.NotifyNodeStatusResponse(node=node))])

    def unsubscribe_nodes(self, box: Mailbox[npb.NotifyNodeStatusResponse]) -> None:
        self.node_hub.unsubscribe(box)

    # KubeletEndpointBackend
    async def pod_spec(self, namespace: str, name: str) -> pod_pb2.Pod:
        pod = self.pods.get((namespace, name))
        if pod is None:
            raise NotFound(f"pod {namespace}/{name} not found")
        return pod

    @contextlib.asynccontextmanager
    async def open_log(
        self, namespace: str, pod_name: str, container: str, options: containerlogs.LogOptions
    ) -> AsyncIterator[LogSource | None]:
        self.calls.append(f"log {container}")
        if not self.log:
            yield None
            return

        async def nothing() -> AsyncIterator[Line]:
            return
            yield

        yield LogSource(history=list(self.log), followed=nothing())

    async def exec(
        self, start: kpb.ExecStart, container: str, requests: AsyncIterator[kpb.ExecRequest]
    ) -> AsyncIterator[kpb.ExecResponse]:
        self.calls.append(f"exec {container} {' '.join(start.command)}")
        async for message in requests:
            yield kpb.ExecResponse(stdout=message.stdin)
        yield kpb.ExecResponse(exit=kpb.StreamExit(exit_code=0))

    def attach(
        self, start: kpb.AttachStart, container: str, requests: AsyncIterator[kpb.AttachRequest]
    ) -> AsyncIterator[kpb.AttachResponse]:
        raise unsupported("no console here")

    async def port_forward(
        self, start: kpb.PortForwardStart, requests: AsyncIterator[kpb.PortForwardRequest]
    ) -> AsyncIterator[kpb.PortForwardResponse]:
        self.calls.append(f"forward {start.port}")
        async for message in requests:
            yield kpb.PortForwardResponse(data=message.data)

    async def stats_summary(self, node_name: str) -> kpb.GetStatsSummaryResponse:
        return kpb.GetStatsSummaryResponse()

    # VirtualMachineBackend
    async def get_vm(self, identity: str, namespace: str) -> vpb.VirtualMachine:
        return vpb.VirtualMachine(identity=identity)

    async def delete_vm(self, identity: str, namespace: str) -> None:
        self.calls.append(f"delete vm {identity}")

    async def check_owner(self, identity: str, namespace: str) -> None:
        if identity == "theirs" and namespace != "other":
            raise PermissionDenied(f"VM {identity} belongs to namespace other")

    async def create_snapshot(self, identity: str, name: str, description: str) -> vpb.Snapshot:
        return vpb.Snapshot(id="s1", name=name)

    async def revert_to_snapshot(self, identity: str, snapshot_id: str) -> None:
        self.calls.append(f"revert {snapshot_id}")

    async def delete_snapshot(self, identity: str, snapshot_id: str) -> None:
        self.calls.append(f"delete snapshot {snapshot_id}")

    async def list_snapshots(self, identity: str) -> list[vpb.Snapshot]:
        return [vpb.Snapshot(id="s1")]


@dataclass
class FakeDisks:
    """A `DiskBackend` that records into the calls of a `FakeBackend`."""

    calls: list[str]

    async def create(self, name: str, size_bytes: int, parameters: Mapping[str, str]) -> vpb.Disk:
        self.calls.append(f"create disk {name}")
        return vpb.Disk(handle=f"h-{name}", name=name, size_bytes=size_bytes)

    async def delete(self, handle: str) -> None:
        self.calls.append(f"delete disk {handle}")

    async def expand(self, handle: str, size_bytes: int) -> vpb.Disk:
        if handle == "gone":
            raise NotFound(f"disk {handle} not found")
        return vpb.Disk(handle=handle, size_bytes=size_bytes)

    async def get(self, handle: str) -> vpb.Disk:
        return vpb.Disk(handle=handle)


@dataclass
class Served:
    backend: FakeBackend
    server: ProviderServer
    channel: grpc.aio.Channel


@pytest.fixture
async def kit() -> AsyncIterator[Served]:
    backend = FakeBackend()
    backend.pods[("ns", "web")] = _pod("web", "main", "side")
    servicers = ProviderServicers.from_backends(
        provider="fake",
        version="1.2.3",
        lifecycle=backend,
        notifier=backend,
        nodes=backend,
        endpoints=backend,
        vms=backend,
        disks=FakeDisks(backend.calls),
    )
    async with ProviderServer(servicers, address="127.0.0.1:0", provider="fake") as server:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield Served(backend, server, channel)


async def _code(call: Any) -> grpc.StatusCode:
    """The status code a call ends with: read to its end (a stream) or awaited."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if hasattr(call, "read"):
            while await call.read() is not grpc.aio.EOF:
                pass
        else:
            await call
    return caught.value.code()


async def test_from_backends_serves_every_service_and_ping_names_the_provider(
    kit: Served,
) -> None:
    assert len(kit.server.services) == 6
    reply = await npb_grpc.NodeProviderServiceStub(kit.channel).Ping(npb.PingRequest())
    assert (reply.provider, reply.version) == ("fake", "1.2.3")
    kit.backend.reachable = False
    ping = npb_grpc.NodeProviderServiceStub(kit.channel).Ping(npb.PingRequest())
    assert await _code(ping) == grpc.StatusCode.UNAVAILABLE


async def test_optional_services_are_left_out_without_a_backend() -> None:
    backend = FakeBackend()
    servicers = ProviderServicers.from_backends(
        provider="fake", version="0", lifecycle=backend, notifier=backend, nodes=backend
    )
    assert servicers.endpoints is None and servicers.vms is None and servicers.disks is None


async def test_lifecycle_calls_reach_the_backend(kit: Served) -> None:
    stub = lpb_grpc.PodLifecycleServiceStub(kit.channel)
    created = await stub.CreatePod(lpb.CreatePodRequest(pod=_pod("db", "main")))
    assert created.status.phase == pod_pb2.POD_PHASE_PENDING
    got = await stub.GetPodStatus(lpb.GetPodStatusRequest(namespace="ns", name="db"))
    assert got.status.pod_ip == "10.0.0.1"
    assert {p.pod.ref.name for p in (await stub.GetPods(lpb.GetPodsRequest())).pods} == {
        "web",
        "db",
    }
    missing = stub.GetPod(lpb.GetPodRequest(namespace="ns", name="nope"))
    assert await _code(missing) == grpc.StatusCode.NOT_FOUND


async def test_notify_pods_relays_the_mailbox_and_lets_it_go(kit: Served) -> None:
    stub = ppb_grpc.PodNotifierServiceStub(kit.channel)
    call = stub.NotifyPods(ppb.NotifyPodsRequest())
    first = await call.read()
    assert first.ref.name == "web"
    await lpb_grpc.PodLifecycleServiceStub(kit.channel).CreatePod(
        lpb.CreatePodRequest(pod=_pod("db", "main"))
    )
    assert (await call.read()).ref.name == "db"
    call.cancel()
    await asyncio.wait_for(kit.backend.unsubscribed.wait(), 10)


async def test_a_closed_hub_ends_the_streams_unavailable(kit: Served) -> None:
    pods = ppb_grpc.PodNotifierServiceStub(kit.channel).NotifyPods(ppb.NotifyPodsRequest())
    nodes = npb_grpc.NodeProviderServiceStub(kit.channel).NotifyNodeStatus(
        npb.NotifyNodeStatusRequest()
    )
    assert (await pods.read()).ref.name == "web"
    assert (await nodes.read()).node.name == "node-0"
    kit.backend.pod_hub.close("shutting down; reconnect")
    kit.backend.node_hub.close("shutting down; reconnect")
    assert await _code(pods) == grpc.StatusCode.UNAVAILABLE
    assert await _code(nodes) == grpc.StatusCode.UNAVAILABLE


async def test_logs_options_container_and_previous_are_the_kits(kit: Served) -> None:
    stub = kpb_grpc.KubeletEndpointServiceStub(kit.channel)
    kit.backend.log = [Line(T0 + timedelta(seconds=i), f"line {i}") for i in range(5)]

    async def text(tail: int | None = None) -> str:
        request = kpb.GetContainerLogsRequest(namespace="ns", pod_name="web", tail_lines=tail)
        return "".join([r.line.decode() + "\n" async for r in stub.GetContainerLogs(request)])

    assert await text() == "".join(f"line {i}\n" for i in range(5))  # unset tail: everything
    assert await text(tail=2) == "line 3\nline 4\n"
    assert kit.backend.calls[0] == "log main"  # no container named: the first
    wrong = stub.GetContainerLogs(
        kpb.GetContainerLogsRequest(namespace="ns", pod_name="web", container_name="nope")
    )
    assert await _code(wrong) == grpc.StatusCode.INVALID_ARGUMENT
    previous = stub.GetContainerLogs(
        kpb.GetContainerLogsRequest(namespace="ns", pod_name="web", previous=True)
    )
    assert await _code(previous) == grpc.StatusCode.FAILED_PRECONDITION
    negative = stub.GetContainerLogs(
        kpb.GetContainerLogsRequest(namespace="ns", pod_name="web", tail_lines=-1)
    )
    assert await _code(negative) == grpc.StatusCode.INVALID_ARGUMENT
    assert len(kit.backend.calls) == 2  # the refused requests never reached the backend
    kit.backend.log = []
    assert await text() == ""  # no VM yet: an empty log


async def test_streams_start_with_start_and_reach_the_backend(kit: Served) -> None:
    stub = kpb_grpc.KubeletEndpointServiceStub(kit.channel)
    start = kpb.ExecStart(namespace="ns", pod_name="web", container_name="side", command=["cat"])
    call = stub.Exec(iter([kpb.ExecRequest(start=start), kpb.ExecRequest(stdin=b"hi")]))
    responses = [r async for r in call]
    assert [r.stdout for r in responses[:-1]] == [b"hi"]
    assert responses[-1].exit.exit_code == 0
    assert kit.backend.calls == ["exec side cat"]
    no_start = stub.Exec(iter([kpb.ExecRequest(stdin=b"x")]))
    assert await _code(no_start) == grpc.StatusCode.INVALID_ARGUMENT
    bad_port = stub.PortForward(
        iter([kpb.PortForwardRequest(start=kpb.PortForwardStart(namespace="ns", pod_name="web"))])
    )
    assert await _code(bad_port) == grpc.StatusCode.INVALID_ARGUMENT
    attach = kpb.AttachStart(namespace="ns", pod_name="web", stdout=True)
    unserved = stub.Attach(iter([kpb.AttachRequest(start=attach)]))
    assert await _code(unserved) == grpc.StatusCode.UNIMPLEMENTED
    unknown = stub.Attach(
        iter([kpb.AttachRequest(start=kpb.AttachStart(namespace="ns", pod_name="nope"))])
    )
    assert await _code(unknown) == grpc.StatusCode.NOT_FOUND
    assert kit.backend.calls == ["exec side cat"]


async def test_vm_calls_check_the_owner_and_bounds_first(kit: Served) -> None:
    stub = vpb_grpc.VirtualMachineServiceStub(kit.channel)
    vm = await stub.GetVirtualMachine(vpb.GetVirtualMachineRequest(identity="id-1", namespace="ns"))
    assert vm.virtual_machine.identity == "id-1"
    listed = await stub.ListSnapshots(vpb.ListSnapshotsRequest(identity="id-1", namespace="ns"))
    assert [s.id for s in listed.snapshots] == ["s1"]
    for call in (
        stub.ListSnapshots(vpb.ListSnapshotsRequest(identity="theirs", namespace="ns")),
        stub.DeleteSnapshot(
            vpb.DeleteSnapshotRequest(identity="theirs", namespace="ns", snapshot_id="s1")
        ),
    ):
        assert await _code(call) == grpc.StatusCode.PERMISSION_DENIED
    assert kit.backend.calls == []


async def test_disk_service_is_served_checked_and_healthy(kit: Served) -> None:
    assert "vmlet.provider.v1.DiskService" in kit.server.services
    health = health_pb2_grpc.HealthStub(kit.channel)
    name = "vmlet.provider.v1.DiskService"
    reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    stub = dpb_grpc.DiskServiceStub(kit.channel)
    made = await stub.CreateDisk(vpb.CreateDiskRequest(name="data", size_bytes=2**30))
    assert made.disk.handle == "h-data"
    for request in (
        vpb.CreateDiskRequest(name="", size_bytes=2**30),
        vpb.CreateDiskRequest(name="zero", size_bytes=0),
    ):
        assert await _code(stub.CreateDisk(request)) == grpc.StatusCode.INVALID_ARGUMENT
    grown = await stub.ExpandDisk(vpb.ExpandDiskRequest(handle="h-data", size_bytes=2**31))
    assert grown.disk.size_bytes == 2**31
    gone = stub.ExpandDisk(vpb.ExpandDiskRequest(handle="gone", size_bytes=2**31))
    assert await _code(gone) == grpc.StatusCode.NOT_FOUND
    await stub.DeleteDisk(vpb.DeleteDiskRequest(handle="h-data"))
    assert (await stub.GetDisk(vpb.GetDiskRequest(handle="h-data"))).disk.handle == "h-data"
    assert kit.backend.calls == ["create disk data", "delete disk h-data"]


async def test_the_deprecated_disk_rpcs_answer_as_disk_service(kit: Served) -> None:
    old = vpb_grpc.VirtualMachineServiceStub(kit.channel)
    new = dpb_grpc.DiskServiceStub(kit.channel)
    request = vpb.CreateDiskRequest(name="data", size_bytes=2**30)
    assert await old.CreateDisk(request) == await new.CreateDisk(request)
    expand = vpb.ExpandDiskRequest(handle="h-data", size_bytes=2**31)
    assert await old.ExpandDisk(expand) == await new.ExpandDisk(expand)
    get = vpb.GetDiskRequest(handle="h-data")
    assert await old.GetDisk(get) == await new.GetDisk(get)
    await old.DeleteDisk(vpb.DeleteDiskRequest(handle="h-data"))
    bad = vpb.CreateDiskRequest(name="zero", size_bytes=0)
    assert await _code(old.CreateDisk(bad)) == grpc.StatusCode.INVALID_ARGUMENT
    assert kit.backend.calls == ["create disk data", "create disk data", "delete disk h-data"]


async def test_without_disks_the_deprecated_disk_rpcs_are_unimplemented() -> None:
    backend = FakeBackend()
    servicers = ProviderServicers.from_backends(
        provider="fake", version="0", lifecycle=backend, notifier=backend, nodes=backend,
        vms=backend,
    )
    assert servicers.disks is None
    async with ProviderServer(servicers, address="127.0.0.1:0", provider="fake") as server:
        assert "vmlet.provider.v1.DiskService" not in server.services
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = vpb_grpc.VirtualMachineServiceStub(channel)
            call = stub.GetDisk(vpb.GetDiskRequest(handle="h"))
            assert await _code(call) == grpc.StatusCode.UNIMPLEMENTED


async def test_a_cancelled_stop_or_start_pod_still_runs_to_its_end() -> None:
    """The fault: the caller of StopPod goes away (cancelled, deadline) after the VM is off but
    before its exit code is written. The backend's call is not cut short: no VM is left off
    without its exit code, nor half started."""
    from vmlet_contract.kit import PodLifecycleServicer

    class Slow:
        def __init__(self) -> None:
            self.release = asyncio.Event()
            self.done: list[str] = []

        async def stop_pod(self, pod: pod_pb2.Pod, grace_seconds: int) -> pod_pb2.PodStatus:
            await self.release.wait()
            self.done.append(f"stop {grace_seconds}")
            return pod_pb2.PodStatus()

        async def start_pod(self, pod: pod_pb2.Pod) -> pod_pb2.PodStatus:
            await self.release.wait()
            self.done.append("start")
            return pod_pb2.PodStatus()

    backend = Slow()
    servicer = PodLifecycleServicer(backend)  # type: ignore[arg-type]
    calls = [asyncio.ensure_future(servicer.StopPod(
                 lpb.StopPodRequest(pod=_pod("a", "vm"), grace_seconds=7), None)),
             asyncio.ensure_future(servicer.StartPod(lpb.StartPodRequest(pod=_pod("b")), None))]
    await asyncio.sleep(0)
    for call in calls:
        call.cancel()
    await asyncio.gather(*calls, return_exceptions=True)
    assert all(c.cancelled() for c in calls) and backend.done == []
    backend.release.set()
    for _ in range(10):
        await asyncio.sleep(0)
    assert sorted(backend.done) == ["start", "stop 7"]
