"""The Provider interface over the generated gRPC stubs: one channel per provider address."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from vmlet.provider.v1 import (
    node_pb2,
    node_provider_service_pb2,
    node_provider_service_pb2_grpc,
    pod_lifecycle_service_pb2,
    pod_lifecycle_service_pb2_grpc,
    pod_notifier_service_pb2,
    pod_notifier_service_pb2_grpc,
)
from vmlet.provider.v1 import pod_pb2 as pb
from vmlet_contract import error_from_rpc

__all__ = ["GrpcProvider", "ProviderTls"]


@dataclass(frozen=True)
class ProviderTls:
    """Client-side TLS towards providers: the CA that signed them and, for mTLS, our pair."""

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_file.read_bytes(),
            private_key=self.key_file.read_bytes() if self.key_file else None,
            certificate_chain=self.cert_file.read_bytes() if self.cert_file else None,
        )


class GrpcProvider:
    """A provider reached at ``address``; every call raises ProviderError on failure."""

    def __init__(self, name: str, address: str, *, tls: ProviderTls | None = None,
                 call_timeout: float = 120.0) -> None:
        self.name = name
        self.address = address
        options = [("grpc.keepalive_time_ms", 20000), ("grpc.keepalive_timeout_ms", 10000),
                   ("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        self._channel = (grpc.aio.secure_channel(address, tls.credentials(), options=options)
                         if tls else grpc.aio.insecure_channel(address, options=options))
        self._timeout = call_timeout
        self._nodes = node_provider_service_pb2_grpc.NodeProviderServiceStub(self._channel)
        self._pods = pod_lifecycle_service_pb2_grpc.PodLifecycleServiceStub(self._channel)
        self._notifier = pod_notifier_service_pb2_grpc.PodNotifierServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def ping(self) -> None:
        try:
            await self._nodes.Ping(node_provider_service_pb2.PingRequest(), timeout=5)
        except grpc.aio.AioRpcError as err:
            raise error_from_rpc(err) from None

    async def list_nodes(self) -> list[node_pb2.Node]:
        try:
            resp = await self._nodes.ListNodes(node_provider_service_pb2.ListNodesRequest(),
                                               timeout=30)
        except grpc.aio.AioRpcError as err:
            raise error_from_rpc(err) from None
        return list(resp.nodes)

    async def watch_nodes(
        self,
    ) -> AsyncIterator[node_provider_service_pb2.NotifyNodeStatusResponse]:
        try:
            async for msg in self._nodes.NotifyNodeStatus(
                node_provider_service_pb2.NotifyNodeStatusRequest()
            ):
                yield msg
        except grpc.aio.AioRpcError as err:
            raise error_from_rpc(err) from None

    async def create_pod(self, pod: pb.Pod) -> pb.PodStatus:
        try:
            resp = await self._pods.CreatePod(
                pod_lifecycle_service_pb2.CreatePodRequest(pod=pod), timeout=self._timeout)
        except grpc.aio.AioRpcError as err:
            raise error_from_rpc(err) from None
        status: pb.PodStatus = resp.status
        return status

    async def update_pod(self, pod: pb.Pod) -> pb.PodStatus:
        try:
            resp = await self._pods.UpdatePod(
                pod_lifecycle_service_pb2.UpdatePodRequest(pod=pod), timeout=self._timeout)
        except grpc.aio.AioRpcError as err:
            raise error_from_rpc(err) from None
        status: pb.PodStatus = resp.status
        return status

    async def delete_pod(self, pod: pb.Pod) -> None:
        try:
            await self._pods.DeletePod(pod_lifecycle_service_pb2.DeletePodRequest(pod=pod),
                                       timeout=self._timeout)
        except grpc.aio.AioRpcError as err:
            raise error_from_rpc(err) from None

    async def get_pods(self) -> list[pb.PodWithStatus]:
        try:
            resp = await self._pods.GetPods(pod_lifecycle_service_pb2.GetPodsRequest(),
                                            timeout=60)
        except grpc.aio.AioRpcError as err:
            raise error_from_rpc(err) from None
        return list(resp.pods)

    async def watch_pods(self) -> AsyncIterator[pod_notifier_service_pb2.NotifyPodsResponse]:
        try:
            async for msg in self._notifier.NotifyPods(
                pod_notifier_service_pb2.NotifyPodsRequest()
            ):
                yield msg
        except grpc.aio.AioRpcError as err:
            raise error_from_rpc(err) from None
