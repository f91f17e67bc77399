"""The kubelet endpoint backend over vSphere: logs are the VM's events and tasks, stats its
quick stats, exec and port-forward reach the guest at the IP VMware Tools reports.

A followed log ends when the pod goes away or the provider shuts down; the request's options, the
container named and `previous` are the kit's (`vmlet_contract.kit.endpoints`).

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

from vmlet.provider.v1 import kubelet_endpoint_service_pb2 as pb
from vmlet.provider.v1 import pod_pb2
from vmlet_contract import FailedPrecondition, containerlogs, guest
from vmlet_contract.kit import LogSource, unsupported

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


class KubeletEndpoints:
    """Logs, stats, exec and port-forward of VM pods (a `kit.KubeletEndpointBackend`)."""

    def __init__(
        self, session: Session, book: NodeBook, pods: Pods, closing: asyncio.Event
    ) -> None:
        self._session = session
        self._book = book
        self._pods = pods
        self._closing = closing

    async def pod_spec(self, namespace: str, name: str) -> pod_pb2.Pod:
        return self._pods.table.entry(namespace, name).pod

    @contextlib.asynccontextmanager
    async def open_log(
        self, namespace: str, pod_name: str, container: str, options: containerlogs.LogOptions
    ) -> AsyncIterator[LogSource | None]:
        entry = self._pods.table.entry(namespace, pod_name)
        vm = self._pods.table.vm_of(entry)
        moid = vm.moid if vm is not None else entry.vm
        if not moid:
            yield None
            return
        async with EventReader(self._session, moid) as reader:
            history = await reader.read()
            yield LogSource(history=history, followed=self._followed(reader, entry))

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

    def _guest_address(self, namespace: str, name: str) -> str:
        """The guest's primary IP; FAILED_PRECONDITION while there is none to use."""
        vm = self._pods.table.vm_of(self._pods.table.entry(namespace, name))
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

    def exec(
        self, start: pb.ExecStart, container: str, requests: AsyncIterator[pb.ExecRequest]
    ) -> AsyncIterator[pb.ExecResponse]:
        host = self._guest_address(start.namespace, start.pod_name)
        return guest.exec_over_ssh(start, requests, host)

    def attach(
        self, start: pb.AttachStart, container: str, requests: AsyncIterator[pb.AttachRequest]
    ) -> AsyncIterator[pb.AttachResponse]:
        raise unsupported(_NO_CONSOLE)

    def port_forward(
        self, start: pb.PortForwardStart, requests: AsyncIterator[pb.PortForwardRequest]
    ) -> AsyncIterator[pb.PortForwardResponse]:
        host = self._guest_address(start.namespace, start.pod_name)
        return guest.forward_tcp(requests, host, start.port)

    async def stats_summary(self, node_name: str) -> pb.GetStatsSummaryResponse:
        return await stats_summary(self._session, self._book, self._pods, node_name)
