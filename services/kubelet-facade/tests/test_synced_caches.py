"""The VM controller acts only on synced caches (issue 13 item 1), against a fake apiserver.

The fault: right after taking the leader Lease, the VirtualMachine list arrives before the pod
list, and a controller that acts on it creates a second pod for a VM that already has one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any, cast

from vmlet_facade.events import EventRecorder
from vmlet_facade.kube import KubeClient
from vmlet_facade.virtualmachines import VirtualMachineController
from vmlet_facade.vmapi import FINALIZER, vm_pod

Obj = dict[str, Any]
VM: Obj = {
    "apiVersion": "vmlet.io/v1alpha1", "kind": "VirtualMachine",
    "metadata": {"name": "web", "namespace": "ns", "uid": "vm-uid", "generation": 1,
                 "finalizers": [FINALIZER]},
    "spec": {"provider": "p", "image": "debian-12", "cpu": 1, "memory": "1Gi", "replicas": 1},
    "status": {"state": "Running", "providerID": "vm-1"},
}


class SlowPodsApiserver:
    """Lists VirtualMachines at once and pods only when ``pods_listed`` is set; records writes."""

    def __init__(self, pods: list[Obj]) -> None:
        self.pods = pods
        self.pods_listed = asyncio.Event()
        self.writes: list[tuple[str, str]] = []

    async def get(self, path: str, **params: str) -> Obj:
        if "/pods" in path:
            await self.pods_listed.wait()
            return {"metadata": {"resourceVersion": "2"}, "items": self.pods}
        return {"metadata": {"resourceVersion": "1"}, "items": [VM]}

    async def stream_watch(self, path: str, params: Mapping[str, str],
                           timeout_seconds: int = 300) -> AsyncIterator[Obj]:
        await asyncio.Event().wait()
        yield {}

    async def create(self, path: str, body: Obj) -> Obj:
        self.writes.append(("create", path))
        return body

    async def patch(self, path: str, body: Any, patch_type: str = "") -> Obj:
        self.writes.append(("patch", path))
        return VM

    async def request(self, method: str, path: str, **kwargs: Any) -> Obj:
        self.writes.append((method, path))
        return {}


async def test_nothing_is_created_before_the_pod_cache_has_loaded() -> None:
    pod = vm_pod(VM)
    pod["metadata"]["uid"] = "pod-uid"
    pod["spec"]["nodeName"] = "n1"
    pod["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    api = SlowPodsApiserver([pod])
    client = cast(KubeClient, api)
    controller = VirtualMachineController(client, lambda name: None, EventRecorder(client))
    runner = asyncio.create_task(controller.run())
    try:
        await asyncio.sleep(0.3)
        assert controller.vms.has_synced and not controller.pods.has_synced
        assert api.writes == []  # the VM is known, its pod is not yet: no decision taken
        api.pods_listed.set()
        await asyncio.sleep(0.3)
        assert controller.pods.has_synced
        assert not [w for w in api.writes if w[0] == "create"]  # its one pod found: no second
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await controller.stop()
