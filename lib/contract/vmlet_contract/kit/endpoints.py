"""KubeletEndpointService: logs, exec, attach, port-forward and stats of VM pods.

The kit reads what every provider reads alike: the options of a logs request
(`containerlogs.LogOptions`, applied by `containerlogs.serve_log`), the first message of each
stream (INVALID_ARGUMENT when it is no start), the container named (INVALID_ARGUMENT when the pod
has none of that name; the first when none is named) and `previous` (FAILED_PRECONDITION: a VM
pod has one instance). The backend supplies the log lines and runs the streams. A provider that
cannot serve a stream raises `unsupported(...)` (UNIMPLEMENTED, saying why) from it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from vmlet.provider.v1 import kubelet_endpoint_service_pb2 as pb
from vmlet.provider.v1 import kubelet_endpoint_service_pb2_grpc as pb_grpc
from vmlet.provider.v1 import pod_pb2

from .. import containerlogs, guest
from ..errors import InvalidArgument, ProviderError

__all__ = [
    "KubeletEndpointBackend",
    "KubeletEndpointServicer",
    "LogSource",
    "attach_start",
    "container_of",
    "unsupported",
]


@dataclass(frozen=True)
class LogSource:
    """A VM's log: the lines written so far (oldest first), and those to come (read only when
    the request follows; it ends when the pod goes away or the provider shuts down)."""

    history: Sequence[containerlogs.LogLine]
    followed: AsyncIterator[containerlogs.LogLine]


def unsupported(message: str) -> ProviderError:
    """The error of a stream the provider does not serve: UNIMPLEMENTED with `message`."""
    return ProviderError(message, code=grpc.StatusCode.UNIMPLEMENTED)


def container_of(pod: pod_pb2.Pod, name: str, namespace: str, pod_name: str) -> str:
    """The container `name` names (the pod's first when empty); INVALID_ARGUMENT when the pod
    has none of that name."""
    names = [c.name for c in pod.containers]
    if name and name not in names:
        has = f": it has {', '.join(names)}" if names else ""
        raise InvalidArgument(f"container {name} is not valid for pod {namespace}/{pod_name}{has}")
    return name or (names[0] if names else "")


async def attach_start(requests: AsyncIterator[pb.AttachRequest]) -> pb.AttachStart:
    """The start of an Attach stream; INVALID_ARGUMENT when its first message is not one."""
    first = await anext(requests, None)
    if first is None or first.WhichOneof("kind") != "start":
        raise InvalidArgument("the first Attach message must carry start")
    return first.start


class KubeletEndpointBackend(Protocol):
    """What a provider knows of its guests. Streams get the rest of the request stream after
    the start message; they are closed (`aclose`) when the caller goes away."""

    async def pod_spec(self, namespace: str, name: str) -> pod_pb2.Pod:
        """The pod namespace/name; `NotFound` when the provider runs no such pod."""
        ...

    def open_log(
        self,
        namespace: str,
        pod_name: str,
        container: str,
        options: containerlogs.LogOptions,
    ) -> AbstractAsyncContextManager[LogSource | None]:
        """The log of the pod's VM, open while the context is; None when it has no VM yet."""
        ...

    def exec(
        self, start: pb.ExecStart, container: str, requests: AsyncIterator[pb.ExecRequest]
    ) -> AsyncIterator[pb.ExecResponse]:
        """Runs start.command in the guest, ending with an exit message."""
        ...

    def attach(
        self, start: pb.AttachStart, container: str, requests: AsyncIterator[pb.AttachRequest]
    ) -> AsyncIterator[pb.AttachResponse]:
        """Relays the guest's console."""
        ...

    def port_forward(
        self, start: pb.PortForwardStart, requests: AsyncIterator[pb.PortForwardRequest]
    ) -> AsyncIterator[pb.PortForwardResponse]:
        """Relays the TCP port start.port of the guest."""
        ...

    async def stats_summary(self, node_name: str) -> pb.GetStatsSummaryResponse:
        """The stats summary of a node (every node when empty)."""
        ...


async def _relay(responses: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """Yields the backend's responses; closes its stream (an SSH session, a socket) however the
    call ends, the caller gone included."""
    try:
        async for response in responses:
            yield response
    finally:
        aclose = getattr(responses, "aclose", None)
        if aclose is not None:
            await aclose()


class KubeletEndpointServicer(pb_grpc.KubeletEndpointServiceServicer):
    """KubeletEndpointService over a `KubeletEndpointBackend`."""

    def __init__(self, backend: KubeletEndpointBackend) -> None:
        self._backend = backend

    async def _container(self, namespace: str, pod_name: str, name: str) -> str:
        pod = await self._backend.pod_spec(namespace, pod_name)
        return container_of(pod, name, namespace, pod_name)

    async def GetContainerLogs(
        self, request: pb.GetContainerLogsRequest, context: Any
    ) -> AsyncIterator[pb.GetContainerLogsResponse]:
        options = containerlogs.LogOptions.from_request(request)
        namespace, pod_name = request.namespace, request.pod_name
        container = await self._container(namespace, pod_name, request.container_name)
        if options.previous:
            raise containerlogs.no_previous(container, pod_name)
        async with self._backend.open_log(namespace, pod_name, container, options) as source:
            if source is None:
                return
            async for response in containerlogs.serve_log(
                options, source.history, source.followed
            ):
                yield response

    async def Exec(
        self, request_iterator: AsyncIterator[pb.ExecRequest], context: Any
    ) -> AsyncIterator[pb.ExecResponse]:
        requests = aiter(request_iterator)
        start = await guest.exec_start(requests)
        container = await self._container(start.namespace, start.pod_name, start.container_name)
        async for response in _relay(self._backend.exec(start, container, requests)):
            yield response

    async def Attach(
        self, request_iterator: AsyncIterator[pb.AttachRequest], context: Any
    ) -> AsyncIterator[pb.AttachResponse]:
        requests = aiter(request_iterator)
        start = await attach_start(requests)
        container = await self._container(start.namespace, start.pod_name, start.container_name)
        async for response in _relay(self._backend.attach(start, container, requests)):
            yield response

    async def PortForward(
        self, request_iterator: AsyncIterator[pb.PortForwardRequest], context: Any
    ) -> AsyncIterator[pb.PortForwardResponse]:
        requests = aiter(request_iterator)
        start = await guest.port_forward_start(requests)
        async for response in _relay(self._backend.port_forward(start, requests)):
            yield response

    async def GetStatsSummary(
        self, request: pb.GetStatsSummaryRequest, context: Any
    ) -> pb.GetStatsSummaryResponse:
        return await self._backend.stats_summary(request.node_name)
