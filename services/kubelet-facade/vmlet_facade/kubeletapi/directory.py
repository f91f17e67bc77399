"""What the kubelet API knows of nodes and pods: read from the facade's own controllers.

The pod controller already follows every pod bound to the facade's nodes and knows which
provider backs each node; the node controllers know the nodes as the providers describe them.
The kubelet API reads both through these small protocols (the controllers implement them), so
it needs no watch of its own and never disagrees with them.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Protocol

from vmlet.provider.v1 import node_pb2
from vmlet_facade.kube.objects import Pod
from vmlet_facade.provider import Provider

__all__ = ["Directory", "NodeIndex", "PodDirectory"]


class PodDirectory(Protocol):
    """The pods Kubernetes has bound to the facade's nodes, and the provider of each node whose
    pods are followed (the pod controller)."""

    def pods_named(self, namespace: str, name: str) -> list[Pod]:
        """Every pod ``namespace/name`` (a deleted one and its successor may both be there)."""
        ...

    def pods_on(self, nodes: Collection[str]) -> list[Pod]:
        """The pods bound to any of ``nodes``."""
        ...

    def provider_of(self, node: str) -> Provider | None:
        """The provider backing ``node``, or None when its pods are not followed."""
        ...


class NodeIndex(Protocol):
    """The nodes of one provider (a node controller)."""

    @property
    def provider(self) -> Provider: ...

    @property
    def nodes(self) -> Mapping[str, node_pb2.Node]: ...


class Directory:
    """Lookups over the controllers' state."""

    def __init__(self, pods: PodDirectory, nodes: Sequence[NodeIndex]) -> None:
        self._pods = pods
        self._nodes = nodes

    def node_names(self) -> list[str]:
        return sorted({name for index in self._nodes for name in index.nodes})

    def _every_node(self) -> list[tuple[str, node_pb2.Node]]:
        """Every node this facade may serve: with node shards, also those another replica
        serves now (a serving certificate covering them all needs no new CSR at a takeover)."""
        return [item for index in self._nodes
                for item in (getattr(index, "known", None) or index.nodes).items()]

    def serving_node_names(self) -> list[str]:
        """The node names the serving certificate names (``_every_node``)."""
        return sorted({name for name, _ in self._every_node()})

    def node(self, name: str) -> node_pb2.Node | None:
        for index in self._nodes:
            if name in index.nodes:
                return index.nodes[name]
        return None

    def provider_of(self, node: str) -> Provider | None:
        provider = self._pods.provider_of(node)
        if provider is not None:
            return provider
        for index in self._nodes:
            if node in index.nodes:
                return index.provider
        return None

    def pod(self, namespace: str, name: str) -> Pod | None:
        """The pod ``namespace/name`` when it is bound to one of our nodes (the one not being
        deleted, if another of that name is)."""
        ours = set(self.node_names())
        found: Pod | None = None
        for pod in self._pods.pods_named(namespace, name):
            if pod.get("spec", {}).get("nodeName") not in ours:
                continue
            if found is None or not pod["metadata"].get("deletionTimestamp"):
                found = pod
        return found

    def pods_on(self, nodes: Sequence[str]) -> list[Pod]:
        """The pods bound to ``nodes``, by namespace and name."""
        return sorted(self._pods.pods_on(set(nodes)),
                      key=lambda p: (p["metadata"].get("namespace", ""),
                                     p["metadata"].get("name", "")))

    def containers(self, namespace: str, name: str) -> list[str]:
        pod = self.pod(namespace, name)
        if pod is None:
            return []
        return [str(c.get("name", "")) for c in pod.get("spec", {}).get("containers", [])]

    def addresses(self) -> tuple[list[str], list[str]]:
        """The DNS names and IP addresses of every node (``_every_node``: for the serving
        certificate)."""
        dns: set[str] = set()
        ips: set[str] = set()
        for name, node in self._every_node():
            dns.add(name)
            for address in node.addresses:
                if address.type in ("InternalIP", "ExternalIP"):
                    ips.add(address.address)
                elif address.type in ("Hostname", "InternalDNS", "ExternalDNS"):
                    dns.add(address.address)
        return sorted(dns), sorted(ips)
