"""Pod IP addresses handed out from one network, the way an IaaS's DHCP would.

Allocation walks a cursor over the network and skips addresses in use, so handing out N
addresses costs O(N) in total; released addresses are reused once the cursor wraps around.
"""

from __future__ import annotations

import ipaddress

from vmlet_contract import ResourceExhausted

__all__ = ["IpPool"]


class IpPool:
    """The host addresses of a network (network and broadcast addresses excluded)."""

    def __init__(self, cidr: str) -> None:
        network = ipaddress.ip_network(cidr, strict=False)
        first, last = int(network.network_address), int(network.broadcast_address)
        if network.num_addresses > 2:
            first, last = first + 1, last - 1
        self.cidr = str(network)
        self._version = network.version
        self._first, self._last = first, last
        self._cursor = first
        self._used: set[int] = set()

    @property
    def size(self) -> int:
        """How many addresses the pool holds."""
        return self._last - self._first + 1

    @property
    def in_use(self) -> int:
        """How many addresses are handed out."""
        return len(self._used)

    def allocate(self) -> str:
        """Hands out a free address; ResourceExhausted when none is left."""
        if len(self._used) >= self.size:
            raise ResourceExhausted(f"no free pod address left in {self.cidr}")
        while self._cursor in self._used:
            self._cursor = self._cursor + 1 if self._cursor < self._last else self._first
        address = self._cursor
        self._used.add(address)
        self._cursor = address + 1 if address < self._last else self._first
        return str(ipaddress.ip_address(address))

    def claim(self, address: str) -> None:
        """Marks `address` as in use (when state is loaded from disk)."""
        value = int(ipaddress.ip_address(address))
        if not self._first <= value <= self._last:
            raise ValueError(f"{address} is not in {self.cidr}")
        self._used.add(value)

    def release(self, address: str) -> None:
        """Returns `address` to the pool; releasing a free address does nothing."""
        self._used.discard(int(ipaddress.ip_address(address)))
