"""Wiring: cloud, watch, nodes, pods, snapshots and their backends served by the kit
(`vmlet_contract.kit`), as one provider.

Threads: `workers` threads make every call to OpenStack (`cloud`). Background tasks: the server
watch and the node poll; both start at once and keep going, whether OpenStack answers or not.
The provider is ready (health's readiness service) once OpenStack answered, and while it answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from importlib import metadata

from vmlet_contract import ProviderServicers, Readiness

from .backend_endpoints import KubeletEndpoints
from .backend_nodes import NodeBackend
from .backend_pods import PodBackend
from .backend_vms import VirtualMachines
from .catalog import Catalog
from .cloud import Cloud
from .config import Settings
from .disks import Disks
from .nodes import PROVIDER_KIND, NodeBook
from .pods import Pods
from .snapshots import Snapshots
from .stats import Stats
from .watch import ServerCache, Watch

__all__ = ["PROVIDER_KIND", "OpenStackProvider", "build", "version"]

_log = logging.getLogger(__name__)


def version() -> str:
    """The installed version of the OpenStack provider."""
    try:
        return metadata.version("vmlet-openstack-provider")
    except metadata.PackageNotFoundError:
        return "0.0.0"


@dataclass
class OpenStackProvider:
    """A ready-to-serve OpenStack provider; `start` it in the loop that serves it."""

    settings: Settings
    cloud: Cloud
    watch: Watch
    book: NodeBook
    pods: Pods
    servicers: ProviderServicers
    closing: asyncio.Event
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> None:
        """Starts watching servers and compute hosts; returns at once."""
        self.tasks = [
            asyncio.create_task(self._watch_after_nodes(), name="openstack-watch"),
            asyncio.create_task(self.book.run(self.closing), name="openstack-nodes"),
        ]

    async def _watch_after_nodes(self) -> None:
        # Pods adopted from server metadata after a restart need the node -> host map, so the
        # first server list waits (a little) for the first host list.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.book.wait_loaded(), 3 * self.settings.node_poll_seconds)
        await self.watch.run(self.closing)

    def end_streams(self) -> None:
        """Ends NotifyPods, NotifyNodeStatus and followed logs (at shutdown)."""
        self.closing.set()
        self.pods.close("the provider is shutting down; reconnect")
        self.book.close("the provider is shutting down; reconnect")

    async def stop(self) -> None:
        """Stops the background work and lets the threads go."""
        self.end_streams()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.pods.stop()
        self.cloud.close()


def build(settings: Settings) -> OpenStackProvider:
    """Makes the provider's parts; call it from the loop that will serve them."""
    cloud = Cloud(settings)
    cache = ServerCache()
    watch = Watch(cloud, cache, settings)
    book = NodeBook(cloud, settings)
    catalog = Catalog(cloud)
    disks = Disks(cloud, cache, settings)
    pods = Pods(cloud, cache, watch, book, catalog, settings, disks)
    snapshots = Snapshots(cloud, cache, watch, pods, book, settings)
    closing = asyncio.Event()
    readiness = Readiness(False, "OpenStack has not answered yet")
    cloud.listen(readiness.set)
    provider: OpenStackProvider

    async def shutdown() -> None:
        provider.end_streams()

    pod_backend = PodBackend(pods)
    servicers = ProviderServicers.from_backends(
        provider=PROVIDER_KIND,
        version=version(),
        lifecycle=pod_backend,
        notifier=pod_backend,
        nodes=NodeBackend(cloud, book),
        endpoints=KubeletEndpoints(cloud, pods, Stats(cloud, book, pods), settings, closing),
        vms=VirtualMachines(snapshots, disks),
        disks=disks,
        shutdown_hooks=(shutdown,),
        readiness=readiness,
    )
    provider = OpenStackProvider(
        settings=settings,
        cloud=cloud,
        watch=watch,
        book=book,
        pods=pods,
        servicers=servicers,
        closing=closing,
    )
    return provider
