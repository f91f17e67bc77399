"""Disks as PersistentVolumes: the provisioner (and resizer) of StorageClasses whose provisioner
is ``<provider>.vmlet.io`` (also the CSI driver name written into the PVs: a DNS subdomain).

A pending claim of such a class becomes a disk in the IaaS (CreateDisk, named after the PV, so
a retry finds the same disk) and a PersistentVolume bound to the claim, with a CSI source whose
volumeHandle is the disk's handle. A released volume is deleted with its disk when the reclaim
policy is Delete, and kept when it is Retain. Only ReadWriteOnce (and ReadWriteOncePod) can be
served: a disk is attached to one VM. A claim that grows (allowVolumeExpansion) grows its disk.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from vmlet_api.names import PROVISIONER_SUFFIX
from vmlet_contract import ProviderError
from vmlet_facade.events import EventRecorder
from vmlet_facade.kube import ApiError, KubeClient
from vmlet_facade.kube.informer import Informer, key_of, synced_gate
from vmlet_facade.kube.objects import Obj
from vmlet_facade.kube.paths import api_path
from vmlet_facade.provider import Disks
from vmlet_facade.quantity import memory_bytes
from vmlet_facade.queueing import Backoff, SerialWorkers

__all__ = ["Provisioner", "provider_of_driver"]

log = logging.getLogger(__name__)

PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"
SUPPORTED_MODES = {"ReadWriteOnce", "ReadWriteOncePod"}


def provider_of_driver(driver: str) -> str | None:
    """The provider behind provisioner (CSI driver) ``driver``, or None when not vmlet's."""
    if driver.endswith(PROVISIONER_SUFFIX) and len(driver) > len(PROVISIONER_SUFFIX):
        return driver[: -len(PROVISIONER_SUFFIX)]
    return None


def _gib(size: int) -> str:
    return f"{size // 2**30}Gi" if size % 2**30 == 0 else str(size)


class Provisioner:
    """Provisions, deletes and expands the disks behind vmlet's StorageClasses."""

    def __init__(self, client: KubeClient, providers: Callable[[str], Disks | None],
                 events: EventRecorder) -> None:
        self._client = client
        self._providers = providers
        self._events = events
        self.classes = Informer(client, "/apis/storage.k8s.io/v1/storageclasses",
                                on_change=lambda o, n: self._claims_of_class(n or o))
        self.claims = Informer(client, "/api/v1/persistentvolumeclaims",
                               on_change=lambda o, n: self._submit("pvc", n or o))
        self.volumes = Informer(client, "/api/v1/persistentvolumes",
                                on_change=lambda o, n: self._submit("pv", n or o))
        self._workers = SerialWorkers(
            self._reconcile, concurrency=8, name="provisioner",
            ready=synced_gate(self.classes, self.claims, self.volumes),
            backoff=Backoff(cap=120.0))
        self._refused: set[str] = set()

    async def run(self) -> None:
        await asyncio.gather(self.classes.run(), self.claims.run(), self.volumes.run())

    async def stop(self) -> None:
        await self._workers.stop()

    def _submit(self, kind: str, obj: Obj | None) -> None:
        if obj is not None:
            self._workers.submit(f"{kind}:{key_of(obj)}")

    def _claims_of_class(self, sc: Obj | None) -> None:
        for pvc in self.claims.values():
            self._submit("pvc", pvc)

    def _provider_of(self, class_name: str | None) -> tuple[Obj | None, Disks | None]:
        sc = self.classes.get(class_name or "")
        name = provider_of_driver(str((sc or {}).get("provisioner", "")))
        if sc is None or name is None:
            return sc, None
        return sc, self._providers(name)

    async def _reconcile(self, key: str) -> None:
        kind, _, ref = key.partition(":")
        try:
            if kind == "pvc":
                await self._claim(ref)
            else:
                await self._volume(ref)
        except (ApiError, ProviderError) as err:
            delay = self._workers.retry(key)
            log.warning("%s: %s (again in %.0f s)", key, err, delay)

    # -- claims ------------------------------------------------------------------------------

    async def _claim(self, ref: str) -> None:
        pvc = self.claims.get(ref)
        if pvc is None or pvc["metadata"].get("deletionTimestamp"):
            return
        sc, provider = self._provider_of(pvc["spec"].get("storageClassName"))
        if sc is None or provider is None:
            return
        if pvc["spec"].get("volumeName"):
            await self._maybe_expand(pvc, sc, provider)
            return
        uid = pvc["metadata"]["uid"]
        modes = set(pvc["spec"].get("accessModes") or [])
        if not modes <= SUPPORTED_MODES:
            if uid not in self._refused:
                self._refused.add(uid)
                await self._events.emit(
                    {**pvc, "kind": "PersistentVolumeClaim"}, "ProvisioningFailed",
                    f"{sc['provisioner']} disks attach to one VM at a time: only ReadWriteOnce "
                    f"is supported, not {', '.join(sorted(modes - SUPPORTED_MODES))}",
                    warning=True)
            return
        size = memory_bytes(pvc["spec"]["resources"]["requests"]["storage"])
        pv_name = f"pvc-{uid}"
        disk = await provider.create_disk(pv_name, size, dict(sc.get("parameters") or {}))
        pv = {
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": pv_name, "annotations": {PROVISIONED_BY: sc["provisioner"]}},
            "spec": {
                "capacity": {"storage": _gib(disk.size_bytes or size)},
                "accessModes": sorted(modes) or ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": sc.get("reclaimPolicy", "Delete"),
                "storageClassName": sc["metadata"]["name"],
                "volumeMode": pvc["spec"].get("volumeMode", "Filesystem"),
                "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                             "namespace": pvc["metadata"]["namespace"],
                             "name": pvc["metadata"]["name"], "uid": uid},
                "csi": {"driver": sc["provisioner"], "volumeHandle": disk.handle},
            },
        }
        try:
            await self._client.create("/api/v1/persistentvolumes", pv)
        except ApiError as err:
            if not err.conflict:
                raise
            return
        await self._events.emit({**pvc, "kind": "PersistentVolumeClaim"},
                                "ProvisioningSucceeded",
                                f"disk {disk.handle} ({_gib(disk.size_bytes or size)}) "
                                f"provisioned as {pv_name}")

    async def _maybe_expand(self, pvc: Obj, sc: Obj, provider: Disks) -> None:
        pv = self.volumes.get(pvc["spec"]["volumeName"])
        if pv is None or PROVISIONED_BY not in (pv["metadata"].get("annotations") or {}):
            return
        want = memory_bytes(pvc["spec"]["resources"]["requests"]["storage"])
        have = memory_bytes(pv["spec"]["capacity"]["storage"])
        if want <= have:
            current = (pvc.get("status") or {}).get("capacity", {}).get("storage")
            if current and memory_bytes(current) < have:
                await self._claim_capacity(pvc, have)
            return
        if not sc.get("allowVolumeExpansion"):
            return
        disk = await provider.expand_disk(pv["spec"]["csi"]["volumeHandle"], want)
        size = _gib(max(disk.size_bytes, want))
        await self._client.patch(api_path("persistentvolumes", pv["metadata"]["name"]),
                                 {"spec": {"capacity": {"storage": size}}})
        await self._claim_capacity(pvc, max(disk.size_bytes, want))
        await self._events.emit({**pvc, "kind": "PersistentVolumeClaim"},
                                "VolumeResizeSuccessful", f"disk grown to {size}")

    async def _claim_capacity(self, pvc: Obj, size: int) -> None:
        meta = pvc["metadata"]
        await self._client.patch(
            api_path("persistentvolumeclaims", meta["name"], namespace=meta["namespace"],
                     sub="status"),
            {"status": {"capacity": {"storage": _gib(size)}, "allocatedResources": {
                "storage": _gib(size)}, "conditions": None}})

    # -- volumes -----------------------------------------------------------------------------

    async def _volume(self, ref: str) -> None:
        pv = self.volumes.get(ref)
        if pv is None:
            return
        name = provider_of_driver((pv["metadata"].get("annotations") or {}).get(PROVISIONED_BY, ""))
        if name is None:
            return
        if (pv.get("status") or {}).get("phase") != "Released":
            return
        if pv["spec"].get("persistentVolumeReclaimPolicy") != "Delete":
            return  # Retain: the disk and the volume stay for an administrator
        provider = self._providers(name)
        if provider is None:
            return
        try:
            await provider.delete_disk(pv["spec"]["csi"]["volumeHandle"])
        except ProviderError as err:
            await self._events.emit({**pv, "kind": "PersistentVolume"}, "VolumeFailedDelete",
                                    err.message, warning=True)
            raise
        try:
            await self._client.delete(api_path("persistentvolumes", ref))
        except ApiError as err:
            if not err.not_found:
                raise
