"""Where things are in vCenter: the datacenter, its clusters, the VM folder, the datastore and
network for clones, the first-class-disk manager, and templates, networks and datastores by name.

`resolve` runs once per connection (a restarted vCenter may have a new inventory) and makes the
VM folder when it is missing. Templates are looked up when a pod needs one, since templates come
and go while the provider runs.

Runs in worker threads only (blocking calls).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pyVmomi import vim

from .config import Settings
from .props import moid, retrieve_view, service_content

__all__ = [
    "ComputeRef",
    "Inventory",
    "InventoryError",
    "NetworkRef",
    "datastores",
    "find_networks",
    "find_template",
    "folder_at",
    "resolve",
]


class InventoryError(LookupError):
    """Something the settings name does not exist in vCenter."""


@dataclass(frozen=True)
class ComputeRef:
    """A cluster (or standalone host's compute resource) whose hosts are served."""

    moid: str
    name: str
    pool: str  # the root resource pool's managed object ID


@dataclass(frozen=True)
class NetworkRef:
    """A network (standard port group or distributed port group) a NIC can be put on."""

    moid: str
    name: str
    distributed: bool = False
    switch_uuid: str = ""
    portgroup_key: str = ""


@dataclass(frozen=True)
class Inventory:
    """The managed object IDs a connection works with."""

    product: str
    api_type: str
    datacenter: str
    datacenter_name: str
    vm_root: str
    host_root: str
    vm_folder: str
    compute: Mapping[str, ComputeRef]
    datastore: str | None
    network: NetworkRef | None
    storage_manager: str | None = None  # the VStorageObjectManager (first-class disks)


def _datacenter(si: Any, wanted: str | None) -> Any:
    content = service_content(si)
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.Datacenter], True)
    try:
        datacenters = list(view.view)
    finally:
        view.Destroy()
    names = sorted(dc.name for dc in datacenters)
    if wanted is not None:
        for dc in datacenters:
            if dc.name == wanted:
                return dc
        raise InventoryError(f"datacenter {wanted!r} not found; vCenter has {names}")
    if len(datacenters) != 1:
        raise InventoryError(f"vCenter has datacenters {names}: choose one with --datacenter")
    return datacenters[0]


def _compute(si: Any, dc: Any, wanted: tuple[str, ...]) -> dict[str, ComputeRef]:
    found = retrieve_view(si, dc.hostFolder, vim.ComputeResource, ["name", "resourcePool"])
    refs = {
        key: ComputeRef(moid=key, name=str(p["name"]), pool=str(p["resourcePool"]))
        for key, p in found.items()
        if p.get("resourcePool")
    }
    if not wanted:
        return refs
    by_name = {ref.name: ref for ref in refs.values()}
    missing = [name for name in wanted if name not in by_name]
    if missing:
        raise InventoryError(
            f"cluster(s) {missing} not found in datacenter {dc.name}; it has {sorted(by_name)}"
        )
    return {by_name[name].moid: by_name[name] for name in wanted}


def _child_folder(parent: Any, name: str) -> Any | None:
    for child in parent.childEntity or ():
        if isinstance(child, vim.Folder) and child.name == name:
            return child
    return None


def folder_at(root: Any, path: str, *, create: bool) -> Any:
    """The folder at `path` (slash-separated) under `root`, made when `create` is set."""
    folder = root
    for part in (p for p in path.split("/") if p):
        child = _child_folder(folder, part)
        if child is None:
            if not create:
                raise InventoryError(f"VM folder {path!r} not found")
            try:
                child = folder.CreateFolder(part)
            except vim.fault.DuplicateName:
                # Another provider made it at the same moment.
                child = _child_folder(folder, part)
                if child is None:
                    raise
        folder = child
    return folder


def _datastore(dc: Any, name: str | None) -> str | None:
    if name is None:
        return None
    for ds in dc.datastore or ():
        if ds.name == name:
            return moid(ds)
    names = sorted(ds.name for ds in dc.datastore or ())
    raise InventoryError(f"datastore {name!r} not found in {dc.name}; it has {names}")


def _network_ref(net: Any) -> NetworkRef:
    if isinstance(net, vim.dvs.DistributedVirtualPortgroup):
        config: Any = net.config
        return NetworkRef(
            moid=moid(net),
            name=str(net.name),
            distributed=True,
            switch_uuid=str(config.distributedVirtualSwitch.uuid),
            portgroup_key=str(net.key),
        )
    return NetworkRef(moid=moid(net), name=str(net.name))


def _network(dc: Any, name: str | None) -> NetworkRef | None:
    if name is None:
        return None
    for net in dc.network or ():
        if net.name == name:
            return _network_ref(net)
    names = sorted({net.name for net in dc.network or ()})
    raise InventoryError(f"network {name!r} not found in {dc.name}; it has {names}")


def find_networks(
    si: Any, inventory: Inventory, names: tuple[str, ...]
) -> tuple[dict[str, NetworkRef], list[str]]:
    """The networks of the datacenter called `names`, and the sorted names of all of them (for
    a message about those not found). A name two different networks carry is left out of the
    first and marked "<name> (ambiguous)" in the second."""
    dc = vim.Datacenter(inventory.datacenter, si._stub)
    found: dict[str, dict[str, Any]] = {}
    every: set[str] = set()
    for net in dc.network or ():
        every.add(str(net.name))
        if net.name in names:
            found.setdefault(str(net.name), {})[moid(net)] = net
    refs: dict[str, NetworkRef] = {}
    for name, nets in found.items():
        if len(nets) == 1:
            refs[name] = _network_ref(next(iter(nets.values())))
        else:
            every.discard(name)
            every.add(f"{name} (ambiguous)")
    return refs, sorted(every)


def datastores(si: Any, inventory: Inventory) -> dict[str, str]:
    """The datastores of the datacenter: managed object ID -> name."""
    dc = vim.Datacenter(inventory.datacenter, si._stub)
    return {moid(ds): str(ds.name) for ds in dc.datastore or ()}


def _storage_manager(si: Any) -> str | None:
    # ServiceInstance.content as pyVmomi fetches it may lack the manager; the
    # RetrieveServiceContent call names it.
    manager = getattr(service_content(si), "vStorageObjectManager", None)
    return moid(manager) if manager is not None else None


def resolve(si: Any, settings: Settings) -> Inventory:
    """Finds (and where needed makes) what `settings` name; InventoryError when it can't."""
    about = service_content(si).about
    dc = _datacenter(si, settings.datacenter)
    folder = folder_at(dc.vmFolder, settings.vm_folder, create=True)
    return Inventory(
        product=str(about.fullName),
        api_type=str(about.apiType),
        datacenter=moid(dc),
        datacenter_name=str(dc.name),
        vm_root=moid(dc.vmFolder),
        host_root=moid(dc.hostFolder),
        vm_folder=moid(folder),
        compute=_compute(si, dc, settings.clusters),
        datastore=_datastore(dc, settings.datastore),
        network=_network(dc, settings.network),
        storage_manager=_storage_manager(si),
    )


def find_template(si: Any, inventory: Inventory, folder: str | None, name: str) -> str | None:
    """The managed object ID of the template (or, failing that, the VM) called `name` under the
    template folder (the whole datacenter when None); None when there is none."""
    root = vim.Folder(inventory.vm_root, si._stub)
    if folder is not None:
        try:
            root = folder_at(root, folder, create=False)
        except InventoryError:
            return None
    found = retrieve_view(si, root, vim.VirtualMachine, ["name", "config.template"])
    matches = sorted(
        (not p.get("config.template"), key) for key, p in found.items() if p.get("name") == name
    )
    return matches[0][1] if matches else None
