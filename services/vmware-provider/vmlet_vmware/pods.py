"""Pods and their VMs: create (find, move or clone, then power on), update (resize), start (power
on again a VM that stopped), stop (shut down or power off, and keep; exit code 137 unless the
guest left one), delete (power off, then keep or destroy), and destroy by identity. Their
statuses live in `podtable`; the VM of a pod is cloned, adopted, re-networked and resized by
`vmbuilder`.

Identity rules (see DESIGN.md):
- Every call for a VM holds that identity's lock, so concurrent CreatePods of one pod queue up
  and the second finds what the first made.
- Before any clone the identity is looked up in the cache, which the watch keeps synced with
  vCenter (a create waits for the sync after a (re)connect). The clone writes the identity into
  extraConfig, so a provider restarted mid-create finds the VM; and the VM's name is derived from
  the identity, so a clone still in flight when the provider restarted makes the second clone
  fail with DuplicateName, and the provider adopts the first.
- A pod whose identity has a VM on another host moves it there (RelocateVM), never a new one.
- A VM that disappears from vCenter while its pod exists turns the pod Failed with reason
  VMVanished; the provider never makes it again by itself.

Concurrency: at most `max_creates` CreatePods are worked on at once; the others wait their turn
before anything is done (or shown) for them, so vCenter gets a bounded number of clones in flight.

Disks: the pod's disk volumes are attached before the VM powers on (and on update); a VM being
destroyed lets go of them first, so they survive it (see `disks`).

After a provider restart the pods are rebuilt from the VMs' extraConfig (vmlet.pod and friends),
so GetPods lists them and NotifyPods reports them.
"""

from __future__ import annotations

import asyncio
import logging

from vmlet.provider.v1 import pod_pb2
from vmlet_contract import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ProviderError,
    Unavailable,
    check_namespace,
)
from vmlet_contract.locks import KeyedLocks

from .cache import Cache
from .disks import Disks, pod_disk_handles
from .nodes import NodeBook
from .podtable import PodEntry, PodTable, pod_key
from .records import EXIT_CODE_KEY, POD_KEY, POD_UID_KEY, VmRecord
from .session import Session
from .sizing import template_of, vm_size
from .status import KILLED, STOPPING
from .vmbuilder import VmBuilder
from .vms import Machines

__all__ = ["Pods"]

_log = logging.getLogger(__name__)

SYNC_TIMEOUT_SECONDS = 30.0


class Pods:
    """The pod operations of the provider; see the module docstring."""

    def __init__(
        self, session: Session, cache: Cache, machines: Machines, nodes: NodeBook, disks: Disks
    ) -> None:
        self._session = session
        self._cache = cache
        self._machines = machines
        self._book = nodes
        self._disks = disks
        self.locks = KeyedLocks()  # per identity; snapshots hold them too
        self._locks = self.locks
        self._creating = asyncio.Semaphore(session.settings.max_creates)
        self.table = PodTable(cache, nodes)
        self._table = self.table
        self._builder = VmBuilder(session, cache, machines, nodes, self.table)

    # Helpers.

    async def _synced(self) -> None:
        if self._cache.synced.is_set():
            return
        if self._session.connection is None:
            raise self._session.unavailable()
        try:
            await asyncio.wait_for(self._cache.synced.wait(), timeout=SYNC_TIMEOUT_SECONDS)
        except TimeoutError:
            raise Unavailable("the provider's view of vCenter is not synced yet; retry") from None

    async def _power_on(self, vm: VmRecord, *, fresh: bool = False) -> None:
        """Powers `vm` on, first clearing the exit code its guest left when it last stopped."""
        if vm.exit_code:
            await self._machines.set_extra_config(vm, {EXIT_CODE_KEY: ""})
            fresh = False
        await self._machines.power_on(vm, fresh=fresh)

    @staticmethod
    def _validate(pod: pod_pb2.Pod) -> pod_pb2.Container:
        where = f"pod {pod.ref.namespace}/{pod.ref.name}"
        if not pod.ref.namespace or not pod.ref.name:
            raise InvalidArgument("a pod needs a namespace and a name")
        if not pod.identity:
            raise InvalidArgument(f"{where} has no identity")
        if not pod.node_name:
            raise InvalidArgument(f"{where} is not bound to a node")
        if len(pod.containers) != 1:
            raise InvalidArgument(f"{where} has {len(pod.containers)} containers; a VM pod has one")
        return pod.containers[0]

    # Create.

    async def create(self, pod: pod_pb2.Pod) -> pod_pb2.PodStatus:
        """Makes (or finds, moves, powers on) the VM of `pod`; returns its status."""
        container = self._validate(pod)
        template = template_of(container.image)
        size = vm_size(container.resources)
        disks = pod_disk_handles(pod)
        key = pod_key(pod.ref)
        # At most --max-creates at once (after the identity's lock, so a duplicate waits for
        # its twin without taking a turn): a burst of pods reaches vCenter as that many VMs in
        # flight, each done sooner, rather than all of them at once, each slowed down by the rest.
        async with self._locks.hold(pod.identity), self._creating:
            current = self._table.get(key)
            if (
                current is not None
                and current.failure is not None
                and (
                    current.identity == pod.identity
                    and (not pod.ref.uid or pod.ref.uid == current.pod.ref.uid)
                )
            ):
                return self._table.status_of(current)  # a vanished VM is not made again
            if (
                current is not None
                and current.identity != pod.identity
                and self._table.vm_of(current)
            ):
                raise AlreadyExists(
                    f"pod {key[0]}/{key[1]} already runs the VM of identity {current.identity}"
                )
            await self._synced()
            place = self._book.placement(pod.node_name)
            vm = self._cache.vm_of(pod.identity)
            if vm is not None:  # before bind: a refused pod takes nothing from the VM's pod
                check_namespace(vm.namespace, pod.ref.namespace, pod.identity)
            entry = self._table.bind(pod)
            self._table.forget_tombstone(pod.identity)
            try:
                fresh = vm is None
                if vm is None:
                    vm = await self._builder.make(entry, template, size, place)
                else:
                    vm = await self._builder.adopt(entry, vm, size, place)
                if disks or vm.disks:
                    self._table.progress(
                        entry, "ContainerCreating", f"attaching disks {list(disks)} to VM {vm.name}"
                    )
                    vm = await self._disks.sync(vm, disks)
                    fresh = False
                if not vm.powered_on:
                    self._table.progress(
                        entry, "PoweringOn", f"powering on VM {vm.name} on {place.node}"
                    )
                    await self._power_on(vm, fresh=fresh)
                elif vm.identity != pod.identity:
                    await self._machines.refresh(vm.moid)  # read what completing it wrote
            except ProviderError:
                if not entry.vm and self._cache.vm_of(pod.identity) is None:
                    self._table.drop(entry)
                raise
            finally:
                self._table.progress(entry, None)
            _log.info("pod running", extra={"pod": "/".join(key), "vm": entry.vm})
            return self._table.status_of(entry)

    # Update.
    async def update(self, pod: pod_pb2.Pod) -> pod_pb2.PodStatus:
        """Brings the VM in line with a changed pod (CPU and memory)."""
        key = pod_key(pod.ref)
        entry = self._table.entry(*key)
        if pod.identity and pod.identity != entry.identity:
            raise InvalidArgument(
                f"pod {key[0]}/{key[1]} runs the VM of identity {entry.identity}; its identity "
                f"cannot change to {pod.identity}"
            )
        container = pod.containers[0] if len(pod.containers) == 1 else None
        if container is None:
            raise InvalidArgument(f"pod {key[0]}/{key[1]} must have exactly one container")
        size = vm_size(container.resources)
        disks = pod_disk_handles(pod)
        async with self._locks.hold(entry.identity):
            entry = self._table.entry(*key)
            merged = pod_pb2.Pod()
            merged.CopyFrom(pod)
            merged.identity = entry.identity
            merged.node_name = pod.node_name or entry.pod.node_name
            entry.pod = merged
            if entry.failure is not None:
                self._table.publish(entry)
                return self._table.status_of(entry)
            await self._synced()
            vm = self._cache.vm_of(entry.identity)
            if vm is None:
                raise FailedPrecondition(f"pod {key[0]}/{key[1]} has no VM to update")
            try:
                note = await self._builder.resize(entry, vm, size)
                vm = self._cache.vms.get(vm.moid) or vm
                if disks or vm.disks:
                    await self._disks.sync(vm, disks)
                    vm = self._cache.vms.get(vm.moid) or vm
                networks, exact = await self._builder.networks(merged, None)
                if exact and await self._machines.set_networks(vm, networks):
                    note = "; ".join(p for p in (note, "NICs moved to the pod's networks") if p)
            finally:
                self._table.progress(entry, None)
            if note:
                entry.note = note
                _log.info("vm resized", extra={"pod": "/".join(key), "vm": vm.moid, "how": note})
            self._table.publish(entry)
            return self._table.status_of(entry)

    # Start and stop.

    def _claimed_identity(self, pod: pod_pb2.Pod) -> str:
        """The identity of the VM a StartPod or StopPod of `pod` is about; NotFound when none."""
        key = pod_key(pod.ref)
        if not key[0] or not key[1]:
            raise InvalidArgument("a pod needs a namespace and a name")
        known = self._table.get(key)
        identity = pod.identity or (known.identity if known is not None else "")
        if not identity:
            raise NotFound(f"the vSphere provider runs no VM for pod {key[0]}/{key[1]}")
        return identity

    async def _vm_of_pod(self, pod: pod_pb2.Pod, identity: str) -> tuple[PodEntry, VmRecord]:
        """The pod's entry and its VM of `identity`, read now, under the identity's lock:
        PermissionDenied for a VM of another namespace, NotFound when the provider runs no VM
        of that identity for the pod."""
        key = pod_key(pod.ref)
        where = f"pod {key[0]}/{key[1]}"
        await self._synced()
        vm = self._cache.vm_of(identity)
        if vm is not None:
            check_namespace(vm.namespace, pod.ref.namespace, identity)
        entry = self._table.get(key)
        if (
            entry is None
            or entry.identity != identity
            or (pod.ref.uid and entry.pod.ref.uid and pod.ref.uid != entry.pod.ref.uid)
            or vm is None
            or (vm.pod is not None and vm.pod != key)
        ):
            raise NotFound(f"the vSphere provider runs no VM of {where} (identity {identity})")
        current = await self._machines.refresh(vm.moid)
        if current is None:
            raise NotFound(f"VM {vm.name} of {where} no longer exists")
        return entry, current

    async def start(self, pod: pod_pb2.Pod) -> pod_pb2.PodStatus:
        """Powers the VM of `pod` on again after it stopped, first clearing the exit code its
        guest left (so the next stop reports its own); a VM that runs is left as it is.
        NotFound when the provider runs no VM for the pod."""
        identity = self._claimed_identity(pod)
        async with self._locks.hold(identity):
            entry, vm = await self._vm_of_pod(pod, identity)
            if vm.powered_on:
                return self._table.status_of(entry)
            self._table.progress(entry, "PoweringOn", f"powering on VM {vm.name} again")
            try:
                await self._power_on(vm)
            finally:
                self._table.progress(entry, None)
            _log.info("pod started again", extra={"pod": "/".join(entry.key), "vm": vm.moid})
            return self._table.status_of(entry)

    async def stop(self, pod: pod_pb2.Pod, grace_seconds: int) -> pod_pb2.PodStatus:
        """Powers the VM of `pod` off and keeps it (see `Machines.shut_down`), then writes exit
        code 137 into guestinfo.vmlet.exitCode unless the guest left one; a VM that is off is
        left as it is. NotFound when the provider runs no VM for the pod."""
        identity = self._claimed_identity(pod)
        async with self._locks.hold(identity):
            entry, vm = await self._vm_of_pod(pod, identity)
            if vm.power == "poweredOff":
                return self._table.status_of(entry)
            self._table.progress(
                entry, STOPPING, f"stopping VM {vm.name}; its guest has {grace_seconds}s"
            )
            try:
                by_guest = await self._machines.shut_down(vm, grace_seconds)
                off = self._cache.vms.get(vm.moid)
                if off is None:
                    raise NotFound(f"VM {vm.name} of pod {'/'.join(entry.key)} no longer exists")
                if not off.exit_code.strip():
                    entry.killed = True  # before the write: the status says 137 even if it fails
                    await self._machines.set_extra_config(off, {EXIT_CODE_KEY: str(KILLED)})
            finally:
                self._table.progress(entry, None)
            _log.info(
                "pod stopped",
                extra={"pod": "/".join(entry.key), "vm": vm.moid, "by_guest": by_guest},
            )
            return self._table.status_of(entry)

    # Delete.

    async def delete(self, pod: pod_pb2.Pod) -> None:
        """Powers the pod's VM off and destroys it, or keeps it when `keep_on_delete`. A pod the
        provider does not know, and a VM that now serves another pod, are left alone."""
        key = pod_key(pod.ref)
        known = self._table.get(key)
        identity = pod.identity or (known.identity if known is not None else "")
        if not identity:
            return
        async with self._locks.hold(identity):
            entry = self._table.get(key)
            if entry is not None and entry.identity != identity:
                entry = None
            await self._synced()
            vm = self._cache.vm_of(identity)
            if vm is not None:
                check_namespace(vm.namespace, pod.ref.namespace, identity)
            keep = pod.keep_on_delete or (vm is not None and vm.keep)
            if vm is not None and vm.pod is not None and vm.pod != key:
                if entry is not None:
                    self._table.drop(entry)
                return
            if vm is None:
                if entry is not None:
                    self._table.drop(entry)
                return
            if entry is not None:
                what = "powering off (kept)" if keep else "destroying"
                self._table.progress(entry, "Deleting", f"{what} VM {vm.name}")
            try:
                if keep:
                    await self._machines.power_off(vm)
                    vm = self._cache.vms.get(vm.moid) or vm
                    if vm.pod is not None or vm.pod_uid:
                        await self._machines.set_extra_config(vm, {POD_KEY: "", POD_UID_KEY: ""})
                else:
                    await self._destroy(vm)
            except ProviderError:
                if entry is not None:
                    self._table.progress(entry, None)
                raise
            if entry is not None:
                self._table.drop(entry)
            self._table.tombstone(identity)
            _log.info(
                "pod deleted",
                extra={"pod": "/".join(key), "vm": vm.moid, "kept": keep},
            )

    async def _destroy(self, vm: VmRecord) -> None:
        """Powers `vm` off, lets go of its PersistentVolume disks (so they outlive it, and no
        write is in flight when they go) and destroys it."""
        await self._machines.power_off(vm)
        await self._disks.release(self._cache.vms.get(vm.moid) or vm)
        await self._machines.destroy(vm)

    # VirtualMachine operations.

    async def describe(self, identity: str, namespace: str = "") -> VmRecord:
        """The VM of `identity`, with or without a pod; NotFound when there is none,
        PermissionDenied when it belongs to another namespace than `namespace` (when given)."""
        if not identity:
            raise InvalidArgument("an identity is needed")
        await self._synced()
        vm = self._cache.vm_of(identity)
        if vm is None:
            raise NotFound(f"no VM with identity {identity}")
        check_namespace(vm.namespace, namespace, identity)
        return vm

    async def check_owner(self, identity: str, namespace: str) -> None:
        """PermissionDenied when the VM of `identity` belongs to another namespace."""
        if namespace and identity:
            await self._synced()
            vm = self._cache.vm_of(identity)
            if vm is not None:
                check_namespace(vm.namespace, namespace, identity)

    async def destroy(self, identity: str, namespace: str = "") -> None:
        """Destroys the VM of `identity` whatever its power state (its VirtualMachine resource
        is gone); a pod still bound to it is forgotten. An unknown identity succeeds."""
        if not identity:
            raise InvalidArgument("an identity is needed")
        async with self._locks.hold(identity):
            await self._synced()
            entry = self._table.entry_of(identity)
            vm = self._cache.vm_of(identity)
            if vm is not None:
                check_namespace(vm.namespace, namespace, identity)
            if vm is not None:
                if entry is not None:
                    self._table.progress(entry, "Deleting", f"destroying VM {vm.name}")
                try:
                    await self._destroy(vm)
                except ProviderError:
                    if entry is not None:
                        self._table.progress(entry, None)
                    raise
            if entry is not None:
                self._table.drop(entry)
            self._table.tombstone(identity)
            _log.info("vm destroyed", extra={"identity": identity, "vm": vm.moid if vm else ""})

    def close(self, reason: str) -> None:
        """Ends every NotifyPods stream."""
        self._table.close(reason)
