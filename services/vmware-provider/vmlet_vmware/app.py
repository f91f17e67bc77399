"""Wiring: session, watch, cache, nodes, pods and their backends served by the kit
(`vmlet_contract.kit`), as one provider.

Threads: `workers` threads make the calls to vCenter; one more thread holds the watch's long
poll. Background tasks: the session's supervisor (connect, keep alive, reconnect) and the watch.
The provider is ready (health's readiness service) while the session is connected.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata

from vmlet_contract import ProviderServicers, Readiness

from .backend_endpoints import KubeletEndpoints
from .backend_nodes import NodeBackend
from .backend_pods import PodBackend
from .backend_vms import VirtualMachines
from .cache import Cache
from .config import Settings
from .disks import Disks
from .nodes import PROVIDER_KIND, NodeBook
from .pods import Pods
from .session import Session
from .snapshots import Snapshots
from .vms import Machines
from .watch import Watch

__all__ = ["PROVIDER_KIND", "VSphereProvider", "build", "version"]

_log = logging.getLogger(__name__)


def version() -> str:
    """The installed version of the vSphere provider."""
    try:
        return metadata.version("vmlet-vmware-provider")
    except metadata.PackageNotFoundError:
        return "0.0.0"


@dataclass
class VSphereProvider:
    """A ready-to-serve vSphere provider; `start` it in the loop that serves it."""

    settings: Settings
    session: Session
    cache: Cache
    watch: Watch
    book: NodeBook
    pods: Pods
    servicers: ProviderServicers
    closing: asyncio.Event
    pools: tuple[ThreadPoolExecutor, ...]
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> None:
        """Starts connecting to vCenter and watching it; returns at once."""
        self.tasks = [
            asyncio.create_task(self.session.run(), name="vsphere-session"),
            asyncio.create_task(self.watch.run(), name="vsphere-watch"),
        ]

    def end_streams(self) -> None:
        """Ends NotifyPods, NotifyNodeStatus and followed logs (at shutdown)."""
        self.closing.set()
        self.pods.close("the provider is shutting down; reconnect")
        self.book.hub.close("the provider is shutting down; reconnect")

    async def stop(self) -> None:
        """Stops the watch and the session, and lets the threads go."""
        self.end_streams()
        await self.watch.close()
        await self.session.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for pool in self.pools:
            pool.shutdown(wait=False, cancel_futures=True)


def build(settings: Settings) -> VSphereProvider:
    """Makes the provider's parts; call it from the loop that will serve them."""
    pool = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="vsphere")
    watch_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vsphere-watch")
    session = Session(settings, pool)
    cache = Cache()
    watch = Watch(session, cache, watch_pool)
    book = NodeBook(cache, session, settings)
    machines = Machines(session, cache)
    disks = Disks(session, cache, machines, book)
    pods = Pods(session, cache, machines, book, disks)
    closing = asyncio.Event()
    readiness = Readiness(session.state.connected, session.state.message)
    session.add_listener(lambda state: readiness.set(state.connected, state.message))
    provider: VSphereProvider

    async def shutdown() -> None:
        provider.end_streams()

    pod_backend = PodBackend(pods)
    servicers = ProviderServicers.from_backends(
        provider=PROVIDER_KIND,
        version=version(),
        lifecycle=pod_backend,
        notifier=pod_backend,
        nodes=NodeBackend(session, book),
        endpoints=KubeletEndpoints(session, book, pods, closing),
        vms=VirtualMachines(pods, book, Snapshots(session, cache, machines, pods.locks)),
        disks=disks,
        shutdown_hooks=(shutdown,),
        readiness=readiness,
    )
    provider = VSphereProvider(
        settings=settings,
        session=session,
        cache=cache,
        watch=watch,
        book=book,
        pods=pods,
        servicers=servicers,
        closing=closing,
        pools=(pool, watch_pool),
    )
    return provider
