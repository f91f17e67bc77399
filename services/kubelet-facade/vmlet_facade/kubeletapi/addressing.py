"""The address a facade's nodes are reached at: its own, not the hypervisor host's.

A node's kubelet endpoint is the facade, so the InternalIP that the apiserver dials must be an
address of the facade, whatever the provider reports for the host behind it (an ESXi host's
management address does not serve the kubelet API). ``advertise`` wraps a provider so the nodes
it lists carry the given InternalIP; everything else passes through unchanged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

from vmlet.provider.v1 import node_pb2, node_provider_service_pb2
from vmlet_facade.provider import Provider

__all__ = ["advertise"]


def _with_ip(node: node_pb2.Node, ip: str) -> node_pb2.Node:
    out = node_pb2.Node()
    out.CopyFrom(node)
    kept = [a for a in node.addresses if a.type != "InternalIP"]
    del out.addresses[:]
    out.addresses.add(type="InternalIP", address=ip)
    for address in kept:
        out.addresses.add(type=address.type, address=address.address)
    return out


class _Advertised:
    def __init__(self, provider: Provider, ip: str) -> None:
        self._provider = provider
        self._ip = ip
        self.name = provider.name

    def __getattr__(self, name: str) -> Any:
        return getattr(self._provider, name)

    async def list_nodes(self) -> list[node_pb2.Node]:
        return [_with_ip(n, self._ip) for n in await self._provider.list_nodes()]

    async def watch_nodes(
        self,
    ) -> AsyncIterator[node_provider_service_pb2.NotifyNodeStatusResponse]:
        async for message in self._provider.watch_nodes():
            if message.HasField("node"):
                message.node.CopyFrom(_with_ip(message.node, self._ip))
            yield message


def advertise(provider: Provider, ip: str | None) -> Provider:
    """``provider`` with its nodes' InternalIP set to ``ip`` (unchanged when ``ip`` is None)."""
    if not ip:
        return provider
    return cast(Provider, _Advertised(provider, ip))
