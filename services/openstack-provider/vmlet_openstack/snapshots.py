"""Snapshots of VMs as Glance images (Nova createImage), and the VM by identity.

- CreateSnapshot asks Nova to image the server (`createImage`, the image named as the snapshot),
  with the image properties `vmlet-identity`, `vmlet-snapshot` (the name) and
  `vmlet-description`. A second call with the same name finds that image instead (Glance lists
  images by property), so it is idempotent by name. It returns once the compute host is through
  with the server (its task state clears); the image turns active when the upload ends (with
  nova's fake driver it never does: the fake snapshot uploads nothing).
- RevertToSnapshot rebuilds the server from the image (`rebuild`), which keeps the server, its
  ID, host, metadata and tags, and waits until Nova finished. An image still uploading is
  UNAVAILABLE (retry), a failed one FAILED_PRECONDITION.
- DeleteSnapshot deletes the image; an unknown one is success, one of another VM is refused.
- ListSnapshots lists the identity's images, oldest first.
- GetVirtualMachine and DeleteVirtualMachine answer and destroy by identity, with or without a
  pod.
Disks are not served: this provider has no Cinder to make them with (see `servicers`).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final

from vmlet.provider.v1 import virtual_machine_service_pb2 as vm_pb
from vmlet_contract import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
    check_namespace,
    podstatus,
)

from .cloud import Api, Cloud
from .config import Settings
from .faults import server_fault
from .nodes import NodeBook
from .pods import Pods
from .records import ServerRecord, parse_time
from .status import Progress
from .watch import ServerCache, Watch

__all__ = ["PROP_DESCRIPTION", "PROP_IDENTITY", "PROP_SNAPSHOT", "Snapshots"]

_log = logging.getLogger(__name__)

PROP_IDENTITY: Final = "vmlet-identity"
PROP_SNAPSHOT: Final = "vmlet-snapshot"
PROP_DESCRIPTION: Final = "vmlet-description"
KIND: Final = "glance-image"
_UPLOADING: Final = frozenset({"queued", "saving", "importing", "uploading"})

_POWER = {
    "ACTIVE": vm_pb.POWER_STATE_ON,
    "SHUTOFF": vm_pb.POWER_STATE_OFF,
    "STOPPED": vm_pb.POWER_STATE_OFF,
    "SHELVED": vm_pb.POWER_STATE_OFF,
    "SHELVED_OFFLOADED": vm_pb.POWER_STATE_OFF,
    "SUSPENDED": vm_pb.POWER_STATE_SUSPENDED,
    "PAUSED": vm_pb.POWER_STATE_SUSPENDED,
}


def _snapshot(image: dict[str, Any], identity: str) -> vm_pb.Snapshot:
    out = vm_pb.Snapshot(
        id=str(image["id"]),
        name=str(image.get(PROP_SNAPSHOT) or image.get("name") or ""),
        kind=KIND,
        identity=identity,
        description=str(image.get(PROP_DESCRIPTION) or ""),
    )
    created = parse_time(image.get("created_at"))
    if created is not None:
        out.create_time.CopyFrom(podstatus.timestamp(created))
    return out


class Snapshots:
    """Snapshots and VMs by identity; see the module docstring."""

    def __init__(
        self,
        cloud: Cloud,
        cache: ServerCache,
        watch: Watch,
        pods: Pods,
        nodes: NodeBook,
        settings: Settings,
    ) -> None:
        self._cloud = cloud
        self._cache = cache
        self._watch = watch
        self._pods = pods
        self._nodes = nodes
        self._settings = settings
        self._locks = pods.locks  # a revert and a pod's stop take turns

    async def check_owner(self, identity: str, namespace: str) -> None:
        """PermissionDenied when a server of `identity` belongs to another namespace."""
        if identity and namespace:
            for server in await self._pods.lookup(identity):
                check_namespace(server.owner_namespace, namespace, identity)

    async def _server(self, identity: str) -> ServerRecord:
        if not identity:
            raise InvalidArgument("no identity given")
        servers = await self._pods.lookup(identity)
        if not servers:
            raise NotFound(f"there is no server with identity {identity}")
        return servers[0]

    async def _images(self, identity: str) -> list[dict[str, Any]]:
        images = await self._cloud.call(
            f"list the snapshots of {identity}",
            lambda api: api.images({PROP_IDENTITY: identity}),
read=True,
        )
        mine = [i for i in images if i.get(PROP_IDENTITY) == identity]
        return sorted(mine, key=lambda i: (str(i.get("created_at") or ""), str(i["id"])))

    # -- VMs --------------------------------------------------------------------------------
    async def get_vm(self, identity: str) -> vm_pb.VirtualMachine:
        server = await self._server(identity)
        return vm_pb.VirtualMachine(
            identity=identity,
            provider_id=server.id,
            name=server.name,
            power_state=_POWER.get(server.status, vm_pb.POWER_STATE_UNSPECIFIED),
            node_name=self._nodes.node_of(server.host),
            cpus=server.vcpus,
            memory_bytes=server.ram_mib * 1024 * 1024,
            ip_addresses=list(server.ips),
        )

    async def delete_vm(self, identity: str, namespace: str = "") -> None:
        if not identity:
            raise InvalidArgument("no identity given")
        await self._pods.destroy_identity(identity, namespace)

    # -- snapshots --------------------------------------------------------------------------
    async def create(self, identity: str, name: str, description: str) -> vm_pb.Snapshot:
        if not name:
            raise InvalidArgument("a snapshot needs a name")
        async with self._locks.hold(identity):
            server = await self._server(identity)
            for image in await self._images(identity):
                if image.get(PROP_SNAPSHOT) == name:
                    return _snapshot(image, identity)
            properties = {
                PROP_IDENTITY: identity,
                PROP_SNAPSHOT: name[:255],
                PROP_DESCRIPTION: description[:255],
            }
            body = {"createImage": {"name": name[:255], "metadata": properties}}
            answer = await self._cloud.call(
                f"image server {server.name} as {name}",
                lambda api: api.action(server.id, body),
            )
            image_id = str((answer or {}).get("image_id") or "")
            # The capture is done when the compute host is through with the server (its task
            # state clears); the image turns active once the upload ends.
            await self._until_settled(server.id)
            image = await self._cloud.call(
                f"read image {image_id}", lambda api: api.image(image_id), read=True
            )
            _log.info(
                "snapshot requested",
                extra={"identity": identity, "server": server.id, "image": image_id},
            )
            return _snapshot(image, identity)

    async def all_of(self, identity: str) -> list[vm_pb.Snapshot]:
        if not identity:
            raise InvalidArgument("no identity given")
        return [_snapshot(i, identity) for i in await self._images(identity)]

    async def _image_of(self, identity: str, snapshot_id: str) -> dict[str, Any] | None:
        def read(api: Api) -> dict[str, Any] | None:
            try:
                return api.image(snapshot_id)
            except Exception as exc:
                if getattr(exc, "status_code", None) == 404:
                    return None
                raise

        image = await self._cloud.call(f"read snapshot {snapshot_id}", read, read=True)
        if image is not None and image.get(PROP_IDENTITY) != identity:
            raise FailedPrecondition(f"snapshot {snapshot_id} is not one of VM {identity}")
        return image

    async def delete(self, identity: str, snapshot_id: str) -> None:
        if not snapshot_id:
            raise InvalidArgument("no snapshot given")
        async with self._locks.hold(identity):
            image = await self._image_of(identity, snapshot_id)
            if image is None:
                return

            def remove(api: Api) -> None:
                try:
                    api.delete_image(snapshot_id)
                except Exception as exc:
                    if getattr(exc, "status_code", None) != 404:
                        raise

            await self._cloud.call(f"delete snapshot {snapshot_id}", remove)

    async def revert(self, identity: str, snapshot_id: str) -> None:
        if not snapshot_id:
            raise InvalidArgument("no snapshot given")
        async with self._locks.hold(identity):
            image = await self._image_of(identity, snapshot_id)
            if image is None:
                raise NotFound(f"snapshot {snapshot_id} does not exist")
            state = str(image.get("status") or "")
            if state in _UPLOADING:
                raise Unavailable(f"snapshot {snapshot_id} is still {state}, not active yet; retry")
            if state != "active":
                raise FailedPrecondition(f"snapshot {snapshot_id} is {state}: it cannot be used")
            server = await self._settled(await self._server(identity))
            self._pods.show_progress(
                identity,
                Progress(
                    "Rebuilding", f"rebuilding server {server.name} from snapshot {snapshot_id}"
                ),
            )
            try:
                await self._cloud.call(
                    f"rebuild server {server.name} from snapshot {snapshot_id}",
                    lambda api: api.action(server.id, {"rebuild": {"imageRef": snapshot_id}}),
                )
                done = await self._until_settled(server.id)
            finally:
                self._pods.show_progress(identity, None)
            if done is not None and done.status == "ERROR":
                _, message = server_fault(done.fault, done.name)
                raise FailedPrecondition(message)
            _log.info("server rebuilt", extra={"identity": identity, "image": snapshot_id})

    async def _settled(self, server: ServerRecord) -> ServerRecord:
        done = await self._until_settled(server.id)
        if done is None:
            raise NotFound(f"server {server.name} is gone")
        return done

    async def _until_settled(self, server_id: str) -> ServerRecord | None:
        deadline = time.monotonic() + self._settings.operation_timeout_seconds
        async with self._watch.urgent():
            while True:
                current = await self._watch.refresh_one(server_id)
                if current is None or (current.settled and current.status != "VERIFY_RESIZE"):
                    return current
                if current.status == "VERIFY_RESIZE" and current.task_state is None:
                    await self._cloud.call(
                        f"confirm the resize of server {current.name}",
                        lambda api: api.action(server_id, {"confirmResize": None}),
                    )
                if time.monotonic() > deadline:
                    raise FailedPrecondition(f"server {current.name} stays {current.status}")
                await self._cache.wait_change(server_id, current, 10)
