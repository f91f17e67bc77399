"""Which connections the kubelet API takes: what an unauthenticated peer may cost, bounded.

Anyone who can reach the port can open a connection, so a connection is a *stranger* until one
of its requests is authorized, and strangers are bounded: in total (the cap on all connections),
per client address, and in time (handshake, first request; see `ConnectionLimits`). A
connection over a cap is refused before anything is allocated for it (no TLS object, no task).

When every slot is taken and some are held by strangers, a stranger is closed to admit the
newcomer instead of refusing it: the one that has shown the least, oldest first. Silent ones
(nothing sent yet) go before ones in their TLS handshake, which go before handshaken ones
awaiting a request. A flood of cheap connections therefore never displaces a client that is
doing its handshake (the apiserver takes milliseconds from connect to an authorized request),
and connections that were authorized are never touched.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from vmlet_facade.kubeletapi import metrics

__all__ = ["Admission", "ConnectionLimits", "Slot", "Stage"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConnectionLimits:
    """What the kubelet API lets connections cost (documented in docs/operations.md).

    The defaults keep ``max_connections`` idle strangers (about 40 KiB each, measured in
    docs/benchmarks.md) far below the facade Deployment's 512Mi memory limit."""

    max_connections: int = 1024
    """Open connections in all, authorized ones included."""
    max_connections_per_client: int = 128
    """Connections from one client address not yet authorized (the apiserver's authorized
    streams do not count)."""
    handshake_timeout: float = 10.0
    """Seconds from accepting a connection to the end of its TLS handshake."""
    first_request_timeout: float = 10.0
    """Seconds for a connection not yet authorized to deliver a whole request (head and
    body), after the handshake and after each answer."""
    idle_timeout: float = 90.0
    """Seconds an authorized connection may wait for its next request (a kubelet's 90 s).
    Streams (logs -f, exec, attach, port-forward) are requests in progress, never idle."""
    max_header_bytes: int = 64 * 1024
    """The largest request head (request line and headers); larger ones are answered 431."""

    def __post_init__(self) -> None:
        if self.max_connections < 1 or self.max_connections_per_client < 1:
            raise ValueError("connection caps must be at least 1")
        if min(self.handshake_timeout, self.first_request_timeout, self.idle_timeout) <= 0:
            raise ValueError("timeouts must be positive")
        if self.max_header_bytes < 1024:
            raise ValueError("max_header_bytes must be at least 1024")


class Stage(IntEnum):
    """How far a stranger's connection got; the lower, the sooner it is evicted."""

    SILENT = 0  # accepted, nothing received
    HANDSHAKE = 1  # its TLS handshake under way
    HANDSHAKEN = 2  # awaiting (or sending) a request


class Slot:
    """One admitted connection: a stranger until `authorize`, given back with `release`.

    ``closer`` ends the connection at once; it is called when the slot is evicted."""

    __slots__ = ("_admission", "address", "authorized", "closer", "released", "stage")

    def __init__(self, admission: Admission, address: str) -> None:
        self._admission = admission
        self.address = address
        self.authorized = False
        self.released = False
        self.stage = Stage.SILENT
        self.closer: Callable[[], object] | None = None

    def advance(self, stage: Stage) -> None:
        """The connection got as far as ``stage``."""
        self._admission._advance(self, stage)

    def authorize(self) -> None:
        """One of the connection's requests was authorized: no longer a stranger."""
        self._admission._authorize(self)

    def release(self) -> None:
        """The connection is closed (idempotent)."""
        self._admission._release(self)


class Admission:
    """Counts open connections and decides whether a new one may come in."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.open = 0
        # Strangers by stage, each oldest first (dicts keep insertion order).
        self._strangers: tuple[dict[Slot, None], ...] = tuple({} for _ in Stage)
        self._per_client: Counter[str] = Counter()
        self._stranger_gauge = metrics.CONNECTIONS.labels("stranger")
        self._authorized_gauge = metrics.CONNECTIONS.labels("authorized")

    @property
    def strangers(self) -> int:
        return sum(len(stage) for stage in self._strangers)

    def admit(self, address: str) -> Slot | None:
        """A slot for a new connection from ``address``, or None when it must be refused."""
        if self._per_client[address] >= self.limits.max_connections_per_client:
            metrics.CONNECTIONS_REFUSED.labels("client").inc()
            return None
        if self.open >= self.limits.max_connections:
            victim = next((next(iter(stage)) for stage in self._strangers if stage), None)
            if victim is None:
                metrics.CONNECTIONS_REFUSED.labels("total").inc()
                return None
            self._release(victim)
            metrics.CONNECTIONS_CLOSED.labels("evicted").inc()
            if victim.closer is not None:
                victim.closer()
        slot = Slot(self, address)
        self._strangers[Stage.SILENT][slot] = None
        self._per_client[address] += 1
        self.open += 1
        self._gauge()
        return slot

    def _advance(self, slot: Slot, stage: Stage) -> None:
        if slot.authorized or slot.released or stage <= slot.stage:
            return
        del self._strangers[slot.stage][slot]
        slot.stage = stage
        self._strangers[stage][slot] = None

    def _authorize(self, slot: Slot) -> None:
        if slot.authorized or slot.released:
            return
        slot.authorized = True
        self._forget_stranger(slot)
        self._gauge()

    def _release(self, slot: Slot) -> None:
        if slot.released:
            return
        slot.released = True
        self.open -= 1
        if not slot.authorized:
            self._forget_stranger(slot)
        self._gauge()

    def _forget_stranger(self, slot: Slot) -> None:
        del self._strangers[slot.stage][slot]
        left = self._per_client[slot.address] - 1
        if left:
            self._per_client[slot.address] = left
        else:
            del self._per_client[slot.address]

    def _gauge(self) -> None:
        strangers = self.strangers
        self._stranger_gauge.set(strangers)
        self._authorized_gauge.set(self.open - strangers)
