"""Cinder volumes as the provider's disks: made, grown, read and removed through Cinder's API, and
attached to servers through Nova's volume attachments.

- Handle: the volume's ID, which the facade stores as the PersistentVolume's volume handle.
- Names: CreateDisk is idempotent by name. Cinder does not keep names unique, so the volume
  carries its disk name in its metadata too (`vmlet-disk`), a create looks the name up first
  (the oldest match wins), and creates of one name take turns in this process (the facade's
  provisioner runs once per cluster).
- Parameters (StorageClass): `type` (a Cinder volume type) and `availability` (an availability
  zone); any other key is INVALID_ARGUMENT, so a typo does not go unnoticed.
- Size: Cinder sizes volumes in whole GiB; a size is rounded up. Expansion only grows
  (`os-extend`, microversion 3.42 so an attached volume can grow too). Calls return once the
  volume has settled (available or in-use), or fail with the status Cinder left it in.
- Attachment: ReadWriteOnce, so a volume is attached to at most one server; who holds it is
  Cinder's `attachments`, mapped to the holding server's vmlet identity. A pod's disks are
  attached when its server is made (block device mappings at boot, never deleted with the
  server) and by `sync` on update (Nova's os-volume_attachments); a volume attached elsewhere is
  FAILED_PRECONDITION, naming the holder. A kept VM's server keeps its volumes when its pod goes
  (the contract's keep "with its disks"); `sync` detaches the vmlet volumes its next pod no
  longer names. A destroyed server's volumes are detached by Nova itself (delete_on_termination
  is false), so every volume outlives its server; its fate is the PersistentVolume's reclaim
  policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from openstack import exceptions as sdk

from vmlet.provider.v1 import pod_pb2
from vmlet.provider.v1 import virtual_machine_service_pb2 as pb
from vmlet_contract import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from vmlet_contract.diskrequests import check_create_disk
from vmlet_contract.locks import KeyedLocks

from . import naming
from .cloud import COMPUTE_MV, Api, Cloud
from .config import Settings
from .watch import ServerCache

__all__ = ["DISK_PARAMETERS", "Disks", "VolumeRecord", "pod_disk_handles"]

_log = logging.getLogger(__name__)

VOLUME_MV: Final = "3.42"  # extend an in-use volume (3.42); attachments listed (3.27)
META_DISK: Final = "vmlet-disk"
DISK_PARAMETERS: Final = ("type", "availability")
GIB: Final = 1024**3
_SETTLED: Final = frozenset({"available", "in-use"})
_FAILED: Final = frozenset({"error", "error_extending", "error_deleting", "error_restoring"})


@dataclass(frozen=True)
class VolumeRecord:
    """A Cinder volume as the provider needs it."""

    id: str
    name: str
    size_gib: int
    status: str
    servers: tuple[str, ...]  # IDs of the servers it is attached to
    metadata: Mapping[str, str]
    created: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VolumeRecord:
        return cls(
            id=str(data["id"]),
            name=str(data.get("name") or ""),
            size_gib=int(data.get("size") or 0),
            status=str(data.get("status") or "").lower(),
            servers=tuple(
                str(a["server_id"]) for a in data.get("attachments") or () if a.get("server_id")
            ),
            metadata={str(k): str(v) for k, v in (data.get("metadata") or {}).items()},
            created=str(data.get("created_at") or ""),
        )


def pod_disk_handles(pod: pod_pb2.Pod, *, strict: bool = True) -> tuple[str, ...]:
    """The handles of the disks a pod's volumes name, in order, without repeats; a disk volume
    without a handle is INVALID_ARGUMENT when `strict` (create, update), skipped otherwise (a
    pod being deleted may come without its handles resolved)."""
    out: dict[str, None] = {}
    for volume in pod.volumes:
        if volume.WhichOneof("source") != "disk":
            continue
        if not volume.disk.volume_handle:
            if not strict:
                continue
            raise InvalidArgument(
                f"volume {volume.name} (claim {volume.disk.claim_name}) has no disk handle"
            )
        out[volume.disk.volume_handle] = None
    return tuple(out)


def boot_mappings(image_id: str, handles: Iterable[str]) -> list[dict[str, Any]]:
    """Nova block device mappings (v2): the image as the root disk (Nova wants it spelled out
    once any mapping is given), then `handles` attached at boot, kept when the server goes."""
    root = {
        "uuid": image_id,
        "source_type": "image",
        "destination_type": "local",
        "boot_index": 0,
        "delete_on_termination": True,
    }
    return [root] + [
        {
            "uuid": handle,
            "source_type": "volume",
            "destination_type": "volume",
            "boot_index": -1,
            "delete_on_termination": False,
        }
        for handle in handles
    ]


def _size_gib(size_bytes: int) -> int:
    return max(1, math.ceil(size_bytes / GIB))


def _json(resp: Any) -> Any:
    sdk.raise_from_response(resp)
    if resp.status_code in (202, 204) and not resp.content:
        return None
    return resp.json() if resp.content else None


# Worker-thread functions (blocking).


def _get(api: Api, handle: str) -> VolumeRecord | None:
    resp = api.conn.block_storage.get(f"/volumes/{handle}", microversion=VOLUME_MV)
    if resp.status_code == 404:
        return None
    return VolumeRecord.from_json(_json(resp)["volume"])


def _by_name(api: Api, name: str) -> list[VolumeRecord]:
    resp = api.conn.block_storage.get(
        "/volumes/detail", params={"name": name}, microversion=VOLUME_MV
    )
    found = [VolumeRecord.from_json(v) for v in _json(resp).get("volumes", [])]
    mine = [v for v in found if v.name == name and v.status not in ("deleting",)]
    return sorted(mine, key=lambda v: (v.created, v.id))


def _create(api: Api, name: str, size_gib: int, parameters: Mapping[str, str]) -> VolumeRecord:
    body: dict[str, Any] = {"name": name, "size": size_gib, "metadata": {META_DISK: name}}
    if parameters.get("type"):
        body["volume_type"] = parameters["type"]
    if parameters.get("availability"):
        body["availability_zone"] = parameters["availability"]
    resp = api.conn.block_storage.post("/volumes", json={"volume": body}, microversion=VOLUME_MV)
    return VolumeRecord.from_json(_json(resp)["volume"])


def _delete(api: Api, handle: str) -> None:
    resp = api.conn.block_storage.delete(f"/volumes/{handle}", microversion=VOLUME_MV)
    if resp.status_code != 404:
        _json(resp)


def _extend(api: Api, handle: str, size_gib: int) -> None:
    _json(
        api.conn.block_storage.post(
            f"/volumes/{handle}/action",
            json={"os-extend": {"new_size": size_gib}},
            microversion=VOLUME_MV,
        )
    )


def _attachments(api: Api, server_id: str) -> list[str]:
    resp = api.conn.compute.get(
        f"/servers/{server_id}/os-volume_attachments", microversion=COMPUTE_MV
    )
    if resp.status_code == 404:
        return []
    return [str(a["volumeId"]) for a in _json(resp).get("volumeAttachments", [])]


def _attach(api: Api, server_id: str, handle: str) -> None:
    body = {"volumeAttachment": {"volumeId": handle, "delete_on_termination": False}}
    _json(
        api.conn.compute.post(
            f"/servers/{server_id}/os-volume_attachments", json=body, microversion=COMPUTE_MV
        )
    )


def _detach(api: Api, server_id: str, handle: str) -> None:
    resp = api.conn.compute.delete(
        f"/servers/{server_id}/os-volume_attachments/{handle}", microversion=COMPUTE_MV
    )
    if resp.status_code != 404:
        _json(resp)


def _server_reader(server_id: str) -> Callable[[Api], dict[str, Any]]:
    return lambda api: api.get_server(server_id)


def _attacher(server_id: str, handle: str) -> Callable[[Api], None]:
    return lambda api: _attach(api, server_id, handle)


class Disks:
    """The disk operations of the provider (`create`, `delete`, `expand` and `get` serve
    DiskService as its `kit.DiskBackend`); see the module docstring."""

    def __init__(self, cloud: Cloud, cache: ServerCache, settings: Settings) -> None:
        self._cloud = cloud
        self._cache = cache
        self._settings = settings
        self._name_locks = KeyedLocks()
        self._disk_locks = KeyedLocks()

    # -- reading -----
    async def find(self, handle: str) -> VolumeRecord | None:
        """The volume `handle`, None when Cinder has none."""
        if not handle:
            raise InvalidArgument("a disk handle is needed")
        found: VolumeRecord | None = await self._cloud.call(
            f"look up volume {handle}", lambda api: _get(api, handle), read=True
        )
        return found

    async def holder(self, volume: VolumeRecord) -> str:
        """The identity of the VM holding the volume; a server vmlet did not make shows as
        nova-server:<id>; "" when the volume is free."""
        for server_id in volume.servers:
            record = self._cache.by_id.get(server_id)
            if record is not None and record.identity:
                return record.identity
            try:
                raw = await self._cloud.call(
                    f"look up server {server_id}", _server_reader(server_id), read=True
                )
            except NotFound:
                continue
            identity = str((raw.get("metadata") or {}).get(naming.META_IDENTITY) or "")
            return identity or f"nova-server:{server_id}"
        return ""

    async def message(self, volume: VolumeRecord) -> pb.Disk:
        """The volume as the contract describes a disk."""
        return pb.Disk(
            handle=volume.id,
            name=volume.metadata.get(META_DISK) or volume.name,
            size_bytes=volume.size_gib * GIB,
            attached_to=await self.holder(volume),
        )

    async def get(self, handle: str) -> pb.Disk:
        """GetDisk: NotFound when there is no such volume."""
        volume = await self.find(handle)
        if volume is None:
            raise NotFound(f"volume {handle} not found in Cinder")
        return await self.message(volume)

    async def attached(self, server_id: str) -> list[str]:
        """The IDs of the volumes attached to the server, as Nova lists them."""
        if not server_id:
            return []
        return await self._cloud.call(
            f"list the volumes of server {server_id}",
            lambda api: _attachments(api, server_id),
            read=True,
        )

    async def _settle(self, handle: str, doing: str, *, gone_ok: bool = False) -> VolumeRecord:
        """Waits until the volume is available or in-use; FailedPrecondition when Cinder put it
        in an error state, Unavailable when it takes longer than the operation timeout."""
        deadline = time.monotonic() + self._settings.operation_timeout_seconds
        while True:
            volume = await self.find(handle)
            if volume is None:
                if gone_ok:
                    return VolumeRecord(handle, "", 0, "deleted", (), {}, "")
                raise NotFound(f"{doing}: volume {handle} is gone")
            if volume.status in _SETTLED:
                return volume
            if volume.status in _FAILED:
                raise FailedPrecondition(f"{doing}: Cinder left volume {handle} {volume.status}")
            if time.monotonic() > deadline:
                raise Unavailable(f"{doing}: volume {handle} is still {volume.status}; retry")
            await asyncio.sleep(self._settings.fast_poll_seconds)

    # -- making, growing and removing -----
    async def create(self, name: str, size_bytes: int, parameters: Mapping[str, str]) -> pb.Disk:
        """CreateDisk: a new volume, or the one made earlier under `name`."""
        check_create_disk(name, size_bytes, parameters, DISK_PARAMETERS, "the OpenStack provider")
        doing = f"create volume {name}"
        async with self._name_locks.hold(name):
            found = await self._cloud.call(
                f"look up volume {name}", lambda api: _by_name(api, name), read=True
            )
            if found:
                volume = found[0]
            else:
                size = _size_gib(size_bytes)
                try:
                    volume = await self._cloud.call(
                        doing, lambda api: _create(api, name, size, parameters)
                    )
                except NotFound as error:  # an unknown volume type or zone
                    raise FailedPrecondition(error.message) from None
                _log.info("volume created", extra={"disk": volume.id, "disk_name": name,
                                                   "size_gib": size})
            volume = await self._settle(volume.id, doing)
            return await self.message(volume)

    async def delete(self, handle: str) -> None:
        """DeleteDisk: an unknown volume succeeds; an attached one is FailedPrecondition.
        Returns once Cinder no longer has it."""
        doing = f"delete volume {handle}"
        async with self._disk_locks.hold(handle):
            volume = await self.find(handle)
            if volume is None:
                return
            if volume.servers:
                holder = await self.holder(volume)
                raise FailedPrecondition(
                    f"volume {handle} ({volume.name}) is attached to VM {holder}; detach it first"
                )
            if volume.status not in ("deleting", *_SETTLED, *_FAILED):
                raise Unavailable(f"{doing}: it is {volume.status}; retry")
            if volume.status != "deleting":
                await self._cloud.call(doing, lambda api: _delete(api, handle))
            deadline = time.monotonic() + self._settings.operation_timeout_seconds
            while (volume := await self.find(handle)) is not None:
                if volume.status == "error_deleting":
                    raise FailedPrecondition(f"{doing}: Cinder left it error_deleting")
                if time.monotonic() > deadline:
                    raise Unavailable(f"{doing}: it is still {volume.status}; retry")
                await asyncio.sleep(self._settings.fast_poll_seconds)
            _log.info("volume deleted", extra={"disk": handle})

    async def expand(self, handle: str, size_bytes: int) -> pb.Disk:
        """ExpandDisk: grows the volume; asking for less than it has is InvalidArgument."""
        doing = f"grow volume {handle}"
        async with self._disk_locks.hold(handle):
            volume = await self._settle(handle, doing)
            size = _size_gib(size_bytes)
            if size < volume.size_gib:
                raise InvalidArgument(
                    f"volume {handle} has {volume.size_gib} GiB; it cannot shrink to {size} GiB"
                )
            if size > volume.size_gib:
                await self._cloud.call(
                    f"{doing} to {size} GiB", lambda api: _extend(api, handle, size)
                )
                deadline = time.monotonic() + self._settings.operation_timeout_seconds
                while (volume := await self._settle(handle, doing)).size_gib < size:
                    if time.monotonic() > deadline:
                        raise Unavailable(f"{doing}: still {volume.size_gib} GiB; retry")
                    await asyncio.sleep(self._settings.fast_poll_seconds)
                _log.info("volume grown", extra={"disk": handle, "size_gib": size})
            return await self.message(volume)

    # -- attaching -----
    @contextlib.asynccontextmanager
    async def holding(self, handles: Iterable[str]) -> AsyncIterator[None]:
        """Holds the volumes' locks (in a fixed order), so that no other attach, detach or
        delete of them by this provider runs meanwhile (a boot with them, say)."""
        async with contextlib.AsyncExitStack() as stack:
            for handle in sorted(set(handles)):
                await stack.enter_async_context(self._disk_locks.hold(handle))
            yield

    async def check_free(self, handles: Iterable[str], server_id: str = "") -> None:
        """Each volume exists, is not attached to a server other than `server_id`, and is settled
        (FailedPrecondition, or Unavailable while it is busy)."""
        for handle in handles:
            volume = await self.find(handle)
            if volume is None:
                raise FailedPrecondition(f"disk {handle} does not exist in Cinder")
            others = [s for s in volume.servers if s != server_id]
            if others:
                holder = await self.holder(volume)
                raise FailedPrecondition(
                    f"disk {handle} ({volume.name}) is attached to VM {holder}; a disk is "
                    "attached to one VM at a time (ReadWriteOnce)"
                )
            if volume.status in _FAILED:
                raise FailedPrecondition(f"disk {handle} ({volume.name}) is {volume.status}")
            if volume.status not in _SETTLED:
                raise Unavailable(f"disk {handle} ({volume.name}) is {volume.status}; retry")

    async def _wait_attachment(self, handle: str, server_id: str, attached: bool) -> None:
        deadline = time.monotonic() + self._settings.operation_timeout_seconds
        doing = f"{'attach' if attached else 'detach'} volume {handle}"
        while True:
            volume = await self.find(handle)
            if volume is None:
                return
            if volume.status in _SETTLED and (server_id in volume.servers) == attached:
                return
            if volume.status in _FAILED:
                raise FailedPrecondition(f"{doing}: Cinder left it {volume.status}")
            if time.monotonic() > deadline:
                raise Unavailable(f"{doing}: it is still {volume.status}; retry")
            await asyncio.sleep(self._settings.fast_poll_seconds)

    async def _detach(self, server_id: str, handle: str) -> None:
        async with self._disk_locks.hold(handle):
            await self._cloud.call(
                f"detach volume {handle} from server {server_id}",
                lambda api: _detach(api, server_id, handle),
            )
            await self._wait_attachment(handle, server_id, attached=False)
            _log.info("volume detached", extra={"disk": handle, "server": server_id})

    async def sync(self, server_id: str, wanted: Iterable[str], dropped: Iterable[str]) -> None:
        """Attaches the volumes `wanted` that the server lacks, and detaches those of `dropped`
        (disks a pod no longer names) and vmlet-made ones that are not wanted."""
        wanted = tuple(dict.fromkeys(wanted))
        have = await self.attached(server_id)
        for handle in wanted:
            if handle in have:
                continue
            async with self._disk_locks.hold(handle):
                await self.check_free([handle], server_id)
                await self._cloud.call(
                    f"attach volume {handle} to server {server_id}",
                    _attacher(server_id, handle),
                )
                await self._wait_attachment(handle, server_id, attached=True)
                _log.info("volume attached", extra={"disk": handle, "server": server_id})
        dropped = set(dropped)
        for handle in have:
            if handle in wanted:
                continue
            if handle not in dropped:
                volume = await self.find(handle)
                if volume is None or META_DISK not in volume.metadata:
                    continue  # attached by someone else: not vmlet's to take away
            await self._detach(server_id, handle)
