"""Network namespaces with one veth address each: a non-loopback address on this machine.

Tests need such addresses because two parties refuse loopback ones. The apiserver will not proxy
(nodes/proxy, logs, exec, port-forward) to a node whose address is a loopback one, so the
facade's kubelet listener lives in a namespace and the nodes advertise its address. The vSphere
provider never uses a loopback or link-local address a guest reports (a guest could otherwise
point exec and port-forward at the provider's own host), so a stand-in guest lives in one too.

Each namespace gets a veth pair: the host side holds the first address of a /30 from
198.18.0.0/15 (RFC 2544's benchmarking range, which nothing routes), the namespace side the
second. A /30 is picked at random among those no route of this host covers, so parallel runs
do not collide. All traffic stays on this machine. Needs root and iproute2.
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
from dataclasses import dataclass

__all__ = ["POOL", "Netns", "NetnsUnavailable", "free_subnet", "namespaces"]

POOL = ipaddress.IPv4Network("198.18.0.0/15")


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be made here: not root, no iproute2, or `ip` refused."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=30)


def free_subnet() -> ipaddress.IPv4Network:
    """A /30 of `POOL` that no route of this host covers (other runs' included), at random."""
    try:
        routes = json.loads(_ip("-j", "route").stdout or "[]")
    except subprocess.CalledProcessError as err:
        raise NetnsUnavailable(f"cannot list this host's routes: {err.stderr.strip()}") from err
    taken = [ipaddress.ip_network(r["dst"], strict=False) for r in routes
             if r.get("dst") not in (None, "default")]
    for _ in range(1000):
        offset = random.randrange(POOL.num_addresses // 4) * 4
        candidate = ipaddress.IPv4Network(f"{POOL.network_address + offset}/30")
        if not any(candidate.overlaps(t) for t in taken):
            return candidate
    raise NetnsUnavailable(f"no free /30 in {POOL}")


@dataclass(frozen=True)
class Netns:
    """A network namespace ``name`` whose veth end holds ``ip``; ``link`` is the host's end,
    at ``gateway``."""

    name: str
    ip: str
    link: str
    gateway: str

    @classmethod
    def make(cls, prefix: str) -> Netns:
        """Make a namespace named ``<prefix>-<random>`` with its veth pair, both ends up.

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
        except subprocess.CalledProcessError as err:
            made.remove()
            raise NetnsUnavailable(
                f"cannot make network namespaces here: {err.stderr.strip()}") from err
        return made

    def remove(self) -> None:
        """Delete the namespace and the veth pair; what is already gone is no error."""
        _ip("netns", "del", self.name, check=False)
        _ip("link", "del", self.link, check=False)


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
