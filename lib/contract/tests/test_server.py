"""The provider server on loopback: reflection, health, error mapping, metrics, shutdown."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import CollectorRegistry

from vmlet.provider.v1 import node_provider_service_pb2 as np
from vmlet.provider.v1 import node_provider_service_pb2_grpc as np_grpc
from vmlet.provider.v1 import pod_lifecycle_service_pb2 as pl
from vmlet.provider.v1 import pod_lifecycle_service_pb2_grpc as pl_grpc
from vmlet.provider.v1 import pod_notifier_service_pb2 as pn
from vmlet.provider.v1 import pod_notifier_service_pb2_grpc as pn_grpc
from vmlet_contract import (
    READINESS_SERVICE,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ProviderServer,
    Readiness,
    ResourceExhausted,
    Unavailable,
    serve,
)

pytestmark = pytest.mark.timeout(60)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_binds_port_zero_and_reports_the_port(toy_server: ProviderServer) -> None:
    assert toy_server.port > 0
    assert toy_server.services == [
        "vmlet.provider.v1.PodLifecycleService",
        "vmlet.provider.v1.PodNotifierService",
        "vmlet.provider.v1.NodeProviderService",
    ]


async def test_reflection_lists_every_service(channel: grpc.aio.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    responses = [r async for r in call]
    names = {s.name for s in responses[0].list_services_response.service}
    assert names == {
        "vmlet.provider.v1.PodLifecycleService",
        "vmlet.provider.v1.PodNotifierService",
        "vmlet.provider.v1.NodeProviderService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }


async def test_reflection_serves_the_contract_descriptors(channel: grpc.aio.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="vmlet.provider.v1.NodeProviderService"
    )
    responses = [r async for r in stub.ServerReflectionInfo(iter([request]))]
    files = responses[0].file_descriptor_response.file_descriptor_proto
    assert files, responses[0]


async def test_health_answers_serving_overall_and_per_service(channel: grpc.aio.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", "vmlet.provider.v1.NodeProviderService"):
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
    assert info.value.code() is grpc.StatusCode.NOT_FOUND


async def _statuses(port: int) -> tuple[int, int]:
    """(liveness, readiness) as the health service of the server on `port` answers them."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        live = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        ready = await stub.Check(
            health_pb2.HealthCheckRequest(service=READINESS_SERVICE), timeout=5
        )
        return live.status, ready.status


async def test_readiness_is_serving_without_a_provider_readiness(
    toy_server: ProviderServer,
) -> None:
    assert await _statuses(toy_server.port) == (SERVING, SERVING)


async def test_readiness_follows_the_provider_and_liveness_stays_serving(
    make_servicers: Any, toy: Any, registry: CollectorRegistry
) -> None:
    readiness = Readiness(False, "vCenter not reached yet")
    servicers = dataclasses.replace(make_servicers(toy), readiness=readiness)
    server = ProviderServer(servicers, address="127.0.0.1:0", provider="toy", registry=registry)
    await server.start()
    try:
        # Right from the start, not after a first change.
        assert await _statuses(server.port) == (SERVING, NOT_SERVING)
        for ready, expected in ((True, SERVING), (False, NOT_SERVING), (True, SERVING)):
            readiness.set(ready, "why")
            for _ in range(100):
                if await _statuses(server.port) == (SERVING, expected):
                    break
                await asyncio.sleep(0.02)
            assert await _statuses(server.port) == (SERVING, expected)
        # Several changes at once end at the last one.
        readiness.set(False)
        readiness.set(True)
        readiness.set(False)
        for _ in range(100):
            if (await _statuses(server.port))[1] == NOT_SERVING:
                break
            await asyncio.sleep(0.02)
        assert await _statuses(server.port) == (SERVING, NOT_SERVING)
    finally:
        await server.stop(0)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (NotFound("node toy-9 is gone"), grpc.StatusCode.NOT_FOUND),
        (InvalidArgument("bad spec"), grpc.StatusCode.INVALID_ARGUMENT),
        (FailedPrecondition("disk attached"), grpc.StatusCode.FAILED_PRECONDITION),
        (ResourceExhausted("no room"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (Unavailable("vCenter unreachable"), grpc.StatusCode.UNAVAILABLE),
    ],
)
async def test_provider_errors_become_their_status(
    toy: Any, channel: grpc.aio.Channel, error: Exception, code: grpc.StatusCode
) -> None:
    toy.error = error
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await np_grpc.NodeProviderServiceStub(channel).ListNodes(np.ListNodesRequest())
    assert info.value.code() is code
    assert info.value.details() == str(error)


async def test_unexpected_errors_become_internal_without_a_traceback(
    toy: Any, channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    toy.error = RuntimeError("secret-ish internals: password=hunter2")
    with caplog.at_level(logging.ERROR, logger="vmlet_contract"):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await np_grpc.NodeProviderServiceStub(channel).ListNodes(np.ListNodesRequest())
    assert info.value.code() is grpc.StatusCode.INTERNAL
    details = info.value.details() or ""
    assert "internal provider error" in details
    assert "Traceback" not in details and "hunter2" not in details and "RuntimeError" not in details
    # The traceback is in the server's log, under the incident id the client got.
    record = next(r for r in caplog.records if r.getMessage() == "rpc raised an unexpected error")
    assert record.exc_info is not None
    assert record.__dict__["incident"] in details


async def test_servicer_abort_passes_through(toy: Any, channel: grpc.aio.Channel) -> None:
    toy.abort_with = grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await np_grpc.NodeProviderServiceStub(channel).ListNodes(np.ListNodesRequest())
    assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert info.value.details() == "aborted by the servicer"


async def test_errors_in_a_stream_after_messages(toy: Any, channel: grpc.aio.Channel) -> None:
    toy.stream_error = Unavailable("host went away")
    call = np_grpc.NodeProviderServiceStub(channel).NotifyNodeStatus(np.NotifyNodeStatusRequest())
    first = await call.read()
    assert first.node.name == "toy-0"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call.read()
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert info.value.details() == "host went away"


async def test_unexpected_errors_in_a_stream(toy: Any, channel: grpc.aio.Channel) -> None:
    toy.stream_error = KeyError("oops")
    call = np_grpc.NodeProviderServiceStub(channel).NotifyNodeStatus(np.NotifyNodeStatusRequest())
    await call.read()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call.read()
    assert info.value.code() is grpc.StatusCode.INTERNAL
    assert "oops" not in (info.value.details() or "")


@pytest.mark.parametrize(
    ("method", "streaming", "body"),
    [
        ("ListNodes", False, b"\x0a\xff\xff\xff\xff\x0f"),  # a length past the end
        ("NotifyNodeStatus", True, b"\x0a\x05ab"),  # a truncated field
    ],
    ids=["unary", "stream"],
)
async def test_a_body_that_is_no_request_message_is_invalid_argument(
    toy: Any, channel: grpc.aio.Channel, registry: CollectorRegistry,
    method: str, streaming: bool, body: bytes,
) -> None:
    toy.error = RuntimeError("the servicer must not see it")  # it would be INTERNAL
    path = f"/vmlet.provider.v1.NodeProviderService/{method}"
    kind = channel.unary_stream if streaming else channel.unary_unary
    call = kind(path, request_serializer=bytes, response_deserializer=bytes)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        if streaming:
            async for _ in call(body):
                pass
        else:
            await call(body)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    request = f"{method}Request"
    assert info.value.details() == (
        f"the request is not a valid vmlet.provider.v1.{request} message "
        "(Wire format was corrupt)"
    )
    await np_grpc.NodeProviderServiceStub(channel).Ping(np.PingRequest())
    handled = registry.get_sample_value("grpc_server_handled_total", {
        "grpc_type": "server_stream" if streaming else "unary",
        "grpc_service": "vmlet.provider.v1.NodeProviderService",
        "grpc_method": method, "grpc_code": "INVALID_ARGUMENT"})
    assert handled == 1


async def test_metrics_count_rpcs_by_method_and_code(
    toy: Any, channel: grpc.aio.Channel, registry: CollectorRegistry
) -> None:
    stub = np_grpc.NodeProviderServiceStub(channel)
    await stub.Ping(np.PingRequest())
    await stub.Ping(np.PingRequest())
    toy.error = NotFound("nope")
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.ListNodes(np.ListNodesRequest())
    labels = {"grpc_type": "unary", "grpc_service": "vmlet.provider.v1.NodeProviderService"}

    def handled(method: str, code: str) -> float | None:
        return registry.get_sample_value(
            "grpc_server_handled_total", {**labels, "grpc_method": method, "grpc_code": code}
        )

    assert handled("Ping", "OK") == 2
    assert handled("ListNodes", "NOT_FOUND") == 1
    count = registry.get_sample_value(
        "grpc_server_handling_seconds_count", {**labels, "grpc_method": "Ping"}
    )
    assert count == 2
    assert registry.get_sample_value("vmlet_provider_info", {"provider": "toy"}) == 1


async def test_metrics_endpoint_serves_prometheus_text(
    make_servicers: Any, toy: Any, registry: CollectorRegistry
) -> None:
    server = ProviderServer(
        make_servicers(toy),
        address="127.0.0.1:0",
        provider="toy",
        metrics_address="127.0.0.1:0",
        registry=registry,
    )
    async with server:
        assert server.metrics_port
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            await np_grpc.NodeProviderServiceStub(ch).Ping(np.PingRequest())
        reader, writer = await asyncio.open_connection("127.0.0.1", server.metrics_port)
        writer.write(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        body = (await reader.read()).decode()
        writer.close()
    assert " 200 " in body.splitlines()[0]
    assert 'grpc_server_handled_total{grpc_code="OK",grpc_method="Ping"' in body


async def test_stop_turns_health_not_serving_runs_hooks_and_ends_streams(
    make_servicers: Any, toy: Any, registry: CollectorRegistry
) -> None:
    release = asyncio.Event()
    toy.release = release
    seen_health: list[int] = []
    server: ProviderServer

    async def hook() -> None:
        # Runs after health went NOT_SERVING and before the server stops.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            reply = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
            seen_health.append(reply.status)
        release.set()

    server = ProviderServer(
        make_servicers(toy, (hook,)), address="127.0.0.1:0", provider="toy", registry=registry
    )
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        call = np_grpc.NodeProviderServiceStub(ch).NotifyNodeStatus(np.NotifyNodeStatusRequest())
        await call.read()
        loop = asyncio.get_running_loop()
        started = loop.time()
        await server.stop(grace=30)
        assert loop.time() - started < 5  # the hook ended the stream; no waiting for grace
        assert await call.read() is grpc.aio.EOF
    assert seen_health == [health_pb2.HealthCheckResponse.NOT_SERVING]
    await server.stop()  # stopping twice is fine


async def test_serve_writes_the_port_file_and_stops_on_request(
    make_servicers: Any, toy: Any, registry: CollectorRegistry, tmp_path: Path
) -> None:
    ready, stop = asyncio.Event(), asyncio.Event()
    port_file = tmp_path / "port"
    task = asyncio.create_task(
        serve(
            make_servicers(toy),
            address="127.0.0.1:0",
            provider="toy",
            ready=ready,
            port_file=port_file,
            stop=stop,
            registry=registry,
        )
    )
    await asyncio.wait_for(ready.wait(), 10)
    port = int(port_file.read_text())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        reply = await np_grpc.NodeProviderServiceStub(ch).Ping(np.PingRequest())
        assert reply.provider == "toy"
    stop.set()
    await asyncio.wait_for(task, 10)


async def test_a_taken_port_fails_to_start(
    make_servicers: Any, toy: Any, toy_server: ProviderServer
) -> None:
    other = ProviderServer(
        make_servicers(toy),
        address=f"127.0.0.1:{toy_server.port}",
        provider="toy",
        registry=CollectorRegistry(),
    )
    with pytest.raises(RuntimeError):
        await other.start()


async def test_methods_a_provider_leaves_out_are_unimplemented(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await pl_grpc.PodLifecycleServiceStub(channel).GetPods(pl.GetPodsRequest())
    assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED
    assert info.value.details() == (
        "vmlet.provider.v1.PodLifecycleService/GetPods is not implemented by this provider"
    )
    call = pn_grpc.PodNotifierServiceStub(channel).NotifyPods(pn.NotifyPodsRequest())
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call.read()
    assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED


async def test_serve_puts_back_the_signal_handlers_it_found(
    toy: Any, registry: CollectorRegistry, make_servicers: Any
) -> None:
    def mine(signum: int, frame: object) -> None:
        pass

    before = signal.signal(signal.SIGTERM, mine)
    try:
        ready, stop = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(
            serve(
                make_servicers(toy),
                address="127.0.0.1:0",
                provider="toy",
                ready=ready,
                stop=stop,
                registry=registry,
            )
        )
        await asyncio.wait_for(ready.wait(), 10)
        assert signal.getsignal(signal.SIGTERM) is not mine  # serve() handles it meanwhile
        stop.set()
        await asyncio.wait_for(task, 10)
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, before)
