"""Readiness: whether a provider can do its work now, that is, whether its IaaS answers.

A provider's grpc.health.v1 service carries two verdicts. The overall service ("") is liveness:
SERVING while the process works, whatever the IaaS does. `READINESS_SERVICE` is readiness:
NOT_SERVING while the provider's IaaS (vCenter, Nova, Keystone) cannot be reached, SERVING when it
answers again. A provider reports what it knows into a `Readiness` it hands to the server
(`ProviderServicers.readiness`), which mirrors the latest verdict into the health service; a
provider without one (the in-memory provider: no IaaS to lose) is ready as soon as it serves.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

__all__ = ["READINESS_SERVICE", "Readiness"]

#: The grpc.health.v1 service name of readiness (Kubernetes: `readinessProbe.grpc.service`).
READINESS_SERVICE = "readiness"


class Readiness:
    """The latest readiness verdict of a provider, with the reason for it.

    `set` it from the event loop that serves the provider (e.g. from a listener of the IaaS
    session); `watch` follows it.
    """

    def __init__(self, ready: bool = False, reason: str = "starting") -> None:
        self._ready = ready
        self._reason = reason
        self._watchers: set[asyncio.Event] = set()

    @property
    def ready(self) -> bool:
        """Whether the provider can do its work now."""
        return self._ready

    @property
    def reason(self) -> str:
        """Why it can or cannot, for humans (the logs)."""
        return self._reason

    def set(self, ready: bool, reason: str = "") -> None:
        """Records a verdict; watchers hear of it when it differs from the one before."""
        changed = ready is not self._ready
        self._ready, self._reason = ready, reason
        if changed:
            for event in self._watchers:
                event.set()

    async def watch(self) -> AsyncIterator[bool]:
        """The current verdict, then every change of it; several changes made while the
        consumer was busy come as the latest one only."""
        changed = asyncio.Event()
        self._watchers.add(changed)
        try:
            while True:
                changed.clear()
                yield self._ready
                await changed.wait()
        finally:
            self._watchers.discard(changed)
