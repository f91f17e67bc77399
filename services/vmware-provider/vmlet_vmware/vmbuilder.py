"""Building the VM of a pod: a clone from its template, or the VM its identity already has moved to
the pod's host, labelled for the pod, put on its networks and sized as it asks. The caller
(`pods`) holds the identity's lock.

A clone writes the identity, the pod's labels and cloud-init's guestinfo (the pod's user data
with its init containers' and container's commands as first-boot runcmd, see
`vmlet_contract.userdata`) into extraConfig, so a provider restarted mid-create finds the VM; its
name is derived from the identity, so a clone that hits DuplicateName adopts the earlier clone
of the same identity.

Networks: the pod's networks (in order) put NIC i on port group i; without any the clone keeps
the template's NICs, the first moved to --network when that is set (see `nics`).

Resizing is hot when the VM allows it (CPU/memory hot add, CPU hot remove), else a power cycle.
"""

from __future__ import annotations

import base64
import logging

from pyVmomi import vim

from vmlet.provider.v1 import pod_pb2
from vmlet_contract import AlreadyExists, FailedPrecondition, NotFound, Unavailable
from vmlet_contract.userdata import first_boot_user_data

from .cache import Cache
from .inventory import NetworkRef
from .naming import vm_name
from .nodes import NodeBook, Placement
from .podtable import PodEntry, PodTable
from .records import (
    CONTAINER_KEY,
    IDENTITY_KEY,
    IMAGE_KEY,
    KEEP_KEY,
    NAMESPACE_KEY,
    POD_KEY,
    POD_UID_KEY,
    VmRecord,
)
from .session import Session
from .sizing import VmSize
from .vms import ClonePlan, Machines, TaskFailed

__all__ = ["VmBuilder", "extra_config", "pod_labels"]

_log = logging.getLogger(__name__)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def pod_labels(pod: pod_pb2.Pod) -> dict[str, str]:
    """The extraConfig keys that name the pod a VM serves (pod, UID, container, image)."""
    container = pod.containers[0] if pod.containers else pod_pb2.Container()
    return {
        POD_KEY: f"{pod.ref.namespace}/{pod.ref.name}",
        POD_UID_KEY: pod.ref.uid,
        CONTAINER_KEY: container.name,
        IMAGE_KEY: container.image,
    }


def extra_config(pod: pod_pb2.Pod) -> dict[str, str]:
    """The extraConfig a clone for `pod` gets: its identity, namespace, keep-on-delete, pod
    labels, and cloud-init's user data (the pod's, with its first-boot commands) and metadata
    as guestinfo."""
    user_data = first_boot_user_data(pod)
    values = {
        IDENTITY_KEY: pod.identity,
        NAMESPACE_KEY: pod.ref.namespace,
        KEEP_KEY: "true" if pod.keep_on_delete else "",
        **pod_labels(pod),
    }
    if user_data:
        values["guestinfo.userdata"] = _b64(user_data)
        values["guestinfo.userdata.encoding"] = "base64"
    if user_data or pod.meta_data:
        meta = pod.meta_data or f"instance-id: {pod.identity}\nlocal-hostname: {pod.ref.name}\n"
        values["guestinfo.metadata"] = _b64(meta)
        values["guestinfo.metadata.encoding"] = "base64"
    return {k: v for k, v in values.items() if v}


class VmBuilder:
    """Makes, adopts and resizes the VM of a pod; see the module docstring."""

    def __init__(
        self, session: Session, cache: Cache, machines: Machines, nodes: NodeBook, table: PodTable
    ) -> None:
        self._session = session
        self._cache = cache
        self._machines = machines
        self._book = nodes
        self._table = table

    async def networks(
        self, pod: pod_pb2.Pod, place: Placement | None
    ) -> tuple[tuple[NetworkRef, ...], bool]:
        """The networks of the pod's NICs, and whether they are exactly the pod's (rather than
        the provider's default network, or none)."""
        names = tuple(n.name for n in pod.networks if n.name)
        if not names:
            conn = self._session.connection
            default = conn.inventory.network if conn is not None else None
            return ((default,) if default is not None else ()), False
        nets = await self._machines.networks(names)
        if place is not None and place.host.networks:
            absent = [n.name for n in nets if n.moid not in place.host.networks]
            if absent:
                raise FailedPrecondition(
                    f"network(s) {absent} are not available on ESXi host {place.host.name} "
                    f"(node {place.node})"
                )
        return nets, True

    async def make(
        self, entry: PodEntry, template: str, size: VmSize, place: Placement
    ) -> VmRecord:
        """Clones the VM of `entry`'s pod from `template` onto `place` (adopting an earlier clone
        of its identity that the name is taken by); returns it."""
        pod = entry.pod
        name = vm_name(pod.ref.namespace, pod.ref.name, pod.identity)
        template_id = await self._machines.template(template)
        if template_id is None:
            folder = self._session.settings.template_folder
            where = f"folder {folder}" if folder else "the datacenter"
            raise FailedPrecondition(f"template {template!r} not found in {where}")
        networks, exact = await self.networks(pod, place)
        devices = await self._machines.template_devices(template_id) if networks else None
        plan = ClonePlan(
            template=template_id,
            name=name,
            host=place.host.moid,
            pool=place.pool,
            datastore=place.datastore,
            size=size,
            extra_config=extra_config(pod),
            networks=networks,
            exact_networks=exact,
            template_devices=devices,
        )
        self._table.progress(
            entry,
            "ContainerCreating",
            f"cloning template {template} to VM {name} on {place.node} ({size.describe()})",
        )
        try:
            moid = await self._machines.clone(plan)
        except (TaskFailed, AlreadyExists) as exc:
            duplicate = isinstance(exc, AlreadyExists) or isinstance(
                exc.fault, vim.fault.DuplicateName
            )
            if not duplicate:
                assert isinstance(exc, TaskFailed)
                if isinstance(exc.error, NotFound):
                    self._machines.forget_template(template)
                raise exc.error from None
            moid = await self._adopt_named(entry, plan)
        entry.vm = moid
        vm = self._cache.vms.get(moid) or await self._machines.refresh(moid)
        if vm is None:
            raise Unavailable(f"VM {name} was made but vanished at once; retry")
        _log.info("vm cloned", extra={"pod": "/".join(entry.key), "vm": moid, "vm_name": name})
        return vm

    async def _adopt_named(self, entry: PodEntry, plan: ClonePlan) -> str:
        """The clone hit a VM of the same name. That is an earlier clone of this identity (from
        before a restart) when it carries the identity, or carries none yet (the name holds a
        hash of the identity, and the identity may not have been written when the provider
        stopped): it is adopted and completed. Any other VM is AlreadyExists."""
        name = plan.name
        found = await self._machines.named(name)
        if found is None:
            raise Unavailable(f"VM name {name} is taken by a VM that is not readable yet; retry")
        moid, identity = found
        if identity not in ("", entry.identity):
            raise AlreadyExists(
                f"a VM named {name} already exists in the VM folder and belongs to identity "
                f"{identity}, not {entry.identity}"
            )
        _log.info("adopting vm from an earlier clone", extra={"vm": moid, "vm_name": name})
        await self._machines.complete(moid, plan)
        return moid

    async def adopt(
        self, entry: PodEntry, vm: VmRecord, size: VmSize, place: Placement
    ) -> VmRecord:
        """The identity already has `vm`: move it to the pod's host, label it for the pod, and
        size it as the pod asks."""
        entry.vm = vm.moid
        self._table.track_boot(entry, vm)
        if not vm.powered_on:
            self._table.progress(
                entry, "PoweringOn", f"preparing VM {vm.name} to power on on {place.node}"
            )
        if vm.host != place.host.moid:
            source = self._book.node_name_of(vm.host) or vm.host
            self._table.progress(
                entry, "Relocating", f"moving VM {vm.name} from {source} to {place.node}"
            )
            datastore = place.datastore_for(vm.datastores)
            await self._machines.relocate(vm, place.host.moid, place.pool, datastore)
            vm = self._cache.vms.get(vm.moid) or vm
            _log.info("vm relocated", extra={"vm": vm.moid, "from": source, "to": place.node})
        wanted = {
            **pod_labels(entry.pod),
            NAMESPACE_KEY: entry.pod.ref.namespace,
            KEEP_KEY: "true" if vm.keep or entry.pod.keep_on_delete else "",
        }
        current = {
            NAMESPACE_KEY: vm.recorded_namespace,
            KEEP_KEY: "true" if vm.keep else "",
            POD_KEY: "/".join(vm.pod) if vm.pod else "",
            POD_UID_KEY: vm.pod_uid,
            CONTAINER_KEY: vm.container,
            IMAGE_KEY: vm.image,
        }
        changes = {k: v for k, v in wanted.items() if current.get(k, "") != v}
        if changes:
            await self._machines.set_extra_config(vm, changes)
            vm = self._cache.vms.get(vm.moid) or vm
        networks, exact = await self.networks(entry.pod, place)
        if exact and await self._machines.set_networks(vm, networks):
            vm = self._cache.vms.get(vm.moid) or vm
        note = await self.resize(entry, vm, size)
        if note:
            entry.note = note
        return self._cache.vms.get(vm.moid) or vm

    async def resize(self, entry: PodEntry, vm: VmRecord, size: VmSize) -> str:
        """Brings the VM to `size`: hot when the VM allows it, else with a power cycle.
        Returns what was done, for the status message ("" when nothing)."""
        # Read the VM afresh: whether it allows hot add is decided on what it says now.
        vm = await self._machines.refresh(vm.moid) or vm
        cpus = size.cpus if size.cpus is not None and size.cpus != vm.num_cpu else None
        memory = (
            size.memory_mb if size.memory_mb is not None and size.memory_mb != vm.memory_mb
            else None
        )  # fmt: skip
        if cpus is None and memory is None:
            return ""
        target = VmSize(cpus or vm.num_cpu, memory or vm.memory_mb).describe()
        if not vm.powered_on:
            await self._machines.resize(vm, cpus, memory)
            return f"resized to {target}"
        blockers = []
        if cpus is not None and cpus > vm.num_cpu and not vm.cpu_hot_add:
            blockers.append("CPU hot add is off")
        if cpus is not None and cpus < vm.num_cpu and not vm.cpu_hot_remove:
            blockers.append("CPU hot remove is off")
        if memory is not None and memory > vm.memory_mb and not vm.memory_hot_add:
            blockers.append("memory hot add is off")
        if memory is not None and memory < vm.memory_mb:
            blockers.append("memory cannot shrink while running")
        if not blockers:
            await self._machines.resize(vm, cpus, memory)
            return f"resized to {target} while running (hot add)"
        why = ", ".join(blockers)
        self._table.progress(
            entry,
            "PowerCycling",
            f"powering VM {vm.name} off to resize it to {target} ({why}); it powers on again",
        )
        await self._machines.power_off(vm)
        vm = self._cache.vms.get(vm.moid) or vm
        await self._machines.resize(vm, cpus, memory)
        vm = self._cache.vms.get(vm.moid) or vm
        await self._machines.power_on(vm)
        return f"resized to {target} with a power cycle ({why})"
