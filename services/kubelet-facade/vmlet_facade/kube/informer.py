"""A cache of one collection kept current by list-and-watch, calling back on every change.

``synced`` is set once the initial list is complete. A relist (after 410 Gone) is applied in one
step (list_and_watch yields its events with no await between them, and ``run`` awaits nothing
while applying them), so a synced cache never shows a half-done relist. ``synced_gate`` turns
caches into the readiness gate of a ``SerialWorkers``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

from vmlet_facade.kube.client import KubeClient
from vmlet_facade.kube.objects import Obj
from vmlet_facade.kube.watching import SYNCED, list_and_watch

__all__ = ["Informer", "key_of", "synced_gate"]


def key_of(obj: Obj) -> str:
    """``namespace/name``, or ``name`` for cluster-scoped objects."""
    meta = obj["metadata"]
    return f"{meta['namespace']}/{meta['name']}" if meta.get("namespace") else str(meta["name"])


class Informer:
    """Objects of one collection by ``namespace/name``; ``on_change(old, new)`` per change."""

    def __init__(self, client: KubeClient, path: str, params: Mapping[str, str] | None = None,
                 on_change: Callable[[Obj | None, Obj | None], None] | None = None) -> None:
        self._client = client
        self._path = path
        self._params = dict(params or {})
        self._on_change = on_change
        self.objects: dict[str, Obj] = {}
        self.synced = asyncio.Event()

    async def run(self) -> None:
        async for event in list_and_watch(self._client, self._path, self._params):
            if event.type == SYNCED:
                self.synced.set()
                continue
            key = key_of(event.object)
            old = self.objects.get(key)
            if event.type == "DELETED":
                self.objects.pop(key, None)
                new = None
            else:
                self.objects[key] = new = event.object
            if self._on_change is not None:
                self._on_change(old, new)

    @property
    def has_synced(self) -> bool:
        """Whether the initial list is complete."""
        return self.synced.is_set()

    def get(self, key: str) -> Obj | None:
        return self.objects.get(key)

    def values(self) -> list[Obj]:
        return list(self.objects.values())


def synced_gate(*informers: Informer) -> Callable[[str], Awaitable[None]]:
    """A readiness gate that returns once every one of ``informers`` completed its initial list."""

    async def ready(_key: str) -> None:
        for informer in informers:
            if not informer.synced.is_set():
                await informer.synced.wait()

    return ready
