"""The kubelet endpoint backend over OpenStack: logs are the server's console (`consolelog`),
stats what Nova exposes (`stats`); exec and port-forward go over the server's network to its
address (SSH with the credentials the facade resolved, and TCP; `vmlet_contract.guest`), and a
server with no network has no address, and they say so. Attach, Nova's serial console (a
websocket proxy), is not wired up yet: UNIMPLEMENTED, saying so.

The request's options, the container named and `previous` are the kit's
(`vmlet_contract.kit.endpoints`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from vmlet.provider.v1 import kubelet_endpoint_service_pb2 as pb
from vmlet.provider.v1 import pod_pb2
from vmlet_contract import FailedPrecondition, containerlogs, guest
from vmlet_contract.kit import LogSource, unsupported

from .cloud import Cloud
from .config import Settings
from .consolelog import ConsoleJournal, server_log
from .pods import Pods
from .stats import Stats

__all__ = ["KubeletEndpoints"]

_NO_CONSOLE = (
    "attach is not supported by the OpenStack provider yet: Nova's serial console is not wired "
    "up; read the console with kubectl logs"
)


class KubeletEndpoints:
    """Logs, stats, exec and port-forward of server pods (a `kit.KubeletEndpointBackend`)."""

    def __init__(
        self,
        cloud: Cloud,
        pods: Pods,
        stats: Stats,
        settings: Settings,
        closing: asyncio.Event,
    ) -> None:
        self._cloud = cloud
        self._pods = pods
        self._stats = stats
        self._settings = settings
        self._closing = closing
        self._journal = ConsoleJournal()

    async def pod_spec(self, namespace: str, name: str) -> pod_pb2.Pod:
        pod, _ = await self._pods.get(namespace, name)
        return pod

    @contextlib.asynccontextmanager
    async def open_log(
        self, namespace: str, pod_name: str, container: str, options: containerlogs.LogOptions
    ) -> AsyncIterator[LogSource | None]:
        entry = self._pods.entry(namespace, pod_name)
        server = self._pods.server_of(entry) if entry is not None else None
        if entry is None or server is None:
            yield None
            return

        def alive() -> bool:
            return not self._closing.is_set() and self._pods.entry(namespace, pod_name) is entry

        history, followed = await server_log(
            self._cloud,
            self._journal,
            server.id,
            tail_lines=options.tail_lines,
            poll_seconds=self._settings.log_poll_seconds,
            alive=alive,
        )
        yield LogSource(history=history, followed=followed)

    async def _guest_address(self, namespace: str, name: str) -> str:
        """The server's primary address, from its status; FailedPrecondition when it has none."""
        _, status = await self._pods.get(namespace, name)
        if not status.pod_ip:
            raise FailedPrecondition(
                f"the guest of {namespace}/{name} has no IP yet (a server with no network has "
                "none): exec and port-forward go over its network"
            )
        return str(status.pod_ip)

    async def exec(
        self, start: pb.ExecStart, container: str, requests: AsyncIterator[pb.ExecRequest]
    ) -> AsyncIterator[pb.ExecResponse]:
        host = await self._guest_address(start.namespace, start.pod_name)
        async with contextlib.aclosing(guest.exec_over_ssh(start, requests, host)) as responses:
            async for response in responses:
                yield response

    def attach(
        self, start: pb.AttachStart, container: str, requests: AsyncIterator[pb.AttachRequest]
    ) -> AsyncIterator[pb.AttachResponse]:
        raise unsupported(_NO_CONSOLE)

    async def port_forward(
        self, start: pb.PortForwardStart, requests: AsyncIterator[pb.PortForwardRequest]
    ) -> AsyncIterator[pb.PortForwardResponse]:
        host = await self._guest_address(start.namespace, start.pod_name)
        async with contextlib.aclosing(guest.forward_tcp(requests, host, start.port)) as responses:
            async for response in responses:
                yield response

    async def stats_summary(self, node_name: str) -> pb.GetStatsSummaryResponse:
        return await self._stats.summary(node_name)
