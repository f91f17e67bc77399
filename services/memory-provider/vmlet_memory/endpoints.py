"""KubeletEndpointService over the in-memory cloud: logs, exec, attach, port-forward and stats.

- Logs are each machine's event log ("created on ...", "powering on", "powered on", ...), one
  line per event. Every option of the request is `vmlet_contract.containerlogs`'s to apply; a
  followed log ends when the pod goes away, and `previous` is FAILED_PRECONDITION (one instance).
- Exec runs the built-in `shell`; with a TTY stderr merges into stdout.
- Attach echoes the console's stdin to its stdout until stdin closes.
- PortForward is an echo server on every port.
- Stats are the figures of `stats`.
Exec, attach and port-forward need the pod Running (FAILED_PRECONDITION otherwise).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from vmlet.provider.v1 import kubelet_endpoint_service_pb2 as pb
from vmlet.provider.v1 import kubelet_endpoint_service_pb2_grpc as pb_grpc
from vmlet.provider.v1 import pod_pb2
from vmlet_contract import InvalidArgument, containerlogs

from . import shell
from .cloud import Cloud
from .machines import LogLine, Machine
from .stats import stats_summary

__all__ = ["KubeletEndpoints"]


def _container(vm: Machine, name: str) -> pod_pb2.Container:
    assert vm.pod is not None
    for container in vm.pod.containers:
        if not name or container.name == name:
            return container
    raise InvalidArgument(
        f"container {name} is not valid for pod {vm.pod.ref.namespace}/{vm.pod.ref.name}"
    )


async def _first(requests: AsyncIterator[Any], rpc: str) -> Any:
    first = await anext(requests, None)
    if first is None or first.WhichOneof("kind") != "start":
        raise InvalidArgument(f"the first {rpc} message must carry start")
    return first.start


def _stdin_reader(requests: AsyncIterator[Any], *, attached: bool) -> shell.Stdin:
    """Reads stdin chunks from Exec/Attach requests; None once closed or the stream ended.
    Resizes are accepted and ignored (there is no terminal to resize)."""
    closed = not attached

    async def read() -> bytes | None:
        nonlocal closed
        while not closed:
            message: Any = await anext(requests, None)
            kind = message.WhichOneof("kind") if message is not None else None
            if kind == "stdin":
                data: bytes = message.stdin
                return data
            if kind == "start":
                raise InvalidArgument("start may only be the first message")
            if kind in (None, "close_stdin"):
                closed = True
        return None

    return read


class KubeletEndpoints(pb_grpc.KubeletEndpointServiceServicer):
    """The kubelet endpoint calls of pretend guests."""

    def __init__(self, cloud: Cloud) -> None:
        self._cloud = cloud

    async def GetContainerLogs(
        self, request: pb.GetContainerLogsRequest, context: Any
    ) -> AsyncIterator[pb.GetContainerLogsResponse]:
        options = containerlogs.LogOptions.from_request(request)
        vm = self._cloud.pod_machine(request.namespace, request.pod_name)
        container = _container(vm, request.container_name)
        if options.previous:
            raise containerlogs.no_previous(container.name, request.pod_name)
        history = list(vm.log)
        followed = self._followed(vm, vm.log_seq)
        async for response in containerlogs.serve_log(options, history, followed):
            yield response

    async def _followed(self, vm: Machine, last: int) -> AsyncIterator[LogLine]:
        """The lines `vm` logs after line `last`, until its pod goes away."""
        key = vm.key
        while True:
            fresh = [line for line in vm.log if line.seq > last]
            for line in fresh:
                last = line.seq
                yield line
            if fresh:
                continue
            if vm.key != key or self._cloud.closing.is_set():
                return
            await vm.log_changed().wait()

    async def Exec(
        self, request_iterator: AsyncIterator[pb.ExecRequest], context: Any
    ) -> AsyncIterator[pb.ExecResponse]:
        requests = aiter(request_iterator)
        start: pb.ExecStart = await _first(requests, "Exec")
        if not start.command:
            raise InvalidArgument("exec needs a command")
        vm = self._cloud.running_machine(start.namespace, start.pod_name)
        container = _container(vm, start.container_name)
        guest = shell.Guest(hostname=start.pod_name, env={e.name: e.value for e in container.env})
        stdin = _stdin_reader(requests, attached=start.stdin)
        async for event in shell.run(list(start.command), stdin, guest):
            if isinstance(event, shell.Exit):
                yield pb.ExecResponse(
                    exit=pb.StreamExit(exit_code=event.code, message=event.message)
                )
                return
            if event.stream == "stdout" or start.tty:
                if start.stdout or start.tty:
                    yield pb.ExecResponse(stdout=event.data)
            elif start.stderr:
                yield pb.ExecResponse(stderr=event.data)

    async def Attach(
        self, request_iterator: AsyncIterator[pb.AttachRequest], context: Any
    ) -> AsyncIterator[pb.AttachResponse]:
        requests = aiter(request_iterator)
        start: pb.AttachStart = await _first(requests, "Attach")
        vm = self._cloud.running_machine(start.namespace, start.pod_name)
        _container(vm, start.container_name)
        echo = start.stdin and (start.stdout or start.tty)
        read = _stdin_reader(requests, attached=True)
        while (chunk := await read()) is not None:
            if echo and chunk:
                yield pb.AttachResponse(stdout=chunk)
        yield pb.AttachResponse(exit=pb.StreamExit(exit_code=0))

    async def PortForward(
        self, request_iterator: AsyncIterator[pb.PortForwardRequest], context: Any
    ) -> AsyncIterator[pb.PortForwardResponse]:
        requests = aiter(request_iterator)
        start: pb.PortForwardStart = await _first(requests, "PortForward")
        if not 0 < start.port < 65536:
            raise InvalidArgument(f"port {start.port} is not a TCP port")
        self._cloud.running_machine(start.namespace, start.pod_name)
        async for message in requests:
            kind = message.WhichOneof("kind")
            if kind == "data":
                yield pb.PortForwardResponse(data=message.data)
            elif kind == "close":
                return
            else:
                raise InvalidArgument("start may only be the first message")

    async def GetStatsSummary(
        self, request: pb.GetStatsSummaryRequest, context: Any
    ) -> pb.GetStatsSummaryResponse:
        return stats_summary(self._cloud, request.node_name)
