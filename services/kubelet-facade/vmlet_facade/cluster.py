"""The cluster-wide controllers (VirtualMachines and their operations), run by the one facade
that holds the leader Lease.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Mapping

from vmlet_facade.events import EventRecorder
from vmlet_facade.exposure import ExposureController
from vmlet_facade.kube import KubeClient
from vmlet_facade.leader import LeaderElector
from vmlet_facade.operations import OperationsController
from vmlet_facade.provider import Provider
from vmlet_facade.provisioning import Provisioner
from vmlet_facade.virtualmachines import VirtualMachineController

__all__ = ["run_cluster_controllers"]

LEASE_NAME = "vmlet-cluster-controllers"


async def run_cluster_controllers(client: KubeClient, providers: Mapping[str, Provider],
                                  events: EventRecorder, namespace: str) -> None:
    """Campaign for the leader Lease in ``namespace``; run the controllers while leading."""

    async def lead() -> None:
        vms = VirtualMachineController(client, providers.get, events)
        ops = OperationsController(client, providers.get, events, vms)
        exposure = ExposureController(client, vms)
        disks = Provisioner(client, providers.get, events)
        try:
            await asyncio.gather(vms.run(), ops.run(), disks.run())
        finally:
            for controller in (vms, ops, exposure, disks):
                await controller.stop()

    identity = f"{socket.gethostname()}-{os.getpid()}"
    await LeaderElector(client, namespace, LEASE_NAME, identity).run(lead)
