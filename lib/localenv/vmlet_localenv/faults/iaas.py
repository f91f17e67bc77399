"""What the IaaS holds, read directly: the memory provider's state file, or vCenter (vcsim)
through pyvmomi, never through the facade. A `Sampler` remembers every machine seen over a run,
so a VM destroyed and remade under the same identity is caught even if the end looks right.
"""

from __future__ import annotations

import base64
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from vmlet_localenv.vcsim import VcSim

__all__ = ["Iaas", "Machine", "MemoryIaas", "Sampler", "VsphereIaas"]


@dataclass(frozen=True)
class Machine:
    """One VM in the IaaS that carries a vmlet identity."""

    identity: str
    provider_id: str
    powered_on: bool
    cpus: int
    memory_mib: int


class Iaas(Protocol):
    """Read access to the IaaS behind one provider."""

    def machines(self) -> list[Machine]:
        """Every VM that carries a vmlet identity."""
        ...

    def disk_exists(self, handle: str) -> bool:
        """Whether the disk ``handle`` exists."""
        ...

    def tick(self) -> None:
        """Play what the simulator lacks (VMware Tools on vcsim); called on every sample."""
        ...


class MemoryIaas:
    """The memory provider's IaaS: its state file (written before an RPC is answered)."""

    def __init__(self, state_file: Path) -> None:
        self.state_file = state_file

    def _state(self) -> dict[str, Any]:
        import json

        try:
            return dict(json.loads(self.state_file.read_text()))
        except FileNotFoundError:
            return {}

    def machines(self) -> list[Machine]:
        from vmlet.provider.v1 import pod_pb2

        out = []
        for m in self._state().get("machines", []):
            cpus, memory = 0, 0
            if m.get("pod"):
                pod = pod_pb2.Pod.FromString(base64.b64decode(m["pod"]))
                cpus, memory = _pod_size(pod)
            out.append(Machine(m["identity"], m["uuid"], m["power"] != "Stopped", cpus, memory))
        return out

    def disk_exists(self, handle: str) -> bool:
        return any(d["handle"] == handle for d in self._state().get("disks", []))

    def tick(self) -> None:
        """The memory provider plays its guests itself."""


def _pod_size(pod: Any) -> tuple[int, int]:
    """(CPUs, MiB of memory) a provider pod asks for, as the memory provider counts them."""
    cpu = sum(c.resources.cpu_request_millis or c.resources.cpu_limit_millis
              for c in pod.containers)
    memory = sum(c.resources.memory_request_bytes or c.resources.memory_limit_bytes
                 for c in pod.containers)
    return -(-cpu // 1000), memory // 2**20


class VsphereIaas:
    """vCenter as vcsim holds it, through pyvmomi, straight to vcsim (not through any front)."""

    def __init__(self, sim: VcSim) -> None:
        self.sim = sim

    def machines(self) -> list[Machine]:
        with self.sim.connect() as si:
            return [m for m, _ in self._read(si)]

    def tick(self) -> None:
        """Play VMware Tools, which vcsim does not run: report a guest IP (vcsim's
        SET.guest.ipAddress key) for every powered-on vmlet VM that has none yet."""
        from pyVmomi import vim

        with self.sim.connect() as si:
            for m, vm in self._read(si, without_ip=True):
                n = int(m.identity.replace("-", "")[-4:], 16)
                spec = vim.vm.ConfigSpec(extraConfig=[vim.option.OptionValue(
                    key="SET.guest.ipAddress", value=f"10.77.{n >> 8}.{(n & 255) or 1}")])
                vm.ReconfigVM_Task(spec=spec)

    def _read(self, si: Any, without_ip: bool = False) -> list[tuple[Machine, Any]]:
        from pyVmomi import vim, vmodl

        key = 'config.extraConfig["vmlet.identity"]'
        paths = [key, "runtime.powerState", "config.hardware.numCPU", "config.hardware.memoryMB",
                 "config.instanceUuid", "guest.ipAddress"]
        out = []
        content = si.RetrieveContent()
        view = content.viewManager.CreateContainerView(content.rootFolder,
                                                       [vim.VirtualMachine], True)
        pc = vmodl.query.PropertyCollector
        spec = pc.FilterSpec(
            objectSet=[pc.ObjectSpec(obj=view, skip=True, selectSet=[
                pc.TraversalSpec(path="view", skip=False, type=vim.view.ContainerView)])],
            propSet=[pc.PropertySpec(type=vim.VirtualMachine, pathSet=paths)])
        try:
            result = content.propertyCollector.RetrievePropertiesEx([spec],
                                                                    pc.RetrieveOptions())
            while result is not None:
                for obj in result.objects or ():
                    props = {p.name: p.val for p in obj.propSet or ()}
                    ident = props.get(key)
                    if ident is None or not ident.value:
                        continue
                    machine = Machine(
                        str(ident.value), f"{obj.obj._moId}/{props.get('config.instanceUuid')}",
                        props.get("runtime.powerState") == "poweredOn",
                        int(props.get("config.hardware.numCPU") or 0),
                        int(props.get("config.hardware.memoryMB") or 0))
                    if not without_ip or (machine.powered_on
                                          and not props.get("guest.ipAddress")):
                        out.append((machine, obj.obj))
                if not result.token:
                    break
                result = content.propertyCollector.ContinueRetrievePropertiesEx(
                    token=result.token)
        finally:
            view.Destroy()
        return out

    def disk_exists(self, handle: str) -> bool:
        from pyVmomi import vim

        with self.sim.connect() as si:
            content = si.RetrieveContent()
            for ds in content.rootFolder.childEntity[0].datastore:
                try:
                    content.vStorageObjectManager.RetrieveVStorageObject(
                        id=vim.vslm.ID(id=handle), datastore=ds)
                except vim.fault.NotFound:
                    continue
                return True
        return False


@dataclass
class Sampler:
    """Samples the IaaS every ``interval`` seconds in a thread; remembers, per identity, every
    provider ID seen and the samples where a once-seen identity was missing."""

    iaas: Iaas
    interval: float = 3.0
    provider_ids: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    missing: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    samples: int = 0
    errors: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="iaas-sampler", daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def sample(self) -> list[Machine]:
        self.iaas.tick()
        machines = self.iaas.machines()
        seen = {m.identity for m in machines}
        for m in machines:
            self.provider_ids[m.identity].add(m.provider_id)
        for identity in list(self.provider_ids):
            if identity not in seen:
                self.missing[identity] += 1
        self.samples += 1
        return machines

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except Exception:  # the IaaS may be briefly unreadable; the next sample counts
                self.errors += 1
                time.sleep(0.5)
