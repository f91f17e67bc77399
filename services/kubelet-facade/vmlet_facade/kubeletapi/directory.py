"""What the kubelet API knows of nodes and pods: read from the facade's own controllers.

The pod controller already follows every pod bound to the facade's nodes and knows which
provider backs each node; the node controllers know the nodes as the providers describe them.
The kubelet API reads both through these small protocols (the controllers satisfy them as they
are), so it needs no watch of its own and never disagrees with them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from vmlet.provider.v1 import node_pb2
from vmlet_facade.provider import Provider

__all__ = ["Directory", "NodeIndex", "PodIndex"]

Obj = dict[str, Any]


class _Route(Protocol):
    @property
    def provider(self) -> Provider: ...


class PodIndex(Protocol):
    """Pods by UID and the provider route of each node (the pod controller)."""

    @property
    def pods(self) -> Mapping[str, Obj]: ...

    @property
    def routes(self) -> Mapping[str, _Route]: ...


class NodeIndex(Protocol):
    """The nodes of one provider (a node controller)."""

    @property
    def provider(self) -> Provider: ...

    @property
    def nodes(self) -> Mapping[str, node_pb2.Node]: ...


class Directory:
    """Lookups over the controllers' state."""

    def __init__(self, pods: PodIndex, nodes: Sequence[NodeIndex]) -> None:
        self._pods = pods
        self._nodes = nodes

    def node_names(self) -> list[str]:
        return sorted({name for index in self._nodes for name in index.nodes})

    def node(self, name: str) -> node_pb2.Node | None:
        for index in self._nodes:
            if name in index.nodes:
                return index.nodes[name]
        return None

    def provider_of(self, node: str) -> Provider | None:
        route = self._pods.routes.get(node)
        if route is not None:
            return route.provider
        for index in self._nodes:
            if node in index.nodes:
                return index.provider
        return None

    def pod(self, namespace: str, name: str) -> Obj | None:
        """The pod ``namespace/name`` when it is bound to one of our nodes."""
        ours = set(self.node_names())
        found: Obj | None = None
        for pod in self._pods.pods.values():
            meta = pod.get("metadata", {})
            if meta.get("namespace") != namespace or meta.get("name") != name:
                continue
            if pod.get("spec", {}).get("nodeName") not in ours:
                continue
            if found is None or not meta.get("deletionTimestamp"):
                found = pod
        return found

    def pods_on(self, nodes: Sequence[str]) -> list[Obj]:
        wanted = set(nodes)
        return sorted((p for p in self._pods.pods.values()
                       if p.get("spec", {}).get("nodeName") in wanted),
                      key=lambda p: (p["metadata"]["namespace"], p["metadata"]["name"]))

    def containers(self, namespace: str, name: str) -> list[str]:
        pod = self.pod(namespace, name)
        if pod is None:
            return []
        return [str(c.get("name", "")) for c in pod.get("spec", {}).get("containers", [])]

    def addresses(self) -> tuple[list[str], list[str]]:
        """The DNS names and IP addresses of every node (for the serving certificate)."""
        dns: set[str] = set()
        ips: set[str] = set()
        for index in self._nodes:
            for name, node in index.nodes.items():
                dns.add(name)
                for address in node.addresses:
                    if address.type in ("InternalIP", "ExternalIP"):
                        ips.add(address.address)
                    elif address.type in ("Hostname", "InternalDNS", "ExternalDNS"):
                        dns.add(address.address)
        return sorted(dns), sorted(ips)
