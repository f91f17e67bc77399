"""The kubelet endpoint backend of the in-memory cloud: logs, exec, attach, port-forward, stats.

- Logs are each machine's event log ("created on ...", "powering on", "powered on", ...), one
  line per event, and at its first boot one "first-boot: <container>: <argv>" line per command
  a cloud-init guest would run (see `machines`); a followed log ends when the pod goes away.
  The request's options, the container named and `previous` are the kit's
  (`vmlet_contract.kit.endpoints`).
- Exec runs the built-in `shell`; with a TTY stderr merges into stdout.
- Attach echoes the console's stdin to its stdout until stdin closes.
- PortForward is an echo server on every port.
- Stats are the figures of `stats`.
Exec, attach and port-forward need the pod Running (FAILED_PRECONDITION otherwise).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator
from typing import Any

from vmlet.provider.v1 import kubelet_endpoint_service_pb2 as pb
from vmlet.provider.v1 import pod_pb2
from vmlet_contract import InvalidArgument, containerlogs
from vmlet_contract.kit import LogSource

from . import shell
from .cloud import Cloud
from .machines import LogLine, Machine
from .stats import stats_summary

__all__ = ["KubeletEndpoints"]


def _container(vm: Machine, name: str) -> pod_pb2.Container:
    """The container `name` (the kit checked that the pod has it), or the pod's first."""
    assert vm.pod is not None
    return next((c for c in vm.pod.containers if c.name == name), pod_pb2.Container(name=name))


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


class KubeletEndpoints:
    """The kubelet endpoint calls of pretend guests (a `kit.KubeletEndpointBackend`)."""

    def __init__(self, cloud: Cloud) -> None:
        self._cloud = cloud

    async def pod_spec(self, namespace: str, name: str) -> pod_pb2.Pod:
        return self._cloud.pod_machine(namespace, name).pod or pod_pb2.Pod()

    @contextlib.asynccontextmanager
    async def open_log(
        self, namespace: str, pod_name: str, container: str, options: containerlogs.LogOptions
    ) -> AsyncIterator[LogSource | None]:
        vm = self._cloud.pod_machine(namespace, pod_name)
        yield LogSource(history=list(vm.log), followed=self._followed(vm, vm.log_seq))

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

    async def exec(
        self, start: pb.ExecStart, container: str, requests: AsyncIterator[pb.ExecRequest]
    ) -> AsyncIterator[pb.ExecResponse]:
        vm = self._cloud.running_machine(start.namespace, start.pod_name)
        env = {e.name: e.value for e in _container(vm, container).env}
        guest = shell.Guest(hostname=start.pod_name, env=env,
                            poweroff=functools.partial(self._cloud.guest_shutdown, vm.identity))
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

    async def attach(
        self, start: pb.AttachStart, container: str, requests: AsyncIterator[pb.AttachRequest]
    ) -> AsyncIterator[pb.AttachResponse]:
        self._cloud.running_machine(start.namespace, start.pod_name)
        echo = start.stdin and (start.stdout or start.tty)
        read = _stdin_reader(requests, attached=True)
        while (chunk := await read()) is not None:
            if echo and chunk:
                yield pb.AttachResponse(stdout=chunk)
        yield pb.AttachResponse(exit=pb.StreamExit(exit_code=0))

    async def port_forward(
        self, start: pb.PortForwardStart, requests: AsyncIterator[pb.PortForwardRequest]
    ) -> AsyncIterator[pb.PortForwardResponse]:
        self._cloud.running_machine(start.namespace, start.pod_name)
        async for message in requests:
            kind = message.WhichOneof("kind")
            if kind == "data":
                yield pb.PortForwardResponse(data=message.data)
            elif kind == "close":
                return
            else:
                raise InvalidArgument("start may only be the first message")

    async def stats_summary(self, node_name: str) -> pb.GetStatsSummaryResponse:
        return stats_summary(self._cloud, node_name)
