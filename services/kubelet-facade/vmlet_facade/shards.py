"""Which facade replica serves which virtual node: one coordination.k8s.io Lease per node,
kept alive by one membership Lease per replica.

Several replicas share the nodes. Each keeps a membership Lease (``vmlet-facade-<identity>``,
label ``vmlet.io/facade-replica: <group>``, the group naming the providers it serves: facades
of other providers in the same namespace are not counted), renewed every ``interval`` seconds;
a replica is live while it is renewed within ``duration`` seconds. Every node has a shard Lease
(``vmlet-node-<node>``, label ``vmlet.io/node-shard``, the node's name in the annotation
``vmlet.io/node``) naming the replica that serves it. A shard is held while its holder is live
(or for ``duration`` seconds after it was taken): shard Leases are written when they change
hands, never renewed, so a replica writes one Lease per ``interval`` however many nodes it
serves (renewing each node's Lease cost 50 writes a second at 100 nodes, and under load the
renewals lagged, Leases lapsed and nodes churned between replicas).

Every ``interval`` seconds a replica:

1. renews its membership and counts the live replicas: its share is ceil(nodes / live);
2. serves the nodes whose shard names it (read from the apiserver, so a restarted replica of
   the same identity serves its nodes at once) and stops serving any whose shard names another;
3. takes free shards (no holder, or a holder no longer live) of the nodes it knows while it
   holds fewer than its share, and starts serving them, several at once;
4. gives back one shard beyond its share per round (it stops serving the node, then clears the
   holder), once the live replicas have stayed the same for ``duration`` seconds: a replica
   that joins gets its share, and one that lags for a moment does not set nodes moving.

The membership is also renewed while a round is busy starting nodes. Optimistic concurrency
(resourceVersion) settles races for a shard, so no two replicas hold one node. A replica that
dies stops renewing: after ``duration`` seconds the others take its nodes; one that cannot
renew its membership for as long stops serving its nodes, as they may be another's by then.
One that stops (SIGTERM) gives all of them back first, so a rolling update hands them over at
once. ``serve(node)`` registers the Node and follows its pods; ``release(node)`` stops that;
nothing is deleted either way.
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
_STARTS = 8  # nodes a round starts serving at once


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


def _holder(lease: Obj) -> str:
    return str((lease.get("spec") or {}).get("holderIdentity") or "")


def _alive(lease: Obj, now: dt.datetime) -> bool:
    """Whether ``lease`` is held and renewed within its duration."""
    spec = lease.get("spec") or {}
    renewed = spec.get("renewTime")
    if not _holder(lease) or not renewed:
        return False
    when = dt.datetime.fromisoformat(str(renewed).replace("Z", "+00:00"))
    return (now - when).total_seconds() <= float(spec.get("leaseDurationSeconds") or 0)


class ShardKeeper:
    """Takes and gives back this replica's share of the nodes (see the module)."""

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
        self._renewed: float | None = None  # loop time of the last membership renewal
        self._live: frozenset[str] = frozenset()
        self._live_since = _now()

    async def run(self) -> None:
        """Keep this replica's share until cancelled; then give every node back."""
        heartbeat = asyncio.create_task(self.heartbeat())
        try:
            while True:
                try:
                    await self.round()
                except ApiError as err:
                    log.warning("node shards: %s", err)
                await asyncio.sleep(self._interval)
        finally:
            heartbeat.cancel()
            await asyncio.shield(self.give_back_all())

    async def heartbeat(self) -> None:
        """Renew the membership whenever a round has not within ``interval`` (a round may be
        busy starting nodes); stop serving every node once it could not for ``duration``."""
        loop = asyncio.get_running_loop()
        since = loop.time()
        while True:
            renewed = self._renewed if self._renewed is not None else since
            if loop.time() - renewed >= self._interval:
                try:
                    await self._renew_membership()
                except ApiError as err:
                    log.warning("replica %s not renewed: %s", self.identity, err)
                    if loop.time() - renewed > self._duration:
                        await self.drop_all()
            await asyncio.sleep(self._interval / 2)

    async def round(self) -> None:
        """One pass of the steps in the module's docstring."""
        await self._renew_membership()
        now = _now()
        live = await self._members(now)
        if live != self._live:
            self._live, self._live_since = live, now
        known = sorted(set(self._nodes()))
        share = math.ceil(len(known) / len(live))
        leases = await self._shards()
        mine = [n for n in known if n in leases and _holder(leases[n]) == self.identity]
        for node in [n for n in self.served if n not in mine]:
            await self._drop(node)  # another's in the apiserver now (or no longer known)
        held = [n for n in mine if n in self.served]
        taken = [n for n in mine if n not in self.served]  # held before a restart of this one
        start = int(hashlib.sha256(self.identity.encode()).hexdigest(), 16) % max(len(known), 1)
        for node in known[start:] + known[:start]:  # replicas start at different nodes
            if len(held) + len(taken) >= share:
                break
            lease = leases.get(node)
            if node in mine or (lease is not None and self._held(lease, live, now)):
                continue
            if await self._write(node, lease, self.identity):
                taken.append(node)
        held += await self._start_all(taken)
        stable = (now - self._live_since).total_seconds() >= self._duration
        if len(held) > share and len(live) > 1 and stable:
            await self._give_back(held[-1])

    async def drop_all(self) -> None:
        """Stop serving every node without a word to the apiserver: this replica could not renew
        its membership for its whole duration (the apiserver away, or this replica cut off), so
        another may hold its nodes now; it takes them again once it can renew."""
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

    def _held(self, lease: Obj, live: frozenset[str], now: dt.datetime) -> bool:
        """Whether a shard is held: its holder is live, or took it within ``duration``."""
        return bool(_holder(lease)) and (_holder(lease) in live or _alive(lease, now))

    async def _renew_membership(self) -> None:
        """Write this replica's membership Lease, renewed now. After a renewal missed for the
        whole duration (this process paused, or cut off), its nodes are dropped first: the
        others may have taken them meanwhile."""
        started = asyncio.get_running_loop().time()
        if self._renewed is not None and started - self._renewed > self._duration:
            await self.drop_all()
        spec = {"holderIdentity": self.identity, "leaseDurationSeconds": self._duration,
                "renewTime": _fmt(_now())}
        try:
            await self._client.patch(f"{self._path}/{self._member_name}", {"spec": spec})
        except ApiError as err:
            if not err.not_found:
                raise
            await self._client.create(self._path, {
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self._member_name, "labels": {MEMBER_LABEL: self._group}},
                "spec": spec})
        self._renewed = started

    async def _members(self, now: dt.datetime) -> frozenset[str]:
        """The live replicas of this group, this one included."""
        listing = await self._client.get(self._path,
                                         labelSelector=f"{MEMBER_LABEL}={self._group}")
        return frozenset(_holder(lease) for lease in listing.get("items") or []
                         if _alive(lease, now)) | {self.identity}

    async def _shards(self) -> dict[str, Obj]:
        """Every node's shard Lease, by node."""
        listing = await self._client.get(self._path, labelSelector=SHARD_LABEL)
        leases: dict[str, Obj] = {}
        for lease in listing.get("items") or []:
            node = (lease["metadata"].get("annotations") or {}).get(NODE_ANNOTATION)
            if node:
                leases[str(node)] = lease
        return leases

    async def _write(self, node: str, lease: Obj | None, holder: str) -> bool:
        """Write ``node``'s shard Lease held by ``holder`` ("" frees it) as of now; False when
        another replica wrote it first."""
        now = _fmt(_now())
        spec: Obj = {"holderIdentity": holder, "leaseDurationSeconds": self._duration,
                     "renewTime": now}
        try:
            if lease is None:
                await self._client.create(self._path, {
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": shard_lease_name(node), "labels": {SHARD_LABEL: "true"},
                                 "annotations": {NODE_ANNOTATION: node}},
                    "spec": {**spec, "acquireTime": now, "leaseTransitions": 0}})
                return True
            current = dict(lease.get("spec") or {})
            if holder and _holder(lease) != holder:
                spec["acquireTime"] = now
                spec["leaseTransitions"] = int(current.get("leaseTransitions") or 0) + 1
            await self._client.replace(f"{self._path}/{lease['metadata']['name']}",
                                       {**lease, "spec": {**current, **spec}})
            return True
        except ApiError as err:
            if err.conflict:
                return False
            raise

    async def _start_all(self, nodes: list[str]) -> list[str]:
        """Serve ``nodes``, whose shards were just taken, ``_STARTS`` at a time; the ones
        served."""
        gate = asyncio.Semaphore(_STARTS)

        async def start(node: str) -> bool:
            async with gate:
                return await self._start(node)

        done = await asyncio.gather(*(start(n) for n in nodes))
        return [n for n, ok in zip(nodes, done, strict=True) if ok]

    async def _start(self, node: str) -> bool:
        """Serve ``node``; its shard freed again if that fails."""
        log.info("serving node %s (replica %s)", node, self.identity)
        self.served.add(node)
        metrics.NODE_SERVED.labels(node, self.identity).set(1)
        metrics.NODE_SHARD_CHANGES.labels("taken").inc()
        try:
            await self._serve(node)
        except Exception as err:  # an apiserver or provider fault: the node goes to another
            log.warning("node %s not served: %r", node, err)
            try:
                await self._give_back(node)
            except ApiError as again:
                log.warning("shard of node %s not given back: %s", node, again)
            return False
        return True

    async def _drop(self, node: str) -> None:
        """Stop serving ``node`` (its shard is another's, or gone)."""
        if node in self.served:
            log.warning("node %s no longer served here (replica %s)", node, self.identity)
            self._unserved(node, "lost")
            await self._release(node)

    def _unserved(self, node: str, change: str) -> None:
        self.served.discard(node)
        metrics.NODE_SERVED.labels(node, self.identity).set(0)
        metrics.NODE_SHARD_CHANGES.labels(change).inc()

    async def _give_back(self, node: str) -> None:
        """Stop serving ``node``, then free its shard for another replica."""
        log.info("giving node %s back (replica %s)", node, self.identity)
        self._unserved(node, "given")
        await self._release(node)
        try:
            lease = await self._client.get(f"{self._path}/{shard_lease_name(node)}")
        except ApiError as err:
            if err.not_found:
                return
            raise
        if _holder(lease) == self.identity:
            await self._write(node, lease, "")
