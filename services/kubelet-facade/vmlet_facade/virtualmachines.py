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
from typing import Any

from vmlet_contract import ProviderError
from vmlet_facade.events import EventRecorder
from vmlet_facade.kube import ApiError, KubeClient
from vmlet_facade.kube.client import PATCH_JSON, PATCH_STRATEGIC
from vmlet_facade.kube.informer import Informer, key_of
from vmlet_facade.provider import Provider
from vmlet_facade.quantity import cpu_millis, memory_bytes
from vmlet_facade.queueing import SerialWorkers
from vmlet_facade.vmapi import (
    FINALIZER,
    MIGRATION_ANNOTATION,
    MIGRATION_SOURCE_ANNOTATION,
    VM_UID_LABEL,
    path,
    set_condition,
    vm_pod,
)
from vmlet_facade.vmstate import observe

__all__ = ["VirtualMachineController"]

log = logging.getLogger(__name__)

Obj = dict[str, Any]
_EXPECT_SECONDS = 30.0
def _size_differs(vm: Obj, pod: Obj) -> bool:
    limits = pod["spec"]["containers"][0].get("resources", {}).get("limits", {})
    spec = vm["spec"]
    try:
        return (cpu_millis(limits.get("cpu", "0")) != cpu_millis(spec["cpu"])
                or memory_bytes(limits.get("memory", "0")) != memory_bytes(spec["memory"]))
    except ValueError:
        return False


class VirtualMachineController:
    """Reconciles VirtualMachines with their pods and the IaaS."""

    def __init__(self, client: KubeClient, providers: Callable[[str], Provider | None],
                 events: EventRecorder) -> None:
        self._client = client
        self._providers = providers
        self._events = events
        self.vms = Informer(client, path("virtualmachines"), on_change=self._vm_changed)
        self.pods = Informer(client, "/api/v1/pods", {"labelSelector": VM_UID_LABEL},
                             on_change=self._pod_changed)
        self._workers = SerialWorkers(self._reconcile, concurrency=16, name="vm")
        self._expect: dict[str, float] = {}  # VM UID -> until when a created pod is expected
        self._attempts: dict[str, int] = {}
        self.listeners: list[Callable[[Obj], None]] = []  # told of every VM after a reconcile

    async def run(self) -> None:
        await asyncio.gather(self.vms.run(), self.pods.run())

    async def stop(self) -> None:
        await self._workers.stop()

    def _vm_changed(self, old: Obj | None, new: Obj | None) -> None:
        self._workers.submit(key_of(new or old or {}))

    def _pod_changed(self, old: Obj | None, new: Obj | None) -> None:
        pod = new or old
        if pod is None:
            return
        self._expect.pop(pod["metadata"]["labels"].get(VM_UID_LABEL, ""), None)
        name = pod["metadata"]["labels"].get("vmlet.io/vm")
        if name:
            self._workers.submit(f"{pod['metadata']['namespace']}/{name}")

    def pods_of(self, vm: Obj) -> list[Obj]:
        uid = vm["metadata"]["uid"]
        return [p for p in self.pods.values()
                if p["metadata"].get("labels", {}).get(VM_UID_LABEL) == uid]

    # -- reconcile ---------------------------------------------------------------------------

    async def _reconcile(self, key: str) -> None:
        vm = self.vms.get(key)
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
            await self._converge(vm)
            self._attempts.pop(key, None)
        except (ApiError, ProviderError) as err:
            attempt = self._attempts.get(key, 0)
            self._attempts[key] = attempt + 1
            log.warning("VirtualMachine %s: %s (retry %d)", key, err, attempt)
            self._workers.submit_after(key, min(60.0, 2.0 ** attempt))

    async def _converge(self, vm: Obj) -> None:
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
                self._workers.submit_after(key_of(vm), 5.0)  # look again: the holder may go
                return
            if self._expect.get(uid, 0) < time.monotonic():
                created = await self._client.create(f"/api/v1/namespaces/{ns}/pods", vm_pod(vm))
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

    def _disk_holder(self, vm: Obj) -> str:
        """Why ``vm`` cannot start: a claim of its disks held by another running VM, or ""."""
        claims = {d["claimName"] for d in vm["spec"].get("disks") or []}
        if not claims:
            return ""
        ns, uid = vm["metadata"]["namespace"], vm["metadata"]["uid"]
        for pod in self.pods.values():
            meta = pod["metadata"]
            if meta["namespace"] != ns or meta.get("labels", {}).get(VM_UID_LABEL) == uid:
                continue
            used = {v["persistentVolumeClaim"]["claimName"]
                    for v in pod["spec"].get("volumes") or [] if "persistentVolumeClaim" in v}
            if used & claims:
                return (f"claim {sorted(used & claims)[0]} is in use by VirtualMachine "
                        f"{meta['labels'].get('vmlet.io/vm')}")
        return ""

    async def _resize(self, vm: Obj, pod: Obj) -> None:
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

    async def _delete_pod(self, pod: Obj) -> None:
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        try:
            await self._client.delete(f"/api/v1/namespaces/{ns}/pods/{name}", {
                "apiVersion": "v1", "kind": "DeleteOptions",
                "preconditions": {"uid": pod["metadata"]["uid"]}})
        except ApiError as err:
            if not (err.not_found or err.conflict):
                raise

    async def _finalize(self, vm: Obj) -> None:
        pods = self.pods_of(vm)
        for pod in pods:
            if not pod["metadata"].get("deletionTimestamp"):
                await self._delete_pod(pod)
        if pods:
            await self._write_status(vm, deleting=True)
            return  # the pods' watch brings us back once they are gone
        provider = self._providers(vm["spec"]["provider"])
        if provider is None:
            raise ApiError(503, "ProviderUnknown", f"no provider {vm['spec']['provider']!r}")
        await provider.delete_vm(vm["metadata"]["uid"])
        await self._events.emit(vm, "Destroyed", "the VM was destroyed in the IaaS")
        finalizers = vm["metadata"].get("finalizers") or []
        if FINALIZER in finalizers:
            index = finalizers.index(FINALIZER)
            await self._client.patch(
                path("virtualmachines", vm["metadata"]["namespace"], vm["metadata"]["name"]),
                [{"op": "test", "path": f"/metadata/finalizers/{index}", "value": FINALIZER},
                 {"op": "remove", "path": f"/metadata/finalizers/{index}"}], PATCH_JSON)

    async def _patch(self, vm: Obj, body: Obj) -> Obj:
        meta = vm["metadata"]
        return await self._client.patch(path("virtualmachines", meta["namespace"], meta["name"]),
                                        body)

    # -- status ------------------------------------------------------------------------------

    def _observe(self, vm: Obj, deleting: bool,
                 blocked: str = "") -> tuple[str, str, str, Obj | None]:
        """(state, reason, message, pod) as seen now."""
        return observe(vm, self.pods_of(vm), deleting, blocked)

    async def _write_status(self, vm: Obj, deleting: bool = False, blocked: str = "") -> None:
        state, reason, message, pod = self._observe(vm, deleting, blocked)
        old = vm.get("status") or {}
        generation = int(vm["metadata"].get("generation", 1))
        conditions = set_condition(old.get("conditions") or [], "Ready",
                                   "True" if state == "Running" else "False", reason, message,
                                   generation)
        failure = state in ("Failed",) or (state == "Provisioning" and reason not in (
            "PodPending", "Unscheduled"))
        conditions = set_condition(conditions, "Failure", "True" if failure else "False",
                                   reason if failure else "NoFailure",
                                   message if failure else "", generation)
        status: Obj = {
            "state": state, "replicas": 1 if pod is not None and state != "Stopping" else 0,
            "identity": vm["metadata"]["uid"], "observedGeneration": generation,
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
            if state == "Running":
                status["disks"] = [
                    {"name": v["name"], "claimName": v["persistentVolumeClaim"]["claimName"]}
                    for v in pod["spec"].get("volumes") or [] if "persistentVolumeClaim" in v]
        else:
            status.update({k: old[k] for k in ("nodeName", "providerID") if k in old})
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
            path("virtualmachines", meta["namespace"], meta["name"], "status"),
            {"status": {**status, "podName": status.get("podName")}})
        if old.get("state") != state:
            await self._events.emit(
                {**vm, "apiVersion": "vmlet.io/v1alpha1", "kind": "VirtualMachine"}, state,
                message, warning=state in ("Failed", "Unknown"))


def _as_spec(value: Any) -> Any:
    """A quantity as the VM spec writes it: whole numbers as integers."""
    return int(value) if isinstance(value, str) and value.isdigit() else value


def _same_conditions(a: list[Obj], b: list[Obj]) -> bool:
    def strip(cs: list[Obj]) -> list[tuple[Any, ...]]:
        return sorted((c.get("type"), c.get("status"), c.get("reason"), c.get("message"),
                       c.get("observedGeneration")) for c in cs)
    return strip(a) == strip(b)
