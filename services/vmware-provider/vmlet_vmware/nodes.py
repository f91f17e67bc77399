"""ESXi hosts as Kubernetes nodes: which hosts are served, what each node looks like, and the push
of every change to the NotifyNodeStatus streams.

One node per HostSystem whose compute resource (cluster) is served. Its name comes from the
host's name (see `naming`). Capacity is the host's hardware: CPU cores, memory, and --max-pods;
allocatable subtracts --reserve-cpu and --reserve-memory. Ready follows the host's connection
and power state, and becomes Unknown (VCenterUnreachable, InvalidLogin, ...) while vCenter cannot
be reached, since nothing is known then. A host in maintenance mode is unschedulable.

Node changes are pushed when the watch changes a host record or the session changes state; a
node whose host left the inventory is sent once more with `removed` set.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypeAlias

from pyVmomi import vim

from vmlet.provider.v1 import node_pb2, node_provider_service_pb2, pod_pb2
from vmlet_contract import FailedPrecondition, Hub, Unavailable

from .cache import Cache
from .config import Settings
from .inventory import ComputeRef, Inventory
from .naming import label_value, node_name
from .props import retrieve_view
from .records import HOST_PATHS, HostRecord
from .session import Connection, Session, SessionState
from .sizing import cpu_millis, memory_bytes

__all__ = ["PROVIDER_KIND", "NodeBook", "Placement", "build_node"]

_log = logging.getLogger(__name__)

PROVIDER_KIND = "vsphere"
LABEL_HOST = "vmlet.io/vsphere-host"
LABEL_CLUSTER = "vmlet.io/vsphere-cluster"
LABEL_DATACENTER = "vmlet.io/vsphere-datacenter"

_TRUE = pod_pb2.CONDITION_STATUS_TRUE
_FALSE = pod_pb2.CONDITION_STATUS_FALSE
_UNKNOWN = pod_pb2.CONDITION_STATUS_UNKNOWN


def _cpu_quantity(millis: int) -> str:
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def _ready(host: HostRecord, state: SessionState) -> pod_pb2.Condition:
    if not state.connected:
        status, reason, message = _UNKNOWN, state.reason, state.message
    elif host.connection_state == "notResponding":
        status, reason = _UNKNOWN, "HostNotResponding"
        message = f"ESXi host {host.name} does not respond to vCenter"
    elif host.connection_state == "disconnected":
        status, reason = _FALSE, "HostDisconnected"
        message = f"ESXi host {host.name} is disconnected from vCenter"
    elif host.connection_state != "connected":
        status, reason = _UNKNOWN, "HostStateUnknown"
        message = f"ESXi host {host.name} is {host.connection_state}"
    elif host.power_state == "standBy":
        status, reason, message = _FALSE, "HostInStandby", f"ESXi host {host.name} is in standby"
    elif host.power_state not in ("poweredOn", "unknown"):
        status, reason, message = _FALSE, "HostPoweredOff", f"ESXi host {host.name} is off"
    else:
        status, reason = _TRUE, "HostConnected"
        message = f"ESXi host {host.name} is connected to vCenter"
        if host.maintenance:
            message += " and in maintenance mode"
    return pod_pb2.Condition(type="Ready", status=status, reason=reason, message=message)


def build_node(
    host: HostRecord,
    *,
    name: str,
    compute: ComputeRef | None,
    inventory: Inventory | None,
    settings: Settings,
    state: SessionState,
) -> node_pb2.Node:
    """The node of `host`; see the module docstring."""
    cores = host.cores or host.threads
    total_millis = cores * 1000
    total_bytes = host.memory_bytes
    free_millis = max(0, total_millis - cpu_millis(settings.reserve_cpu))
    free_bytes = max(0, total_bytes - memory_bytes(settings.reserve_memory))
    labels = {LABEL_HOST: label_value(host.name)}
    if compute is not None:
        labels[LABEL_CLUSTER] = label_value(compute.name)
        labels["topology.kubernetes.io/zone"] = label_value(compute.name)
    if inventory is not None:
        labels[LABEL_DATACENTER] = label_value(inventory.datacenter_name)
        labels["topology.kubernetes.io/region"] = label_value(inventory.datacenter_name)
    addresses = [node_pb2.NodeAddress(type="InternalIP", address=ip) for ip in host.addresses]
    addresses.append(node_pb2.NodeAddress(type="Hostname", address=host.name))
    return node_pb2.Node(
        name=name,
        labels={k: v for k, v in labels.items() if v},
        capacity={
            "cpu": str(cores),
            "memory": f"{total_bytes // 1024}Ki",
            "pods": str(settings.max_pods),
        },
        allocatable={
            "cpu": _cpu_quantity(free_millis),
            "memory": f"{free_bytes // 1024}Ki",
            "pods": str(settings.max_pods),
        },
        addresses=addresses,
        conditions=[_ready(host, state)],
        unschedulable=host.maintenance,
        provider_id=f"{PROVIDER_KIND}://{host.system_uuid or host.moid}",
        info=node_pb2.NodeInfo(
            operating_system="linux",
            architecture="amd64",
            kernel_version=host.product,
            os_image=inventory.product if inventory is not None else "VMware vSphere",
            system_uuid=host.system_uuid,
        ),
    )


@dataclass(frozen=True)
class Placement:
    """Where a pod's VM goes: the host behind the pod's node and its resource pool."""

    node: str
    host: HostRecord
    pool: str
    datastore: str | None

    def datastore_for(self, vm_datastores: Iterable[str]) -> str | None:
        """The datastore a VM moving here needs: None (stay) when the host sees all of the
        VM's datastores, else the configured one; FailedPrecondition when there is none."""
        current = set(vm_datastores)
        if not current or current <= set(self.host.datastores):
            return None
        if self.datastore is None:
            raise FailedPrecondition(
                f"the VM's datastore is not mounted on {self.host.name}; set --datastore so the "
                "VM can move its disks"
            )
        return self.datastore


Update: TypeAlias = node_provider_service_pb2.NotifyNodeStatusResponse


class NodeBook:
    """The served hosts as nodes; see the module docstring."""

    def __init__(self, cache: Cache, session: Session, settings: Settings) -> None:
        self._cache = cache
        self._session = session
        self._settings = settings
        self._nodes: dict[str, node_pb2.Node] = {}  # host moid -> node as last published
        self._hosts_by_node: dict[str, str] = {}  # node name -> host moid
        self._inventory: Inventory | None = None
        self.hub: Hub[Update] = Hub()
        cache.on_host(self._host_changed)
        session.add_listener(self._session_changed)

    # Look-ups.

    @property
    def known(self) -> bool:
        """Whether the hosts were ever seen (so the node list means something)."""
        return self._inventory is not None

    def nodes(self) -> list[node_pb2.Node]:
        """Every node, sorted by name."""
        return sorted(self._nodes.values(), key=lambda n: n.name)

    def node_name_of(self, host_moid: str) -> str:
        """The node name of a host, "" when the host is not served."""
        node = self._nodes.get(host_moid)
        return node.name if node is not None else ""

    def host_ip(self, host_moid: str) -> str:
        """The first address of a host, "" when it has none."""
        host = self._cache.hosts.get(host_moid)
        return host.addresses[0] if host is not None and host.addresses else ""

    def served_hosts(self) -> list[HostRecord]:
        """The hosts behind the nodes, as last seen."""
        return [h for m in self._nodes if (h := self._cache.hosts.get(m)) is not None]

    def host_of(self, node: str) -> HostRecord | None:
        """The host behind node `node`."""
        moid = self._hosts_by_node.get(node)
        return self._cache.hosts.get(moid) if moid is not None else None

    def placement(self, node: str) -> Placement:
        """Where pods of node `node` go; FailedPrecondition for a node not served here and for
        a host in maintenance mode, Unavailable while the host is not connected."""
        host = self.host_of(node)
        inventory = self._session.connection.inventory if self._session.connection else None
        if host is None or inventory is None:
            if inventory is None:
                raise self._session.unavailable()
            raise FailedPrecondition(
                f"node {node} is not served by this provider; it serves "
                f"{', '.join(sorted(self._hosts_by_node)) or 'no nodes'}"
            )
        compute = inventory.compute.get(host.parent)
        if compute is None:
            raise FailedPrecondition(f"host {host.name} is not in a served cluster")
        if host.connection_state != "connected":
            raise Unavailable(f"ESXi host {host.name} is {host.connection_state}; retry later")
        if host.maintenance:
            raise FailedPrecondition(f"ESXi host {host.name} (node {node}) is in maintenance mode")
        return Placement(node=node, host=host, pool=compute.pool, datastore=inventory.datastore)

    async def refresh(self) -> None:
        """Reads every host afresh into the cache (ListNodes answers from what vCenter says
        now, not only from what the watch pushed)."""
        start = self._cache.seq

        def read(conn: Connection) -> dict[str, dict[str, Any]]:
            root = conn.mo(vim.Folder, conn.inventory.host_root)
            return retrieve_view(conn.si, root, vim.HostSystem, HOST_PATHS)

        found = await self._session.call(read, doing="read the ESXi hosts")
        for moid, props in found.items():
            self._cache.refresh("host", moid, props, start)
        for moid in set(self._cache.hosts) - set(found):
            self._cache.refresh("host", moid, None, start)

    # Changes.

    def _served(self, host: HostRecord) -> ComputeRef | None:
        inventory = self._inventory
        if inventory is None or not host.name:
            return None
        return inventory.compute.get(host.parent)

    def _publish(self, host_moid: str, node: node_pb2.Node | None) -> None:
        old = self._nodes.get(host_moid)
        if node is None:
            if old is not None:
                del self._nodes[host_moid]
                self._hosts_by_node.pop(old.name, None)
                self.hub.publish(old.name, Update(node=old, removed=True))
            return
        if old is not None and old.name != node.name:
            self._hosts_by_node.pop(old.name, None)
        if node.name in self._hosts_by_node and self._hosts_by_node[node.name] != host_moid:
            _log.warning("two hosts map to one node name", extra={"node": node.name})
        self._nodes[host_moid] = node
        self._hosts_by_node[node.name] = host_moid
        if old != node:
            self.hub.publish(node.name, Update(node=node))

    def _rebuild(self, host: HostRecord) -> None:
        compute = self._served(host)
        if compute is None:
            self._publish(host.moid, None)
            return
        name = node_name(self._settings.node_prefix, host.name)
        node = build_node(
            host,
            name=name,
            compute=compute,
            inventory=self._inventory,
            settings=self._settings,
            state=self._session.state,
        )
        self._publish(host.moid, node)

    def _host_changed(self, old: HostRecord | None, new: HostRecord | None) -> None:
        if new is None:
            if old is not None:
                self._publish(old.moid, None)
            return
        self._rebuild(new)

    def _session_changed(self, state: SessionState) -> None:
        conn = self._session.connection
        if state.connected and conn is not None:
            self._inventory = conn.inventory
        for host in list(self._cache.hosts.values()):
            self._rebuild(host)
