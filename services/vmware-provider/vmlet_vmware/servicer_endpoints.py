"""KubeletEndpointService over vSphere: logs are the VM's events and tasks, stats its quick stats,
exec and port-forward reach the guest at the IP VMware Tools reports.

Every option of a logs request is `vmlet_contract.containerlogs`'s to apply to the events read;
a followed log ends when the pod goes away or the provider shuts down, and `previous` is
FAILED_PRECONDITION (a VM pod has one instance).

Exec runs the command over SSH, and port-forward relays TCP, to the guest's primary IP (the
pod's first IP; loopback and link-local reports are never used, so a guest cannot point either
at the provider's own host), with the login the facade resolved from the VM's SSH Secret; both
are `vmlet_contract.guest`. A VM that is not powered on, or whose guest has reported no IP yet,
is FAILED_PRECONDITION. vSphere guest operations (GuestProcessManager) are not used: they need
the guest's OS credentials as well, VMware Tools running, and vcsim runs them only in Docker
containers. Attach would be the serial console, which vSphere offers only as a network-backed
serial port that vmlet does not set up: UNIMPLEMENTED, saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc

from vmlet.provider.v1 import kubelet_endpoint_service_pb2 as pb
from vmlet.provider.v1 import kubelet_endpoint_service_pb2_grpc as pb_grpc
from vmlet_contract import (
    FailedPrecondition,
    InvalidArgument,
    ProviderError,
    containerlogs,
    guest,
)

from .events import EventReader, LogLine
from .nodes import NodeBook
from .pods import Pods
from .podtable import PodEntry
from .session import Session
from .stats import stats_summary
from .status import guest_ips

__all__ = ["KubeletEndpoints"]


_NO_CONSOLE = (
    "attach is the VM's serial console, which the vSphere provider does not relay (vSphere "
    "offers one only as a network-backed serial port, which vmlet does not set up); use kubectl "
    "exec, over SSH, instead"
)


def _check_container(entry: PodEntry, name: str) -> str:
    """The container `name` names (the first when empty); INVALID_ARGUMENT when the pod has none
    of that name."""
    names = [c.name for c in entry.pod.containers]
    if name and names and name not in names:
        raise InvalidArgument(
            f"container {name} is not valid for pod {entry.key[0]}/{entry.key[1]}: it has "
            f"{', '.join(names)}"
        )
    return name or (names[0] if names else "")


class KubeletEndpoints(pb_grpc.KubeletEndpointServiceServicer):
    """Logs, stats, exec and port-forward of VM pods."""

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
        options = containerlogs.LogOptions.from_request(request)
        entry = self._pods.table.entry(request.namespace, request.pod_name)
        container = _check_container(entry, request.container_name)
        if options.previous:
            raise containerlogs.no_previous(container, request.pod_name)
        vm = self._pods.table.vm_of(entry)
        moid = vm.moid if vm is not None else entry.vm
        if not moid:
            return
        async with EventReader(self._session, moid) as reader:
            history = await reader.read()
            followed = self._followed(reader, entry)
            async for response in containerlogs.serve_log(options, history, followed):
                yield response

    async def _followed(self, reader: EventReader, entry: PodEntry) -> AsyncIterator[LogLine]:
        """The VM's new events and tasks, polled, until its pod goes away or the provider stops."""
        poll = self._session.settings.log_poll_seconds
        while not self._closing.is_set():
            try:
                await asyncio.wait_for(self._closing.wait(), timeout=poll)
            except TimeoutError:
                pass
            for line in await reader.read():
                yield line
            if not self._pods.table.holds(entry):
                return

    def _guest_address(self, entry: PodEntry) -> str:
        """The guest's primary IP; FAILED_PRECONDITION while there is none to use."""
        namespace, name = entry.key
        vm = self._pods.table.vm_of(entry)
        if vm is None:
            raise FailedPrecondition(f"pod {namespace}/{name} has no VM yet")
        if not vm.powered_on:
            raise FailedPrecondition(
                f"the VM of pod {namespace}/{name} is {vm.power}, not powered on"
            )
        ips = guest_ips(vm)
        if not ips:
            raise FailedPrecondition(
                f"the guest has no IP yet: VMware Tools in the VM of pod {namespace}/{name} has "
                "not reported one"
            )
        return ips[0]

    async def Exec(
        self, request_iterator: AsyncIterator[pb.ExecRequest], context: Any
    ) -> AsyncIterator[pb.ExecResponse]:
        requests = aiter(request_iterator)
        start = await guest.exec_start(requests)
        entry = self._pods.table.entry(start.namespace, start.pod_name)
        _check_container(entry, start.container_name)
        host = self._guest_address(entry)
        async with contextlib.aclosing(guest.exec_over_ssh(start, requests, host)) as responses:
            async for response in responses:
                yield response

    async def Attach(
        self, request_iterator: AsyncIterator[pb.AttachRequest], context: Any
    ) -> AsyncIterator[pb.AttachResponse]:
        raise ProviderError(_NO_CONSOLE, code=grpc.StatusCode.UNIMPLEMENTED)
        yield pb.AttachResponse()  # pragma: no cover - makes this an async generator

    async def PortForward(
        self, request_iterator: AsyncIterator[pb.PortForwardRequest], context: Any
    ) -> AsyncIterator[pb.PortForwardResponse]:
        requests = aiter(request_iterator)
        start = await guest.port_forward_start(requests)
        entry = self._pods.table.entry(start.namespace, start.pod_name)
        host = self._guest_address(entry)
        async with contextlib.aclosing(
            guest.forward_tcp(requests, host, start.port)
        ) as responses:
            async for response in responses:
                yield response

    async def GetStatsSummary(
        self, request: pb.GetStatsSummaryRequest, context: Any
    ) -> pb.GetStatsSummaryResponse:
        return await stats_summary(self._session, self._book, self._pods, request.node_name)
