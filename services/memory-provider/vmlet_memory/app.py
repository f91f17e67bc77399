"""Wiring: the cloud, its backends served by the kit (`vmlet_contract.kit`), and the optional
state file, as one provider.

No IaaS to lose: the provider is ready (health's readiness service) as soon as it serves.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from vmlet_contract import ProviderServicers

from .cloud import Cloud, CloudOptions
from .cloudstate import dump, restore
from .endpoints import KubeletEndpoints
from .lifecycle import PodLifecycle
from .nodes import PROVIDER_KIND, NodeProvider
from .notifier import PodNotifier
from .statefile import StateFile, read_state
from .vmservice import Disks, VirtualMachines

__all__ = ["PROVIDER_KIND", "MemoryProvider", "build", "version"]

_log = logging.getLogger(__name__)


def version() -> str:
    """The installed version of the memory provider."""
    try:
        return metadata.version("vmlet-memory-provider")
    except metadata.PackageNotFoundError:
        return "0.0.0"


@dataclass
class MemoryProvider:
    """A ready-to-serve memory provider."""

    cloud: Cloud
    servicers: ProviderServicers
    state_file: StateFile | None = None


def build(options: CloudOptions, *, state_file: Path | None = None) -> MemoryProvider:
    """Makes the cloud (restored from `state_file` when it exists) and its servicers.

    Call it from the event loop that will serve them.
    """
    cloud = Cloud(options, version=version())
    store: StateFile | None = None
    if state_file is not None:
        saved = read_state(state_file)
        if saved is not None:
            restore(cloud, saved)
            _log.info(
                "state restored",
                extra={"path": str(state_file), "machines": len(saved.get("machines", []))},
            )
        store = StateFile(state_file, lambda: dump(cloud))
        cloud.on_change = store.mark_dirty
        cloud.flush = store.flush

    nodes = NodeProvider(cloud)

    async def shutdown() -> None:
        cloud.close()
        nodes.close()
        await cloud.flush()

    servicers = ProviderServicers.from_backends(
        provider=PROVIDER_KIND,
        version=cloud.version,
        lifecycle=PodLifecycle(cloud),
        notifier=PodNotifier(cloud),
        nodes=nodes,
        endpoints=KubeletEndpoints(cloud),
        vms=VirtualMachines(cloud),
        disks=Disks(cloud),
        shutdown_hooks=(shutdown,),
    )
    return MemoryProvider(cloud=cloud, servicers=servicers, state_file=store)
