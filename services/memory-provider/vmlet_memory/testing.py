"""The memory provider in-process, for tests: served on a loopback port, with stubs to call it.

async with running_provider(CloudOptions(nodes=1)) as mp:
    await mp.lifecycle.CreatePod(CreatePodRequest(pod=make_pod("web-0")))
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import grpc
from prometheus_client import CollectorRegistry

from vmlet.provider.v1 import (
    disk_service_pb2_grpc,
    kubelet_endpoint_service_pb2_grpc,
    node_provider_service_pb2_grpc,
    pod_lifecycle_service_pb2_grpc,
    pod_notifier_service_pb2_grpc,
    pod_pb2,
    virtual_machine_service_pb2_grpc,
)
from vmlet_contract import ProviderServer

from .app import PROVIDER_KIND, MemoryProvider, build
from .cloud import CloudOptions

__all__ = ["Harness", "make_pod", "running_provider"]


@dataclass
class Harness:
    """A memory provider being served, and a client of each of its services.

    The stubs are typed as the async stubs they are (grpc itself has no type stubs here, so
    the generated overloads cannot tell a grpc.aio channel from a sync one).
    """

    server: ProviderServer
    provider: MemoryProvider
    channel: grpc.aio.Channel
    lifecycle: pod_lifecycle_service_pb2_grpc.PodLifecycleServiceAsyncStub
    notifier: pod_notifier_service_pb2_grpc.PodNotifierServiceAsyncStub
    nodes: node_provider_service_pb2_grpc.NodeProviderServiceAsyncStub
    endpoints: kubelet_endpoint_service_pb2_grpc.KubeletEndpointServiceAsyncStub
    vms: virtual_machine_service_pb2_grpc.VirtualMachineServiceAsyncStub
    disks: disk_service_pb2_grpc.DiskServiceAsyncStub

    @property
    def address(self) -> str:
        """Where the provider listens."""
        return f"127.0.0.1:{self.server.port}"


@contextlib.asynccontextmanager
async def running_provider(
    options: CloudOptions | None = None,
    *,
    state_file: Path | None = None,
    registry: CollectorRegistry | None = None,
) -> AsyncIterator[Harness]:
    """Serves a memory provider on 127.0.0.1 (any port) until the block ends."""
    provider = build(options or CloudOptions(), state_file=state_file)
    server = ProviderServer(
        provider.servicers,
        address="127.0.0.1:0",
        provider=PROVIDER_KIND,
        registry=registry if registry is not None else CollectorRegistry(),
    )
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield Harness(
                server=server,
                provider=provider,
                channel=channel,
                lifecycle=cast(
                    "pod_lifecycle_service_pb2_grpc.PodLifecycleServiceAsyncStub",
                    pod_lifecycle_service_pb2_grpc.PodLifecycleServiceStub(channel),
                ),
                notifier=cast(
                    "pod_notifier_service_pb2_grpc.PodNotifierServiceAsyncStub",
                    pod_notifier_service_pb2_grpc.PodNotifierServiceStub(channel),
                ),
                nodes=cast(
                    "node_provider_service_pb2_grpc.NodeProviderServiceAsyncStub",
                    node_provider_service_pb2_grpc.NodeProviderServiceStub(channel),
                ),
                endpoints=cast(
                    "kubelet_endpoint_service_pb2_grpc.KubeletEndpointServiceAsyncStub",
                    kubelet_endpoint_service_pb2_grpc.KubeletEndpointServiceStub(channel),
                ),
                vms=cast(
                    "virtual_machine_service_pb2_grpc.VirtualMachineServiceAsyncStub",
                    virtual_machine_service_pb2_grpc.VirtualMachineServiceStub(channel),
                ),
                disks=cast(
                    "disk_service_pb2_grpc.DiskServiceAsyncStub",
                    disk_service_pb2_grpc.DiskServiceStub(channel),
                ),
            )
    finally:
        await server.stop(1)


def make_pod(
    name: str,
    *,
    namespace: str = "default",
    identity: str | None = None,
    node: str = "vmlet-memory-0",
    keep_on_delete: bool = False,
    uid: str | None = None,
    cpu_millis: int = 0,
    memory_bytes: int = 0,
    annotations: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
    disks: tuple[str, ...] = (),
) -> pod_pb2.Pod:
    """A VM pod with one container; its identity defaults to its UID, which defaults to
    `uid-<name>`."""
    uid = f"uid-{name}" if uid is None else uid
    return pod_pb2.Pod(
        ref=pod_pb2.PodRef(namespace=namespace, name=name, uid=uid),
        identity=uid if identity is None else identity,
        node_name=node,
        keep_on_delete=keep_on_delete,
        annotations=annotations or {},
        containers=[
            pod_pb2.Container(
                name="vm",
                image="ubuntu-24.04",
                env=[pod_pb2.EnvVar(name=k, value=v) for k, v in (env or {}).items()],
                resources=pod_pb2.Resources(
                    cpu_request_millis=cpu_millis, memory_request_bytes=memory_bytes
                ),
            )
        ],
        volumes=[
            pod_pb2.Volume(name=f"disk-{i}", disk=pod_pb2.DiskSource(volume_handle=handle))
            for i, handle in enumerate(disks)
        ],
    )
