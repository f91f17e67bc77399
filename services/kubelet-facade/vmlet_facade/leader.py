"""Leader election on a coordination.k8s.io Lease, so cluster-wide controllers run once per
cluster however many facades run. Optimistic concurrency (resourceVersion) settles races.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from vmlet_facade.kube import ApiError, KubeClient

__all__ = ["LeaderElector"]

log = logging.getLogger(__name__)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _fmt(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Runs ``lead()`` while this process holds the Lease; stops it when the Lease is lost."""

    def __init__(self, client: KubeClient, namespace: str, name: str, identity: str, *,
                 lease_seconds: int = 15, retry_seconds: float = 2.0) -> None:
        self._client = client
        self._path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        self._name = name
        self.identity = identity
        self._duration = lease_seconds
        self._retry = retry_seconds

    async def _try(self) -> bool:
        now = _now()
        spec = {"holderIdentity": self.identity, "leaseDurationSeconds": self._duration,
                "renewTime": _fmt(now)}
        try:
            lease = await self._client.get(f"{self._path}/{self._name}")
        except ApiError as err:
            if not err.not_found:
                raise
            try:
                await self._client.create(self._path, {
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self._name},
                    "spec": {**spec, "acquireTime": _fmt(now), "leaseTransitions": 0}})
                return True
            except ApiError as err2:
                if err2.conflict:
                    return False
                raise
        current = lease.get("spec", {})
        holder = current.get("holderIdentity")
        renewed = current.get("renewTime")
        expired = True
        if renewed:
            when = dt.datetime.fromisoformat(renewed.replace("Z", "+00:00"))
            expired = (now - when).total_seconds() > current.get("leaseDurationSeconds",
                                                                   self._duration)
        if holder != self.identity and not expired:
            return False
        if holder != self.identity:
            spec["acquireTime"] = _fmt(now)
            spec["leaseTransitions"] = int(current.get("leaseTransitions", 0)) + 1
        lease["spec"] = {**current, **spec}
        try:
            await self._client.replace(f"{self._path}/{self._name}", lease)
        except ApiError as err:
            if err.conflict:
                return False
            raise
        return True

    async def run(self, lead: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Campaign forever; while leading, run ``lead`` (cancelled when leadership is lost)."""
        while True:
            try:
                leading = await self._try()
            except ApiError as err:
                log.warning("leader election: %s", err)
                leading = False
            if not leading:
                await asyncio.sleep(self._retry)
                continue
            log.info("leading as %s", self.identity)
            task = asyncio.create_task(lead())
            try:
                while not task.done():
                    await asyncio.sleep(self._retry)
                    try:
                        if not await self._try():
                            break
                    except ApiError as err:
                        log.warning("lease renewal failed: %s", err)
                        break
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            log.warning("lost leadership")
