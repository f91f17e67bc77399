"""Pods as Nova servers: create, update and delete by identity.

Identity. Every server carries its VM identity in its metadata and as a tag (see `naming`).
CreatePod holds the identity's lock and asks Nova for the servers with that tag before anything
else, so retries, restarts and concurrent calls find the server instead of making a second one.
Should two servers ever claim one identity (a create that reached Nova after its provider was
killed, racing the retry of a new one), the oldest is kept and the others are deleted.

Create. No server: the image and flavor are resolved (`catalog`), and the server is asked for on
the compute host behind the pod's node (`host`, microversion 2.74), with a port on each of the
pod's networks in order (`networks`), else `networks: none` unless --network says otherwise, the
pod's user data with its init containers' and container's commands as first-boot runcmd
(`vmlet_contract.userdata`), and its metadata and tags. A server already there is claimed for
the pod (its metadata rewritten; Nova takes no metadata while a server builds, so then the
converger does it once the build is over) and brought in line by the `converger`: moved to the
pod's host, resized to the pod's flavor, powered on.

Disks. A pod's PersistentVolume disks (Cinder volumes, see `disks`) are attached at boot (block
device mappings); the converger attaches and detaches them after an update (or on a server the
pod claimed) once the server is at rest. A disk attached to another VM refuses the create.

Delete. keep_on_delete (a VirtualMachine owns the identity): the server loses its pod metadata
and is stopped, kept with its disks (its volumes stay attached, as the contract says; the
identity's next pod claims the server, and the converger detaches the vmlet volumes that pod no
longer names). Otherwise it is deleted (Nova detaches its volumes), and DeletePod returns once
Nova no longer lists it. A pod whose server was meanwhile claimed by another pod (the VM moved
to a new pod) lets go without touching the server; which pod owns a server is what the provider
last registered for the identity, or after a restart what the server's metadata says. Unknown
pods delete successfully.

Start and stop (StartPod, a stopped server powered on again; StopPod, a server powered off as a
killed container and kept): `restarts`.

Statuses and their push live in `podtable`.
"""

from __future__ import annotations

import base64
import logging
import time
from typing import Any, Final

from vmlet.provider.v1 import pod_pb2
from vmlet_contract import (
    FailedPrecondition,
    Hub,
    InvalidArgument,
    Mailbox,
    NotFound,
    Unavailable,
    check_namespace,
)
from vmlet_contract.locks import KeyedLocks
from vmlet_contract.userdata import first_boot_user_data

from . import naming
from .catalog import Catalog
from .cloud import Api, Cloud
from .config import Settings
from .converger import Converger
from .disks import Disks, boot_mappings, pod_disk_handles
from .nodes import NodeBook
from .podtable import PodEntry, PodTable, PodUpdate, pod_key, pod_metadata, validate_pod
from .records import ServerRecord
from .restarts import Restarts
from .sizing import demand_of, image_ref
from .status import Progress
from .watch import ServerCache, Watch

__all__ = ["Pods", "server_user_data"]

_log = logging.getLogger(__name__)

_USER_DATA_LIMIT: Final = 65535
_DELETE_ASK_SECONDS: Final = 10.0


def server_user_data(pod: pod_pb2.Pod) -> str:
    """The base64 user data Nova boots the pod's server with ("" for none): the pod's own with
    its first-boot commands; INVALID_ARGUMENT past Nova's limit."""
    user_data = first_boot_user_data(pod)
    encoded = base64.b64encode(user_data.encode()).decode()
    if len(encoded) > _USER_DATA_LIMIT:
        raise InvalidArgument("the user data is larger than Nova's 64 KiB (base64) limit")
    return encoded


class Pods:
    """The pods the provider runs; see the module docstring."""

    def __init__(
        self,
        cloud: Cloud,
        cache: ServerCache,
        watch: Watch,
        nodes: NodeBook,
        catalog: Catalog,
        settings: Settings,
        disks: Disks | None = None,
    ) -> None:
        self._cloud = cloud
        self._disks = disks
        self._cache = cache
        self._watch = watch
        self._nodes = nodes
        self._catalog = catalog
        self._settings = settings
        self.locks = KeyedLocks()  # per identity; snapshots hold them too
        self.table = PodTable(cache, watch, nodes)
        self.converger = Converger(self.table, cloud, cache, watch, settings, disks)
        self.table.kick = self.converger.kick
        self.table.converging = self.converger.converging
        self.table.dedupe = lambda identity: self.table.spawn(self._dedupe(identity))
        self.hub: Hub[PodUpdate] = self.table.hub
        self._restarts = Restarts(self, cloud, cache, watch)
        self.table.ran_again = self._restarts.ran_again

    # -- reading (the table's) -----
    def server_of(self, entry: PodEntry) -> ServerRecord | None:
        return self.table.server_of(entry)

    def status_of(self, entry: PodEntry) -> pod_pb2.PodStatus:
        return self.table.status_of(entry)

    async def get(self, namespace: str, name: str) -> tuple[pod_pb2.Pod, pod_pb2.PodStatus]:
        return await self.table.get(namespace, name)

    async def all_pods(self) -> list[pod_pb2.PodWithStatus]:
        return await self.table.all_pods()

    def subscribe(self) -> Mailbox[PodUpdate]:
        return self.table.subscribe()

    def entries(self) -> list[PodEntry]:
        """The pods the provider runs now."""
        return self.table.entries()

    def entry(self, namespace: str, name: str) -> PodEntry | None:
        return self.table.entry(namespace, name)

    def show_progress(self, identity: str, progress: Progress | None) -> None:
        """Shows (None: ends) a step taken on the identity's server in its pod's status."""
        self.table.show_progress(identity, progress)

    def _require_disks(self) -> Disks:
        if self._disks is None:
            raise FailedPrecondition("this OpenStack provider has no disks (no Cinder)")
        return self._disks

    # -- lookups -----
    async def lookup(self, identity: str) -> list[ServerRecord]:
        """The live servers of `identity`, asked of Nova now (one list filtered by the identity's
        tag), oldest first; extra servers of the identity are deleted."""
        tag = naming.identity_tag(identity)

        def listing(api: Api) -> list[dict[str, Any]]:
            servers, _ = api.list_servers(tags=tag)
            return servers

        raw = await self._cloud.call(f"look up the server of {identity}", listing, read=True)
        records = sorted(
            (
                r
                for r in (ServerRecord.from_json(item) for item in raw)
                if r.identity == identity and not r.deleting
            ),
            key=lambda r: r.sort_key,
        )
        for record in records:
            old = self._cache.by_id.get(record.id)
            if self._cache.apply(record, fresh=True):
                self.table.on_change(record, old)
        if len(records) > 1:
            for extra in records[1:]:
                _log.warning(
                    "deleting a duplicate server of an identity",
                    extra={"identity": identity, "server": extra.id, "kept": records[0].id},
                )
                await self._delete_quietly(extra.id)
            records = records[:1]
        return records

    async def _delete_quietly(self, server_id: str) -> None:
        def delete(api: Api) -> None:
            api.delete_server(server_id)

        try:
            await self._cloud.call(f"delete duplicate server {server_id}", delete)
        except NotFound:
            pass

    # -- create -----
    async def create(self, pod: pod_pb2.Pod) -> pod_pb2.PodStatus:
        validate_pod(pod)
        ref = image_ref(pod.containers[0].image)
        demand = demand_of(pod)
        disks = pod_disk_handles(pod)
        user_data = server_user_data(pod)  # refused before anything is done
        host = await self._nodes.host_for(pod.node_name)
        async with self.locks.hold(pod.identity):
            servers = await self.lookup(pod.identity)
            server = servers[0] if servers else None
            if server is not None:  # before anything: a refused pod takes nothing
                check_namespace(server.owner_namespace, pod.ref.namespace, pod.identity)
            if server is not None and self._failed_build(server, pod):
                _log.info(
                    "replacing a server that failed to build",
                    extra={"identity": pod.identity, "server": server.id},
                )
                await self._destroy(server)
                server = None
            entry = self.table.register(pod, host)
            if server is None:
                try:
                    if disks:
                        # No other pod of this provider boots with them meanwhile.
                        async with self._require_disks().holding(disks):
                            await self._require_disks().check_free(disks)
                            await self._create_server(entry, ref, demand, user_data)
                    else:
                        await self._create_server(entry, ref, demand, user_data)
                except BaseException:
                    if not entry.server_id:
                        self.table.forget(entry)
                    raise
            else:
                if disks:
                    await self._require_disks().check_free(disks, server.id)
                entry.server_id = server.id
                entry.check_disks = True
                entry.flavor = await self._catalog.flavor_for(demand)
                entry.unclaimed = not await self.converger.claim(server, pod)
                self.converger.expect(entry)
                self.converger.kick(pod.identity)
            self.table.publish(entry)
            return self.table.status_of(entry)

    def _failed_build(self, server: ServerRecord, pod: pod_pb2.Pod) -> bool:
        """A server in ERROR that never ran, left by an earlier pod: worth replacing."""
        uid = server.metadata.get(naming.META_POD_UID, "")
        return server.status == "ERROR" and server.launched_at is None and uid != pod.ref.uid

    async def _create_server(
        self, entry: PodEntry, ref: str, demand: Any, user_data: str
    ) -> None:
        pod = entry.pod
        flavor = await self._catalog.flavor_for(demand)
        image_id = await self._catalog.image_id(ref)
        entry.flavor = flavor
        body: dict[str, Any] = {
            "name": naming.server_name(pod.ref.namespace, pod.ref.name),
            "imageRef": image_id,
            "flavorRef": flavor.id,
            "host": entry.host,
            "metadata": pod_metadata(pod),
            "tags": [naming.PROVIDER_TAG, naming.identity_tag(pod.identity)],
        }
        if pod.networks:
            names = [n.name for n in pod.networks]
            body["networks"] = await self._catalog.networks.boot_networks(names)
        elif self._settings.networks_none:
            body["networks"] = "none"
        elif self._settings.networks_auto:
            body["networks"] = "auto"
        else:
            ids = await self._catalog.network_ids(self._settings.network)
            body["networks"] = [{"uuid": i} for i in ids]
        if user_data:
            body["user_data"] = user_data
        if disks := pod_disk_handles(pod):
            body["block_device_mapping_v2"] = boot_mappings(image_id, disks)
        entry.progress = Progress(
            "ContainerCreating", f"asking Nova for server {body['name']} on {entry.host}"
        )
        self.table.publish(entry)
        _log.info(
            "creating server",
            extra={"pod": "/".join(entry.key), "identity": pod.identity, "host": entry.host},
        )
        server_id = await self._cloud.call(
            f"create server {body['name']} on {entry.host}",
            lambda api: api.create_server(body),
        )
        entry.server_id = server_id
        entry.progress = None
        _log.info(
            "server created",
            extra={
                "pod": "/".join(entry.key),
                "identity": pod.identity,
                "server": server_id,
                "host": entry.host,
                "flavor": flavor.name,
            },
        )
        # Read it back in the background: CreatePod answers as soon as Nova took the request.
        self.table.spawn(self._watch.refresh_one(server_id))

    # -- update -----
    async def update(self, pod: pod_pb2.Pod) -> pod_pb2.PodStatus:
        validate_pod(pod)
        entry = await self.table.wait_entry(pod.ref.namespace, pod.ref.name)
        demand = demand_of(pod)
        disks = pod_disk_handles(pod)
        host = await self._nodes.host_for(pod.node_name)
        async with self.locks.hold(pod.identity):
            flavor = await self._catalog.flavor_for(demand)
            before = set(pod_disk_handles(entry.pod, strict=False))
            entry = self.table.register(pod, host)
            entry.flavor = flavor
            entry.dropped_disks = frozenset((entry.dropped_disks | before) - set(disks))
            servers = await self.lookup(pod.identity)
            if not servers:
                self.table.publish(entry)
                return self.table.status_of(entry)
            server = servers[0]
            entry.server_id = server.id
            entry.unclaimed = not await self.converger.claim(server, pod)
            self.converger.expect(entry)
            self.converger.kick(pod.identity)
            self.table.publish(entry)
            return self.table.status_of(entry)

    # -- start and stop -----
    async def start(self, pod: pod_pb2.Pod) -> pod_pb2.PodStatus:
        """Powers the pod's stopped server on again (StartPod; see `restarts`); its status."""
        return await self._restarts.start(pod)

    async def stop_pod(self, pod: pod_pb2.Pod, grace_seconds: int) -> pod_pb2.PodStatus:
        """Powers the pod's server off as killed and keeps it (StopPod; see `restarts`); its
        status once it is off."""
        return await self._restarts.stop(pod, grace_seconds)

    # -- delete -----
    async def delete(self, pod: pod_pb2.Pod) -> None:
        if not pod.identity:
            # Only namespace and name: use what the provider knows of the pod.
            known = self.table.entry(*pod_key(pod))
            if known is None:
                return
            pod = known.pod
        async with self.locks.hold(pod.identity):
            await self.converger.stop_converging(pod.identity)
            entry = self.table.entry(*pod_key(pod))
            servers = await self.lookup(pod.identity)
            server = servers[0] if servers else None
            if server is None:
                if entry is not None:
                    self.table.forget(entry)
                return
            check_namespace(server.owner_namespace, pod.ref.namespace, pod.identity)
            if not self.owns(pod, server):
                _log.info(
                    "pod deleted; its VM belongs to another pod now",
                    extra={"pod": "/".join(pod_key(pod)), "server": server.id},
                )
                if entry is not None and entry.identity == pod.identity:
                    self.table.forget(entry)
                return
            if entry is not None:
                entry.progress = Progress("Deleting", f"stopping server {server.name}")
            if pod.keep_on_delete or server.keep:
                await self._keep(server)
            else:
                await self._destroy(server)
            if entry is not None:
                self.table.forget(entry)

    def owns(self, pod: pod_pb2.Pod, server: ServerRecord) -> bool:
        """Whether `pod` runs `server` now: the pod the provider registered for the identity,
        or, when it has none (after a restart), the pod the server's metadata names."""
        holder = self.table.holder_of(pod.identity)
        if holder is not None:
            entry = self.table.entry(*holder)
            same_uid = entry is None or not pod.ref.uid or entry.pod.ref.uid in ("", pod.ref.uid)
            return holder == pod_key(pod) and same_uid
        owner_uid = server.metadata.get(naming.META_POD_UID, "")
        owner = server.pod_key
        if owner is not None and owner != pod_key(pod):
            return False
        return not (owner_uid and pod.ref.uid and owner_uid != pod.ref.uid)

    async def _keep(self, server: ServerRecord) -> None:
        """Unties the server from its pod and powers it off, keeping it."""
        kept = {naming.META_IDENTITY: server.identity, naming.META_KEEP: "true"}
        if server.owner_namespace:
            kept[naming.META_OWNER_NAMESPACE] = server.owner_namespace
        if (any(server.metadata.get(k) for k in naming.POD_KEYS) or not server.keep
                or server.metadata.get(naming.META_OWNER_NAMESPACE, "") != server.owner_namespace):
            await self._cloud.call(
                f"untie server {server.name} from its pod",
                lambda api: api.replace_metadata(server.id, kept),
            )
        deadline = time.monotonic() + self._settings.operation_timeout_seconds
        async with self._watch.urgent():
            while True:
                current = await self._watch.refresh_one(server.id)
                if current is None or current.status in (
                    "SHUTOFF",
                    "ERROR",
                    "SHELVED",
                    "SHELVED_OFFLOADED",
                ):
                    return
                if time.monotonic() > deadline:
                    raise Unavailable(f"server {server.name} did not stop in time; retry")
                if current.status == "VERIFY_RESIZE" and current.task_state is None:
                    await self.converger.act(
                        current, "confirm the resize of", {"confirmResize": None}
                    )
                elif current.settled and current.status in (
                    "ACTIVE",
                    "PAUSED",
                    "SUSPENDED",
                    "RESCUE",
                ):
                    await self.converger.act(current, "stop", {"os-stop": None})
                await self._cache.wait_change(current.id, self._cache.by_id.get(current.id), 10)

    async def _destroy(self, server: ServerRecord) -> None:
        """Deletes the server and waits until Nova no longer has it, asking again should a
        delete fail (Nova then clears the deleting task and leaves the server as it was)."""
        deadline = time.monotonic() + self._settings.operation_timeout_seconds
        asked = -1e9
        async with self._watch.urgent():
            while (current := await self._watch.refresh_one(server.id)) is not None:
                if not current.deleting and time.monotonic() - asked > _DELETE_ASK_SECONDS:
                    try:
                        await self._cloud.call(
                            f"delete server {server.name}",
                            lambda api: api.delete_server(server.id),
                        )
                    except NotFound:
                        pass
                    asked = time.monotonic()
                    continue
                if time.monotonic() > deadline:
                    raise Unavailable(f"server {server.name} is still being deleted; retry")
                await self._cache.wait_change(server.id, current, 2)
        _log.info("server deleted", extra={"identity": server.identity, "server": server.id})

    async def destroy_identity(self, identity: str, namespace: str = "") -> None:
        """Deletes every server of `identity` (DeleteVirtualMachine) and forgets its pod;
        PermissionDenied for a server of another namespace than `namespace` (when given)."""
        async with self.locks.hold(identity):
            for server in await self.lookup(identity):
                check_namespace(server.owner_namespace, namespace, identity)
            await self.converger.stop_converging(identity)
            entry = self.table.entry_of(identity)
            if entry is not None:
                entry.progress = Progress("Deleting", "the VirtualMachine is being deleted")
            for server in await self.lookup(identity):
                await self._destroy(server)
            if entry is not None:
                self.table.forget(entry)

    async def _dedupe(self, identity: str) -> None:
        async with self.locks.hold(identity):
            await self.lookup(identity)

    # -- shutdown -----
    def close(self, reason: str) -> None:
        self.hub.close(reason)

    async def stop(self) -> None:
        await self.converger.stop()
        await self.table.stop()
