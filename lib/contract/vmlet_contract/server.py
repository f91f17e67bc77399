"""The provider server: one grpc.aio server with everything a provider must serve besides its logic.

`ProviderServer` binds the address, registers the provider's servicers behind the
`BoundaryInterceptor` (error mapping and metrics), and adds gRPC reflection and grpc.health.v1
for all of them, so `grpcurl` works against any provider. With mutual TLS and a client identity
(`TlsConfig`), every call, reflection and health included, is served only to that identity
(`PeerIdentityInterceptor`). Kubernetes' gRPC probes speak no TLS: `health_address` serves
grpc.health.v1 (and reflection naming only it), nothing else, in plaintext on a port of its own,
with the same statuses. Health says two things (`readiness`): the overall service ("") is
liveness, SERVING from start to shutdown; `READINESS_SERVICE` mirrors the provider's `Readiness`
(NOT_SERVING while its IaaS is unreachable). `serve` runs one until SIGTERM or SIGINT and shuts it
down gracefully: health turns NOT_SERVING, the provider's shutdown hooks end its long-lived
streams, and in-flight calls get `grace_seconds`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from vmlet.provider.v1 import (
    disk_service_pb2,
    disk_service_pb2_grpc,
    kubelet_endpoint_service_pb2,
    kubelet_endpoint_service_pb2_grpc,
    node_provider_service_pb2,
    node_provider_service_pb2_grpc,
    pod_lifecycle_service_pb2,
    pod_lifecycle_service_pb2_grpc,
    pod_notifier_service_pb2,
    pod_notifier_service_pb2_grpc,
    virtual_machine_service_pb2,
    virtual_machine_service_pb2_grpc,
)

from .interceptor import BoundaryInterceptor
from .kit import (
    DiskBackend,
    DiskServicer,
    KubeletEndpointBackend,
    KubeletEndpointServicer,
    NodeProviderBackend,
    NodeProviderServicer,
    PodLifecycleBackend,
    PodLifecycleServicer,
    PodNotifierBackend,
    PodNotifierServicer,
    VirtualMachineBackend,
    VirtualMachineServicer,
)
from .metrics import MetricsEndpoint, RpcMetrics, start_metrics_endpoint
from .readiness import READINESS_SERVICE, Readiness
from .tls import PeerIdentityInterceptor, TlsConfig

__all__ = [
    "DEFAULT_SERVER_OPTIONS",
    "ProviderServer",
    "ProviderServicers",
    "ShutdownHook",
    "serve",
    "write_port_file",
]

_log = logging.getLogger(__name__)

ShutdownHook = Callable[[], Awaitable[None]]

#: Channel arguments of every provider server.
DEFAULT_SERVER_OPTIONS: tuple[tuple[str, Any], ...] = (
    # Pods carry resolved Secret/ConfigMap files; allow more than gRPC's 4 MiB default.
    ("grpc.max_receive_message_length", 32 * 1024 * 1024),
    ("grpc.max_send_message_length", 32 * 1024 * 1024),
    # Notice a facade that vanished while holding a NotifyPods stream open.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    # A second process on the same port must fail to start, not silently share it.
    ("grpc.so_reuseport", 0),
)


def _service_name(file_descriptor: Any, name: str) -> str:
    return str(file_descriptor.services_by_name[name].full_name)


@dataclass(frozen=True)
class ProviderServicers:
    """The servicers a provider implements; endpoints, VM operations and disks are optional.

    `shutdown_hooks` run when the server begins to shut down, after health went NOT_SERVING and
    before in-flight calls are waited for: the place to end long-lived streams (NotifyPods,
    followed logs) and to flush state. `readiness` is what the provider knows of its IaaS; None
    means always ready once serving.
    """

    lifecycle: pod_lifecycle_service_pb2_grpc.PodLifecycleServiceServicer
    notifier: pod_notifier_service_pb2_grpc.PodNotifierServiceServicer
    nodes: node_provider_service_pb2_grpc.NodeProviderServiceServicer
    endpoints: kubelet_endpoint_service_pb2_grpc.KubeletEndpointServiceServicer | None = None
    vms: virtual_machine_service_pb2_grpc.VirtualMachineServiceServicer | None = None
    disks: disk_service_pb2_grpc.DiskServiceServicer | None = None
    shutdown_hooks: Sequence[ShutdownHook] = ()
    readiness: Readiness | None = None

    @classmethod
    def from_backends(
        cls,
        *,
        provider: str,
        version: str,
        lifecycle: PodLifecycleBackend,
        notifier: PodNotifierBackend,
        nodes: NodeProviderBackend,
        endpoints: KubeletEndpointBackend | None = None,
        vms: VirtualMachineBackend | None = None,
        disks: DiskBackend | None = None,
        shutdown_hooks: Sequence[ShutdownHook] = (),
        readiness: Readiness | None = None,
    ) -> ProviderServicers:
        """The kit's servicers (`vmlet_contract.kit`) over a provider's backends; `provider`
        and `version` are what Ping answers. `disks` serves DiskService and the deprecated disk
        RPCs of VirtualMachineService alike."""
        return cls(
            lifecycle=PodLifecycleServicer(lifecycle),
            notifier=PodNotifierServicer(notifier),
            nodes=NodeProviderServicer(nodes, provider=provider, version=version),
            endpoints=KubeletEndpointServicer(endpoints) if endpoints is not None else None,
            vms=VirtualMachineServicer(vms, disks) if vms is not None else None,
            disks=DiskServicer(disks) if disks is not None else None,
            shutdown_hooks=shutdown_hooks,
            readiness=readiness,
        )

    def register(self, server: grpc.aio.Server) -> list[str]:
        """Adds every servicer to `server`; returns the full names of the services added."""
        names = []
        pairs: list[tuple[Any, Callable[[Any, Any], None], str]] = [
            (
                self.lifecycle,
                pod_lifecycle_service_pb2_grpc.add_PodLifecycleServiceServicer_to_server,
                _service_name(pod_lifecycle_service_pb2.DESCRIPTOR, "PodLifecycleService"),
            ),
            (
                self.notifier,
                pod_notifier_service_pb2_grpc.add_PodNotifierServiceServicer_to_server,
                _service_name(pod_notifier_service_pb2.DESCRIPTOR, "PodNotifierService"),
            ),
            (
                self.nodes,
                node_provider_service_pb2_grpc.add_NodeProviderServiceServicer_to_server,
                _service_name(node_provider_service_pb2.DESCRIPTOR, "NodeProviderService"),
            ),
            (
                self.endpoints,
                kubelet_endpoint_service_pb2_grpc.add_KubeletEndpointServiceServicer_to_server,
                _service_name(kubelet_endpoint_service_pb2.DESCRIPTOR, "KubeletEndpointService"),
            ),
            (
                self.vms,
                virtual_machine_service_pb2_grpc.add_VirtualMachineServiceServicer_to_server,
                _service_name(virtual_machine_service_pb2.DESCRIPTOR, "VirtualMachineService"),
            ),
            (
                self.disks,
                disk_service_pb2_grpc.add_DiskServiceServicer_to_server,
                _service_name(disk_service_pb2.DESCRIPTOR, "DiskService"),
            ),
        ]
        for servicer, add, name in pairs:
            if servicer is not None:
                add(servicer, server)
                names.append(name)
        return names


class ProviderServer:
    """A provider's gRPC server, bound and serving between `start()` and `stop()`.

    Usable as an async context manager (stopping with no grace on exit). `port` is the port bound,
    which matters when the address asked for port 0; `health_port` the plaintext health-only
    port, when `health_address` asks for one.
    """

    def __init__(
        self,
        servicers: ProviderServicers,
        *,
        address: str,
        provider: str,
        metrics_address: str | None = None,
        tls: TlsConfig | None = None,
        registry: CollectorRegistry | None = None,
        options: Sequence[tuple[str, Any]] = DEFAULT_SERVER_OPTIONS,
        health_address: str | None = None,
    ) -> None:
        self.servicers = servicers
        self.address = address
        self.provider = provider
        self.metrics_address = metrics_address
        self.tls = tls
        self.health_address = health_address
        self._health_server: grpc.aio.Server | None = None
        self._health_port: int | None = None
        self._registry = registry
        self._options = tuple(options)
        self._server: grpc.aio.Server | None = None
        self._metrics_endpoint: MetricsEndpoint | None = None
        self._health = health.aio.HealthServicer()
        self._services: list[str] = []
        self._port: int | None = None
        self._stopping: asyncio.Task[None] | None = None
        self._readiness_task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The port the gRPC server is bound to."""
        if self._port is None:
            raise RuntimeError("the server is not started")
        return self._port

    @property
    def health_port(self) -> int | None:
        """The port of the plaintext health-only server, None when there is none."""
        return self._health_port

    @property
    def metrics_port(self) -> int | None:
        """The port of the metrics endpoint, None when it is off."""
        return self._metrics_endpoint.port if self._metrics_endpoint is not None else None

    @property
    def services(self) -> list[str]:
        """The provider services served (without health and reflection)."""
        return list(self._services)

    async def start(self) -> None:
        """Binds the address, starts serving, and marks every service SERVING."""
        if self._server is not None:
            raise RuntimeError("the server is already started")
        metrics = RpcMetrics.for_registry(self._registry)
        metrics.provider_info.labels(self.provider).set(1)
        interceptors: list[grpc.aio.ServerInterceptor] = [BoundaryInterceptor(metrics)]
        identity = self.tls.client_identity if self.tls is not None else None
        if identity is not None:
            # First: a refused peer reaches nothing, not even the metrics of the methods.
            interceptors.insert(0, PeerIdentityInterceptor(identity))
        server = grpc.aio.server(interceptors=interceptors, options=self._options)
        self._services = self.servicers.register(server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            [*self._services, health.SERVICE_NAME, reflection.SERVICE_NAME], server
        )
        if self.tls is not None:
            port = server.add_secure_port(self.address, self.tls.server_credentials())
        else:
            port = server.add_insecure_port(self.address)
        if not port:
            raise RuntimeError(f"cannot bind {self.address}")
        if self.health_address is not None:
            await self._start_health()
        if self.metrics_address is not None:
            self._metrics_endpoint = start_metrics_endpoint(self.metrics_address, self._registry)
        await server.start()
        self._server, self._port = server, int(port)
        for name in ("", *self._services):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        await self._start_readiness()
        _log.info(
            "provider serving",
            extra={
                "provider": self.provider,
                "address": self.address,
                "port": self._port,
                "tls": "mutual"
                if self.tls and self.tls.mutual
                else ("server" if self.tls else "off"),
                "client_identity": identity or "any",
                "health_port": self._health_port,
                "services": ",".join(self._services),
            },
        )

    async def _start_health(self) -> None:
        assert self.health_address is not None
        server = grpc.aio.server(options=self._options)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        # Reflection of health alone, so grpcurl can call it; it names nothing else.
        reflection.enable_server_reflection([health.SERVICE_NAME, reflection.SERVICE_NAME], server)
        port = server.add_insecure_port(self.health_address)
        if not port:
            raise RuntimeError(f"cannot bind {self.health_address}")
        await server.start()
        self._health_server, self._health_port = server, int(port)

    async def _set_ready(self, ready: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ready
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        # Ignored by the health servicer once shutdown began: everything stays NOT_SERVING.
        await self._health.set(READINESS_SERVICE, status)

    async def _start_readiness(self) -> None:
        """Sets the readiness status now and, with a provider `Readiness`, follows it."""
        readiness = self.servicers.readiness
        if readiness is None:
            await self._set_ready(True)
            return
        changes = readiness.watch()
        await self._set_ready(await anext(changes))

        async def follow() -> None:
            async for ready in changes:
                _log.log(
                    logging.INFO if ready else logging.WARNING,
                    "provider readiness",
                    extra={"provider": self.provider, "ready": ready, "reason": readiness.reason},
                )
                await self._set_ready(ready)

        self._readiness_task = asyncio.create_task(follow(), name="provider-readiness")

    async def stop(self, grace: float | None = 5.0) -> None:
        """Shuts down: NOT_SERVING, shutdown hooks, then up to `grace` seconds for in-flight calls.
        Concurrent and repeated calls wait for the same shutdown."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop(grace))
        await asyncio.shield(self._stopping)

    async def _stop(self, grace: float | None) -> None:
        server = self._server
        if server is None:
            return
        _log.info(
            "provider shutting down", extra={"provider": self.provider, "grace_seconds": grace}
        )
        await self._health.enter_graceful_shutdown()
        if self._readiness_task is not None:
            self._readiness_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._readiness_task
        for hook in self.servicers.shutdown_hooks:
            try:
                await hook()
            except Exception:
                _log.exception("shutdown hook failed")
        await server.stop(grace)
        if self._health_server is not None:
            await self._health_server.stop(0)
        if self._metrics_endpoint is not None:
            # shutdown() waits for the HTTP server's poll loop (up to half a second).
            await asyncio.to_thread(self._metrics_endpoint.close)
        _log.info("provider stopped", extra={"provider": self.provider})

    async def __aenter__(self) -> ProviderServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop(0)


def write_port_file(path: str | os.PathLike[str], port: int) -> None:
    """Writes `port` and a newline to `path` atomically, so a reader never sees half of it."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{port}\n")
    tmp.replace(target)


async def serve(
    servicers: ProviderServicers,
    *,
    address: str,
    provider: str,
    metrics_address: str | None = None,
    tls: TlsConfig | None = None,
    health_address: str | None = None,
    grace_seconds: float = 5.0,
    ready: asyncio.Event | None = None,
    port_file: str | os.PathLike[str] | None = None,
    stop: asyncio.Event | None = None,
    registry: CollectorRegistry | None = None,
) -> None:
    """Serves `servicers` until SIGTERM or SIGINT (or until `stop` is set), then shuts down
    gracefully and returns.

    The bound port is logged and, with `port_file`, written there before `ready` is set.
    Signal handlers are only installed when running in the main thread.
    """
    server = ProviderServer(
        servicers,
        address=address,
        provider=provider,
        metrics_address=metrics_address,
        tls=tls,
        registry=registry,
        health_address=health_address,
    )
    stop_event = stop if stop is not None else asyncio.Event()
    loop = asyncio.get_running_loop()
    # Handlers in place before serve(), put back afterwards: asyncio's remove_signal_handler
    # would leave the default disposition instead (and undo, e.g., pytest's own SIGTERM handler).
    previous: dict[signal.Signals, Any] = {}

    def on_signal(signum: signal.Signals) -> None:
        _log.info("received signal, stopping", extra={"signal": signum.name})
        stop_event.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            before = signal.getsignal(signum)
            loop.add_signal_handler(signum, on_signal, signum)
            previous[signum] = before
    try:
        await server.start()
        if port_file is not None:
            write_port_file(port_file, server.port)
        if ready is not None:
            ready.set()
        # Not raced against server.wait_for_termination(): cancelling that wait breaks the
        # later server.stop() in grpc.aio (it awaits the same shutdown future).
        await stop_event.wait()
    finally:
        for signum, before in previous.items():
            loop.remove_signal_handler(signum)
            if before is not None:
                signal.signal(signum, before)
        await server.stop(grace_seconds)
