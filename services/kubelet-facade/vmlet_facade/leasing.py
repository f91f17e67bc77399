"""Node heartbeats as Leases in kube-node-lease, renewed every ``interval`` seconds, as the kubelet
does; the node lifecycle controller reads them to tell a live node from a dead one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable

from vmlet_facade.kube import ApiError, KubeClient
from vmlet_facade.kube.paths import InvalidName, api_path

__all__ = ["LEASE_NAMESPACE", "LeaseKeeper"]

LEASE_NAMESPACE = "kube-node-lease"
log = logging.getLogger(__name__)


def _micro_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseKeeper:
    """Keeps one Lease per node name fresh while the facade runs."""

    def __init__(self, client: KubeClient, nodes: Callable[[], dict[str, str]], *,
                 interval: float = 10.0, duration_seconds: int = 40) -> None:
        self._client = client
        self._nodes = nodes  # node name -> node UID
        self._interval = interval
        self._duration = duration_seconds

    async def run(self) -> None:
        renewed: dict[str, float] = {}
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            due = {name: uid for name, uid in self._nodes().items()
                   if now - renewed.get(name, -1e9) >= self._interval}
            await asyncio.gather(*(self.renew(name, uid) for name, uid in due.items()))
            renewed.update(dict.fromkeys(due, now))
            await asyncio.sleep(1.0)

    async def renew(self, node: str, node_uid: str) -> None:
        try:
            path = api_path("leases", node, namespace=LEASE_NAMESPACE,
                            group="coordination.k8s.io")
        except InvalidName as err:  # a node name a provider made up: no lease, and say so
            log.warning("no lease for node %r: %s", node[:80], err)
            return
        try:
            await self._client.patch(path, {"spec": {"renewTime": _micro_now(),
                                                     "holderIdentity": node}})
        except ApiError as err:
            if not err.not_found:
                log.warning("lease of %s not renewed: %s", node, err)
                return
            body = {
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": node, "namespace": LEASE_NAMESPACE, "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid}]},
                "spec": {"holderIdentity": node, "leaseDurationSeconds": self._duration,
                         "renewTime": _micro_now()},
            }
            try:
                await self._client.create(path.rsplit("/", 1)[0], body)
            except ApiError as err2:
                if not err2.conflict:
                    log.warning("lease of %s not created: %s", node, err2)
