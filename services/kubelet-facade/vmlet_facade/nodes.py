"""Virtual Nodes: one per node a provider lists, kept current from the provider.

The node's status (capacity, allocatable, addresses, conditions, schedulability) comes from the
provider: from ListNodes at start, from the NotifyNodeStatus stream as it changes, and as a
heartbeat every ``status_interval``. When Ping fails, every node the provider backs turns
Ready=Unknown: ProviderUnavailable when the provider does not answer at all (not even its gRPC
health check), IaaSUnavailable when it answers but its IaaS does not. The pods on those nodes are
told (``on_outage``, see outage.py); nothing is deleted, and it all recovers by itself when the
provider answers Ping again.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar, cast

from vmlet.provider.v1 import node_pb2
from vmlet.provider.v1 import pod_pb2 as pb
from vmlet_api import names
from vmlet_contract import ProviderError
from vmlet_facade.events import EventRecorder
from vmlet_facade.kube import ApiError, KubeClient
from vmlet_facade.kube.objects import Condition, ConditionStatus, Node, NodeStatus, Obj, ObjectMeta
from vmlet_facade.outage import IAAS_UNAVAILABLE, PROVIDER_UNAVAILABLE, Outage
from vmlet_facade.provider import NodeSource
from vmlet_facade.queueing import Backoff

__all__ = ["NodeController", "NodeSettings", "Taint"]

log = logging.getLogger(__name__)

_COND: dict[int, ConditionStatus] = {
    pb.CONDITION_STATUS_TRUE: "True", pb.CONDITION_STATUS_FALSE: "False",
    pb.CONDITION_STATUS_UNKNOWN: "Unknown"}
_PRESSURE = ("MemoryPressure", "DiskPressure", "PIDPressure")

N = TypeVar("N", bound=NodeSource)


@dataclass(frozen=True)
class Taint:
    key: str
    value: str
    effect: str

    def as_k8s(self) -> Obj:
        return {"key": self.key, "value": self.value, "effect": self.effect}


@dataclass
class NodeSettings:
    """How the facade presents nodes."""

    kubelet_port: int = 10250
    kubelet_version: str = "v1.34.4-vmlet"
    taint: Taint | None = None  # None: the default virtual-kubelet.io/provider taint
    no_taint: bool = False
    status_interval: float = 60.0
    ping_interval: float = 5.0
    extra_labels: dict[str, str] = field(default_factory=dict)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class NodeController(Generic[N]):
    """Registers and maintains the Nodes of one provider (``provider``: typed as the wiring
    has it, for the kubelet API, which reads it back)."""

    def __init__(self, provider: N, client: KubeClient, settings: NodeSettings,
                 events: EventRecorder,
                 on_outage: Callable[[Outage | None], None] | None = None, *,
                 sharded: bool = False) -> None:
        self.provider = provider
        self._client = client
        self._settings = settings
        self._events = events
        self.nodes: dict[str, node_pb2.Node] = {}  # the nodes served here, by name
        self._wanted: set[str] = set()  # with ``sharded``: the nodes ``serve`` was called for
        self.uids: dict[str, str] = {}
        #: Every node the provider lists; with ``sharded``, only those ``serve`` was called for
        #: are served here (``shards``), else all of them.
        self.known: dict[str, node_pb2.Node] = {}
        self._sharded = sharded
        self.healthy = False
        self.outage: Outage | None = None
        self._on_outage = on_outage
        self._transitions: dict[tuple[str, str], tuple[str, str]] = {}
        self.registered = asyncio.Event()
        #: Told the name of each node as the controller comes to know it (none twice).
        self.added: list[Callable[[str], None]] = []
        #: Told the name of each node ``release`` stops serving here.
        self.removed: list[Callable[[str], None]] = []

    # -- what the Node looks like ------------------------------------------------------------

    def taints(self, node: node_pb2.Node) -> list[Obj]:
        s = self._settings
        own: list[Obj] = []
        if not s.no_taint:
            taint = s.taint or Taint(names.PROVIDER_TAINT, self.provider.name, "NoSchedule")
            own.append(taint.as_k8s())
        own += [{"key": t.key, "value": t.value, "effect": t.effect} for t in node.taints]
        return own

    def _conditions(self, node: node_pb2.Node) -> list[Condition]:
        now = _now()
        given = {c.type: c for c in node.conditions}
        out: list[Condition] = []
        status: ConditionStatus
        for ctype in ("Ready", *_PRESSURE, *[t for t in given if t not in ("Ready", *_PRESSURE)]):
            c = given.get(ctype)
            if ctype == "Ready" and self.outage is not None:
                status, reason, message = "Unknown", self.outage.reason, self.outage.message
            elif c is not None:
                status, reason, message = _COND.get(c.status, "Unknown"), c.reason, c.message
            elif ctype == "Ready":
                status, reason, message = "True", "KubeletReady", "provider reports the node"
            else:
                status, reason = "False", f"KubeletHasNo{ctype}"
                message = f"{self.provider.name} hosts do not report {ctype}"
            key = (node.name, ctype)
            prev_status, since = self._transitions.get(key, ("", now))
            if prev_status != status:
                since = now
            self._transitions[key] = (status, since)
            out.append({"type": ctype, "status": status, "reason": reason or ctype,
                        "message": message, "lastHeartbeatTime": now,
                        "lastTransitionTime": since})
        return out

    def _status(self, node: node_pb2.Node) -> NodeStatus:
        info = node.info
        return {
            "capacity": dict(node.capacity),
            "allocatable": dict(node.allocatable or node.capacity),
            "addresses": [{"type": a.type, "address": a.address} for a in node.addresses],
            "conditions": self._conditions(node),
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self._settings.kubelet_port}},
            "nodeInfo": {
                "machineID": info.system_uuid, "systemUUID": info.system_uuid, "bootID": "",
                "kernelVersion": info.kernel_version, "osImage": info.os_image,
                "containerRuntimeVersion": f"vmlet://{self.provider.name}",
                "kubeletVersion": self._settings.kubelet_version, "kubeProxyVersion": "",
                "operatingSystem": info.operating_system or "linux",
                "architecture": info.architecture or "amd64",
            },
        }

    def _metadata(self, node: node_pb2.Node) -> ObjectMeta:
        labels = {
            "type": "virtual-kubelet", "kubernetes.io/role": "agent",
            "kubernetes.io/hostname": node.name, "kubernetes.io/os": "linux",
            "kubernetes.io/arch": node.info.architecture or "amd64",
            names.PROVIDER_LABEL: self.provider.name,
            **self._settings.extra_labels, **dict(node.labels),
        }
        return {"name": node.name, "labels": labels,
                "annotations": {names.PROVIDER_ADDRESS_ANNOTATION: getattr(
                    self.provider, "address", "")}}

    def address(self, node_name: str) -> str:
        node = self.nodes.get(node_name)
        if node is None:
            return ""
        for kind in ("InternalIP", "ExternalIP"):
            for a in node.addresses:
                if a.type == kind:
                    return str(a.address)
        return ""

    # -- keeping it current ------------------------------------------------------------------

    def _serves(self, name: str) -> bool:
        return not self._sharded or name in self.nodes

    async def serve(self, name: str) -> None:
        """Serve the provider's node ``name`` here from now on (its shard was taken)."""
        node = self.known.get(name)
        if node is None:
            raise KeyError(f"provider {self.provider.name} lists no node {name}")
        self._wanted.add(name)
        if name not in self.nodes:
            await self.register(node)

    def release(self, name: str) -> None:
        """Stop serving node ``name`` here (another replica serves it); the Node stays."""
        self._wanted.discard(name)
        if self.nodes.pop(name, None) is not None:
            self.uids.pop(name, None)
            for listener in self.removed:
                listener(name)

    async def _learn(self, node: node_pb2.Node) -> None:
        """A node as the provider lists it: registered when served here, else remembered."""
        self.known[node.name] = node
        if not self._sharded:
            await self.register(node)

    async def register(self, node: node_pb2.Node) -> None:
        """Create the Node or bring an existing one up to date, then write its status."""
        path = f"/api/v1/nodes/{node.name}"
        meta = self._metadata(node)
        try:
            current = cast(Node, await self._client.get(path))
        except ApiError as err:
            if not err.not_found:
                raise
            body = {"apiVersion": "v1", "kind": "Node", "metadata": meta,
                    "spec": {"taints": self.taints(node), "unschedulable": node.unschedulable,
                             **({"providerID": node.provider_id} if node.provider_id else {})}}
            current = cast(Node, await self._client.create("/api/v1/nodes", body))
            await self._events.emit(current, "RegisteredNode",
                                    f"Node {node.name} registered by vmlet "
                                    f"(provider {self.provider.name})")
        else:
            ours = {t["key"] for t in self.taints(node)} | {names.PROVIDER_TAINT}
            others = [t for t in current.get("spec", {}).get("taints") or []
                      if t["key"] not in ours]
            await self._client.patch(path, {
                "metadata": {"labels": meta["labels"], "annotations": meta["annotations"]},
                "spec": {"taints": others + self.taints(node),
                         "unschedulable": node.unschedulable},
            })
        self.uids[node.name] = current["metadata"]["uid"]
        self._remember(node)
        await self.write_status(node.name)

    def _remember(self, node: node_pb2.Node) -> None:
        self.known[node.name] = node
        if self._sharded and node.name not in self._wanted:
            self.uids.pop(node.name, None)  # released while its registration was under way
            return
        new = node.name not in self.nodes
        self.nodes[node.name] = node
        if new:
            for listener in self.added:
                listener(node.name)

    async def write_status(self, name: str) -> None:
        """Write node ``name``'s status, if it is still served here: a loop over the nodes
        awaits between them, and a shard handed over meanwhile is another replica's to write."""
        node = self.nodes.get(name)
        if node is None:
            return
        await self._client.patch(f"/api/v1/nodes/{name}/status", {"status": self._status(node)})

    async def _diagnose(self, err: ProviderError) -> Outage:
        """Which part is out: the provider (it does not answer its health check either) or its
        IaaS (the provider answers, but fails Ping)."""
        name = self.provider.name
        if await self.provider.reachable():
            return Outage(IAAS_UNAVAILABLE,
                          f"provider {name} answers, but its IaaS does not: {err.message}")
        return Outage(PROVIDER_UNAVAILABLE, f"provider {name} is not answering: {err.message}")

    async def _set_health(self, outage: Outage | None) -> None:
        healthy = outage is None
        if healthy == self.healthy and outage == self.outage:
            return
        was = self.outage.reason if self.outage else ""
        self.healthy, self.outage = healthy, outage
        if outage is not None:
            log.warning("provider %s: %s: %s", self.provider.name, outage.reason, outage.message)
        if self._on_outage is not None:
            self._on_outage(outage)
        for name in list(self.nodes):
            try:
                await self.write_status(name)
                if was != (outage.reason if outage else ""):
                    await self._events.emit(
                        {"apiVersion": "v1", "kind": "Node",
                         "metadata": {"name": name, "uid": self.uids.get(name, name)}},
                        "NodeReady" if outage is None else "NodeNotReady",
                        f"provider {self.provider.name} answers again" if outage is None
                        else f"{outage.reason}: {outage.message}",
                        warning=not healthy)
            except ApiError as err:
                log.warning("status of node %s not written: %s", name, err)

    async def run(self) -> None:
        """Register the nodes, then follow the provider until cancelled."""
        backoff = Backoff(base=0.5, cap=30.0)
        while True:
            try:
                listed = await self.provider.list_nodes()
                self.healthy = True
                for node in listed:
                    await self._learn(node)
                break
            except (ProviderError, ApiError) as err:
                log.warning("nodes of provider %s not registered yet: %s",
                            self.provider.name, err)
                await asyncio.sleep(backoff.failed(self.provider.name))
        self.registered.set()
        await asyncio.gather(self._follow(), self._ping(), self._heartbeat())

    async def _follow(self) -> None:
        backoff = Backoff(base=0.5, cap=10.0)
        while True:
            try:
                async for msg in self.provider.watch_nodes():
                    backoff.forget(self.provider.name)
                    node = msg.node
                    if msg.removed:
                        cond = node_pb2.Node(name=node.name)
                        cond.CopyFrom(self.nodes.get(node.name, node))
                        del cond.conditions[:]
                        cond.conditions.add(type="Ready", status=pb.CONDITION_STATUS_FALSE,
                                            reason="HostRemoved",
                                            message="the host is gone from the IaaS")
                        node = cond
                    self.known[node.name] = node
                    if not self._serves(node.name):
                        continue
                    if node.name in self.nodes:
                        prev = self.nodes[node.name]
                        self.nodes[node.name] = node
                        if (prev.unschedulable != node.unschedulable
                                or list(prev.taints) != list(node.taints)):
                            await self.register(node)
                        else:
                            await self.write_status(node.name)
                    else:
                        await self.register(node)
            except (ProviderError, ApiError) as err:
                log.info("node stream of %s ended: %s", self.provider.name, err)
            await asyncio.sleep(backoff.failed(self.provider.name))

    async def _ping(self) -> None:
        while True:
            try:
                await self.provider.ping()
                if not self.healthy:
                    # Back: refresh what may have changed while it was away.
                    for node in await self.provider.list_nodes():
                        self.known[node.name] = node
                        if self._serves(node.name):
                            self._remember(node)
                await self._set_health(None)
            except ProviderError as err:
                await self._set_health(await self._diagnose(err))
            except ApiError as err:
                log.warning("node status not written: %s", err)
            await asyncio.sleep(self._settings.ping_interval)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self._settings.status_interval)
            for name in list(self.nodes):
                try:
                    await self.write_status(name)
                except ApiError as err:
                    log.warning("status of node %s not written: %s", name, err)
