"""The networks a pod joins in the memory provider (`Pod.networks`, by name).

The pretend IaaS has every network name unless it is given its networks (`--networks`): then a
pod naming another is FAILED_PRECONDITION, naming the networks there are, as a missing port group
or Neutron network is on the other providers. The memory provider's VMs get one address each
(`addresses`), whatever networks they join.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from vmlet_contract import FailedPrecondition

__all__ = ["check_networks_exist"]


def check_networks_exist(names: Iterable[str], networks: Collection[str]) -> None:
    """FailedPrecondition when ``networks`` is given and lacks one of ``names``."""
    if not networks:
        return
    for name in names:
        if name not in networks:
            raise FailedPrecondition(
                f"network {name!r} does not exist in the memory IaaS; the networks there are: "
                f"{', '.join(sorted(networks))}"
            )
