"""VirtualMachines: exactly one VM pod when replicas is 1, none when 0, the same VM throughout.

1 -> 0 deletes the pod (the provider powers the VM off and keeps it); 0 -> 1 makes a new pod with
the same identity (the provider powers the same VM on). Editing cpu or memory resizes the pod in
place (pods/resize; the facade passes it on as UpdatePod), or recreates it where the apiserver
refuses. A migration (annotations set by the migration controller) replaces the pod by one the
real scheduler binds elsewhere. Deleting the VirtualMachine deletes its pod, then destroys the VM
in the IaaS (finalizer), then lets go. Status and Events follow every transition.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, cast

import grpc

from vmlet_api import names
from vmlet_contract import ProviderError
from vmlet_facade.events import EventRecorder
from vmlet_facade.kube import ApiError, KubeClient
from vmlet_facade.kube.client import PATCH_JSON, PATCH_STRATEGIC
from vmlet_facade.kube.informer import Informer, key_of, synced_gate
from vmlet_facade.kube.objects import (
    Condition,
    ConditionStatus,
    Obj,
    Pod,
    VirtualMachine,
    VirtualMachineStatus,
)
from vmlet_facade.ownership import claimed_vm, vm_pod_name
from vmlet_facade.provider import VmOperations
from vmlet_facade.quantity import cpu_millis, memory_bytes
from vmlet_facade.queueing import SerialWorkers, status_only_change
from vmlet_facade.vmapi import (
    FINALIZER,
    MIGRATION_ANNOTATION,
    MIGRATION_SOURCE_ANNOTATION,
    VM_UID_LABEL,
    object_key,
    path,
    set_condition,
    vm_pod,
)
from vmlet_facade.vmspec import InvalidSpec, spec_problem
from vmlet_facade.vmstate import observe

__all__ = ["VirtualMachineController"]

log = logging.getLogger(__name__)

_EXPECT_SECONDS = 30.0
_READY: dict[str, ConditionStatus] = {names.STATE_RUNNING: "True", names.STATE_UNKNOWN: "Unknown"}


def _size_differs(vm: VirtualMachine, pod: Pod) -> bool:
    limits = pod["spec"]["containers"][0].get("resources", {}).get("limits", {})
    spec = vm["spec"]
    try:
        return (cpu_millis(limits.get("cpu", "0")) != cpu_millis(spec["cpu"])
                or memory_bytes(limits.get("memory", "0")) != memory_bytes(spec["memory"]))
    except ValueError:
        return False


class VirtualMachineController:
    """Reconciles VirtualMachines with their pods and the IaaS."""

    def __init__(self, client: KubeClient, providers: Callable[[str], VmOperations | None],
                 events: EventRecorder) -> None:
        self._client = client
        self._providers = providers
        self._events = events
        self.vms = Informer(client, path(names.VIRTUAL_MACHINE.plural), on_change=self._vm_changed)
        self.pods = Informer(client, "/api/v1/pods", {"labelSelector": VM_UID_LABEL},
                             on_change=self._pod_changed)
        self._workers = SerialWorkers(self._reconcile, ready=synced_gate(self.vms, self.pods),
                                      concurrency=16, name="vm")
        self._expect: dict[str, float] = {}  # VM UID -> until when a created pod is expected
        #: Told of every VM after a reconcile.
        self.listeners: list[Callable[[VirtualMachine], None]] = []
        #: Told ``(old, new)`` of every change the VM watch brings, as it comes.
        self.changes: list[Callable[[Obj | None, Obj | None], None]] = []

    async def run(self) -> None:
        await asyncio.gather(self.vms.run(), self.pods.run())

    async def stop(self) -> None:
        await self._workers.stop()

    def _vm_changed(self, old: Obj | None, new: Obj | None) -> None:
        # Its own status write (DestroyPending, a failure) does not cut a back-off short.
        self._workers.submit(key_of(new or old or {}), wake=not status_only_change(old, new))
        for follower in self.changes:
            follower(old, new)

    def _pod_changed(self, old: Obj | None, new: Obj | None) -> None:
        pod = new or old
        if pod is None:
            return
        self._expect.pop(pod["metadata"]["labels"].get(VM_UID_LABEL, ""), None)
        name = pod["metadata"]["labels"].get(names.VM_LABEL)
        if name:
            self._workers.submit(f"{pod['metadata']['namespace']}/{name}")

    def vm(self, key: str) -> VirtualMachine | None:
        """The VirtualMachine ``namespace/name`` as the cache has it, or None."""
        return cast("VirtualMachine | None", self.vms.get(key))

    def all_pods(self) -> list[Pod]:
        """Every VM pod the cache has (labelled ``vmlet.io/vm-uid``), of any VirtualMachine."""
        return cast("list[Pod]", self.pods.values())

    def pods_of(self, vm: VirtualMachine) -> list[Pod]:
        """The VM pods of ``vm``: in its namespace and controlled by it (a label alone, which
        anyone may write, makes no pod a VM's)."""
        uid, ns = vm["metadata"]["uid"], vm["metadata"]["namespace"]
        return [p for p in self.all_pods()
                if p["metadata"].get("labels", {}).get(VM_UID_LABEL) == uid
                and p["metadata"].get("namespace") == ns
                and (claimed_vm(p) or {}).get("uid") == uid]

    # -- reconcile ---------------------------------------------------------------------------

    async def _reconcile(self, key: str) -> None:
        vm = self.vm(key)
        if vm is None:
            return
        for listener in self.listeners:
            listener(vm)
        try:
            if vm["metadata"].get("deletionTimestamp"):
                await self._finalize(vm)
                return
            if FINALIZER not in (vm["metadata"].get("finalizers") or []):
                vm = await self._patch(vm, {"metadata": {"finalizers": [
                    *(vm["metadata"].get("finalizers") or []), FINALIZER]}})
            try:
                problem = spec_problem(vm)
                if problem is not None:
                    raise InvalidSpec(problem)
                await self._converge(vm)
            except InvalidSpec as invalid:
                # Said in status and an Event; tried again when the spec changes, not before.
                await self._write_status(vm, invalid=invalid.message)
        except (ApiError, ProviderError) as err:
            delay = self._workers.retry(key)
            log.warning("VirtualMachine %s: %s (again in %.0f s)", key, err, delay)

    async def _converge(self, vm: VirtualMachine) -> None:
        meta, spec = vm["metadata"], vm["spec"]
        uid, ns = meta["uid"], meta["namespace"]
        live = [p for p in self.pods_of(vm) if not p["metadata"].get("deletionTimestamp")]
        desired = int(spec.get("replicas", 1))
        for extra in live[desired:]:
            await self._delete_pod(extra)
        live = live[:desired]
        if desired == 1 and not live and not self.pods_of(vm):
            holder = self._disk_holder(vm)
            if holder:
                await self._write_status(vm, blocked=holder)
                self._workers.submit_after(object_key(vm), 5.0)  # look again: the holder may go
                return
            if self._expect.get(uid, 0) < time.monotonic():
                if await self._vm_lost(vm):
                    return
                try:
                    created = await self._client.create(f"/api/v1/namespaces/{ns}/pods",
                                                        cast(Obj, vm_pod(vm)))
                except ApiError as err:
                    if err.conflict:  # the one pod of this VM exists: never a second one
                        await self._name_taken(vm)
                        return
                    if err.status not in (400, 422):
                        raise
                    raise InvalidSpec(f"the apiserver refused the VM pod: {err.message}") from None
                self._expect[uid] = time.monotonic() + _EXPECT_SECONDS
                await self._events.emit(vm, "PodCreated",
                                        f"created pod {created['metadata']['name']} for the VM")
        elif live:
            pod = live[0]
            annotations = meta.get("annotations") or {}
            source = annotations.get(MIGRATION_SOURCE_ANNOTATION)
            if annotations.get(MIGRATION_ANNOTATION) and pod["spec"].get("nodeName") == source:
                await self._events.emit(vm, "Migrating", f"moving the VM away from {source}")
                await self._delete_pod(pod)
            elif _size_differs(vm, pod):
                await self._resize(vm, pod)
        await self._write_status(vm)

    def _disk_holder(self, vm: VirtualMachine) -> str:
        """Why ``vm`` cannot start: a claim of its disks held by another running VM, or ""."""
        claims = {d["claimName"] for d in vm["spec"].get("disks") or []}
        if not claims:
            return ""
        ns, uid = vm["metadata"]["namespace"], vm["metadata"]["uid"]
        for pod in self.all_pods():
            meta = pod["metadata"]
            if meta["namespace"] != ns or meta.get("labels", {}).get(VM_UID_LABEL) == uid:
                continue
            used = {v["persistentVolumeClaim"]["claimName"]
                    for v in pod["spec"].get("volumes") or [] if "persistentVolumeClaim" in v}
            if used & claims:
                return (f"claim {sorted(used & claims)[0]} is in use by VirtualMachine "
                        f"{meta['labels'].get(names.VM_LABEL)}")
        return ""

    async def _resize(self, vm: VirtualMachine, pod: Pod) -> None:
        size = {"cpu": str(vm["spec"]["cpu"]), "memory": str(vm["spec"]["memory"])}
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        body = {"spec": {"containers": [{"name": "vm", "resources": {
            "requests": size, "limits": size}}]}}
        try:
            await self._client.patch(f"/api/v1/namespaces/{ns}/pods/{name}/resize", body,
                                     PATCH_STRATEGIC)
            await self._events.emit(vm, "Resizing",
                                    f"resizing to {size['cpu']} CPU, {size['memory']} memory")
        except ApiError as err:
            if err.status not in (400, 404, 405, 422):
                raise
            await self._events.emit(vm, "Resizing", f"recreating the VM pod to resize: "
                                    f"{err.message}")
            await self._delete_pod(pod)

    async def _delete_pod(self, pod: Pod) -> None:
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        try:
            await self._client.delete(f"/api/v1/namespaces/{ns}/pods/{name}", {
                "apiVersion": "v1", "kind": "DeleteOptions",
                "preconditions": {"uid": pod["metadata"]["uid"]}})
        except ApiError as err:
            if not (err.not_found or err.conflict):
                raise

    async def _finalize(self, vm: VirtualMachine) -> None:
        pods = self.pods_of(vm)
        for pod in pods:
            if not pod["metadata"].get("deletionTimestamp"):
                await self._delete_pod(pod)
        if pods:
            await self._write_status(vm, deleting=True)
            return  # the pods' watch brings us back once they are gone
        name, uid = vm["spec"]["provider"], vm["metadata"]["uid"]
        provider = self._providers(name)
        if provider is None:
            # Not configured (or removed): nothing can destroy the VM, and waiting would block
            # the VirtualMachine and its namespace for good. The decision is recorded.
            await self._events.emit(
                vm, "ProviderUnknown", f"provider {name!r} is not configured: the VM of identity "
                f"{uid} is not destroyed and stays in that IaaS if it is there; the "
                "VirtualMachine is deleted", warning=True)
        else:
            try:
                await provider.delete_vm(uid, vm["metadata"]["namespace"])
            except ProviderError as err:
                await self._report(vm, names.STATE_STOPPING, names.REASON_DESTROY_PENDING,
                                   f"destroying the VM waits for provider {name}: {err.message}")
                raise
            await self._events.emit(vm, "Destroyed", "the VM was destroyed in the IaaS")
        finalizers = vm["metadata"].get("finalizers") or []
        if FINALIZER in finalizers:
            index = finalizers.index(FINALIZER)
            await self._client.patch(
                path(names.VIRTUAL_MACHINE.plural, vm["metadata"]["namespace"],
                     vm["metadata"]["name"]),
                [{"op": "test", "path": f"/metadata/finalizers/{index}", "value": FINALIZER},
                 {"op": "remove", "path": f"/metadata/finalizers/{index}"}], PATCH_JSON)

    async def _vm_lost(self, vm: VirtualMachine) -> bool:
        """Whether the VM this VirtualMachine had is gone from the IaaS. Then no new VM is made
        (its disks would be new and empty): the status and a Warning say so, and the user
        decides (delete the VirtualMachine, or create it anew). A VirtualMachine that never had
        a VM (no providerID yet) gets its first one."""
        status = vm.get("status") or {}
        lost = any(c.get("type") == names.CONDITION_VM_LOST and c.get("status") == "True"
                   for c in status.get("conditions") or [])
        provider = self._providers(vm["spec"]["provider"])
        if not (status.get("providerID") or lost) or provider is None:
            return False
        uid = vm["metadata"]["uid"]
        try:
            await provider.get_vm(uid, vm["metadata"]["namespace"])
            if lost:  # back (restored in the IaaS): say so, and let it start
                old = vm.get("status") or {}
                await self._patch_status(vm, {"conditions": set_condition(
                    old.get("conditions") or [], names.CONDITION_VM_LOST, "False",
                    names.REASON_VM_FOUND, f"the VM of identity {uid} is in the IaaS again",
                    int(vm["metadata"].get("generation", 1)))})
            return False
        except ProviderError as err:
            if err.code != grpc.StatusCode.NOT_FOUND:
                raise
        message = (f"the VM of identity {uid} ({status.get('providerID') or 'seen before'}) is "
                   f"gone from provider {vm['spec']['provider']}: vmlet does not make a new one "
                   "on its own; delete the VirtualMachine (and create it again for a new VM)")
        if not lost:
            await self._events.emit(vm, names.REASON_VM_LOST, message, warning=True)
        await self._report(vm, names.STATE_FAILED, names.REASON_VM_LOST, message, lost=True)
        self._workers.submit_after(object_key(vm), 60.0)  # it may come back (an IaaS restore)
        return True

    async def _name_taken(self, vm: VirtualMachine) -> None:
        """The VM pod's name is taken: by this VM's own pod (the cache lags: wait for it), or by
        another pod, which is said in the status; never a second pod."""
        meta = vm["metadata"]
        name = vm_pod_name(vm)
        try:
            pod = await self._client.get(f"/api/v1/namespaces/{meta['namespace']}/pods/{name}")
        except ApiError as err:
            if err.not_found:
                return  # gone meanwhile: the next reconcile creates it
            raise
        if any(ref.get("uid") == meta["uid"] for ref in pod["metadata"].get(
                "ownerReferences") or []):
            self._expect[meta["uid"]] = time.monotonic() + _EXPECT_SECONDS
            return
        message = (f"pod {name} exists and does not belong to this VirtualMachine: the VM pod "
                   "cannot be made until it is gone")
        await self._events.emit(vm, names.REASON_POD_NAME_TAKEN, message, warning=True)
        await self._report(vm, names.STATE_FAILED, names.REASON_POD_NAME_TAKEN, message)
        self._workers.submit_after(object_key(vm), 30.0)

    async def _report(self, vm: VirtualMachine, state: str, reason: str, message: str,
                      lost: bool = False) -> None:
        """Write ``state`` with ``reason`` into the status (Ready False, Failure True)."""
        old = vm.get("status") or {}
        generation = int(vm["metadata"].get("generation", 1))
        conditions = set_condition(old.get("conditions") or [], names.CONDITION_READY, "False",
                                   reason, message, generation)
        conditions = set_condition(conditions, names.CONDITION_FAILURE, "True", reason, message,
                                   generation)
        if lost:
            conditions = set_condition(conditions, names.CONDITION_VM_LOST, "True", reason, message,
                                       generation)
        if old.get("state") == state and _same_conditions(old.get("conditions") or [],
                                                          conditions):
            return
        await self._patch_status(vm, {"state": state, "conditions": conditions,
                                      "observedGeneration": generation})

    async def _patch_status(self, vm: VirtualMachine, status: VirtualMachineStatus) -> None:
        meta = vm["metadata"]
        await self._client.patch(
            path(names.VIRTUAL_MACHINE.plural, meta["namespace"], meta["name"], "status"),
            {"status": status})

    async def _patch(self, vm: VirtualMachine, body: Obj) -> VirtualMachine:
        meta = vm["metadata"]
        return cast(VirtualMachine, await self._client.patch(
            path(names.VIRTUAL_MACHINE.plural, meta["namespace"], meta["name"]), body))

    # -- status ------------------------------------------------------------------------------

    def _observe(self, vm: VirtualMachine, deleting: bool,
                 blocked: str = "") -> tuple[str, str, str, Pod | None]:
        """(state, reason, message, pod) as seen now."""
        state, reason, message, pod = observe(cast(Obj, vm), cast("list[Obj]", self.pods_of(vm)),
                                              deleting, blocked)
        return state, reason, message, cast("Pod | None", pod)

    async def _write_status(self, vm: VirtualMachine, deleting: bool = False, blocked: str = "",
                            invalid: str = "") -> None:
        state, reason, message, pod = self._observe(vm, deleting, blocked)
        if invalid and pod is None and state != names.STATE_STOPPED:
            state, reason, message = names.STATE_FAILED, names.REASON_INVALID_SPEC, invalid
        old = vm.get("status") or {}
        generation = int(vm["metadata"].get("generation", 1))
        ready = _READY.get(state, "False")
        conditions = set_condition(old.get("conditions") or [], names.CONDITION_READY, ready,
                                   reason, message, generation)
        failure = state == names.STATE_FAILED or (
            state == names.STATE_PROVISIONING
            and reason not in (names.REASON_POD_PENDING, names.REASON_UNSCHEDULED))
        why = (names.REASON_INVALID_SPEC, invalid) if invalid else (reason, message)
        if invalid:  # a VM that runs keeps running; its spec is what failed
            failure = True
        conditions = set_condition(conditions, names.CONDITION_FAILURE,
                                   "True" if failure else "False",
                                   why[0] if failure else names.REASON_NO_FAILURE,
                                   why[1] if failure else "", generation)
        status: VirtualMachineStatus = {
            "state": state,
            "replicas": 1 if pod is not None and state != names.STATE_STOPPING else 0,
            "observedGeneration": generation,
            "conditions": conditions,
            # The size in effect: what the VM pod was given (as the facade reports it, after a
            # resize has reached the provider), else the last size seen.
            "cpu": old.get("cpu", vm["spec"]["cpu"]),
            "memory": old.get("memory", vm["spec"]["memory"]),
        }
        if pod is not None:
            pstatus = pod.get("status", {})
            status["podName"] = pod["metadata"]["name"]
            status["nodeName"] = pod["spec"].get("nodeName") or old.get("nodeName", "")
            status["addresses"] = [ip["ip"] for ip in pstatus.get("podIPs") or []]
            for cs in pstatus.get("containerStatuses") or []:
                if cs.get("containerID"):
                    status["providerID"] = cs["containerID"]
                limits = (cs.get("resources") or {}).get("limits") or {}
                if "cpu" in limits and "memory" in limits:
                    status["cpu"] = _as_spec(limits["cpu"])
                    status["memory"] = _as_spec(limits["memory"])
            if state == names.STATE_UNKNOWN:  # an outage: what was attached still is
                status["disks"] = old.get("disks", [])
            elif state == names.STATE_RUNNING:
                status["disks"] = [
                    {"name": v["name"], "claimName": v["persistentVolumeClaim"]["claimName"]}
                    for v in pod["spec"].get("volumes") or [] if "persistentVolumeClaim" in v]
        else:
            if "nodeName" in old:
                status["nodeName"] = old["nodeName"]
            if "providerID" in old:
                status["providerID"] = old["providerID"]
            status["addresses"] = []
            # No pod: the next start gives the VM the size the spec asks for.
            status["cpu"], status["memory"] = vm["spec"]["cpu"], vm["spec"]["memory"]
        status.setdefault("disks", [])
        if {k: v for k, v in old.items() if k != "conditions"} == {
                k: v for k, v in status.items() if k != "conditions"} and \
                _same_conditions(old.get("conditions") or [], conditions):
            return
        meta = vm["metadata"]
        await self._client.patch(
            path(names.VIRTUAL_MACHINE.plural, meta["namespace"], meta["name"], "status"),
            {"status": {**status, "podName": status.get("podName")}})
        said = [(c.get("reason"), c.get("message"), c.get("observedGeneration"))
                for c in old.get("conditions") or [] if c.get("type") == names.CONDITION_FAILURE]
        if invalid and said != [(names.REASON_INVALID_SPEC, invalid, generation)]:
            await self._events.emit(
                _as_object(vm),
                names.REASON_INVALID_SPEC, invalid, warning=True)
        if old.get("state") != state and reason != names.REASON_INVALID_SPEC:
            await self._events.emit(
                _as_object(vm), state,
                message, warning=state in (names.STATE_FAILED, names.STATE_UNKNOWN))


def _as_object(vm: VirtualMachine) -> VirtualMachine:
    """``vm`` with its apiVersion and kind, as an Event's involved object names them."""
    return {**vm, "apiVersion": names.API_VERSION, "kind": names.VIRTUAL_MACHINE.kind}


def _as_spec(value: Any) -> Any:
    """A quantity as the VM spec writes it: whole numbers as integers."""
    return int(value) if isinstance(value, str) and value.isdigit() else value


def _same_conditions(a: list[Condition], b: list[Condition]) -> bool:
    def strip(cs: list[Condition]) -> list[tuple[Any, ...]]:
        return sorted((c.get("type"), c.get("status"), c.get("reason"), c.get("message"),
                       c.get("observedGeneration")) for c in cs)
    return strip(a) == strip(b)
