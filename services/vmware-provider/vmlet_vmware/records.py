"""What the provider knows of a host or a VM: the watched properties, and records built from them.

The property paths here are the only ones the watch asks vCenter for. A record is rebuilt from the
property values each time one of them changes, and compared with the previous record to decide
whether anything a node or a pod shows has changed.

The keys vmlet writes into a VM's extraConfig are also defined here:

  vmlet.identity    the VM's identity (VirtualMachine UID, or pod UID for a bare pod)
  vmlet.namespace   the namespace the VM belongs to: never adopted, moved or deleted for a pod
                    (or a call) of another namespace
  vmlet.keep        "true" when a VirtualMachine owns the VM: deleting its pod keeps it, and
                    the pods rebuilt after a restart carry keep_on_delete
  vmlet.pod         "<namespace>/<name>" of the pod the VM serves; removed when the pod is
                    deleted and the VM kept
  vmlet.pod-uid     that pod's UID
  vmlet.container   the name of the pod's container
  vmlet.image       the container's image (the template reference)
  vmlet.disks       the handles (first-class disk IDs) of the PersistentVolume disks vmlet
                    attached to the VM, comma-separated

and the one the guest writes (`vmware-rpctool "info-set guestinfo.vmlet.exitCode 3"`) before it
shuts down, which vmlet only reads, and clears when it powers the VM on again:

  guestinfo.vmlet.exitCode   the exit code of a VM that stopped on its own
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from .props import extra_config_path

__all__ = [
    "CONTAINER_KEY",
    "DISKS_KEY",
    "EXIT_CODE_KEY",
    "HOST_PATHS",
    "IDENTITY_KEY",
    "IMAGE_KEY",
    "KEEP_KEY",
    "NAMESPACE_KEY",
    "POD_KEY",
    "POD_UID_KEY",
    "VM_PATHS",
    "HostRecord",
    "VmRecord",
]

IDENTITY_KEY: Final = "vmlet.identity"
NAMESPACE_KEY: Final = "vmlet.namespace"
KEEP_KEY: Final = "vmlet.keep"
POD_KEY: Final = "vmlet.pod"
POD_UID_KEY: Final = "vmlet.pod-uid"
CONTAINER_KEY: Final = "vmlet.container"
IMAGE_KEY: Final = "vmlet.image"
DISKS_KEY: Final = "vmlet.disks"
EXIT_CODE_KEY: Final = "guestinfo.vmlet.exitCode"

_IDENTITY = extra_config_path(IDENTITY_KEY)
_NAMESPACE = extra_config_path(NAMESPACE_KEY)
_KEEP = extra_config_path(KEEP_KEY)
_POD = extra_config_path(POD_KEY)
_POD_UID = extra_config_path(POD_UID_KEY)
_CONTAINER = extra_config_path(CONTAINER_KEY)
_IMAGE = extra_config_path(IMAGE_KEY)
_DISKS = extra_config_path(DISKS_KEY)
_EXIT_CODE = extra_config_path(EXIT_CODE_KEY)

VM_PATHS: Final[tuple[str, ...]] = (
    "name",
    "config.template",
    "config.instanceUuid",
    "config.uuid",
    _IDENTITY,
    _NAMESPACE,
    _KEEP,
    _POD,
    _POD_UID,
    _CONTAINER,
    _IMAGE,
    _DISKS,
    _EXIT_CODE,
    "config.hardware.numCPU",
    "config.hardware.memoryMB",
    "config.cpuHotAddEnabled",
    "config.cpuHotRemoveEnabled",
    "config.memoryHotAddEnabled",
    "runtime.powerState",
    "runtime.host",
    "summary.runtime.bootTime",
    "guest.ipAddress",
    "guest.net",
    "datastore",
)

HOST_PATHS: Final[tuple[str, ...]] = (
    "name",
    "parent",
    "runtime.connectionState",
    "runtime.powerState",
    "runtime.inMaintenanceMode",
    "runtime.bootTime",
    "hardware.cpuInfo.numCpuCores",
    "hardware.cpuInfo.numCpuThreads",
    "hardware.cpuInfo.hz",
    "hardware.memorySize",
    "hardware.systemInfo.uuid",
    "summary.config.product.fullName",
    "config.network.vnic",
    "datastore",
    "network",
)


def _str(props: Mapping[str, Any], path: str) -> str:
    value = props.get(path)
    return "" if value is None else str(value)


def _int(props: Mapping[str, Any], path: str) -> int:
    value = props.get(path)
    return int(value) if value is not None else 0


def _time(props: Mapping[str, Any], path: str) -> datetime | None:
    value = props.get(path)
    return value if isinstance(value, datetime) else None


@dataclass(frozen=True)
class VmRecord:
    """A VM as the watch last saw it."""

    moid: str
    name: str
    identity: str
    pod: tuple[str, str] | None
    pod_uid: str
    container: str
    image: str
    template: bool
    instance_uuid: str
    power: str
    host: str
    boot_time: datetime | None
    ip: str
    nic_ips: tuple[tuple[str, ...], ...]
    num_cpu: int
    memory_mb: int
    cpu_hot_add: bool
    cpu_hot_remove: bool
    memory_hot_add: bool
    datastores: tuple[str, ...]
    bios_uuid: str = ""
    disks: tuple[str, ...] = ()  # handles of the first-class disks vmlet attached
    recorded_namespace: str = ""  # vmlet.namespace
    keep: bool = False  # vmlet.keep
    exit_code: str = ""  # guestinfo.vmlet.exitCode as the guest left it, unparsed

    @property
    def namespace(self) -> str:
        """The namespace the VM belongs to: as recorded, else its pod's (VMs from before)."""
        return self.recorded_namespace or (self.pod[0] if self.pod else "")

    @classmethod
    def from_props(cls, moid: str, props: Mapping[str, Any]) -> VmRecord:
        """The record of VM `moid` from its watched properties."""
        pod_text = _str(props, _POD)
        namespace, sep, name = pod_text.partition("/")
        return cls(
            moid=moid,
            name=_str(props, "name"),
            identity=_str(props, _IDENTITY),
            pod=(namespace, name) if sep and namespace and name else None,
            pod_uid=_str(props, _POD_UID),
            container=_str(props, _CONTAINER),
            image=_str(props, _IMAGE),
            template=bool(props.get("config.template")),
            instance_uuid=_str(props, "config.instanceUuid"),
            bios_uuid=_str(props, "config.uuid"),
            disks=tuple(sorted({d for d in _str(props, _DISKS).split(",") if d})),
            recorded_namespace=_str(props, _NAMESPACE),
            keep=_str(props, _KEEP) == "true",
            exit_code=_str(props, _EXIT_CODE),
            power=_str(props, "runtime.powerState") or "unknown",
            host=_str(props, "runtime.host"),
            boot_time=_time(props, "summary.runtime.bootTime"),
            ip=_str(props, "guest.ipAddress"),
            nic_ips=tuple(props.get("guest.net") or ()),
            num_cpu=_int(props, "config.hardware.numCPU"),
            memory_mb=_int(props, "config.hardware.memoryMB"),
            cpu_hot_add=bool(props.get("config.cpuHotAddEnabled")),
            cpu_hot_remove=bool(props.get("config.cpuHotRemoveEnabled")),
            memory_hot_add=bool(props.get("config.memoryHotAddEnabled")),
            datastores=tuple(props.get("datastore") or ()),
        )

    @property
    def managed(self) -> bool:
        """Whether vmlet made this VM (it carries an identity and is not a template)."""
        return bool(self.identity) and not self.template

    @property
    def powered_on(self) -> bool:
        """Whether the VM runs."""
        return self.power == "poweredOn"


@dataclass(frozen=True)
class HostRecord:
    """An ESXi host as the watch last saw it."""

    moid: str
    name: str
    parent: str
    connection_state: str
    power_state: str
    maintenance: bool
    boot_time: datetime | None
    cores: int
    threads: int
    hz: int
    memory_bytes: int
    system_uuid: str
    product: str
    addresses: tuple[str, ...]
    datastores: tuple[str, ...]
    networks: tuple[str, ...] = ()

    @classmethod
    def from_props(cls, moid: str, props: Mapping[str, Any]) -> HostRecord:
        """The record of host `moid` from its watched properties."""
        return cls(
            moid=moid,
            name=_str(props, "name"),
            parent=_str(props, "parent"),
            connection_state=_str(props, "runtime.connectionState") or "unknown",
            power_state=_str(props, "runtime.powerState") or "unknown",
            maintenance=bool(props.get("runtime.inMaintenanceMode")),
            boot_time=_time(props, "runtime.bootTime"),
            cores=_int(props, "hardware.cpuInfo.numCpuCores"),
            threads=_int(props, "hardware.cpuInfo.numCpuThreads"),
            hz=_int(props, "hardware.cpuInfo.hz"),
            memory_bytes=_int(props, "hardware.memorySize"),
            system_uuid=_str(props, "hardware.systemInfo.uuid"),
            product=_str(props, "summary.config.product.fullName"),
            addresses=tuple(props.get("config.network.vnic") or ()),
            datastores=tuple(props.get("datastore") or ()),
            networks=tuple(props.get("network") or ()),
        )
