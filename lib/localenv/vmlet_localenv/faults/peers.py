"""Killing and restarting peers as they were started, and counting what was done.

A `Peer` is a name, the `Process` that runs it, a readiness check and an optional hook to run
before a restart (a provider's port file is removed so its reappearance means it listens again).
`PeerController.hit` sends SIGKILL or SIGTERM, waits for the exit (a SIGTERM that is not obeyed
within the grace period is followed by SIGKILL, as a kubelet would, and counted), keeps the peer
down for a moment, restarts it with the same argv and waits until it is ready.

The restarts must be made from a thread that lives as long as the peers: every peer runs with a
parent-death signal, which Linux sends when the *thread* that started it ends.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from vmlet_localenv.processes import Process, wait_for

__all__ = ["Peer", "PeerController"]


@dataclass
class Peer:
    """One peer the suite may kill."""

    name: str
    process: Callable[[], Process]
    ready: Callable[[], bool]
    before_start: Callable[[], None] | None = None
    ready_timeout: float = 90.0


@dataclass
class PeerController:
    """Kills and restarts peers; counts kills per peer and signal."""

    peers: dict[str, Peer]
    sigterm_grace: float = 30.0  # a kubelet's default terminationGracePeriodSeconds
    kills: Counter[tuple[str, str]] = field(default_factory=Counter)
    ignored_sigterm: Counter[str] = field(default_factory=Counter)
    log: list[str] = field(default_factory=list)
    downtime_total: float = 0.0

    def hit(self, name: str, sig: signal.Signals, down_for: float) -> float:
        """Send ``sig`` to peer ``name``, keep it down ``down_for`` seconds, restart it and wait
        until it is ready; return the seconds from the signal to ready."""
        peer = self.peers[name]
        proc = peer.process()
        began = time.monotonic()
        proc.signal(sig)
        if not proc.wait_exit(self.sigterm_grace if sig == signal.SIGTERM else 10.0):
            self.ignored_sigterm[name] += 1
            proc.signal(signal.SIGKILL)
            proc.wait_exit(10.0)
        self.kills[(name, sig.name)] += 1
        time.sleep(down_for)
        if peer.before_start is not None:
            peer.before_start()
        proc.restart()
        wait_for(peer.ready, timeout=peer.ready_timeout, what=f"{name} after a restart",
                 alive=proc.check_alive, interval=0.2)
        took = time.monotonic() - began
        self.downtime_total += took
        self.log.append(f"{sig.name} {name}: down {down_for:.1f}s, ready after {took:.1f}s")
        return took

    def ensure_running(self) -> None:
        """Restart any peer that is not running (none should be) and wait until all are ready."""
        for name, peer in self.peers.items():
            proc = peer.process()
            if not proc.running():
                self.log.append(f"{name} was not running: restarted")
                if peer.before_start is not None:
                    peer.before_start()
                proc.restart()
            wait_for(peer.ready, timeout=peer.ready_timeout, what=f"{name} ready",
                     alive=proc.check_alive)

    def counts(self) -> dict[str, dict[str, int]]:
        """Kills per peer and signal: {peer: {"SIGKILL": n, "SIGTERM": m}}."""
        out: dict[str, dict[str, int]] = {name: {"SIGKILL": 0, "SIGTERM": 0}
                                          for name in self.peers}
        for (name, sig), n in self.kills.items():
            out[name][sig] = n
        return out
