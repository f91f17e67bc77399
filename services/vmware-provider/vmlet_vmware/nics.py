"""A VM's NICs on networks: NIC i of a VM joins network i of its pod.

A clone edits the template's NICs and adds the missing ones (vmxnet3); when the networks come
from the pod (rather than the provider's default --network), NICs beyond them are removed, so the
VM has exactly the pod's networks. A VM made earlier is brought in line the same way when a pod
adopts it. These functions run in the session's worker threads (they build pyVmomi specs).
"""

from __future__ import annotations

from typing import Any

from pyVmomi import vim

from .inventory import NetworkRef
from .props import moid, retrieve_one
from .session import Connection

__all__ = ["nic_changes", "read_devices"]


def _backing(net: NetworkRef, conn: Connection) -> Any:
    if net.distributed:
        port = vim.dvs.PortConnection(switchUuid=net.switch_uuid, portgroupKey=net.portgroup_key)
        return vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo(port=port)
    return vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(
        deviceName=net.name, network=conn.mo(vim.Network, net.moid)
    )


def _on_network(device: Any, net: NetworkRef) -> bool:
    backing = device.backing
    if net.distributed:
        port = getattr(backing, "port", None)
        return bool(port is not None and str(port.portgroupKey) == net.portgroup_key)
    network = getattr(backing, "network", None)
    return network is not None and moid(network) == net.moid


def nic_changes(
    conn: Connection, devices: Any, nets: tuple[NetworkRef, ...], *, exact: bool
) -> list[Any]:
    """The device changes that put NIC i on network i (adding NICs that are missing, and with
    `exact` removing NICs beyond the networks)."""
    nics = [d for d in devices or () if isinstance(d, vim.vm.device.VirtualEthernetCard)]
    changes: list[Any] = []
    for index, net in enumerate(nets):
        if index < len(nics):
            device = nics[index]
            if _on_network(device, net):
                continue
            device.backing = _backing(net, conn)
            changes.append(vim.vm.device.VirtualDeviceSpec(operation="edit", device=device))
            continue
        nic = vim.vm.device.VirtualVmxnet3(
            key=-100 - index,
            backing=_backing(net, conn),
            addressType="generated",
            connectable=vim.vm.device.VirtualDevice.ConnectInfo(
                startConnected=True, allowGuestControl=True, connected=True
            ),
        )
        changes.append(vim.vm.device.VirtualDeviceSpec(operation="add", device=nic))
    if exact:
        for device in nics[len(nets) :]:
            changes.append(vim.vm.device.VirtualDeviceSpec(operation="remove", device=device))
    return changes


def read_devices(conn: Connection, obj: Any) -> Any:
    found = retrieve_one(conn.si, obj, ["config.hardware.device"]) or {}
    return found.get("config.hardware.device") or ()
