"""ExposureController against the fake apiserver: a VM asking to be exposed gets a Service and
an EndpointSlice with its addresses, ready only while it runs, both removed when it stops asking."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
from fakes import Background, FakeKube, fire_retries, running_vm_pod, settle, until, vm_object

from vmlet_facade.events import EventRecorder
from vmlet_facade.exposure import ExposureController
from vmlet_facade.kube import ApiError
from vmlet_facade.virtualmachines import VirtualMachineController
from vmlet_facade.vmapi import path

Obj = dict[str, Any]
VM_PATH = path("virtualmachines", "ns", "web")
POD_PATH = "/api/v1/namespaces/ns/pods/web"
SERVICE_PATH = "/api/v1/namespaces/ns/services/web"
SLICE_PATH = "/apis/discovery.k8s.io/v1/namespaces/ns/endpointslices/web-vmlet"
VM = vm_object("web", expose={"ports": [{"port": 80, "targetPort": 8080}]})
Start = Callable[[], ExposureController]


@pytest.fixture
def start(kube: FakeKube, background: Background) -> Start:
    """Run the VirtualMachine controller (no provider) with the exposure controller on it, as
    cluster.py does, once the test has seeded the apiserver."""
    def go() -> ExposureController:
        client = kube.client
        vms = VirtualMachineController(client, lambda name: None, EventRecorder(client))
        controller = ExposureController(client, vms)
        background.run(vms.run(), controller.stop, vms.stop)
        return controller
    return go


def endpoints(kube: FakeKube) -> list[Obj]:
    return list((kube.get_obj(SLICE_PATH) or {}).get("endpoints") or [])


async def test_a_running_exposed_vm_gets_a_service_and_ready_endpoints(
        kube: FakeKube, start: Start) -> None:
    kube.seed(VM_PATH, VM)
    kube.seed(POD_PATH, running_vm_pod(VM))
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
        kube: FakeKube, start: Start) -> None:
    kube.seed(VM_PATH, VM)
    kube.seed(POD_PATH, running_vm_pod(VM))
    start()
    await until(lambda: kube.get_obj(SERVICE_PATH) is not None)
    await settle()
    await kube.patch(VM_PATH, {"spec": {"expose": None}})
    await until(lambda: kube.get_obj(SERVICE_PATH) is None and kube.get_obj(SLICE_PATH) is None)


async def test_a_failed_apply_is_tried_again_after_a_back_off_that_doubles(
        kube: FakeKube, start: Start) -> None:
    """The fault: the apiserver refuses the Service (a conflict) six times. Once the VM has
    settled (its own start runs the exposure too), each retry waits twice as long as the one
    before, until the apply goes through."""
    kube.fail("APPLY", SERVICE_PATH, ApiError(409, "Conflict", "field manager conflict"),
              times=6)
    kube.seed(VM_PATH, VM)
    exposure = start()
    await until(lambda: kube.writes("APPLY", SERVICE_PATH))
    await settle()
    delays: list[float] = []
    while kube.get_obj(SERVICE_PATH) is None:
        delays += fire_retries(exposure._workers).values()
        await settle()
    assert len(delays) >= 2
    assert all(round(b) == 2 * round(a) for a, b in itertools.pairwise(delays))
    assert len(kube.writes("APPLY", SERVICE_PATH)) == 7
    assert endpoints(kube) == []  # no pod yet: nothing to send traffic to
