"""KubeletEndpointService over vSphere: logs are the VM's events and tasks, stats its quick stats.

Logs honour since_time, tail_lines and follow; each line starts with its RFC 3339 time, like a
console log. A followed log ends when the pod goes away or the provider shuts down. Exec, attach
and port-forward need guest operations and a console relay, which this provider does not do yet:
they answer UNIMPLEMENTED with a message saying so.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC
from typing import Any

import grpc

from vmlet.provider.v1 import kubelet_endpoint_service_pb2 as pb
from vmlet.provider.v1 import kubelet_endpoint_service_pb2_grpc as pb_grpc
from vmlet_contract import InvalidArgument, ProviderError, podstatus

from .events import EventReader, LogLine
from .nodes import NodeBook
from .pods import Pods
from .podtable import PodEntry
from .session import Session
from .stats import stats_summary

__all__ = ["KubeletEndpoints"]


def _unimplemented(what: str) -> ProviderError:
    return ProviderError(
        f"{what} is not supported by the vSphere provider yet (it needs guest operations)",
        code=grpc.StatusCode.UNIMPLEMENTED,
    )


def _response(line: LogLine) -> pb.GetContainerLogsResponse:
    stamp = line.time.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return pb.GetContainerLogsResponse(
        time=podstatus.timestamp(line.time), line=f"{stamp} {line.text}".encode()
    )


def _check_container(entry: PodEntry, name: str) -> None:
    names = [c.name for c in entry.pod.containers]
    if name and names and name not in names:
        raise InvalidArgument(
            f"container {name} is not valid for pod {entry.key[0]}/{entry.key[1]}: it has "
            f"{', '.join(names)}"
        )


class KubeletEndpoints(pb_grpc.KubeletEndpointServiceServicer):
    """Logs and stats of VM pods."""

    def __init__(
        self, session: Session, book: NodeBook, pods: Pods, closing: asyncio.Event
    ) -> None:
        self._session = session
        self._book = book
        self._pods = pods
        self._closing = closing

    async def GetContainerLogs(
        self, request: pb.GetContainerLogsRequest, context: Any
    ) -> AsyncIterator[pb.GetContainerLogsResponse]:
        entry = self._pods.table.entry(request.namespace, request.pod_name)
        _check_container(entry, request.container_name)
        vm = self._pods.table.vm_of(entry)
        moid = vm.moid if vm is not None else entry.vm
        if request.previous or not moid:
            return
        poll = self._session.settings.log_poll_seconds
        async with EventReader(self._session, moid) as reader:
            lines = await reader.read()
            if request.HasField("since_time"):
                since = request.since_time.ToDatetime(tzinfo=UTC)
                lines = [line for line in lines if line.time >= since]
            if request.tail_lines >= 0:
                lines = lines[len(lines) - request.tail_lines :] if request.tail_lines else []
            for line in lines:
                yield _response(line)
            while request.follow and not self._closing.is_set():
                try:
                    await asyncio.wait_for(self._closing.wait(), timeout=poll)
                except TimeoutError:
                    pass
                for line in await reader.read():
                    yield _response(line)
                if self._pods.table.holds(entry):
                    continue
                return

    async def Exec(
        self, request_iterator: AsyncIterator[pb.ExecRequest], context: Any
    ) -> AsyncIterator[pb.ExecResponse]:
        raise _unimplemented("exec")
        yield pb.ExecResponse()  # pragma: no cover - makes this an async generator

    async def Attach(
        self, request_iterator: AsyncIterator[pb.AttachRequest], context: Any
    ) -> AsyncIterator[pb.AttachResponse]:
        raise _unimplemented("attach")
        yield pb.AttachResponse()  # pragma: no cover - makes this an async generator

    async def PortForward(
        self, request_iterator: AsyncIterator[pb.PortForwardRequest], context: Any
    ) -> AsyncIterator[pb.PortForwardResponse]:
        raise _unimplemented("port-forward")
        yield pb.PortForwardResponse()  # pragma: no cover - makes this an async generator

    async def GetStatsSummary(
        self, request: pb.GetStatsSummaryRequest, context: Any
    ) -> pb.GetStatsSummaryResponse:
        return await stats_summary(self._session, self._book, self._pods, request.node_name)
