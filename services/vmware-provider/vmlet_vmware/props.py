"""PropertyCollector plumbing shared by the look-ups and the watch: specs, retrieval, and turning
pyVmomi values into plain Python ones.

Everything that leaves a worker thread is plain data (str, int, bool, datetime, tuples), never a
pyVmomi object, so the asyncio side holds no reference into a connection that may be gone by
the time it looks. Managed objects become their managed object ID ("vm-42").

Runs in worker threads only (blocking calls).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

from pyVmomi import vim, vmodl
from pyVmomi.VmomiSupport import ManagedObject

__all__ = [
    "CONVERTERS",
    "convert",
    "extra_config_path",
    "folder_list_filter_spec",
    "moid",
    "retrieve_many",
    "retrieve_one",
    "retrieve_view",
    "service_content",
    "view_filter_spec",
]

_PC = vmodl.query.PropertyCollector


_CONTENTS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def service_content(si: Any) -> Any:
    """The ServiceContent of a connection (property collector, view manager, ...), retrieved
    once per connection: reading `si.content` asks vCenter again every time."""
    stub = si._stub
    content = _CONTENTS.get(stub)
    if content is None:
        content = _CONTENTS[stub] = si.RetrieveContent()
    return content


def moid(obj: Any) -> str:
    """The managed object ID of a pyVmomi managed object."""
    return str(obj._moId)


def extra_config_path(key: str) -> str:
    """The property path of one extraConfig key, e.g. config.extraConfig["vmlet.identity"]."""
    return f'config.extraConfig["{key}"]'


def _ips_of_nics(value: Any) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(str(ip) for ip in (nic.ipAddress or ())) for nic in value or ())


def _ips_of_vnics(value: Any) -> tuple[str, ...]:
    out: list[str] = []
    for vnic in value or ():
        ip = getattr(getattr(vnic, "spec", None), "ip", None)
        address = getattr(ip, "ipAddress", None)
        if address:
            out.append(str(address))
    return tuple(out)


def _option_value(value: Any) -> Any:
    return getattr(value, "value", value)


def _moids(value: Any) -> tuple[str, ...]:
    return tuple(moid(v) for v in value or ())


#: Converters for properties whose pyVmomi value is not plain; the rest go through `convert`.
CONVERTERS: Final[Mapping[str, Callable[[Any], Any]]] = {
    "guest.net": _ips_of_nics,
    "config.network.vnic": _ips_of_vnics,
    "datastore": _moids,
}


def convert(path: str, value: Any) -> Any:
    """A plain Python value for property `path`."""
    if value is None:
        return None
    special = CONVERTERS.get(path)
    if special is not None:
        return special(value)
    if path.startswith("config.extraConfig["):
        value = _option_value(value)
        return None if value in (None, "") else str(value)
    if isinstance(value, ManagedObject):
        return moid(value)
    if isinstance(value, list | tuple) and value and isinstance(value[0], ManagedObject):
        return _moids(value)
    return value


def view_filter_spec(view: Any, kind: type[Any], paths: Sequence[str]) -> Any:
    """A filter spec over every object of `kind` in a ContainerView."""
    traverse = _PC.TraversalSpec(
        name="traverseView", path="view", skip=False, type=vim.view.ContainerView
    )
    return _PC.FilterSpec(
        objectSet=[_PC.ObjectSpec(obj=view, skip=True, selectSet=[traverse])],
        propSet=[_PC.PropertySpec(type=kind, pathSet=list(paths), all=False)],
    )


def folder_list_filter_spec(list_view: Any, kind: type[Any], paths: Sequence[str]) -> Any:
    """A filter spec over every object of `kind` in the folders a ListView holds, and in their
    subfolders (Folder.childEntity, recursively).

    Watching a folder this way, rather than through a ContainerView of it, keeps the filter's
    root object (the ListView) unchanged when VMs come and go. govmomi's vcsim (through v0.46)
    deadlocks when the root of a filter that a WaitForUpdatesEx is re-syncing changes at the
    same moment, which a ContainerView does whenever a VM is made in it; a real vCenter serves
    both forms alike.
    """
    children = _PC.TraversalSpec(
        name="childEntity",
        path="childEntity",
        skip=False,
        type=vim.Folder,
        selectSet=[_PC.SelectionSpec(name="childEntity")],
    )
    listed = _PC.TraversalSpec(
        name="listed", path="view", skip=False, type=vim.view.ListView, selectSet=[children]
    )
    return _PC.FilterSpec(
        objectSet=[_PC.ObjectSpec(obj=list_view, skip=True, selectSet=[listed])],
        propSet=[_PC.PropertySpec(type=kind, pathSet=list(paths), all=False)],
    )


def _object_props(content: Any) -> dict[str, Any]:
    return {p.name: convert(p.name, p.val) for p in content.propSet or ()}


def _retrieve(si: Any, spec: Any) -> Iterable[Any]:
    collector = service_content(si).propertyCollector
    result = collector.RetrievePropertiesEx(specSet=[spec], options=_PC.RetrieveOptions())
    while result is not None:
        yield from result.objects or ()
        if not result.token:
            break
        result = collector.ContinueRetrievePropertiesEx(token=result.token)


def retrieve_view(
    si: Any, container: Any, kind: type[Any], paths: Sequence[str], *, recursive: bool = True
) -> dict[str, dict[str, Any]]:
    """Properties of every `kind` object under `container`, keyed by managed object ID."""
    view = service_content(si).viewManager.CreateContainerView(
        container=container, type=[kind], recursive=recursive
    )
    try:
        spec = view_filter_spec(view, kind, paths)
        return {moid(o.obj): _object_props(o) for o in _retrieve(si, spec)}
    finally:
        view.Destroy()


def retrieve_one(si: Any, obj: Any, paths: Sequence[str]) -> dict[str, Any] | None:
    """Properties of one object; None when it no longer exists."""
    spec = _PC.FilterSpec(
        objectSet=[_PC.ObjectSpec(obj=obj, skip=False)],
        propSet=[_PC.PropertySpec(type=type(obj), pathSet=list(paths), all=False)],
    )
    try:
        for content in _retrieve(si, spec):
            return _object_props(content)
    except vmodl.fault.ManagedObjectNotFound:
        return None
    return None


def retrieve_many(si: Any, objs: Sequence[Any], paths: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Properties of several objects of one type, keyed by managed object ID; objects that no
    longer exist are left out."""
    if not objs:
        return {}
    spec = _PC.FilterSpec(
        objectSet=[_PC.ObjectSpec(obj=obj, skip=False) for obj in objs],
        propSet=[_PC.PropertySpec(type=type(objs[0]), pathSet=list(paths), all=False)],
    )
    try:
        return {moid(o.obj): _object_props(o) for o in _retrieve(si, spec)}
    except vmodl.fault.ManagedObjectNotFound:
        out: dict[str, dict[str, Any]] = {}
        for obj in objs:
            found = retrieve_one(si, obj, paths)
            if found is not None:
                out[moid(obj)] = found
        return out
