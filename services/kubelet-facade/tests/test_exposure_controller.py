"""ExposureController against the fake apiserver: a VM asking to be exposed gets a Service and
an EndpointSlice with its addresses, ready only while it runs, both removed when it stops asking."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fakes import FakeKube, fire_retries, settle, until

from vmlet_facade.events import EventRecorder
from vmlet_facade.exposure import ExposureController
from vmlet_facade.kube import ApiError
from vmlet_facade.virtualmachines import VirtualMachineController
from vmlet_facade.vmapi import FINALIZER, path, vm_pod

Obj = dict[str, Any]
VM_PATH = path("virtualmachines", "ns", "web")
SERVICE_PATH = "/api/v1/namespaces/ns/services/web"
SLICE_PATH = "/apis/discovery.k8s.io/v1/namespaces/ns/endpointslices/web-vmlet"

VM: Obj = {"apiVersion": "vmlet.io/v1alpha1", "kind": "VirtualMachine",
           "metadata": {"name": "web", "namespace": "ns", "uid": "vm-uid",
                        "finalizers": [FINALIZER]},
           "spec": {"provider": "fake", "image": "debian-12", "cpu": 1, "memory": "1Gi",
                    "replicas": 1, "expose": {"ports": [{"port": 80, "targetPort": 8080}]}}}


def running_pod() -> Obj:
    pod = vm_pod(VM)
    pod["metadata"]["uid"] = "pod-uid"
    pod["spec"]["nodeName"] = "node-1"
    pod["status"] = {"phase": "Running", "podIPs": [{"ip": "10.0.0.5"}],
                     "conditions": [{"type": "Ready", "status": "True"}],
                     "containerStatuses": [{"name": "vm", "ready": True,
                                            "containerID": "fake://vm-1",
                                            "state": {"running": {}}}]}
    return pod


@pytest.fixture
def kube() -> FakeKube:
    return FakeKube()


@pytest.fixture
async def start(kube: FakeKube) -> AsyncIterator[Any]:
    """Start the VirtualMachine controller (no provider) with the exposure controller on it, as
    cluster.py does, once the test has seeded the apiserver."""
    made: list[tuple[VirtualMachineController, ExposureController, asyncio.Task[None]]] = []

    def go() -> ExposureController:
        client = kube.client
        vms = VirtualMachineController(client, lambda name: None, EventRecorder(client))
        controller = ExposureController(client, vms)
        made.append((vms, controller, asyncio.create_task(vms.run())))
        return controller

    yield go
    for vms, controller, task in made:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await controller.stop()
        await vms.stop()


def endpoints(kube: FakeKube) -> list[Obj]:
    return list((kube.get_obj(SLICE_PATH) or {}).get("endpoints") or [])


async def test_a_running_exposed_vm_gets_a_service_and_ready_endpoints(
        kube: FakeKube, start: Any) -> None:
    kube.seed(VM_PATH, VM)
    kube.seed("/api/v1/namespaces/ns/pods/web", running_pod())
    start()
    await until(lambda: [e for e in endpoints(kube) if e["conditions"]["ready"]])
    service = kube.get_obj(SERVICE_PATH)
    assert service is not None
    assert service["spec"]["ports"] == [{"name": "p80", "port": 80, "targetPort": 8080,
                                         "protocol": "TCP"}]
    assert [r["uid"] for r in service["metadata"]["ownerReferences"]] == ["vm-uid"]
    assert endpoints(kube) == [{"addresses": ["10.0.0.5"], "nodeName": "node-1", "conditions": {
        "ready": True, "serving": True, "terminating": False}}]
    assert kube.get_obj(SLICE_PATH)["ports"] == [  # type: ignore[index]
        {"name": "p80", "port": 8080, "protocol": "TCP"}]


async def test_exposure_is_removed_when_the_vm_stops_asking(
        kube: FakeKube, start: Any) -> None:
    kube.seed(VM_PATH, VM)
    kube.seed("/api/v1/namespaces/ns/pods/web", running_pod())
    start()
    await until(lambda: kube.get_obj(SERVICE_PATH) is not None)
    await settle()
    await kube.patch(VM_PATH, {"spec": {"expose": None}})
    await until(lambda: kube.get_obj(SERVICE_PATH) is None and kube.get_obj(SLICE_PATH) is None)


async def test_a_failed_apply_is_tried_again(kube: FakeKube, start: Any) -> None:
    """The fault: the apiserver refuses the Service (a conflict) while the VM changes nothing:
    it is applied again after the fixed 5 s wait, until it goes through."""
    kube.fail("APPLY", SERVICE_PATH, ApiError(409, "Conflict", "field manager conflict"),
              times=4)
    kube.seed(VM_PATH, VM)
    exposure = start()
    await until(lambda: kube.writes("APPLY", SERVICE_PATH))
    await settle()
    delays: list[float] = []
    while kube.get_obj(SERVICE_PATH) is None:
        delays += fire_retries(exposure._workers).values()
        await settle()
    assert delays and all(4.0 < d <= 5.0 for d in delays)
    assert len(kube.writes("APPLY", SERVICE_PATH)) == 5
    assert endpoints(kube) == []  # no pod yet: nothing to send traffic to
