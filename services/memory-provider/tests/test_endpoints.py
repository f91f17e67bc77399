"""KubeletEndpointService: logs, exec through the built-in shell, attach, port-forward, stats."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from vmlet.provider.v1 import kubelet_endpoint_service_pb2 as ke
from vmlet.provider.v1 import pod_lifecycle_service_pb2 as pl
from vmlet_memory.testing import Harness, make_pod

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def vm(mp: Harness) -> Harness:
    pod = make_pod("vm-0", env={"GREETING": "hello"}, cpu_millis=2000, memory_bytes=4 << 30)
    await mp.lifecycle.CreatePod(pl.CreatePodRequest(pod=pod))
    return mp


async def _exec(
    mp: Harness,
    command: Sequence[str],
    stdin: Sequence[bytes] = (),
    *,
    tty: bool = False,
    pod: str = "vm-0",
) -> tuple[bytes, bytes, ke.StreamExit]:
    async def requests() -> AsyncIterator[ke.ExecRequest]:
        start = ke.ExecStart(
            namespace="default",
            pod_name=pod,
            container_name="vm",
            command=list(command),
            stdin=bool(stdin),
            stdout=True,
            stderr=True,
            tty=tty,
        )
        yield ke.ExecRequest(start=start)
        for chunk in stdin:
            yield ke.ExecRequest(stdin=chunk)
        yield ke.ExecRequest(close_stdin=True)

    out, err, exit_ = b"", b"", None
    async for response in mp.endpoints.Exec(requests()):
        kind = response.WhichOneof("kind")
        if kind == "stdout":
            out += response.stdout
        elif kind == "stderr":
            err += response.stderr
        else:
            exit_ = response.exit
    assert exit_ is not None, "the last message must carry exit"
    return out, err, exit_


async def test_exec_echo(vm: Harness) -> None:
    out, err, exit_ = await _exec(vm, ["echo", "hello", "world"])
    assert (out, err, exit_.exit_code) == (b"hello world\n", b"", 0)


@pytest.mark.parametrize("code", [0, 3, 42])
async def test_exec_exit_codes(vm: Harness, code: int) -> None:
    _, _, exit_ = await _exec(vm, ["sh", "-c", f"exit {code}"])
    assert exit_.exit_code == code


async def test_exec_unknown_command(vm: Harness) -> None:
    out, err, exit_ = await _exec(vm, ["frobnicate", "--now"])
    assert out == b""
    assert err == b"frobnicate: command not found\n"
    assert exit_.exit_code == 127 and "not found" in exit_.message


async def test_exec_cat_echoes_stdin_until_closed(vm: Harness) -> None:
    out, _, exit_ = await _exec(vm, ["cat"], [b"line 1\n", b"line 2\n"])
    assert (out, exit_.exit_code) == (b"line 1\nline 2\n", 0)


async def test_exec_sees_hostname_and_resolved_env(vm: Harness) -> None:
    assert (await _exec(vm, ["hostname"]))[0] == b"vm-0\n"
    assert (await _exec(vm, ["printenv", "GREETING"]))[0] == b"hello\n"


async def test_exec_with_tty_merges_stderr(vm: Harness) -> None:
    out, err, exit_ = await _exec(vm, ["nope"], tty=True)
    assert (out, err, exit_.exit_code) == (b"nope: command not found\n", b"", 127)


async def test_exec_on_an_unknown_pod_is_not_found(vm: Harness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _exec(vm, ["true"], pod="ghost")
    assert info.value.code() is grpc.StatusCode.NOT_FOUND


async def test_exec_must_start_with_start(vm: Harness) -> None:
    async def requests() -> AsyncIterator[ke.ExecRequest]:
        yield ke.ExecRequest(stdin=b"x")

    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in vm.endpoints.Exec(requests()):
            pass
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_exec_interactive_round_trips(vm: Harness) -> None:
    call = vm.endpoints.Exec()
    await call.write(
        ke.ExecRequest(
            start=ke.ExecStart(
                namespace="default", pod_name="vm-0", command=["cat"], stdin=True, stdout=True
            )
        )
    )
    for word in (b"ping", b"pong"):
        await call.write(ke.ExecRequest(stdin=word))
        reply = await asyncio.wait_for(call.read(), 5)
        assert reply.stdout == word
    await call.write(ke.ExecRequest(close_stdin=True))
    assert (await call.read()).exit.exit_code == 0


async def test_attach_echoes_the_console(vm: Harness) -> None:
    call = vm.endpoints.Attach()
    start = ke.AttachStart(namespace="default", pod_name="vm-0", stdin=True, stdout=True, tty=True)
    await call.write(ke.AttachRequest(start=start))
    await call.write(ke.AttachRequest(resize=ke.TerminalSize(width=80, height=24)))
    await call.write(ke.AttachRequest(stdin=b"ls\r"))
    assert (await asyncio.wait_for(call.read(), 5)).stdout == b"ls\r"
    await call.write(ke.AttachRequest(close_stdin=True))
    assert (await call.read()).exit.exit_code == 0


async def test_port_forward_is_an_echo_server(vm: Harness) -> None:
    call = vm.endpoints.PortForward()
    await call.write(
        ke.PortForwardRequest(
            start=ke.PortForwardStart(namespace="default", pod_name="vm-0", port=22)
        )
    )
    await call.write(ke.PortForwardRequest(data=b"SSH-2.0-test\r\n"))
    assert (await asyncio.wait_for(call.read(), 5)).data == b"SSH-2.0-test\r\n"
    await call.write(ke.PortForwardRequest(close=True))
    assert await call.read() is grpc.aio.EOF


async def test_port_forward_rejects_bad_ports(vm: Harness) -> None:
    call = vm.endpoints.PortForward()
    await call.write(
        ke.PortForwardRequest(
            start=ke.PortForwardStart(namespace="default", pod_name="vm-0", port=0)
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call.read()
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def _logs_request(**kw: object) -> ke.GetContainerLogsRequest:
    return ke.GetContainerLogsRequest(
        namespace="default",
        pod_name="vm-0",
        container_name="vm",
        **kw,  # type: ignore[arg-type]
    )


async def test_logs_tell_the_vm_story(vm: Harness) -> None:
    lines = [r.line.decode() async for r in vm.endpoints.GetContainerLogs(_logs_request())]
    assert len(lines) == 2
    assert lines[0].endswith("created on vmlet-memory-0 with address 10.88.0.1")
    assert lines[1] == "powered on"
    assert not lines[0][:1].isdigit()  # the time rides in its own field, not in the text
    stamped = [r async for r in vm.endpoints.GetContainerLogs(_logs_request())]
    assert all(r.time.seconds > 0 for r in stamped)

    tail = [r.line async for r in vm.endpoints.GetContainerLogs(_logs_request(tail_lines=1))]
    assert len(tail) == 1 and tail[0].endswith(b"powered on")
    future = Timestamp()
    future.FromDatetime(datetime.now(UTC) + timedelta(hours=1))
    since = [r async for r in vm.endpoints.GetContainerLogs(_logs_request(since_time=future))]
    assert since == []


async def test_first_boot_logs_the_commands_a_cloud_init_guest_would_run_once(
    mp: Harness,
) -> None:
    pod = make_pod("vm-0", keep_on_delete=True, env={"TOKEN": "s3cret"})
    pod.containers[0].command.extend(["/usr/bin/serve"])
    pod.containers[0].args.extend(["--name", "my app"])
    pod.init_containers.add(name="migrate", command=["sh", "-c", "echo $TOKEN"])
    pod.init_containers.add(name="idle")  # no command: nothing to run
    pod.init_containers.add(name="warm", args=["/opt/warm"])
    await mp.lifecycle.CreatePod(pl.CreatePodRequest(pod=pod))
    lines = [r.line.decode() async for r in mp.endpoints.GetContainerLogs(_logs_request())]
    assert lines[1:] == [
        "powered on",
        "first-boot: migrate: sh -c 'echo $TOKEN'",
        "first-boot: warm: /opt/warm",
        "first-boot: vm: /usr/bin/serve --name 'my app'",
    ]
    assert not any("s3cret" in line for line in lines)
    # Once per VM, as cloud-init: a kept VM's next boot runs nothing again.
    await mp.lifecycle.DeletePod(pl.DeletePodRequest(pod=pod))
    await mp.lifecycle.CreatePod(pl.CreatePodRequest(pod=pod))
    texts = [line.text for line in mp.provider.cloud.machine(pod.identity).log]
    assert texts.count("powered on") == 2
    assert sum(text.startswith("first-boot: ") for text in texts) == 3


async def test_logs_follow_new_lines_and_end_with_the_pod(vm: Harness) -> None:
    call = vm.endpoints.GetContainerLogs(_logs_request(follow=True, tail_lines=0))
    await asyncio.sleep(0.1)
    await vm.lifecycle.UpdatePod(pl.UpdatePodRequest(pod=make_pod("vm-0", annotations={"x": "y"})))
    line = await asyncio.wait_for(call.read(), 5)
    assert line.line == b"updated"
    await vm.lifecycle.DeletePod(pl.DeletePodRequest(pod=make_pod("vm-0")))
    rest = []
    while (message := await asyncio.wait_for(call.read(), 5)) is not grpc.aio.EOF:
        rest.append(message.line.decode())
    assert rest == ["powered off", "destroyed"]


async def test_logs_of_an_unknown_container_are_invalid(vm: Harness) -> None:
    request = ke.GetContainerLogsRequest(namespace="default", pod_name="vm-0", container_name="x")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in vm.endpoints.GetContainerLogs(request):
            pass
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_stats_are_consistent(vm: Harness) -> None:
    await vm.lifecycle.CreatePod(pl.CreatePodRequest(pod=make_pod("vm-1")))
    await vm.lifecycle.CreatePod(pl.CreatePodRequest(pod=make_pod("other", node="vmlet-memory-1")))
    stats = await vm.endpoints.GetStatsSummary(
        ke.GetStatsSummaryRequest(node_name="vmlet-memory-0")
    )
    assert sorted(p.ref.name for p in stats.pods) == ["vm-0", "vm-1"]
    assert stats.node_cpu.usage_nano_cores > sum(p.cpu.usage_nano_cores for p in stats.pods)
    assert stats.node_memory.usage_bytes > sum(p.memory.usage_bytes for p in stats.pods)
    for p in stats.pods:
        assert 0 < p.memory.working_set_bytes <= p.memory.usage_bytes
        assert p.cpu.usage_nano_cores > 0
    vm0 = next(p for p in stats.pods if p.ref.name == "vm-0")
    # 2 cores requested: a quarter of it, give or take 20%.
    assert 400_000_000 <= vm0.cpu.usage_nano_cores <= 600_000_000
    again = await vm.endpoints.GetStatsSummary(
        ke.GetStatsSummaryRequest(node_name="vmlet-memory-0")
    )
    assert [p.cpu.usage_nano_cores for p in again.pods] == [
        p.cpu.usage_nano_cores for p in stats.pods
    ]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await vm.endpoints.GetStatsSummary(ke.GetStatsSummaryRequest(node_name="nope"))
    assert info.value.code() is grpc.StatusCode.NOT_FOUND
