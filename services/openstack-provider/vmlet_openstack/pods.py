"""Pods as Nova servers: create, update and delete by identity, and the push of their statuses.

Identity. Every server carries its VM identity in its metadata and as a tag (see `naming`).
CreatePod holds the identity's lock and asks Nova for the servers with that tag before anything
else, so retries, restarts and concurrent calls find the server instead of making a second one.
Should two servers ever claim one identity (a create that reached Nova after its provider was
killed, racing the retry of a new one), the oldest is kept and the others are deleted.

Create. No server: the image and flavor are resolved (`catalog`), and the server is asked for on
the compute host behind the pod's node (`host`, microversion 2.74), with a port on each of the
pod's networks in order (`networks`), else `networks: none` unless --network says otherwise, the
pod's user data, and its metadata and tags. A server already there is claimed for the pod (its
metadata rewritten; Nova takes no metadata while a server builds, so then the converger does it
once the build is over) and brought in line by the converger: moved to the pod's host, resized to
the pod's flavor, powered on.

Converger. One task per identity at a time walks a server, one Nova action at a time, toward what
its pod wants: confirm a resize or migration waiting for it; wait while Nova is busy; migrate to
the pod's host (live for a running server when --migration allows and it works, cold + confirm
otherwise); resize to the wanted flavor (resize + confirm; with a single target host Nova may
move it, and the next round moves it back); start it when it is off. Each action is tried once
per round (a refused or failed one up to five times, backing off, when Nova was busy or had a
hiccup); the pod's status shows the step (Migrating, Resizing, PoweringOn).

Disks. A pod's PersistentVolume disks (Cinder volumes, see `disks`) are attached at boot (block
device mappings); the converger attaches and detaches them after an update (or on a server the
pod claimed) once the server is at rest. A disk attached to another VM refuses the create.

Delete. keep_on_delete (a VirtualMachine owns the identity): the server loses its pod metadata
and is stopped, kept with its boot disk; its volumes are detached, free for their next VM.
Otherwise it is deleted (Nova detaches its volumes), and DeletePod returns once Nova no longer
lists it. A pod whose server was meanwhile claimed by another pod (the VM moved to a new pod)
lets go without touching the server; which pod owns a server is what the provider last
registered for the identity, or after a restart what the server's metadata says. Unknown pods
delete successfully.

Status. The watch's single server list feeds `_on_change`/`_on_gone`; the status of the pod of
every changed server is worked out (`status.pod_status`) and pushed to NotifyPods when it
differs from the last one pushed. After a restart, pods are adopted from server metadata on the
first full list, so GetPods and NotifyPods know them again.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from dataclasses import dataclass
from typing import Any, Final

from vmlet.provider.v1 import pod_notifier_service_pb2, pod_pb2
from vmlet_contract import (
    FailedPrecondition,
    Hub,
    InvalidArgument,
    Mailbox,
    NotFound,
    ProviderError,
    Unavailable,
    check_namespace,
    is_retryable,
    podstatus,
)

from . import naming
from .catalog import Catalog
from .cloud import Api, Cloud
from .config import Settings
from .disks import Disks, boot_mappings, pod_disk_handles
from .locks import IdentityLocks
from .nodes import NodeBook
from .records import FlavorRecord, ServerRecord
from .sizing import demand_of, image_ref
from .status import Progress, pod_status
from .watch import ServerCache, Watch

__all__ = ["PodEntry", "Pods", "pod_from_metadata", "pod_metadata"]

_log = logging.getLogger(__name__)

PodKey = tuple[str, str]
PodUpdate = pod_notifier_service_pb2.NotifyPodsResponse

_USER_DATA_LIMIT: Final = 65535
_TOMBSTONE_SECONDS: Final = 600.0
_ACTION_SETTLE_SECONDS: Final = 30.0
_ACTION_ATTEMPTS: Final = 5


@dataclass
class PodEntry:
    """A pod the provider runs, and what its server should become."""

    pod: pod_pb2.Pod
    host: str  # the compute host of the pod's node
    flavor: FlavorRecord | None = None  # None: whatever it has
    server_id: str = ""
    progress: Progress | None = None
    note: str = ""
    vanished: str = ""
    fingerprint: bytes = b""
    unclaimed: bool = False  # the server's metadata still names another pod
    dropped_disks: frozenset[str] = frozenset()  # disks an update took from the pod

    @property
    def key(self) -> PodKey:
        return (self.pod.ref.namespace, self.pod.ref.name)

    @property
    def identity(self) -> str:
        return self.pod.identity


def _key(pod: pod_pb2.Pod) -> PodKey:
    return (pod.ref.namespace, pod.ref.name)


def _validate(pod: pod_pb2.Pod) -> None:
    if not pod.ref.namespace or not pod.ref.name:
        raise InvalidArgument("the pod has no namespace or name")
    if not pod.identity:
        raise InvalidArgument(f"pod {pod.ref.namespace}/{pod.ref.name} has no identity")
    if not pod.node_name:
        raise InvalidArgument(f"pod {pod.ref.namespace}/{pod.ref.name} is bound to no node")
    if len(pod.containers) != 1:
        raise InvalidArgument(
            f"pod {pod.ref.namespace}/{pod.ref.name} has {len(pod.containers)} containers; "
            "a VM pod has exactly one"
        )


def pod_metadata(pod: pod_pb2.Pod) -> dict[str, str]:
    """The server metadata that ties a server to `pod` (see `naming`)."""
    container = pod.containers[0] if pod.containers else pod_pb2.Container()
    values = {
        naming.META_IDENTITY: pod.identity,
        naming.META_NAMESPACE: pod.ref.namespace,
        naming.META_POD: pod.ref.name,
        naming.META_POD_UID: pod.ref.uid,
        naming.META_NODE: pod.node_name,
        naming.META_CONTAINER: container.name,
        naming.META_IMAGE: container.image,
        naming.META_KEEP: "true" if pod.keep_on_delete else "false",
        naming.META_OWNER_NAMESPACE: pod.ref.namespace,
    }
    return {k: naming.truncate(v) for k, v in values.items()}


def pod_from_metadata(record: ServerRecord) -> pod_pb2.Pod:
    """The pod a server's metadata names, as far as metadata can tell (after a restart)."""
    md = record.metadata
    return pod_pb2.Pod(
        ref=pod_pb2.PodRef(
            namespace=md.get(naming.META_NAMESPACE, ""),
            name=md.get(naming.META_POD, ""),
            uid=md.get(naming.META_POD_UID, ""),
        ),
        node_name=md.get(naming.META_NODE, ""),
        identity=record.identity,
        keep_on_delete=record.keep,
        containers=[
            pod_pb2.Container(
                name=md.get(naming.META_CONTAINER, "") or "vm",
                image=md.get(naming.META_IMAGE, ""),
            )
        ],
    )


def _fingerprint(status: pod_pb2.PodStatus) -> bytes:
    copy = pod_pb2.PodStatus()
    copy.CopyFrom(status)
    for container in copy.container_statuses:
        if container.HasField("terminated"):
            container.terminated.ClearField("finished_at")
    return copy.SerializeToString(deterministic=True)


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
        self.hub: Hub[PodUpdate] = Hub()
        self._entries: dict[PodKey, PodEntry] = {}
        self._by_identity: dict[str, PodKey] = {}
        self._locks = IdentityLocks()
        self._ops: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._tombstones: dict[str, float] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._reading_fault: set[str] = set()  # servers whose ERROR fault is being read
        watch.on_change = self._on_change
        watch.on_gone = self._on_gone
        watch.on_synced = self._on_synced

    # -- reading -----
    def server_of(self, entry: PodEntry) -> ServerRecord | None:
        if entry.server_id and entry.server_id in self._cache.by_id:
            return self._cache.by_id[entry.server_id]
        return self._cache.server_of(entry.identity)

    def status_of(self, entry: PodEntry) -> pod_pb2.PodStatus:
        server = self.server_of(entry)
        host = server.host if server is not None else None
        status = pod_status(
            entry.pod,
            server,
            progress=entry.progress,
            vanished=entry.vanished,
            server_id=entry.server_id,
            fault_pending=server is not None and server.id in self._reading_fault,
            node_name=self._nodes.node_of(host) if host else "",
            host_ip=self._nodes.host_ip(host),
        )
        if entry.note and not status.message:
            status.message = entry.note
        return status

    async def _entry(self, namespace: str, name: str) -> PodEntry:
        entry = self._entries.get((namespace, name))
        if entry is None and not self._watch.synced.is_set():
            await self._watch.wait_synced()
            entry = self._entries.get((namespace, name))
        if entry is None:
            raise NotFound(f"pod {namespace}/{name} is not known to the OpenStack provider")
        return entry

    async def get(self, namespace: str, name: str) -> tuple[pod_pb2.Pod, pod_pb2.PodStatus]:
        entry = await self._entry(namespace, name)
        return entry.pod, self.status_of(entry)

    async def all_pods(self) -> list[pod_pb2.PodWithStatus]:
        await self._watch.wait_synced()
        return [
            pod_pb2.PodWithStatus(pod=e.pod, status=self.status_of(e))
            for e in list(self._entries.values())
        ]

    def subscribe(self) -> Mailbox[PodUpdate]:
        snapshot = [
            (e.key, PodUpdate(ref=e.pod.ref, status=self.status_of(e)))
            for e in self._entries.values()
        ]
        return self.hub.subscribe(snapshot)

    def entries(self) -> list[PodEntry]:
        """The pods the provider runs now."""
        return list(self._entries.values())

    def entry(self, namespace: str, name: str) -> PodEntry | None:
        return self._entries.get((namespace, name))

    def show_progress(self, identity: str, progress: Progress | None) -> None:
        """Shows (None: ends) a step taken on the identity's server in its pod's status."""
        entry = self._entry_of(identity)
        if entry is not None:
            entry.progress = progress
            self._publish(entry)

    def _publish(self, entry: PodEntry) -> None:
        if self._entries.get(entry.key) is not entry:
            return
        status = self.status_of(entry)
        fingerprint = _fingerprint(status)
        if fingerprint != entry.fingerprint:
            entry.fingerprint = fingerprint
            self.hub.publish(entry.key, PodUpdate(ref=entry.pod.ref, status=status))

    # -- registry -----
    def _register(self, pod: pod_pb2.Pod, host: str) -> PodEntry:
        key = _key(pod)
        holder = self._by_identity.get(pod.identity)
        if holder is not None and holder != key:
            old = self._entries.pop(holder, None)
            if old is not None:
                _log.info(
                    "VM handed over to another pod",
                    extra={"identity": pod.identity, "from": "/".join(holder), "to": "/".join(key)},
                )
                status = podstatus.failed(
                    old.pod,
                    reason="VMTakenOver",
                    message=f"pod {key[0]}/{key[1]} now runs this VM",
                )
                self.hub.publish(holder, PodUpdate(ref=old.pod.ref, status=status))
        entry = self._entries.get(key)
        if entry is not None and entry.identity != pod.identity:
            self._by_identity.pop(entry.identity, None)
            entry = None
        if entry is None:
            entry = PodEntry(pod=pod, host=host)
            self._entries[key] = entry
        else:
            entry.pod, entry.host = pod, host
        entry.vanished = ""
        entry.note = ""
        self._by_identity[pod.identity] = key
        self._tombstones.pop(pod.ref.uid or "/".join(key), None)
        return entry

    def _forget(self, entry: PodEntry) -> None:
        if self._entries.get(entry.key) is entry:
            del self._entries[entry.key]
        if self._by_identity.get(entry.identity) == entry.key:
            del self._by_identity[entry.identity]
        self._tombstones[entry.pod.ref.uid or "/".join(entry.key)] = time.monotonic()

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
                self._on_change(record, old)
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
        _validate(pod)
        ref = image_ref(pod.containers[0].image)
        demand = demand_of(pod)
        disks = pod_disk_handles(pod)
        if len(pod.user_data.encode()) * 4 // 3 > _USER_DATA_LIMIT:
            raise InvalidArgument("the user data is larger than Nova's 64 KiB (base64) limit")
        host = await self._nodes.host_for(pod.node_name)
        async with self._locks.hold(pod.identity):
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
            entry = self._register(pod, host)
            if server is None:
                try:
                    if disks:
                        # No other pod of this provider boots with them meanwhile.
                        async with self._require_disks().holding(disks):
                            await self._require_disks().check_free(disks)
                            await self._create_server(entry, ref, demand)
                    else:
                        await self._create_server(entry, ref, demand)
                except BaseException:
                    if not entry.server_id:
                        self._forget(entry)
                    raise
            else:
                if disks:
                    await self._require_disks().check_free(disks, server.id)
                entry.server_id = server.id
                entry.flavor = await self._catalog.flavor_for(demand)
                entry.unclaimed = not await self._claim(server, pod)
                self._expect(entry)
                self._kick(pod.identity)
            self._publish(entry)
            return self.status_of(entry)

    def _failed_build(self, server: ServerRecord, pod: pod_pb2.Pod) -> bool:
        """A server in ERROR that never ran, left by an earlier pod: worth replacing."""
        uid = server.metadata.get(naming.META_POD_UID, "")
        return server.status == "ERROR" and server.launched_at is None and uid != pod.ref.uid

    async def _create_server(self, entry: PodEntry, ref: str, demand: Any) -> None:
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
        if pod.user_data:
            body["user_data"] = base64.b64encode(pod.user_data.encode()).decode()
        if disks := pod_disk_handles(pod):
            body["block_device_mapping_v2"] = boot_mappings(image_id, disks)
        entry.progress = Progress(
            "ContainerCreating", f"asking Nova for server {body['name']} on {entry.host}"
        )
        self._publish(entry)
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
        self._spawn(self._watch.refresh_one(server_id))

    async def _claim(self, server: ServerRecord, pod: pod_pb2.Pod) -> bool:
        """Rewrites the server's metadata for `pod` where it differs; False when Nova refuses
        for now (a server still building takes no metadata), for the converger to do later."""
        wanted = pod_metadata(pod)
        if server.keep:  # a VirtualMachine's server stays kept
            wanted[naming.META_KEEP] = "true"
        changed = {k: v for k, v in wanted.items() if server.metadata.get(k) != v}
        if not changed:
            return True
        try:
            await self._cloud.call(
                f"claim server {server.name} for pod {pod.ref.namespace}/{pod.ref.name}",
                lambda api: api.set_metadata(server.id, changed),
            )
        except FailedPrecondition:
            return False
        await self._watch.refresh_one(server.id)
        return True

    # -- update -----
    async def update(self, pod: pod_pb2.Pod) -> pod_pb2.PodStatus:
        _validate(pod)
        entry = await self._entry(pod.ref.namespace, pod.ref.name)
        demand = demand_of(pod)
        disks = pod_disk_handles(pod)
        host = await self._nodes.host_for(pod.node_name)
        async with self._locks.hold(pod.identity):
            flavor = await self._catalog.flavor_for(demand)
            before = set(pod_disk_handles(entry.pod, strict=False))
            entry = self._register(pod, host)
            entry.flavor = flavor
            entry.dropped_disks = frozenset((entry.dropped_disks | before) - set(disks))
            servers = await self.lookup(pod.identity)
            if not servers:
                self._publish(entry)
                return self.status_of(entry)
            server = servers[0]
            entry.server_id = server.id
            entry.unclaimed = not await self._claim(server, pod)
            self._expect(entry)
            self._kick(pod.identity)
            self._publish(entry)
            return self.status_of(entry)

    # -- delete -----
    async def delete(self, pod: pod_pb2.Pod) -> None:
        if not pod.identity:
            # Only namespace and name: use what the provider knows of the pod.
            known = self._entries.get(_key(pod))
            if known is None:
                return
            pod = known.pod
        async with self._locks.hold(pod.identity):
            await self._stop_converging(pod.identity)
            entry = self._entries.get(_key(pod))
            servers = await self.lookup(pod.identity)
            server = servers[0] if servers else None
            if server is None:
                if entry is not None:
                    self._forget(entry)
                return
            check_namespace(server.owner_namespace, pod.ref.namespace, pod.identity)
            if not self._owns(pod, server):
                _log.info(
                    "pod deleted; its VM belongs to another pod now",
                    extra={"pod": "/".join(_key(pod)), "server": server.id},
                )
                if entry is not None and entry.identity == pod.identity:
                    self._forget(entry)
                return
            if entry is not None:
                entry.progress = Progress("Deleting", f"stopping server {server.name}")
            if pod.keep_on_delete or server.keep:
                await self._keep(server)
                if self._disks is not None:
                    await self._disks.release(server.id, pod_disk_handles(pod, strict=False))
            else:
                await self._destroy(server)
            if entry is not None:
                self._forget(entry)

    def _owns(self, pod: pod_pb2.Pod, server: ServerRecord) -> bool:
        """Whether `pod` runs `server` now: the pod the provider registered for the identity,
        or, when it has none (after a restart), the pod the server's metadata names."""
        holder = self._by_identity.get(pod.identity)
        if holder is not None:
            entry = self._entries.get(holder)
            same_uid = entry is None or not pod.ref.uid or entry.pod.ref.uid in ("", pod.ref.uid)
            return holder == _key(pod) and same_uid
        owner_uid = server.metadata.get(naming.META_POD_UID, "")
        owner = server.pod_key
        if owner is not None and owner != _key(pod):
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
                    await self._act(current, "confirm the resize of", {"confirmResize": None})
                elif current.settled and current.status in (
                    "ACTIVE",
                    "PAUSED",
                    "SUSPENDED",
                    "RESCUE",
                ):
                    await self._act(current, "stop", {"os-stop": None})
                await self._cache.wait_change(current.id, self._cache.by_id.get(current.id), 10)

    async def _destroy(self, server: ServerRecord) -> None:
        """Deletes the server and waits until Nova no longer has it, asking again should a
        delete fail (Nova then clears the deleting task and leaves the server as it was)."""
        deadline = time.monotonic() + self._settings.operation_timeout_seconds
        asked = -1e9
        async with self._watch.urgent():
            while (current := await self._watch.refresh_one(server.id)) is not None:
                if not current.deleting and time.monotonic() - asked > _ACTION_SETTLE_SECONDS / 3:
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
        async with self._locks.hold(identity):
            for server in await self.lookup(identity):
                check_namespace(server.owner_namespace, namespace, identity)
            await self._stop_converging(identity)
            entry = self._entry_of(identity)
            if entry is not None:
                entry.progress = Progress("Deleting", "the VirtualMachine is being deleted")
            for server in await self.lookup(identity):
                await self._destroy(server)
            if entry is not None:
                self._forget(entry)

    async def _act(self, server: ServerRecord, doing: str, action: dict[str, Any]) -> None:
        await self._cloud.call(
            f"{doing} server {server.name}", lambda api: api.action(server.id, action)
        )

    def _expect(self, entry: PodEntry) -> None:
        """Shows the converger's first step in the status right away (the answer of the call
        that kicks it would otherwise show the server as it still is)."""
        server = self.server_of(entry)
        if server is not None and entry.progress is None:
            step = self._next_step(entry, server, set())
            if step is not None and step[3] is not None:
                entry.progress = step[1]

    # -- the converger -----
    def _kick(self, identity: str) -> None:
        task = self._ops.get(identity)
        if task is not None and not task.done():
            self._again.add(identity)
            return
        task = asyncio.create_task(self._converge_loop(identity), name=f"converge-{identity}")
        self._ops[identity] = task

    async def _stop_converging(self, identity: str) -> None:
        self._again.discard(identity)
        task = self._ops.pop(identity, None)
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _converge_loop(self, identity: str) -> None:
        try:
            while True:
                self._again.discard(identity)
                await self._converge(identity)
                if identity not in self._again:
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            _log.exception("converging a server failed", extra={"identity": identity})
        finally:
            if self._ops.get(identity) is asyncio.current_task():
                del self._ops[identity]

    def _entry_of(self, identity: str) -> PodEntry | None:
        key = self._by_identity.get(identity)
        return self._entries.get(key) if key is not None else None

    async def _converge(self, identity: str) -> None:
        deadline = time.monotonic() + self._settings.operation_timeout_seconds
        tried: set[str] = set()
        failures: dict[str, int] = {}
        entry = self._entry_of(identity)
        try:
            async with self._watch.urgent():
                while (entry := self._entry_of(identity)) is not None:
                    if not entry.server_id:
                        return
                    try:
                        server = await self._watch.refresh_one(entry.server_id)
                    except Unavailable:
                        await asyncio.sleep(self._settings.poll_seconds)
                        if time.monotonic() > deadline:
                            return
                        continue
                    if server is None:
                        return
                    if entry.unclaimed and server.status != "BUILD":
                        entry.unclaimed = not await self._claim(server, entry.pod)
                        if entry.unclaimed:
                            await self._cache.wait_change(server.id, server, 5)
                            continue
                    step = self._next_step(entry, server, tried)
                    if step is None:
                        await self._sync_disks(entry, server)
                        return
                    kind, progress, doing, action = step
                    entry.progress = progress
                    self._publish(entry)
                    if time.monotonic() > deadline:
                        entry.note = f"{doing} did not finish in time"
                        _log.warning(
                            "operation timed out", extra={"identity": identity, "step": kind}
                        )
                        return
                    if action is None:  # Nova is busy: wait for it to move on
                        await self._cache.wait_change(server.id, server, 30)
                        continue
                    tried.add(kind)
                    try:
                        await self._act(server, doing, action)
                    except ProviderError as error:
                        failures[kind] = failures.get(kind, 0) + 1
                        again = failures[kind] < _ACTION_ATTEMPTS and (
                            isinstance(error, FailedPrecondition) or is_retryable(error.code)
                        )
                        _log.warning(
                            "action failed",
                            extra={
                                "identity": identity,
                                "step": kind,
                                "error": error.message,
                                "retry": again,
                            },
                        )
                        if again:
                            # A conflict (Nova was still busy) or a hiccup: look again shortly.
                            tried.discard(kind)
                            await asyncio.sleep(min(2.0 ** failures[kind], 15.0))
                        else:
                            entry.note = error.message
                        continue
                    _log.info(
                        "action asked",
                        extra={"identity": identity, "step": kind, "server": server.id},
                    )
                    await self._moved_on(server)
        finally:
            if entry is not None:
                entry.progress = None
                self._publish(entry)

    def _require_disks(self) -> Disks:
        if self._disks is None:
            raise FailedPrecondition("this OpenStack provider has no disks (no Cinder)")
        return self._disks

    async def _sync_disks(self, entry: PodEntry, server: ServerRecord) -> None:
        """Attaches the pod's disks the server lacks and detaches those it dropped; a refusal
        (a disk held by another VM) shows in the pod's status."""
        wanted = pod_disk_handles(entry.pod, strict=False)
        if self._disks is None or server.status not in ("ACTIVE", "SHUTOFF"):
            return
        if not wanted and not entry.dropped_disks:
            return
        doing = f"attaching disks {list(wanted)}" if wanted else "detaching dropped disks"
        entry.progress = Progress("ContainerCreating", doing)
        self._publish(entry)
        try:
            await self._disks.sync(server.id, wanted, entry.dropped_disks)
            entry.dropped_disks = frozenset()
        except ProviderError as error:
            entry.note = error.message
            _log.warning(
                "disks not in line",
                extra={"identity": entry.identity, "server": server.id, "error": error.message},
            )

    async def _moved_on(self, before: ServerRecord) -> None:
        """Waits (briefly) until Nova shows the server changed after an action."""
        after = await self._watch.refresh_one(before.id)
        if after == before:
            await self._cache.wait_change(before.id, after, _ACTION_SETTLE_SECONDS)

    def _next_step(
        self, entry: PodEntry, server: ServerRecord, tried: set[str]
    ) -> tuple[str, Progress | None, str, dict[str, Any] | None] | None:
        """The next thing to do to `server` for `entry`: (kind, progress, doing, action), where
        no action means wait; None when there is nothing to do."""
        if server.gone or server.status == "ERROR":
            return None
        moving = entry.progress if entry.progress is not None else None
        if server.status == "VERIFY_RESIZE" and server.task_state is None:
            progress = moving or Progress("Resizing", f"confirming the resize of {server.name}")
            return ("confirm", progress, "confirm the resize of", {"confirmResize": None})
        if server.busy or (entry.unclaimed and server.status == "BUILD"):
            return ("wait", moving, "wait for", None)
        target = entry.host
        if (
            server.host
            and target
            and server.host != target
            and server.status
            in (
                "ACTIVE",
                "SHUTOFF",
            )
        ):
            text = f"moving server {server.name} from {server.host} to {target}"
            mode = self._settings.migration
            if server.status == "ACTIVE" and mode in ("auto", "live") and "live" not in tried:
                return (
                    "live",
                    Progress("Migrating", f"live-{text}"),
                    f"live-migrate to {target}",
                    {"os-migrateLive": {"host": target, "block_migration": "auto"}},
                )
            if mode in ("auto", "cold") and "cold" not in tried:
                return (
                    "cold",
                    Progress("Migrating", text),
                    f"migrate to {target}",
                    {"migrate": {"host": target}},
                )
            entry.note = (
                f"server {server.name} is on {server.host}, not on {target}: migration failed"
            )
            return None
        flavor = entry.flavor
        if (
            flavor is not None
            and server.flavor_name
            and server.flavor_name not in (flavor.name, flavor.id)
            and server.status in ("ACTIVE", "SHUTOFF")
            and "resize" not in tried
        ):
            return (
                "resize",
                Progress("Resizing", f"resizing server {server.name} to {flavor.name}"),
                f"resize to {flavor.name}",
                {"resize": {"flavorRef": flavor.id}},
            )
        if server.status == "SHUTOFF" and "start" not in tried:
            return (
                "start",
                Progress("PoweringOn", f"starting server {server.name}"),
                "start",
                {"os-start": None},
            )
        return None

    # -- what the watch sees -----
    def _on_change(self, record: ServerRecord, old: ServerRecord | None) -> None:
        key = self._by_identity.get(record.identity)
        entry = self._entries.get(key) if key is not None else None
        if entry is None:
            return
        if not entry.server_id:
            entry.server_id = record.id
        if (record.status == "ERROR" and record.fault is None
                and record.id not in self._reading_fault):
            # Nova's server list leaves the fault out: read it with the server itself, and
            # hold the pod's Failed until then so it fails once, with Nova's reason.
            self._reading_fault.add(record.id)
            self._spawn(self._read_fault(record.id, entry.key))
        self._publish(entry)
        if (
            record.status == "VERIFY_RESIZE"
            and record.task_state is None
            and record.identity not in self._ops
        ):
            self._kick(record.identity)  # heal a resize left unconfirmed (e.g. by a restart)
        if len(self._cache.of_identity(record.identity)) > 1:
            self._spawn(self._dedupe(record.identity))

    async def _read_fault(self, server_id: str, key: PodKey) -> None:
        """Nova records the fault just after the server turns ERROR: read until it shows."""
        try:
            # A minute in all: under load the conductor records it seconds after the status.
            for delay in (0.0, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0):
                await asyncio.sleep(delay)
                try:
                    record = await self._watch.refresh_one(server_id)
                except ProviderError as error:  # Nova slow or away: the next round tries again
                    _log.warning("cannot read an ERROR server's fault yet",
                                 extra={"server": server_id, "error": error.message})
                    continue
                if record is None or record.status != "ERROR" or record.fault is not None:
                    return
        finally:
            self._reading_fault.discard(server_id)
            entry = self._entries.get(key)
            if entry is not None:
                self._publish(entry)  # Failed now, with the fault or without one

    def _on_gone(self, old: ServerRecord) -> None:
        key = self._by_identity.get(old.identity)
        entry = self._entries.get(key) if key is not None else None
        if entry is None or entry.server_id != old.id:
            return
        survivor = self._cache.server_of(old.identity)
        if survivor is not None:
            entry.server_id = survivor.id
        elif entry.progress is None or entry.progress.reason != "Deleting":
            entry.vanished = old.id
            _log.warning("server vanished", extra={"pod": "/".join(entry.key), "server": old.id})
        self._publish(entry)

    def _on_synced(self, records: list[ServerRecord]) -> None:
        now = time.monotonic()
        self._tombstones = {
            k: t for k, t in self._tombstones.items() if now - t < _TOMBSTONE_SECONDS
        }
        for record in records:
            key = record.pod_key
            if key is None or key in self._entries or record.identity in self._by_identity:
                continue
            uid = record.metadata.get(naming.META_POD_UID, "")
            if (uid or "/".join(key)) in self._tombstones:
                continue
            pod = pod_from_metadata(record)
            host = self._nodes.host_of_node(pod.node_name) or record.host or ""
            entry = PodEntry(pod=pod, host=host, server_id=record.id)
            self._entries[key] = entry
            self._by_identity[record.identity] = key
            _log.info(
                "pod adopted from server metadata",
                extra={"pod": "/".join(key), "server": record.id},
            )
            self._publish(entry)
            if record.status == "VERIFY_RESIZE" or (host and record.host and host != record.host):
                self._kick(record.identity)

    async def _dedupe(self, identity: str) -> None:
        async with self._locks.hold(identity):
            await self.lookup(identity)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_log_failure)

    # -- shutdown -----
    def close(self, reason: str) -> None:
        self.hub.close(reason)

    async def stop(self) -> None:
        tasks = [*self._ops.values(), *self._background]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        _log.warning("background task failed", extra={"error": str(exc)})
