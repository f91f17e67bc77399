"""The address a facade's nodes are reached at: its own, not the hypervisor host's.

A node's kubelet endpoint is the facade, so the InternalIP that the apiserver dials must be an
address of the facade, whatever the provider reports for the host behind it (an ESXi host's
management address does not serve the kubelet API). ``advertise`` wraps a provider so the nodes
it lists carry the InternalIP this module decides; everything else passes through unchanged.

With one address (--node-ip) every node shares it, and the kubelet API can tell the nodes apart
only by the apiserver's X-Forwarded-Uri. With a pool (--node-ip-pool, `AddressPool`) each node
gets an address of its own, so a caller that dials a node directly (metrics-server scraping
``https://<InternalIP>:<port>/metrics/resource``) reaches that node: the kubelet API knows the
node by the local address a connection arrived on. A node keeps the pool address its existing
Node object advertises (stable across restarts); a new one gets the lowest address no Node
advertises; no two nodes ever get the same one. When the pool is exhausted the node is still
served, at the fallback (--node-ip, else the provider's address), with an error logged and a
Warning Event. Two facades sharing one pool could race for a new node's address: give each its
own pool.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import aiohttp

from vmlet.provider.v1 import node_pb2, node_provider_service_pb2
from vmlet_facade.kube import ApiError, KubeClient
from vmlet_facade.provider import Provider

__all__ = ["AddressPool", "advertise", "cluster_addresses", "local_address"]

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Existing = Callable[[], Awaitable[dict[str, str]]]
Exhausted = Callable[[str, str], Awaitable[None]]

_RETRY_EXHAUSTED = 60.0  # seconds before a node that found the pool full looks again


def internal_ip(node: node_pb2.Node) -> str:
    """The node's first InternalIP ("" when it has none)."""
    return next((a.address for a in node.addresses if a.type == "InternalIP"), "")


def local_address(address: str) -> str:
    """``address`` as the nodes advertise it (an IPv4-mapped IPv6 address as IPv4)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


async def cluster_addresses(client: KubeClient) -> dict[str, str]:
    """The InternalIP of every Node in the cluster, by name (ours and anyone's)."""
    try:
        listed = await client.get("/api/v1/nodes")
    except (aiohttp.ClientError, OSError, TimeoutError) as err:
        raise ApiError(503, "ServiceUnavailable", f"cannot list nodes: {err}") from err
    out: dict[str, str] = {}
    for node in listed.get("items") or []:
        ips = [a.get("address", "") for a in (node.get("status") or {}).get("addresses") or []
               if a.get("type") == "InternalIP"]
        if ips:
            out[node["metadata"]["name"]] = ips[0]
    return out


class AddressPool:
    """Hands each node an address of ``network``, stable across restarts, never one twice.

    ``existing`` lists the InternalIP of every Node in the cluster; it is asked again before
    each new node's address is chosen, so an address another Node took meanwhile is not handed
    out. ``on_exhausted(node, message)`` is told when a node found the pool full.
    """

    def __init__(self, network: Network | str, existing: Existing, *,
                 fallback: str | None = None, on_exhausted: Exhausted | None = None) -> None:
        self.network: Network = ipaddress.ip_network(network) if isinstance(network, str) \
            else network
        self._existing = existing
        self._fallback = fallback
        self._on_exhausted = on_exhausted
        self._assigned: dict[str, str] = {}
        self._exhausted: dict[str, float] = {}  # node -> when it last found the pool full
        self._lock = asyncio.Lock()

    @property
    def assigned(self) -> dict[str, str]:
        """The addresses handed out so far, by node."""
        return dict(self._assigned)

    def _in_pool(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if ip not in self.network:
            return False
        # The network and broadcast addresses are no host's (but a /31 or /32 has only hosts).
        if self.network.num_addresses > 2 and ip in (self.network.network_address,
                                                    self.network.broadcast_address):
            return False
        return True

    async def address(self, node: str, reported: str = "") -> str:
        """The address ``node`` advertises (``reported``: what its provider says)."""
        if node in self._assigned:
            return self._assigned[node]
        fallback = self._fallback or reported
        since = self._exhausted.get(node)
        if since is not None and time.monotonic() - since < _RETRY_EXHAUSTED:
            return fallback
        async with self._lock:
            if node in self._assigned:
                return self._assigned[node]
            known = await self._existing()
            # Who holds each address: what this facade decided, else what the Nodes advertise
            # (where two advertise one, the first by name keeps it).
            owners: dict[str, str] = {}
            for name, ip in sorted(known.items()):
                if name not in self._assigned:
                    owners.setdefault(ip, name)
            owners.update({ip: name for name, ip in self._assigned.items()})
            taken = {ip for ip, owner in owners.items() if owner != node}
            chosen = self._choose(known.get(node, ""), taken)
            if chosen is not None:
                self._assigned[node] = chosen
                self._exhausted.pop(node, None)
                log.info("node %s advertises %s (pool %s)", node, chosen, self.network)
                return chosen
            first = since is None
            self._exhausted[node] = time.monotonic()
        message = (f"the node address pool {self.network} is exhausted: node {node} "
                   f"advertises {fallback or 'its provider address'} instead, shared with "
                   "other nodes (give --node-ip-pool a larger network)")
        if first:
            log.error("%s", message)
            if self._on_exhausted is not None:
                await self._on_exhausted(node, message)
        return fallback

    def _choose(self, own: str, taken: set[str]) -> str | None:
        if own and self._in_pool(own) and own not in taken:
            return own
        for ip in self.network.hosts() if self.network.num_addresses > 2 else self.network:
            if str(ip) not in taken:
                return str(ip)
        return None


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
    def __init__(self, provider: Provider, ip: str | None, pool: AddressPool | None) -> None:
        self._provider = provider
        self._ip = ip
        self._pool = pool
        self.name = provider.name

    def __getattr__(self, name: str) -> Any:
        return getattr(self._provider, name)

    async def _advertised(self, node: node_pb2.Node) -> node_pb2.Node:
        if self._pool is not None:
            ip = await self._pool.address(node.name, internal_ip(node))
        else:
            ip = self._ip or ""
        return _with_ip(node, ip) if ip else node

    async def list_nodes(self) -> list[node_pb2.Node]:
        return [await self._advertised(n) for n in await self._provider.list_nodes()]

    async def watch_nodes(
        self,
    ) -> AsyncIterator[node_provider_service_pb2.NotifyNodeStatusResponse]:
        async for message in self._provider.watch_nodes():
            if message.HasField("node"):
                message.node.CopyFrom(await self._advertised(message.node))
            yield message


def advertise(provider: Provider, ip: str | None, pool: AddressPool | None = None) -> Provider:
    """``provider`` with its nodes' InternalIP set: from ``pool`` when given (``ip`` is then
    only its fallback), else to ``ip`` (unchanged when both are None)."""
    if not ip and pool is None:
        return provider
    return cast(Provider, _Advertised(provider, ip, pool))
