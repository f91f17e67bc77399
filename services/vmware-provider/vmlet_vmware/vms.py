"""VM operations on vCenter: clone, power, relocate, reconfigure, destroy, look-ups of templates
and networks.

Each operation starts a vSphere task and waits for it without holding a thread (see `tasks`).
After a change the VM's properties are read back into the cache (read-after-write), so the next
look-up by identity already sees it. NICs follow the pod's networks (see `nics`).

Power operations are idempotent: powering on a running VM or off a stopped one is not an error.
Destroying a VM that is already gone is not an error either. A shutdown (`shut_down`) asks the
guest first (ShutdownGuest, when VMware Tools run) and powers the VM off hard once its grace
period is over, or at once when the guest cannot be asked.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from dataclasses import dataclass, field
from typing import Any

from pyVmomi import vim

from vmlet_contract import FailedPrecondition, NotFound, ProviderError

from .cache import Cache, Kind
from .inventory import NetworkRef, find_networks, find_template
from .nics import nic_changes, read_devices
from .props import extra_config_path, moid, retrieve_one
from .records import IDENTITY_KEY, VM_PATHS, VmRecord
from .session import Connection, Session
from .sizing import VmSize
from .tasks import TaskFailed, TaskRunner

__all__ = ["ClonePlan", "Machines", "TaskFailed"]

_log = logging.getLogger(__name__)

_SHUTDOWN_PATHS = ("runtime.powerState", "guest.toolsRunningStatus")
#: The longest pause between two reads of a VM whose guest is shutting down.
SHUTDOWN_POLL_SECONDS = 1.0


@dataclass(frozen=True)
class ClonePlan:
    """Everything a clone needs, resolved."""

    template: str
    name: str
    host: str
    pool: str
    datastore: str | None
    size: VmSize
    extra_config: dict[str, str] = field(default_factory=dict)
    networks: tuple[NetworkRef, ...] = ()
    exact_networks: bool = False  # the pod named them: NICs beyond them go
    template_devices: tuple[Any, ...] | None = None  # as last read; None: read them now


def _start_clone(conn: Connection, plan: ClonePlan) -> str:
    template = conn.mo(vim.VirtualMachine, plan.template)
    config = vim.vm.ConfigSpec(
        extraConfig=[vim.option.OptionValue(key=k, value=v) for k, v in plan.extra_config.items()]
    )
    if plan.size.cpus is not None:
        config.numCPUs = plan.size.cpus
    if plan.size.memory_mb is not None:
        config.memoryMB = plan.size.memory_mb
    if plan.networks:
        devices = plan.template_devices
        if devices is None:
            devices = tuple(read_devices(conn, template))
        # The template's devices are shared between clones: each edits copies of its NICs.
        nics = [
            copy.deepcopy(d) for d in devices if isinstance(d, vim.vm.device.VirtualEthernetCard)
        ]
        changes = nic_changes(conn, nics, plan.networks, exact=plan.exact_networks)
        if changes:
            config.deviceChange = changes
    location = vim.vm.RelocateSpec(
        host=conn.mo(vim.HostSystem, plan.host), pool=conn.mo(vim.ResourcePool, plan.pool)
    )
    if plan.datastore is not None:
        location.datastore = conn.mo(vim.Datastore, plan.datastore)
    spec = vim.vm.CloneSpec(location=location, config=config, powerOn=False, template=False)
    folder = conn.mo(vim.Folder, conn.inventory.vm_folder)
    return moid(template.CloneVM_Task(folder=folder, name=plan.name, spec=spec))


def _vm(conn: Connection, vm: str) -> Any:
    return conn.mo(vim.VirtualMachine, vm)


def _power_on(conn: Connection, vm: str) -> str:
    return moid(_vm(conn, vm).PowerOnVM_Task())


def _power_off(conn: Connection, vm: str) -> str:
    return moid(_vm(conn, vm).PowerOffVM_Task())


def _ask_shutdown(conn: Connection, vm: str) -> bool:
    """Asks the guest of `vm` to shut down; False when it cannot be asked (VMware Tools do not
    run, or the VM does not run)."""
    target = _vm(conn, vm)
    found = retrieve_one(conn.si, target, _SHUTDOWN_PATHS) or {}
    if (
        found.get("runtime.powerState") != "poweredOn"
        or found.get("guest.toolsRunningStatus") != "guestToolsRunning"
    ):
        return False
    target.ShutdownGuest()
    return True


def _destroy(conn: Connection, vm: str) -> str:
    return moid(_vm(conn, vm).Destroy_Task())


def _relocate(conn: Connection, vm: str, host: str, pool: str, datastore: str | None) -> str:
    spec = vim.vm.RelocateSpec(
        host=conn.mo(vim.HostSystem, host), pool=conn.mo(vim.ResourcePool, pool)
    )
    if datastore is not None:
        spec.datastore = conn.mo(vim.Datastore, datastore)
    return moid(_vm(conn, vm).RelocateVM_Task(spec=spec, priority="defaultPriority"))


def _reconfigure(conn: Connection, vm: str, spec: Any) -> str:
    return moid(_vm(conn, vm).ReconfigVM_Task(spec=spec))


def _read(conn: Connection, vm: str) -> dict[str, Any] | None:
    found = retrieve_one(conn.si, _vm(conn, vm), VM_PATHS)
    # vCenter leaves out what is unset (an extraConfig key removed); the cache drops it on None.
    return None if found is None else {path: found.get(path) for path in VM_PATHS}


def _find_named(conn: Connection, name: str) -> tuple[str, str] | None:
    folder = conn.mo(vim.Folder, conn.inventory.vm_folder)
    found = conn.content.searchIndex.FindChild(entity=folder, name=name)
    if found is None:
        return None
    props = retrieve_one(conn.si, found, [extra_config_path(IDENTITY_KEY)]) or {}
    return moid(found), str(props.get(extra_config_path(IDENTITY_KEY)) or "")


class Machines(TaskRunner):
    """The VM operations of the provider; see the module docstring."""

    def __init__(self, session: Session, cache: Cache) -> None:
        super().__init__(session)
        self._cache = cache
        self._templates: dict[tuple[int, str], str] = {}
        self._template_devices: dict[tuple[int, str], tuple[Any, ...]] = {}
        self._networks: dict[tuple[int, str], NetworkRef] = {}
        self._rechecks: dict[str, asyncio.Task[None]] = {}
        cache.on_recheck = self._recheck

    def _recheck(self, kind: Kind, moid: str) -> None:
        if kind != "vm" or moid in self._rechecks:
            return

        async def reread() -> None:
            try:
                await self.refresh(moid)
            except ProviderError as exc:
                _log.debug("re-reading a VM failed", extra={"vm": moid, "error": exc.message})
            finally:
                self._rechecks.pop(moid, None)

        self._rechecks[moid] = asyncio.get_running_loop().create_task(reread())

    # Reads.

    async def refresh(self, vm: str) -> VmRecord | None:
        """Reads VM `vm` into the cache; its record, None when it is gone."""
        start = self._cache.seq
        props = await self._call(_read, vm, doing=f"read VM {vm}")
        self._cache.refresh("vm", vm, props, start)
        return self._cache.vms.get(vm)

    async def template(self, name: str) -> str | None:
        """The managed object ID of template `name`, None when there is none."""
        session = self._session
        conn = session.connection
        if conn is None:
            raise session.unavailable()
        key = (conn.generation, name)
        found = self._templates.get(key)
        if found is not None:
            return found
        folder = session.settings.template_folder

        def look(c: Connection) -> str | None:
            return find_template(c.si, c.inventory, folder, name)

        found = await session.call(look, doing=f"look up template {name}")
        if found is not None:
            self._templates[key] = found
        return found

    async def networks(self, names: tuple[str, ...]) -> tuple[NetworkRef, ...]:
        """The networks (port groups) called `names`, in order; FailedPrecondition naming the
        ones the datacenter lacks (or has twice)."""
        session = self._session
        conn = session.connection
        if conn is None:
            raise session.unavailable()
        generation = conn.generation
        missing = tuple(n for n in names if (generation, n) not in self._networks)
        if missing:

            def look(c: Connection) -> tuple[dict[str, NetworkRef], list[str]]:
                return find_networks(c.si, c.inventory, missing)

            found, every = await session.call(look, doing=f"look up networks {list(missing)}")
            for name, ref in found.items():
                self._networks[(generation, name)] = ref
            absent = [n for n in missing if n not in found]
            if absent:
                raise FailedPrecondition(
                    f"network(s) {absent} not found (or not unique) in the datacenter; it has "
                    f"{every}"
                )
        return tuple(self._networks[(generation, n)] for n in names)

    async def template_devices(self, template: str) -> tuple[Any, ...]:
        """The virtual devices of template `template` (a managed object ID), read once per
        connection: each clone edits copies of its NICs. They are pyVmomi objects that the loop
        only hands back to the worker threads, never looks into nor changes."""
        conn = self._session.connection
        if conn is None:
            raise self._session.unavailable()
        key = (conn.generation, template)
        found = self._template_devices.get(key)
        if found is None:

            def read(c: Connection) -> tuple[Any, ...]:
                return tuple(read_devices(c, c.mo(vim.VirtualMachine, template)))

            found = await self._session.call(read, doing=f"read template {template}")
            self._template_devices[key] = found
        return found

    def forget_template(self, name: str) -> None:
        """Forgets where template `name` was (it moved or was replaced)."""
        for key in [k for k in self._templates if k[1] == name]:
            template = self._templates.pop(key)
            self._template_devices.pop((key[0], template), None)

    async def named(self, name: str) -> tuple[str, str] | None:
        """The (moid, identity) of the VM called `name` in the VM folder, if there is one."""
        found: tuple[str, str] | None = await self._call(
            _find_named, name, doing=f"look up VM {name}"
        )
        return found

    # Changes.

    async def clone(self, plan: ClonePlan) -> str:
        """Clones `plan.template`; returns the new VM's managed object ID. Raises TaskFailed
        (for the caller to see DuplicateName) when the clone task fails."""
        doing = f"clone VM {plan.name}"
        task = await self._call(_start_clone, plan, doing=doing)
        vm = str(await self.wait_task(task, doing))
        await self.complete(vm, plan)
        return vm

    async def complete(self, vm: str, plan: ClonePlan) -> VmRecord | None:
        """Makes sure a clone has the identity, extraConfig and size `plan` asked for, and
        applies them when it has not. vCenter applies them during the clone; govmomi's vcsim
        ignores the clone's config, and a clone adopted after a restart may have missed them.
        Returns the clone as the cache now has it.
        """
        record = await self.refresh(vm)
        if record is None:
            return None
        spec = vim.vm.ConfigSpec()
        needed = False
        if record.identity != plan.extra_config.get(IDENTITY_KEY, ""):
            spec.extraConfig = [
                vim.option.OptionValue(key=k, value=v) for k, v in plan.extra_config.items()
            ]
            needed = True
        if plan.size.cpus is not None and record.num_cpu != plan.size.cpus:
            spec.numCPUs = plan.size.cpus
            needed = True
        if plan.size.memory_mb is not None and record.memory_mb != plan.size.memory_mb:
            spec.memoryMB = plan.size.memory_mb
            needed = True
        if not needed:
            return record
        _log.debug("completing the clone's configuration", extra={"vm": vm})
        start = self._cache.seq
        await self.run_task(_reconfigure, vm, spec, doing=f"configure VM {plan.name}")
        # Not read back (powering the clone on reads it next): what the task wrote is noted.
        written: dict[str, Any] = {}
        if spec.extraConfig:
            written.update({extra_config_path(o.key): o.value for o in spec.extraConfig})
        if spec.numCPUs:
            written["config.hardware.numCPU"] = spec.numCPUs
        if spec.memoryMB:
            written["config.hardware.memoryMB"] = spec.memoryMB
        self._cache.refresh("vm", vm, written, start)
        return self._cache.vms.get(vm) or record

    async def power_on(self, vm: VmRecord, *, fresh: bool = False) -> None:
        """Powers `vm` on unless it runs (as vCenter says now, not as last seen); `fresh` says
        the VM was just made and is off, so it is not read first."""
        if not fresh:
            current = await self.refresh(vm.moid)
            if current is None:
                raise NotFound(f"VM {vm.name} no longer exists")
            if current.powered_on:
                return
        try:
            await self.run_task(_power_on, vm.moid, doing=f"power on VM {vm.name}")
        except ProviderError as exc:
            current = await self.refresh(vm.moid)
            if current is None or not current.powered_on:
                raise exc from None
        await self.refresh(vm.moid)

    async def power_off(self, vm: VmRecord) -> None:
        """Powers `vm` off (hard) unless it is off (as vCenter says now)."""
        current = await self.refresh(vm.moid)
        if current is None or current.power == "poweredOff":
            return
        try:
            await self.run_task(_power_off, vm.moid, doing=f"power off VM {vm.name}")
        except NotFound:
            return
        except ProviderError as exc:
            current = await self.refresh(vm.moid)
            if current is not None and current.power != "poweredOff":
                raise exc from None
        await self.refresh(vm.moid)

    async def shut_down(self, vm: VmRecord, grace_seconds: float) -> bool:
        """Powers `vm` off: asks its guest to shut down (ShutdownGuest) when `grace_seconds` is
        more than 0 and VMware Tools run, and powers it off hard (PowerOffVM_Task) once they
        have passed, or at once when the guest cannot be asked or refuses. Whether the guest
        shut down on its own. Returns once the VM is off (or gone)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_seconds
        asked = False
        if grace_seconds > 0:
            doing = f"ask the guest of VM {vm.name} to shut down"
            try:
                asked = await asyncio.wait_for(
                    self._call(_ask_shutdown, vm.moid, doing=doing), timeout=grace_seconds
                )
            except TimeoutError:
                _log.info("vCenter took the grace period to ask the guest", extra={"vm": vm.moid})
            except ProviderError as exc:  # ToolsUnavailable, InvalidPowerState, ...
                _log.info("the guest cannot be asked to shut down",
                          extra={"vm": vm.moid, "error": exc.message})  # fmt: skip
        if asked and await self._wait_off(vm, deadline):
            return True
        await self.power_off(vm)
        return False

    async def _wait_off(self, vm: VmRecord, deadline: float) -> bool:
        """Reads `vm` until it is off or gone (True) or the loop's clock passes `deadline`."""
        loop = asyncio.get_running_loop()
        pause = 0.1
        while True:
            current = await self.refresh(vm.moid)
            if current is None or current.power == "poweredOff":
                return True
            left = deadline - loop.time()
            if left <= 0:
                return False
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, SHUTDOWN_POLL_SECONDS)

    async def destroy(self, vm: VmRecord) -> None:
        """Destroys `vm` (powered off first); done when it is already gone."""
        await self.power_off(vm)
        try:
            await self.run_task(_destroy, vm.moid, doing=f"destroy VM {vm.name}")
        except NotFound:
            pass
        self._cache.forget("vm", vm.moid)

    async def relocate(self, vm: VmRecord, host: str, pool: str, datastore: str | None) -> None:
        """Moves `vm` to `host` (vMotion when it runs)."""
        await self.run_task(
            _relocate, vm.moid, host, pool, datastore, doing=f"relocate VM {vm.name}"
        )
        await self.refresh(vm.moid)

    async def resize(self, vm: VmRecord, cpus: int | None, memory_mb: int | None) -> None:
        """Sets the vCPUs and memory of `vm` (None keeps one as it is)."""
        spec = vim.vm.ConfigSpec()
        if cpus is not None:
            spec.numCPUs = cpus
        if memory_mb is not None:
            spec.memoryMB = memory_mb
        await self.run_task(_reconfigure, vm.moid, spec, doing=f"reconfigure VM {vm.name}")
        await self.refresh(vm.moid)

    async def set_extra_config(self, vm: VmRecord, values: dict[str, str]) -> None:
        """Writes extraConfig keys of `vm`; an empty value removes the key."""
        spec = vim.vm.ConfigSpec(
            extraConfig=[vim.option.OptionValue(key=k, value=v) for k, v in values.items()]
        )
        await self.run_task(_reconfigure, vm.moid, spec, doing=f"reconfigure VM {vm.name}")
        await self.refresh(vm.moid)

    async def set_networks(self, vm: VmRecord, nets: tuple[NetworkRef, ...]) -> bool:
        """Puts the NICs of `vm` on `nets` exactly (see the module docstring); whether anything
        changed."""
        doing = f"reconnect the NICs of VM {vm.name}"

        def start(conn: Connection) -> str | None:
            target = _vm(conn, vm.moid)
            changes = nic_changes(conn, read_devices(conn, target), nets, exact=True)
            if not changes:
                return None
            return moid(target.ReconfigVM_Task(spec=vim.vm.ConfigSpec(deviceChange=changes)))

        task: str | None = await self._session.call(start, doing=doing)
        if task is None:
            return False
        try:
            await self.wait_task(task, doing)
        except TaskFailed as failed:
            raise failed.error from None
        await self.refresh(vm.moid)
        return True
