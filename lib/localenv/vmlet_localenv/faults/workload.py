"""A seeded, scripted workload of VM operations, run through the apiserver as a user would.

`plan` turns a seed into the whole list of operations up front (each chosen from what the model
of the namespace allows at that point), so a seed names one script exactly and a failure
replays; `Workload` then runs that script, retrying through apiserver outages (`KubeApi`), and
keeps the model every check compares against. A request the apiserver refuses is recorded with
its reason, never dropped.
"""

from __future__ import annotations

import random
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from vmlet_api.names import (
    API_PATH,
    API_VERSION,
    VIRTUAL_MACHINE,
    VIRTUAL_MACHINE_BACKUP,
    VIRTUAL_MACHINE_MIGRATION,
    VIRTUAL_MACHINE_RESTORE,
    VM_UID_LABEL,
)
from vmlet_localenv.faults.kubeapi import ApiRefused, KubeApi

__all__ = ["KINDS", "Op", "VmModel", "Workload", "plan"]

KINDS = ("create", "stop", "start", "resize", "migrate", "backup", "restore", "delete",
         "attach", "detach", "force-delete-pod")
_WEIGHTS = {"create": 4, "stop": 3, "start": 4, "resize": 3, "migrate": 2, "backup": 2,
            "restore": 1, "delete": 1, "attach": 2, "detach": 2, "force-delete-pod": 2}
_MEMORIES = ("256Mi", "512Mi", "768Mi")


@dataclass
class VmModel:
    """What the workload asked of one VirtualMachine."""

    name: str
    replicas: int = 1
    cpu: int = 1
    memory: str = "256Mi"
    disks: list[str] = field(default_factory=list)
    backups: list[str] = field(default_factory=list)
    deleted: bool = False
    uid: str = ""


@dataclass
class Op:
    """One scripted operation; ``outcome`` is filled in when it has run."""

    index: int
    kind: str
    vm: str
    delay: float
    arg: str = ""
    outcome: str = ""

    def __str__(self) -> str:
        arg = f" {self.arg}" if self.arg else ""
        return f"#{self.index} {self.kind} {self.vm}{arg}"


def plan(seed: int, operations: int, claims: list[str], *, max_live: int = 8,
         cpus: tuple[int, ...] = (1, 2), pace: tuple[float, float] = (0.1, 0.8),
         ) -> tuple[list[Op], dict[str, VmModel]]:
    """The script of ``operations`` operations for ``seed`` and the model it leaves: at most
    ``max_live`` VMs at once, of ``cpus`` CPUs each (what the hosts can hold, so that no VM is
    left unschedulable for want of room)."""
    rng = random.Random(seed)
    vms: dict[str, VmModel] = {}
    ops: list[Op] = []
    serial = 0
    while len(ops) < operations:
        live = [v for v in vms.values() if not v.deleted]
        running = [v for v in live if v.replicas == 1]
        used = {c for v in live for c in v.disks}
        free = [c for c in claims if c not in used]
        options: dict[str, list[VmModel]] = {
            "create": [VmModel("")] if len(live) < max_live else [],
            "stop": running, "start": [v for v in live if v.replicas == 0],
            "resize": live, "migrate": running, "backup": running,
            "restore": [v for v in live if v.backups],
            "delete": live if len(live) > 2 else [],
            "attach": [v for v in live if len(v.disks) < 2] if free else [],
            "detach": [v for v in live if v.disks], "force-delete-pod": running,
        }
        kinds = [k for k in KINDS if options[k]]
        kind = rng.choices(kinds, weights=[_WEIGHTS[k] for k in kinds])[0]
        vm = rng.choice(options[kind])
        delay = round(rng.uniform(*pace), 2)
        serial += 1
        op = Op(len(ops), kind, vm.name, delay)
        if kind == "create":
            vm = VmModel(f"vm-{serial}", cpu=rng.choice(cpus), memory=rng.choice(_MEMORIES))
            if free and rng.random() < 0.3:
                vm.disks.append(rng.choice(free))
            vms[vm.name] = vm
            op.vm, op.arg = vm.name, f"{vm.cpu}/{vm.memory}/{','.join(vm.disks)}"
        elif kind in ("stop", "start"):
            vm.replicas = 0 if kind == "stop" else 1
        elif kind == "resize":
            sizes = [(c, m) for c in cpus for m in _MEMORIES if (c, m) != (vm.cpu, vm.memory)]
            vm.cpu, vm.memory = rng.choice(sizes)
            op.arg = f"{vm.cpu}/{vm.memory}"
        elif kind == "migrate":
            op.arg = f"mig-{serial}"
        elif kind == "backup":
            op.arg = f"bk-{serial}"
            vm.backups.append(op.arg)
        elif kind == "restore":
            op.arg = f"rs-{serial}:{rng.choice(vm.backups)}"
        elif kind == "delete":
            vm.deleted = True
        elif kind == "attach":
            claim = rng.choice(free)
            vm.disks.append(claim)
            op.arg = claim
        elif kind == "detach":
            claim = rng.choice(vm.disks)
            vm.disks.remove(claim)
            op.arg = claim
        ops.append(op)
    return ops, vms


class Workload:
    """Runs a script against one namespace, in a thread of its own."""

    def __init__(self, api: KubeApi, namespace: str, provider: str, image: str, seed: int,
                 operations: int, claims: list[str], *, max_live: int = 8,
                 cpus: tuple[int, ...] = (1, 2)) -> None:
        self.api = api
        self.ns = namespace
        self.provider = provider
        self.image = image
        self.ops, self.vms = plan(seed, operations, claims, max_live=max_live, cpus=cpus)
        self.done = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="workload", daemon=True)

    def start(self) -> Workload:
        self._thread.start()
        return self

    def alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def outcomes(self) -> Counter[str]:
        """How many operations of each kind ran ("ok") or were refused, as "kind: outcome"."""
        return Counter(f"{op.kind}: {op.outcome.split(':')[0]}" for op in self.ops if op.outcome)

    def _run(self) -> None:
        try:
            for op in self.ops:
                time.sleep(op.delay)
                try:
                    self._do(op)
                    op.outcome = op.outcome or "ok"
                except ApiRefused as err:
                    op.outcome = f"refused: {err}"
                self.done += 1
        except BaseException as err:  # reported by the test, with the op it stopped at
            self.error = err

    def _vm_path(self, name: str = "") -> str:
        return (f"{API_PATH}/namespaces/{self.ns}/{VIRTUAL_MACHINE.plural}"
                + (f"/{name}" if name else ""))

    def _create(self, path: str, body: dict[str, Any]) -> Any:
        try:
            return self.api.create(path, body)
        except ApiRefused as err:
            if err.status != 409:  # a retried POST whose first try went through
                raise
            return self.api.get(f"{path}/{body['metadata']['name']}")

    def _do(self, op: Op) -> None:
        vm = self.vms[op.vm]
        if op.kind == "create":
            cpu, memory, claims = op.arg.split("/")
            spec: dict[str, Any] = {
                "provider": self.provider, "image": self.image, "replicas": 1,
                "cpu": int(cpu), "memory": memory,
                "disks": [{"name": c, "claimName": c} for c in claims.split(",") if c]}
            made = self._create(self._vm_path(), {
                "apiVersion": API_VERSION, "kind": VIRTUAL_MACHINE.kind,
                "metadata": {"name": op.vm}, "spec": spec})
            vm.uid = made["metadata"]["uid"]
        elif op.kind in ("stop", "start"):
            self.api.merge(self._vm_path(op.vm),
                           {"spec": {"replicas": 0 if op.kind == "stop" else 1}})
        elif op.kind == "resize":
            cpu, memory = op.arg.split("/")
            self.api.merge(self._vm_path(op.vm), {"spec": {"cpu": int(cpu), "memory": memory}})
        elif op.kind in ("attach", "detach"):
            current = self.api.get(self._vm_path(op.vm))["spec"].get("disks") or []
            disks = [d for d in current if d["claimName"] != op.arg]
            if op.kind == "attach":
                disks.append({"name": op.arg, "claimName": op.arg})
            self.api.merge(self._vm_path(op.vm), {"spec": {"disks": disks}})
        elif op.kind == "delete":
            try:
                self.api.delete(self._vm_path(op.vm))
            except ApiRefused as err:
                if err.status != 404:  # a retried DELETE whose first try went through
                    raise
        elif op.kind == "force-delete-pod":
            selector = urllib.parse.quote(f"{VM_UID_LABEL}={vm.uid}")
            pods = self.api.get(f"/api/v1/namespaces/{self.ns}/pods?labelSelector={selector}")
            for pod in pods["items"]:
                try:
                    self.api.delete(f"/api/v1/namespaces/{self.ns}/pods/"
                                    f"{pod['metadata']['name']}",
                                    {"apiVersion": "v1", "kind": "DeleteOptions",
                                     "gracePeriodSeconds": 0})
                except ApiRefused as err:
                    if err.status != 404:
                        raise
            if not pods["items"]:
                op.outcome = "no pod"
        else:
            self._operation(op)

    def _operation(self, op: Op) -> None:
        if op.kind == "migrate":
            kind, name, spec = VIRTUAL_MACHINE_MIGRATION, op.arg, {"vmName": op.vm}
        elif op.kind == "backup":
            kind, name, spec = VIRTUAL_MACHINE_BACKUP, op.arg, {"vmName": op.vm}
        else:
            name, backup = op.arg.split(":")
            kind, spec = VIRTUAL_MACHINE_RESTORE, {"backupName": backup}
        self._create(f"{API_PATH}/namespaces/{self.ns}/{kind.plural}", {
            "apiVersion": API_VERSION, "kind": kind.kind, "metadata": {"name": name},
            "spec": spec})

