"""Which facade replica serves which virtual node: one coordination.k8s.io Lease per node.

Several replicas share the nodes. Each keeps a membership Lease (``vmlet-facade-<identity>``,
label ``vmlet.io/facade-replica: <group>``, the group naming the providers it serves: facades
of other providers in the same namespace are not counted) and, for every node it serves, a
shard Lease (``vmlet-node-<node>``, label ``vmlet.io/node-shard``, the node's name in the
annotation ``vmlet.io/node``). A Lease not renewed for ``duration`` seconds is free. Every
``interval`` seconds a replica:

1. renews its membership and counts the live replicas: its share is ceil(nodes / live);
2. renews the shard Leases it holds (read from the apiserver, so a restarted replica of the
   same identity serves its nodes at once); one it fails to renew is no longer served;
3. takes free shard Leases of the nodes it knows while it holds fewer than its share;
4. gives back one shard Lease beyond its share per round (it stops serving the node, then
   clears the holder), so a replica that joins gets its share.

Optimistic concurrency (resourceVersion) settles races, so no two replicas hold one node. A
replica that dies stops renewing: after ``duration`` seconds the others take its nodes; one cut
off from the apiserver for as long stops serving its nodes, as they may be another's by then.
One that stops (SIGTERM) gives all of them back first, so a rolling update hands them over at
once.
``serve(node)`` registers the Node and follows its pods; ``release(node)`` stops that; nothing is
deleted either way.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Final

from vmlet_facade import metrics
from vmlet_facade.kube import ApiError, KubeClient
from vmlet_facade.kube.objects import Obj

__all__ = [
    "MEMBER_LABEL",
    "NODE_ANNOTATION",
    "SHARD_LABEL",
    "ShardKeeper",
    "replica_group",
    "shard_lease_name",
]

log = logging.getLogger(__name__)

MEMBER_LABEL: Final = "vmlet.io/facade-replica"
SHARD_LABEL: Final = "vmlet.io/node-shard"
NODE_ANNOTATION: Final = "vmlet.io/node"
_MAX_NAME = 253


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _fmt(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _lease_name(prefix: str, name: str) -> str:
    full = f"{prefix}{name}".lower()
    if len(full) <= _MAX_NAME and all(c.isalnum() or c in "-." for c in full):
        return full
    return f"{prefix}{hashlib.sha256(name.encode()).hexdigest()[:40]}"


def shard_lease_name(node: str) -> str:
    """The name of the shard Lease of ``node``."""
    return _lease_name("vmlet-node-", node)


def replica_group(providers: list[str]) -> str:
    """The membership group of replicas serving ``providers``: a label value."""
    return hashlib.sha256(",".join(sorted(providers)).encode()).hexdigest()[:16]


def _alive(lease: Obj, now: dt.datetime) -> bool:
    """Whether ``lease`` is held and renewed within its duration."""
    spec = lease.get("spec") or {}
    renewed = spec.get("renewTime")
    if not spec.get("holderIdentity") or not renewed:
        return False
    when = dt.datetime.fromisoformat(str(renewed).replace("Z", "+00:00"))
    return (now - when).total_seconds() <= float(spec.get("leaseDurationSeconds") or 0)


class ShardKeeper:
    """Takes, renews and gives back this replica's share of the nodes (see the module)."""

    def __init__(self, client: KubeClient, namespace: str, identity: str,
                 nodes: Callable[[], list[str]], serve: Callable[[str], Awaitable[None]],
                 release: Callable[[str], Awaitable[None]], *, group: str = "all",
                 duration: int = 10, interval: float = 2.0) -> None:
        self._client = client
        self._path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        self.identity = identity
        self._nodes = nodes
        self._serve = serve
        self._release = release
        self._duration = duration
        self._interval = interval
        self.served: set[str] = set()
        self._member_name = _lease_name("vmlet-facade-", identity)
        self._group = group

    async def run(self) -> None:
        """Keep this replica's share until cancelled; then give every node back."""
        loop = asyncio.get_running_loop()
        renewed = loop.time()
        try:
            while True:
                try:
                    await self.round()
                    renewed = loop.time()
                except ApiError as err:
                    log.warning("node shards: %s", err)
                    if loop.time() - renewed > self._duration:
                        await self.drop_all()
                await asyncio.sleep(self._interval)
        finally:
            await asyncio.shield(self.give_back_all())

    async def round(self) -> None:
        """One pass of the steps in the module's docstring."""
        now = _now()
        live = await self._members(now)
        known = sorted(set(self._nodes()))
        share = math.ceil(len(known) / max(live, 1))
        listing = await self._client.get(self._path, labelSelector=SHARD_LABEL)
        leases: dict[str, Obj] = {}
        for lease in listing.get("items") or []:
            node = (lease["metadata"].get("annotations") or {}).get(NODE_ANNOTATION)
            if node:
                leases[str(node)] = lease
        mine = [n for n in known if n in leases
                and leases[n]["spec"].get("holderIdentity") == self.identity]
        held = []
        for node in mine:
            if not await self._hold(node, leases[node], now):
                await self._drop(node)
            elif node in self.served or await self._start(node):
                held.append(node)  # (started: held before a restart of this replica)
        for node in [n for n in self.served if n not in mine]:
            await self._drop(node)  # no longer ours in the apiserver (or no longer known)
        start = int(hashlib.sha256(self.identity.encode()).hexdigest(), 16) % max(len(known), 1)
        for node in known[start:] + known[:start]:  # replicas start at different nodes
            if len(held) >= share:
                break
            if node in held or (node in leases and _alive(leases[node], now)):
                continue
            if await self._hold(node, leases.get(node), now) and await self._start(node):
                held.append(node)
        if len(held) > share and live > 1:
            await self._give_back(held[-1])

    async def drop_all(self) -> None:
        """Stop serving every node without a word to the apiserver: this replica could not renew
        its Leases for their whole duration (the apiserver away, or this replica cut off), so
        another may hold them now; it takes them again once it can renew."""
        for node in sorted(self.served):
            await self._drop(node)

    async def give_back_all(self) -> None:
        """Stop serving every node, free its Lease, then leave: the others count this replica
        out at once and take the nodes without waiting for the Leases to expire."""
        for node in sorted(self.served):
            try:
                await self._give_back(node)
            except ApiError as err:
                log.warning("shard of node %s not given back: %s", node, err)
        try:
            await self._client.patch(f"{self._path}/{self._member_name}",
                                     {"spec": {"holderIdentity": ""}})
        except ApiError as err:
            if not err.not_found:
                log.warning("replica %s did not leave: %s", self.identity, err)

    async def _members(self, now: dt.datetime) -> int:
        """Renews this replica's membership Lease; how many replicas are live."""
        name = self._member_name
        spec = {"holderIdentity": self.identity, "leaseDurationSeconds": self._duration,
                "renewTime": _fmt(now)}
        try:
            await self._client.patch(f"{self._path}/{name}", {"spec": spec})
        except ApiError as err:
            if not err.not_found:
                raise
            await self._client.create(self._path, {
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name, "labels": {MEMBER_LABEL: self._group}},
                "spec": spec})
        listing = await self._client.get(self._path,
                                         labelSelector=f"{MEMBER_LABEL}={self._group}")
        return sum(1 for lease in listing.get("items") or [] if _alive(lease, now)
                   or lease["spec"].get("holderIdentity") == self.identity)

    async def _hold(self, node: str, lease: Obj | None, now: dt.datetime,
                    holder: str | None = None) -> bool:
        """Writes ``node``'s shard Lease held by ``holder`` (this replica by default; "" frees
        it) and renewed now; False when another replica wrote it first."""
        holder = self.identity if holder is None else holder
        spec: Obj = {"holderIdentity": holder, "leaseDurationSeconds": self._duration,
                     "renewTime": _fmt(now)}
        try:
            if lease is None:
                await self._client.create(self._path, {
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": shard_lease_name(node), "labels": {SHARD_LABEL: "true"},
                                 "annotations": {NODE_ANNOTATION: node}},
                    "spec": {**spec, "acquireTime": _fmt(now), "leaseTransitions": 0}})
                return True
            current = dict(lease.get("spec") or {})
            if holder and current.get("holderIdentity") != holder:
                spec["acquireTime"] = _fmt(now)
                spec["leaseTransitions"] = int(current.get("leaseTransitions") or 0) + 1
            await self._client.replace(f"{self._path}/{lease['metadata']['name']}",
                                       {**lease, "spec": {**current, **spec}})
            return True
        except ApiError as err:
            if err.conflict:
                return False
            raise

    async def _start(self, node: str) -> bool:
        """Serve ``node``, whose Lease was just taken; its Lease freed again if that fails."""
        log.info("serving node %s (replica %s)", node, self.identity)
        self.served.add(node)
        metrics.NODE_SERVED.labels(node, self.identity).set(1)
        metrics.NODE_SHARD_CHANGES.labels("taken").inc()
        try:
            await self._serve(node)
        except Exception as err:  # an apiserver or provider fault: the node goes to another
            log.warning("node %s not served: %r", node, err)
            await self._give_back(node)
            return False
        return True

    async def _drop(self, node: str) -> None:
        """Stop serving ``node`` (its Lease is another's, or gone)."""
        if node in self.served:
            log.warning("node %s no longer served here (replica %s)", node, self.identity)
            self._unserved(node, "lost")
            await self._release(node)

    def _unserved(self, node: str, change: str) -> None:
        self.served.discard(node)
        metrics.NODE_SERVED.labels(node, self.identity).set(0)
        metrics.NODE_SHARD_CHANGES.labels(change).inc()

    async def _give_back(self, node: str) -> None:
        """Stop serving ``node``, then free its Lease for another replica."""
        log.info("giving node %s back (replica %s)", node, self.identity)
        self._unserved(node, "given")
        await self._release(node)
        try:
            lease = await self._client.get(f"{self._path}/{shard_lease_name(node)}")
        except ApiError as err:
            if err.not_found:
                return
            raise
        if lease.get("spec", {}).get("holderIdentity") == self.identity:
            await self._hold(node, lease, _now(), holder="")
