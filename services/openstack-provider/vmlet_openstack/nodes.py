"""Compute hosts as Kubernetes nodes, polled from Nova and pushed to NotifyNodeStatus on change.

One node per nova-compute service, named PREFIX-<host> (see `naming.node_name`). Every
`node_poll_seconds` the book lists the compute services and the hypervisors (and, when the
provider's user may read Placement, the compute nodes' inventories), builds each node, and pushes
the ones that differ from what it pushed last (heartbeat times aside).

- Capacity: from Placement when readable, as Nova's scheduler sees it: capacity is
  total x allocation ratio, allocatable (total - reserved) x allocation ratio, for VCPU,
  MEMORY_MB and DISK_GB (cpu, memory, ephemeral-storage). Otherwise the hypervisor's vCPUs,
  memory and disk, for both. `pods` is --max-pods.
- Ready: True while the compute service is up (and its hypervisor too); False with
  ComputeServiceDown or ComputeServiceForcedDown when Nova says the service is down; Unknown with
  OpenStackUnreachable while Nova cannot be asked, keeping the last known capacity.
- A disabled compute service makes the node unschedulable, with Nova's disabled reason in the
  Ready message.
- A compute service that disappears is pushed once more with `removed` set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from vmlet.provider.v1 import node_pb2, node_provider_service_pb2, pod_pb2
from vmlet_contract import FailedPrecondition, Hub, Mailbox, ProviderError, Unavailable, podstatus

from .cloud import Api, Cloud
from .config import Settings
from .faults import is_unavailable
from .naming import node_name

__all__ = ["LABEL_HOST", "PROVIDER_KIND", "HostInfo", "NodeBook", "build_node"]

_log = logging.getLogger(__name__)

PROVIDER_KIND: Final = "openstack"
LABEL_HOST: Final = "vmlet.io/openstack-host"
LABEL_HYPERVISOR: Final = "node.vmlet.io/hypervisor"

_TRUE = pod_pb2.CONDITION_STATUS_TRUE
_FALSE = pod_pb2.CONDITION_STATUS_FALSE
_UNKNOWN = pod_pb2.CONDITION_STATUS_UNKNOWN

NodeUpdate = node_provider_service_pb2.NotifyNodeStatusResponse


@dataclass(frozen=True)
class HostInfo:
    """What Nova (and Placement) say about one compute host."""

    host: str
    zone: str = ""
    enabled: bool = True
    up: bool = True
    forced_down: bool = False
    disabled_reason: str = ""
    service_updated: str = ""
    hypervisor_id: str = ""
    hypervisor_hostname: str = ""
    hypervisor_type: str = ""
    hypervisor_version: str = ""
    hypervisor_up: bool = True
    host_ip: str = ""
    memory_mib: int = 0
    memory_used_mib: int = 0
    vcpus_used: int = 0
    # (capacity, allocatable) per resource, as Kubernetes quantities.
    resources: dict[str, tuple[str, str]] = field(default_factory=dict, hash=False)


def _label(text: str) -> str:
    out = "".join(c if c.isalnum() or c in "-_." else "-" for c in text)[:63]
    return out.strip("-_.")


def _version(number: Any) -> str:
    """Nova's integer hypervisor version (three digits a part: 1002003) as 1.2.3."""
    try:
        value = int(number)
    except (TypeError, ValueError):
        return str(number or "")
    parts: list[str] = []
    while value:
        value, part = divmod(value, 1000)
        parts.insert(0, str(part))
    return ".".join(parts) or "0"


def _ready(
    info: HostInfo, reachable: bool, why: str
) -> tuple[pod_pb2.ConditionStatus.ValueType, str, str]:
    if not reachable:
        return _UNKNOWN, "OpenStackUnreachable", why or "Nova cannot be reached"
    if info.forced_down:
        return _FALSE, "ComputeServiceForcedDown", f"nova-compute on {info.host} is forced down"
    if not info.up:
        when = f" (last report {info.service_updated})" if info.service_updated else ""
        return _FALSE, "ComputeServiceDown", f"nova-compute on {info.host} is down{when}"
    if not info.hypervisor_up:
        return _FALSE, "HypervisorDown", f"the hypervisor of {info.host} is down"
    message = f"nova-compute on {info.host} is up"
    if not info.enabled:
        message += " but disabled" + (f": {info.disabled_reason}" if info.disabled_reason else "")
    return _TRUE, "ComputeServiceUp", message


def build_node(
    info: HostInfo,
    *,
    settings: Settings,
    reachable: bool = True,
    why: str = "",
    since: datetime | None = None,
) -> node_pb2.Node:
    """The node of compute host `info`; see the module docstring."""
    status, reason, message = _ready(info, reachable, why)
    ready = pod_pb2.Condition(type="Ready", status=status, reason=reason, message=message)
    if since is not None:
        ready.last_transition_time.CopyFrom(podstatus.timestamp(since))
    capacity = {k: v[0] for k, v in info.resources.items()}
    allocatable = {k: v[1] for k, v in info.resources.items()}
    capacity["pods"] = allocatable["pods"] = str(settings.max_pods)
    labels = {LABEL_HOST: _label(info.host), LABEL_HYPERVISOR: PROVIDER_KIND}
    if info.zone:
        labels["topology.kubernetes.io/zone"] = _label(info.zone)
    if settings.region:
        labels["topology.kubernetes.io/region"] = _label(settings.region)
    addresses = []
    if info.host_ip:
        addresses.append(node_pb2.NodeAddress(type="InternalIP", address=info.host_ip))
    addresses.append(node_pb2.NodeAddress(type="Hostname", address=info.host))
    kernel = " ".join(p for p in (info.hypervisor_type, info.hypervisor_version) if p)
    return node_pb2.Node(
        name=node_name(settings.node_prefix, info.host),
        labels={k: v for k, v in labels.items() if v},
        capacity=capacity,
        allocatable=allocatable,
        addresses=addresses,
        conditions=[ready],
        unschedulable=not info.enabled,
        provider_id=f"{PROVIDER_KIND}://{info.hypervisor_id or info.host}",
        info=node_pb2.NodeInfo(
            operating_system="linux",
            architecture="amd64",
            kernel_version=kernel or "nova",
            os_image="OpenStack Nova",
            system_uuid=info.hypervisor_id,
        ),
    )


def _scaled(total: Any, reserved: Any, ratio: Any) -> tuple[float, float]:
    t, r, a = float(total or 0), float(reserved or 0), float(ratio or 1.0)
    return t * a, max(0.0, (t - r) * a)


def _resources_from_inventory(inv: dict[str, dict[str, Any]]) -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    if "VCPU" in inv:
        cap, alloc = _scaled(
            inv["VCPU"].get("total"),
            inv["VCPU"].get("reserved"),
            inv["VCPU"].get("allocation_ratio"),
        )
        out["cpu"] = (str(int(cap)), str(int(alloc)))
    if "MEMORY_MB" in inv:
        m = inv["MEMORY_MB"]
        cap, alloc = _scaled(m.get("total"), m.get("reserved"), m.get("allocation_ratio"))
        out["memory"] = (f"{int(cap)}Mi", f"{int(alloc)}Mi")
    if "DISK_GB" in inv:
        d = inv["DISK_GB"]
        cap, alloc = _scaled(d.get("total"), d.get("reserved"), d.get("allocation_ratio"))
        out["ephemeral-storage"] = (f"{int(cap)}Gi", f"{int(alloc)}Gi")
    return out


def _resources_from_hypervisor(hv: dict[str, Any]) -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    if hv.get("vcpus") is not None:
        cpu = str(int(hv["vcpus"]))
        out["cpu"] = (cpu, cpu)
    if hv.get("memory_mb") is not None:
        memory = f"{int(hv['memory_mb'])}Mi"
        out["memory"] = (memory, memory)
    if hv.get("local_gb") is not None:
        disk = f"{int(hv['local_gb'])}Gi"
        out["ephemeral-storage"] = (disk, disk)
    return out


@dataclass
class _Survey:
    """One round of listing: the hosts, or why it failed."""

    hosts: dict[str, HostInfo]
    placement_ok: bool


class NodeBook:
    """The nodes of the compute hosts, kept current and pushed on change."""

    def __init__(self, cloud: Cloud, settings: Settings) -> None:
        self._cloud = cloud
        self._settings = settings
        self.hub: Hub[NodeUpdate] = Hub()
        self.hosts: dict[str, HostInfo] = {}
        self._by_node: dict[str, str] = {}
        self._pushed: dict[str, bytes] = {}
        self._since: dict[str, tuple[pod_pb2.ConditionStatus.ValueType, datetime]] = {}
        self._reachable = True
        self._why = ""
        self._loaded = asyncio.Event()
        self._wake = asyncio.Event()
        self._placement = True  # until Placement says the user may not read it
        self._refresh_lock = asyncio.Lock()
        cloud.listen(self._on_reachability)

    # -- lookups --------------------------------------------------------------------------
    @property
    def loaded(self) -> bool:
        return self._loaded.is_set()

    def node_of(self, host: str | None) -> str:
        """The node name of a compute host ("" for none)."""
        return node_name(self._settings.node_prefix, host) if host else ""

    def host_of_node(self, node: str) -> str | None:
        """The compute host behind `node` as far as known now (no listing)."""
        return self._by_node.get(node)

    def host_ip(self, host: str | None) -> str:
        info = self.hosts.get(host or "")
        return info.host_ip if info is not None else ""

    async def host_for(self, node: str) -> str:
        """The compute host behind `node`; FailedPrecondition when the provider serves no such
        node, Unavailable when the hosts cannot be listed yet."""
        if node in self._by_node:
            return self._by_node[node]
        await self.refresh()
        if node in self._by_node:
            return self._by_node[node]
        raise FailedPrecondition(
            f"node {node} is not a compute host of this OpenStack; the provider serves "
            + (", ".join(sorted(self._by_node)) or "no nodes")
        )

    def nodes(self) -> list[node_pb2.Node]:
        """Every node as it is now, heartbeats set to now."""
        now = podstatus.timestamp()
        out = []
        for info in self.hosts.values():
            node = self._build(info)
            for condition in node.conditions:
                condition.last_heartbeat_time.CopyFrom(now)
            out.append(node)
        return sorted(out, key=lambda n: n.name)

    # -- streams --------------------------------------------------------------------------
    def subscribe(self) -> Mailbox[NodeUpdate]:
        return self.hub.subscribe((n.name, NodeUpdate(node=n)) for n in self.nodes())

    # -- polling --------------------------------------------------------------------------
    async def run(self, closing: asyncio.Event) -> None:
        """Refreshes every node_poll_seconds (sooner when reachability changes) until closing."""
        while not closing.is_set():
            try:
                await self.refresh()
            except ProviderError as error:
                if not is_unavailable(error):
                    _log.warning("cannot list compute hosts", extra={"error": error.message})
            except Exception:
                _log.exception("node refresh failed")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._settings.node_poll_seconds)

    async def wait_loaded(self) -> None:
        await self._loaded.wait()

    async def ensure_loaded(self) -> None:
        if not self._loaded.is_set():
            await self.refresh()

    async def refresh(self) -> None:
        """Lists the hosts once and pushes what changed; raises the call's error (after marking
        every node Unknown when OpenStack is unreachable)."""
        async with self._refresh_lock:
            try:
                survey = await self._cloud.call("list compute hosts", self._survey)
            except ProviderError as error:
                if is_unavailable(error):
                    self._mark_unreachable(error.message)
                raise
            if not survey.placement_ok and self._placement:
                self._placement = False
                _log.info("Placement is not readable by this user: capacity from hypervisors")
            self._reachable, self._why = True, ""
            gone = set(self.hosts) - set(survey.hosts)
            self.hosts = survey.hosts
            self._by_node = {self.node_of(h): h for h in survey.hosts}
            for host in gone:
                name = self.node_of(host)
                _log.warning("compute host gone", extra={"host": host, "node": name})
                self._pushed.pop(name, None)
                self._since.pop(name, None)
                old = node_pb2.Node(name=name)
                self.hub.publish(name, NodeUpdate(node=old, removed=True))
            self._push_changes()
            self._loaded.set()

    def _survey(self, api: Api) -> _Survey:
        services = api.compute_services()
        hypervisors = api.hypervisors()
        by_host: dict[str, dict[str, Any]] = {}
        for hv in hypervisors:
            host = (hv.get("service") or {}).get("host") or hv.get("hypervisor_hostname")
            if host:
                by_host[str(host)] = hv
        inventories: dict[str, dict[str, dict[str, Any]]] = {}
        placement_ok = self._placement
        if placement_ok:
            try:
                providers = api.resource_providers()
                names = {str(hv.get("hypervisor_hostname")) for hv in hypervisors}
                for rp in providers:
                    if rp.get("name") in names:
                        inventories[str(rp["name"])] = api.inventories(str(rp["uuid"]))
            except Exception as exc:
                code = getattr(exc, "status_code", None)
                if code in (401, 403):
                    placement_ok = False
                else:
                    raise
        hosts: dict[str, HostInfo] = {}
        for svc in services:
            host = str(svc.get("host") or "")
            if not host:
                continue
            hv = by_host.get(host, {})
            inv = inventories.get(str(hv.get("hypervisor_hostname") or host))
            resources = _resources_from_inventory(inv) if inv else _resources_from_hypervisor(hv)
            hosts[host] = HostInfo(
                host=host,
                zone=str(svc.get("zone") or ""),
                enabled=svc.get("status") == "enabled",
                up=svc.get("state") == "up",
                forced_down=bool(svc.get("forced_down")),
                disabled_reason=str(svc.get("disabled_reason") or ""),
                service_updated=str(svc.get("updated_at") or ""),
                hypervisor_id=str(hv.get("id") or ""),
                hypervisor_hostname=str(hv.get("hypervisor_hostname") or ""),
                hypervisor_type=str(hv.get("hypervisor_type") or ""),
                hypervisor_version=_version(hv.get("hypervisor_version")),
                hypervisor_up=hv.get("state", "up") == "up",
                host_ip=str(hv.get("host_ip") or ""),
                memory_mib=int(hv.get("memory_mb") or 0),
                memory_used_mib=int(hv.get("memory_mb_used") or 0),
                vcpus_used=int(hv.get("vcpus_used") or 0),
                resources=resources,
            )
        return _Survey(hosts=hosts, placement_ok=placement_ok)

    def _on_reachability(self, reachable: bool, reason: str) -> None:
        if reachable:
            self._wake.set()  # refresh now, which pushes Ready again
        else:
            self._mark_unreachable(reason)

    def _mark_unreachable(self, reason: str) -> None:
        if self._reachable or self._why != reason:
            self._reachable, self._why = False, reason
            self._push_changes()

    def _build(self, info: HostInfo) -> node_pb2.Node:
        name = self.node_of(info.host)
        status, _, _ = _ready(info, self._reachable, self._why)
        previous = self._since.get(name)
        if previous is None or previous[0] != status:
            previous = (status, datetime.now(UTC))
            self._since[name] = previous
        return build_node(
            info,
            settings=self._settings,
            reachable=self._reachable,
            why=self._why,
            since=previous[1],
        )

    def _push_changes(self) -> None:
        for info in self.hosts.values():
            node = self._build(info)
            key = node.SerializeToString(deterministic=True)
            if self._pushed.get(node.name) != key:
                self._pushed[node.name] = key
                stamped = node_pb2.Node()
                stamped.CopyFrom(node)
                for condition in stamped.conditions:
                    condition.last_heartbeat_time.CopyFrom(podstatus.timestamp())
                self.hub.publish(node.name, NodeUpdate(node=stamped))

    def unavailable(self) -> Unavailable:
        """The error for calls made while OpenStack is unreachable."""
        return Unavailable(self._why or "OpenStack is unreachable")

    def close(self, reason: str) -> None:
        self.hub.close(reason)
