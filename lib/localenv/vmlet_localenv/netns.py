"""Network namespaces with one veth address each: a non-loopback address on this machine.

Tests need such addresses because two parties refuse loopback ones. The apiserver will not proxy
(nodes/proxy, logs, exec, port-forward) to a node whose address is a loopback one, so the
facade's kubelet listener lives in a namespace and the nodes advertise its address. The vSphere
provider never uses a loopback or link-local address a guest reports (a guest could otherwise
point exec and port-forward at the provider's own host), so a stand-in guest lives in one too.

Each namespace gets a veth pair: the host side holds the first address of a /30 from
198.18.0.0/15 (RFC 2544's benchmarking range, which nothing routes), the namespace side the
second. A /30 is picked at random among those no route of this host covers, so parallel runs
do not collide. A namespace may also hold a whole pool of addresses (``pool_prefix``, say a
/28 picked the same way): every address of it is local inside the namespace (``ip route add
local POOL dev lo``, so a listener on 0.0.0.0 there answers at each), and the host routes the
pool through the veth. That gives each vmlet node an address of its own (--node-ip-pool). All
traffic stays on this machine; removing the namespace and its veth removes the routes. Needs
root and iproute2.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["POOL", "Netns", "NetnsUnavailable", "free_subnet", "namespaces"]

POOL = ipaddress.IPv4Network("198.18.0.0/15")


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be made here: not root, no iproute2, or `ip` refused."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=30)


def free_subnet(prefix: int = 30) -> ipaddress.IPv4Network:
    """A /``prefix`` of `POOL` that no route of this host covers (other runs' included), at
    random."""
    try:
        routes = json.loads(_ip("-j", "route").stdout or "[]")
    except subprocess.CalledProcessError as err:
        raise NetnsUnavailable(f"cannot list this host's routes: {err.stderr.strip()}") from err
    taken = [ipaddress.ip_network(r["dst"], strict=False) for r in routes
             if r.get("dst") not in (None, "default")]
    size = 2 ** (32 - prefix)
    for _ in range(1000):
        offset = random.randrange(POOL.num_addresses // size) * size
        candidate = ipaddress.IPv4Network(f"{POOL.network_address + offset}/{prefix}")
        if not any(candidate.overlaps(t) for t in taken):
            return candidate
    raise NetnsUnavailable(f"no free /{prefix} in {POOL}")


@dataclass(frozen=True)
class Netns:
    """A network namespace ``name`` whose veth end holds ``ip``; ``link`` is the host's end,
    at ``gateway``; every address of ``pool`` (a network, when made with one) is local in it."""

    name: str
    ip: str
    link: str
    gateway: str
    pool: str | None = None

    @classmethod
    def make(cls, prefix: str, pool_prefix: int | None = None) -> Netns:
        """Make a namespace named ``<prefix>-<random>`` with its veth pair, both ends up, and
        with a pool of local addresses the host routes to it when ``pool_prefix`` is given.

        Raises `NetnsUnavailable` (having removed what it made) when that is not possible here.
        """
        if os.geteuid() != 0 or shutil.which("ip") is None:
            raise NetnsUnavailable("needs root and iproute2 to make network namespaces")
        tag = uuid.uuid4().hex[:6]
        gateway, address = (str(h) for h in free_subnet().hosts())
        made = cls(f"{prefix}-{tag}", address, f"vn{tag}", gateway)
        inner = f"{made.link}p"
        try:
            _ip("netns", "add", made.name)
            _ip("link", "add", made.link, "type", "veth", "peer", "name", inner)
            _ip("link", "set", inner, "netns", made.name)
            _ip("addr", "add", f"{gateway}/30", "dev", made.link)
            _ip("link", "set", made.link, "up")
            _ip("-n", made.name, "addr", "add", f"{address}/30", "dev", inner)
            _ip("-n", made.name, "link", "set", inner, "up")
            _ip("-n", made.name, "link", "set", "lo", "up")
            if pool_prefix is not None:
                # Picked once the veth's /30 is routed, so the two never overlap.
                pool = str(free_subnet(pool_prefix))
                made = cls(made.name, address, made.link, gateway, pool)
                _ip("-n", made.name, "route", "add", "local", pool, "dev", "lo")
                _ip("route", "add", pool, "via", address, "dev", made.link)
        except subprocess.CalledProcessError as err:
            made.remove()
            raise NetnsUnavailable(
                f"cannot make network namespaces here: {err.stderr.strip()}") from err
        return made

    def remove(self) -> None:
        """Delete the namespace, the veth pair and the pool's route; what is already gone is
        no error."""
        if self.pool is not None:
            _ip("route", "del", self.pool, "via", self.ip, "dev", self.link, check=False)
        _ip("netns", "del", self.name, check=False)
        _ip("link", "del", self.link, check=False)

    def record(self, path: Path) -> None:
        """Write down what to remove, for a later run when this one ends without removing."""
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def remove_recorded(cls, path: Path) -> None:
        """Remove the namespace recorded at ``path`` (if any) and the record."""
        try:
            cls(**json.loads(path.read_text())).remove()
        except (OSError, ValueError, TypeError):
            pass
        path.unlink(missing_ok=True)


@contextmanager
def namespaces(*prefixes: str) -> Iterator[tuple[Netns, ...]]:
    """One `Netns` per prefix, in order, all removed on the way out (also when one fails to be
    made, in which case `NetnsUnavailable` propagates)."""
    with ExitStack() as cleanup:
        made = []
        for prefix in prefixes:
            netns = Netns.make(prefix)
            cleanup.callback(netns.remove)
            made.append(netns)
        yield tuple(made)
