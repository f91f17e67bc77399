"""Waiting until the env's computes and network agents are usable: what ``start()`` checks last,
through the admin's REST session."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ._config import Layout
from ._process import wait_until
from ._rest import Session

__all__ = ["wait_computes", "wait_network_agents"]


def wait_computes(
    lay: Layout,
    hosts: Sequence[str],
    nova_manage: Sequence[str],
    run: Callable[..., str],
    *,
    left: Callable[[], float],
    alive: Callable[[], None],
    say: Callable[[str], None],
) -> None:
    """Every compute up in Nova, in Placement, mapped to cell1 and listed as a hypervisor;
    `nova_manage` is nova-manage's command line with its config files, `run` runs a command."""
    admin = Session(lay.auth_url, "admin", lay.admin_password, "admin")
    nova = lay.endpoints["compute"]
    want = set(hosts)
    mv = {"OpenStack-API-Version": "compute 2.53"}

    def computes_up() -> bool:
        svcs = admin.get(f"{nova}/os-services?binary=nova-compute", mv)["services"]
        return want <= {s["host"] for s in svcs if s["state"] == "up"}

    def hypervisors() -> bool:
        hvs = admin.get(f"{nova}/os-hypervisors/detail", mv)["hypervisors"]
        return want <= {h["service"]["host"] for h in hvs if h["state"] == "up"}

    def in_placement() -> bool:
        rps = admin.get(f"{lay.url('placement')}/resource_providers",
                        {"OpenStack-API-Version": "placement 1.14"})["resource_providers"]
        return want <= {rp["name"] for rp in rps}

    # Nova lists a compute node as a hypervisor only once its host is mapped to a cell, and
    # discover_hosts maps only nodes that exist: so services, Placement, mapping, hypervisors.
    wait_until(computes_up, timeout=left(), what="nova-compute services", alive=alive)
    wait_until(in_placement, timeout=left(), what="resource providers", alive=alive)
    say("computes up and in Placement: " + ", ".join(hosts))
    mapped: set[str] = set()

    def discover() -> bool:
        out = run("nova-manage", [*nova_manage, "cell_v2", "discover_hosts", "--verbose"])
        mapped.update(h for h in want if f"for compute host '{h}'" in out)
        return want <= mapped

    wait_until(discover, timeout=left(), what="host mappings", alive=alive, interval=2)
    wait_until(hypervisors, timeout=left(), what="hypervisors", alive=alive)
    say("hosts mapped to cell1 and listed as hypervisors")


def wait_network_agents(
    lay: Layout,
    hosts: Sequence[str],
    *,
    left: Callable[[], float],
    alive: Callable[[], None],
    say: Callable[[str], None],
) -> None:
    """A live macvtap agent on every compute host: ML2 binds a port only there."""
    admin = Session(lay.auth_url, "admin", lay.admin_password, "admin")
    want = set(hosts)

    def agents_alive() -> bool:
        body = admin.get(f"{lay.url('neutron')}/v2.0/agents?binary=neutron-macvtap-agent")
        return want <= {a["host"] for a in body["agents"] if a["alive"]}

    wait_until(agents_alive, timeout=left(), what="macvtap agents", alive=alive)
    say("a macvtap agent alive on every compute host")
