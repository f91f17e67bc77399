"""vCenter as bench/vmware sees it, through pyvmomi alone: sessions, waiting for a task with a
PropertyCollector filter, the end state a phase left, and destroying a phase's VMs (untimed)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim, vmodl

from vmlet_localenv.vcsim import TEMPLATE_FOLDER, VcSim

TEMPLATE = "debian-12"


@contextmanager
def session(sim: VcSim) -> Iterator[Any]:
    si = SmartConnect(host="127.0.0.1", port=sim.port, user=sim.username, pwd=sim.password,
                      sslContext=sim.ssl_context())
    try:
        yield si
    finally:
        Disconnect(si)


def wait_task(collector: Any, task: Any) -> Any:
    """Waits for ``task`` through ``collector`` (a PropertyCollector of the thread's session);
    returns the task's result, raises its fault."""
    pc = vmodl.query.PropertyCollector
    flt = collector.CreateFilter(pc.FilterSpec(
        objectSet=[pc.ObjectSpec(obj=task)],
        propSet=[pc.PropertySpec(type=vim.Task, pathSet=["info.state", "info.error"])]),
        partialUpdates=False)
    try:
        version, state, error = "", "", None
        while state not in ("success", "error"):
            update = collector.WaitForUpdatesEx(version=version,
                                                options=pc.WaitOptions(maxWaitSeconds=60))
            if update is None:
                continue
            version = update.version
            for fs in update.filterSet or ():
                for obj in fs.objectSet or ():
                    for change in obj.changeSet or ():
                        if change.name == "info.state":
                            state = str(change.val)
                        elif change.name == "info.error":
                            error = change.val
    finally:
        flt.Destroy()
    if state == "error":
        raise error
    return task.info.result


IDENTITY_KEY = "vmlet.identity"
#: The template's size (vmlet_localenv.vcsim makes it 1 vCPU / 512 MiB): neither phase asks for
#: another, so every VM of both phases must end with it.
TEMPLATE_SIZE = (1, 512)


@dataclass
class EndState:
    """What a phase left in vCenter, read after it (untimed)."""

    vms: int = 0  # VMs whose name starts with the phase's prefix
    powered_on: int = 0
    identified: int = 0  # carrying exactly the identities the phase asked for, each once
    sized: int = 0  # at TEMPLATE_SIZE

    def complete(self, count: int) -> bool:
        return self.vms == self.powered_on == self.identified == self.sized == count

    def describe(self) -> str:
        return (f"{self.vms} VMs, {self.powered_on} powered on, {self.identified} with their "
                f"identity in extraConfig, {self.sized} at {TEMPLATE_SIZE[0]} vCPU/"
                f"{TEMPLATE_SIZE[1]} MiB")


def end_state(sim: VcSim, prefix: str, identities: set[str]) -> EndState:
    """Reads every VM whose name starts with ``prefix`` (one RetrievePropertiesEx over a
    ContainerView) and checks it against what both phases must leave: powered on, the identity
    the phase asked for in extraConfig (each identity on exactly one VM), the template's size."""
    pc = vmodl.query.PropertyCollector
    identity_path = f'config.extraConfig["{IDENTITY_KEY}"]'
    paths = ["name", "runtime.powerState", "config.hardware.numCPU",
             "config.hardware.memoryMB", identity_path]
    with session(sim) as si:
        content = si.RetrieveContent()
        view = content.viewManager.CreateContainerView(
            content.rootFolder, [vim.VirtualMachine], True)
        try:
            spec = pc.FilterSpec(
                objectSet=[pc.ObjectSpec(obj=view, skip=True, selectSet=[pc.TraversalSpec(
                    name="view", path="view", skip=False, type=vim.view.ContainerView)])],
                propSet=[pc.PropertySpec(type=vim.VirtualMachine, pathSet=paths)])
            found: list[dict[str, Any]] = []
            result = content.propertyCollector.RetrievePropertiesEx(
                specSet=[spec], options=pc.RetrieveOptions())
            while result is not None:
                for obj in result.objects or ():
                    found.append({p.name: p.val for p in obj.propSet or ()})
                if not result.token:
                    break
                result = content.propertyCollector.ContinueRetrievePropertiesEx(
                    token=result.token)
        finally:
            view.Destroy()
    mine = [props for props in found if str(props.get("name", "")).startswith(prefix)]
    seen: dict[str, int] = {}
    for props in mine:
        value = props.get(identity_path)
        value = getattr(value, "value", value)  # an OptionValue, or the value itself
        if value:
            seen[str(value)] = seen.get(str(value), 0) + 1
    return EndState(
        vms=len(mine),
        powered_on=sum(1 for p in mine if p.get("runtime.powerState") == "poweredOn"),
        identified=sum(n for i, n in seen.items() if i in identities and n == 1),
        sized=sum(1 for p in mine if (p.get("config.hardware.numCPU"),
                                      p.get("config.hardware.memoryMB")) == TEMPLATE_SIZE))


def destroy_collectors(collectors: list[Any]) -> None:
    """Destroys the bench's PropertyCollectors: vcsim keeps a collector that has waited for
    updates, and tells it every change, after its session logs out, which would slow every
    later phase down."""
    for collector in collectors:
        collector.DestroyPropertyCollector()


def inventory(si: Any) -> tuple[Any, Any, list[Any], Any]:
    """The datacenter, the template, the hosts and the resource pool of the first cluster."""
    content = si.RetrieveContent()
    dc = content.rootFolder.childEntity[0]
    cluster = dc.hostFolder.childEntity[0]
    folder = next(f for f in dc.vmFolder.childEntity if f.name == TEMPLATE_FOLDER)
    template = next(vm for vm in folder.childEntity if vm.name == TEMPLATE)
    return dc, template, list(cluster.host), cluster.resourcePool


def destroy_named(sim: VcSim, prefix: str, concurrency: int) -> None:
    """Powers off and destroys every VM whose name starts with ``prefix``."""
    with session(sim) as si:
        content = si.RetrieveContent()
        view = content.viewManager.CreateContainerView(
            content.rootFolder, [vim.VirtualMachine], True)
        doomed = [vm._moId for vm in view.view if vm.name.startswith(prefix)]
        view.Destroy()
    local = threading.local()

    opened: list[Any] = []
    collectors: list[Any] = []
    lock = threading.Lock()

    def one(ref: str) -> None:
        if not hasattr(local, "si"):
            local.si = SmartConnect(host="127.0.0.1", port=sim.port, user=sim.username,
                                    pwd=sim.password, sslContext=sim.ssl_context())
            local.pc = local.si.content.propertyCollector.CreatePropertyCollector()
            with lock:
                opened.append(local.si)
                collectors.append(local.pc)
        vm = vim.VirtualMachine(ref, local.si._stub)
        if vm.runtime.powerState != "poweredOff":
            wait_task(local.pc, vm.PowerOffVM_Task())
        wait_task(local.pc, vm.Destroy_Task())

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, doomed))
    destroy_collectors(collectors)
    for si in opened:
        Disconnect(si)

