"""Neutron ports that bind: neutron-rpc-server, a macvtap agent per compute host, two networks.

Nova boots a server onto a network only if Neutron binds the server's port to its compute host
(else ``PortBindingFailed``), and ML2 binds only through a mechanism driver whose agent is alive
on that host. The lightest real pair shipped with neutron 27.0.4 is ``macvtap``: its agent reads
``/sys/class/net`` and reports to neutron-server over RabbitMQ; it touches a device only when a
``macvtap*`` device for a port appears, which Nova's fake driver never makes. So each compute
host gets one ``neutron-macvtap-agent`` (``host`` = the compute's host name, ``physnet1`` mapped
to ``lo``), neutron-server's RPC half runs as ``neutron-rpc-server`` to hear their reports, and
the ML2 driver binds ports on flat and VLAN networks of ``physnet1`` with vif_type ``macvtap``.
Neutron's IPAM gives every port a fixed IP from its subnet; no DHCP agent hands it out (there is
no guest to ask) and the ports stay ``DOWN`` (no device ever shows up).

The agent is started through ``_macvtap_agent.py``, which runs neutron's own ``main()`` on
oslo.service's eventlet backend: its console script picks the threading backend, whose launcher
forks a worker after ``main()`` has started the privsep daemon, and the worker's privsep calls
then wait forever for replies that the parent reads (``oslo_privsep.comm: msgid should be in
oustanding_msgs``); the agent never reports. The privsep daemon runs with ``root_helper = env``
(no sudo), which needs root: without it, no agent starts and no network is made.

As a script, under the OpenStack virtualenv's Python (``python _networking.py``, facts as JSON on
stdin), it makes the vmlet project's networks with openstacksdk and prints their IDs as JSON.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

__all__ = [
    "PHYSNET",
    "TENANT_NETWORKS",
    "agent_conf",
    "networks_unsupported",
    "rpc_server_conf",
]

PHYSNET = "physnet1"
# name, subnet CIDR, VLAN ID on PHYSNET (within ml2_conf's network_vlan_ranges)
TENANT_NETWORKS = (
    ("vmlet-net-a", "10.20.1.0/24", 101),
    ("vmlet-net-b", "10.20.2.0/24", 102),
)


def networks_unsupported() -> str | None:
    """Why ports cannot bind in an env started by this process (None when they can)."""
    if os.geteuid() != 0:
        return ("the macvtap agents' privsep daemon needs root (the env runs them with "
                "root_helper = env), so no port can bind and servers boot without networks")
    return None


def _ini(sections: dict[str, dict[str, object]]) -> str:
    out: list[str] = []
    for name, opts in sections.items():
        out.append(f"[{name}]")
        out.extend(f"{k} = {str(v).lower() if isinstance(v, bool) else v}"
                   for k, v in opts.items())
        out.append("")
    return "\n".join(out)


def rpc_server_conf(logs: Path) -> str:
    """The overlay of neutron-rpc-server: its log, one RPC worker that also hears reports."""
    return _ini({"DEFAULT": {
        "log_file": str(logs / "neutron-rpc.log"),
        "rpc_workers": 1,
        # Reports go to the RPC worker (start_rpc_listeners consumes q-reports-plugin too).
        "rpc_state_report_workers": 0,
    }})


def agent_conf(*, host: str, name: str, logs: Path, data: Path, transport_url: str) -> str:
    """One compute host's macvtap agent: it reports as `host` and maps PHYSNET to ``lo``."""
    return _ini({
        "DEFAULT": {
            "host": host,
            "log_file": str(logs / f"{name}.log"),
            "debug": False,
            "use_stderr": False,
            "transport_url": transport_url,
        },
        # Any existing device does: the agent only checks that it exists.
        "macvtap": {"physical_interface_mappings": f"{PHYSNET}:lo"},
        "securitygroup": {"firewall_driver": "noop"},
        # root_helper prefixes privsep-helper; `env` runs it as is (the env runs as root).
        "agent": {"polling_interval": 5, "root_helper": "env", "root_helper_daemon": ""},
        "privsep": {"thread_pool_size": 1},
        "oslo_concurrency": {"lock_path": str(data / name / "locks")},
        "oslo_messaging_notifications": {"driver": "noop"},
    })


def _make_networks(facts: dict[str, Any]) -> list[dict[str, Any]]:
    import openstack  # the OpenStack virtualenv's own openstacksdk

    a = facts["admin"]
    conn = openstack.connect(
        auth_url=a["auth_url"], username=a["username"], password=a["password"],
        project_name=a["project_name"], user_domain_name="Default", project_domain_name="Default",
        region_name=a["region_name"], identity_api_version="3",
    )
    project = conn.identity.find_project(facts["vmlet"]["project_name"], domain_id="default")
    out = []
    for name, cidr, vlan in TENANT_NETWORKS:
        net = conn.network.create_network(
            name=name, project_id=project.id, provider_network_type="vlan",
            provider_physical_network=PHYSNET, provider_segmentation_id=vlan,
        )
        subnet = conn.network.create_subnet(
            name=f"{name}-subnet", network_id=net.id, project_id=project.id, ip_version=4,
            cidr=cidr, enable_dhcp=False,
        )
        out.append({"name": name, "id": net.id, "subnet_id": subnet.id, "cidr": cidr,
                    "vlan": vlan})
        print(f"[networking] {name} {net.id} {cidr} (vlan {vlan} on {PHYSNET})", file=sys.stderr)
    return out


if __name__ == "__main__":
    print(json.dumps({"networks": _make_networks(json.load(sys.stdin))}))
