"""VirtualMachineController against the fakes: power via replicas, resize, migration, the
finalizer (known, failing and unknown provider), a taken pod name and a lost VM."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fakes import Background, FakeKube, FakeProvider, fire_retries, settle, until
from fakes.objects import running_vm_pod, vm_object

from vmlet.provider.v1 import virtual_machine_service_pb2 as vmpb
from vmlet_contract.errors import Unavailable
from vmlet_facade.events import EventRecorder
from vmlet_facade.kube import ApiError
from vmlet_facade.kube.client import PATCH_JSON, PATCH_STRATEGIC
from vmlet_facade.ownership import Ownership, derive
from vmlet_facade.podconvert import to_provider_pod
from vmlet_facade.references import Resolved
from vmlet_facade.virtualmachines import VirtualMachineController
from vmlet_facade.vmapi import FINALIZER, MIGRATION_ANNOTATION, MIGRATION_SOURCE_ANNOTATION, path

Obj = dict[str, Any]
VM_PATH = path("virtualmachines", "ns", "db")
POD_PATH = "/api/v1/namespaces/ns/pods/db"
Start = Callable[[], VirtualMachineController]


@pytest.fixture
def start(kube: FakeKube, provider: FakeProvider, background: Background) -> Start:
    """Run the controller, with "fake" as its one provider, once the test has seeded."""
    def go() -> VirtualMachineController:
        client = kube.client
        ctl = VirtualMachineController(client, {"fake": provider}.get, EventRecorder(client))
        background.run(ctl.run(), ctl.stop)
        return ctl
    return go


def vm_status(kube: FakeKube) -> Obj:
    return kube.status(VM_PATH)


async def test_replicas_1_makes_exactly_one_vm_pod_and_adds_the_finalizer(
        kube: FakeKube, start: Start) -> None:
    bare = vm_object()
    bare["metadata"]["finalizers"] = []
    kube.seed(VM_PATH, bare)
    start()
    await until(lambda: kube.get_obj(POD_PATH) is not None)
    await settle()
    pod = kube.get_obj(POD_PATH)
    assert pod is not None
    assert [r["uid"] for r in pod["metadata"]["ownerReferences"]] == ["vm-uid"]
    assert kube.get_obj(VM_PATH)["metadata"]["finalizers"] == [FINALIZER]  # type: ignore[index]
    assert ("PodCreated", "Normal") in kube.events()
    assert vm_status(kube)["state"] == "Provisioning"
    assert len(kube.writes("POST", "/api/v1/namespaces/ns/pods")) == 1


async def test_the_vm_pod_carries_no_identity_yet_its_identity_derives(
        kube: FakeKube, start: Start) -> None:
    """One identity carrier: the VirtualMachine's UID, proven by the pod's ownerReference; the
    pod and the status repeat it nowhere, and the provider is still sent that UID."""
    kube.seed(VM_PATH, vm_object())
    start()
    await until(lambda: kube.get_obj(POD_PATH) is not None and "state" in vm_status(kube))
    pod = kube.get_obj(POD_PATH)
    assert pod is not None
    assert "vmlet.io/identity" not in (pod["metadata"].get("annotations") or {})
    assert "identity" not in vm_status(kube)

    async def lookup(ns: str, name: str) -> Obj | None:
        return kube.get_obj(path("virtualmachines", ns, name))

    owned = await derive(pod, lookup)
    assert owned == Ownership("vm-uid", keep_on_delete=True, owner="db")
    assert pod["metadata"]["uid"] != "vm-uid"  # not the pod's own: a VM pod, not a bare one
    assert to_provider_pod(pod, Resolved(), owned).identity == "vm-uid"


async def test_replicas_0_deletes_the_pod_and_never_the_vm_object(
        kube: FakeKube, provider: FakeProvider, start: Start) -> None:
    kube.seed(VM_PATH, vm_object(replicas=0))
    kube.seed(POD_PATH, running_vm_pod(vm_object()))
    provider.vms["vm-uid"] = vmpb.VirtualMachine(identity="vm-uid")
    start()
    await until(lambda: kube.writes("DELETE", POD_PATH))
    await settle()
    assert kube.writes("DELETE", POD_PATH)[0].body["preconditions"] == {"uid": "pod-uid"}
    assert not provider.called("delete_vm") and "vm-uid" in provider.vms
    assert vm_status(kube)["state"] == "Stopping"
    await kube.delete(POD_PATH, {"gracePeriodSeconds": 0})  # its kubelet let it go
    await until(lambda: vm_status(kube).get("state") == "Stopped")
    assert not kube.writes("POST", "/api/v1/namespaces/ns/pods")


async def test_replicas_back_to_1_makes_a_pod_again(
        kube: FakeKube, start: Start) -> None:
    kube.seed(VM_PATH, vm_object(replicas=0))
    start()
    await until(lambda: vm_status(kube).get("state") == "Stopped")
    assert kube.get_obj(POD_PATH) is None
    await kube.patch(VM_PATH, {"spec": {"replicas": 1}})
    await until(lambda: kube.get_obj(POD_PATH) is not None)


async def test_no_decision_before_the_pod_cache_is_synced(
        kube: FakeKube, start: Start) -> None:
    """The fault: the VM list is complete, the pod list is not. A controller acting now would
    make a second pod (or a 409) for a VM that has one."""
    listed = kube.hold_list("/api/v1/pods")
    kube.seed(VM_PATH, vm_object())
    kube.seed(POD_PATH, running_vm_pod(vm_object()))
    controller = start()
    await settle()
    assert controller.vms.has_synced and not controller.pods.has_synced
    assert kube.writes() == []
    listed.set()
    await until(lambda: vm_status(kube).get("state") == "Running")
    assert not kube.writes("POST", "/api/v1/namespaces/ns/pods")


async def test_a_pod_name_taken_by_another_pod_is_reported_never_a_second_pod(
        kube: FakeKube, start: Start) -> None:
    """The fault: the create meets 409 AlreadyExists from a pod that is not this VM's."""
    kube.seed(POD_PATH, {"metadata": {"name": "db", "namespace": "ns", "uid": "squatter"},
                         "spec": {"containers": [{"name": "c", "image": "nginx"}]}})
    kube.seed(VM_PATH, vm_object())
    start()
    await until(lambda: vm_status(kube).get("state") == "Failed")
    assert ("PodNameTaken", "Warning") in kube.events()
    assert len(kube.writes("POST", "/api/v1/namespaces/ns/pods")) == 1
    assert kube.get_obj(POD_PATH)["metadata"]["uid"] == "squatter"  # type: ignore[index]
    assert not kube.writes("DELETE", POD_PATH)


async def test_a_lost_vm_is_reported_and_not_made_anew(
        kube: FakeKube, provider: FakeProvider, start: Start) -> None:
    lost = vm_object()
    lost["status"] = {"state": "Stopped", "providerID": "fake://vm-1"}
    kube.seed(VM_PATH, lost)
    start()
    await until(lambda: vm_status(kube).get("state") == "Failed")
    assert provider.called("get_vm") == [("vm-uid", "ns")]
    assert kube.get_obj(POD_PATH) is None
    conditions = {c["type"]: c["status"] for c in vm_status(kube)["conditions"]}
    assert conditions["VMLost"] == "True"
    assert ("VMLost", "Warning") in kube.events()


async def test_a_size_change_resizes_the_pod_in_place(
        kube: FakeKube, start: Start) -> None:
    kube.seed(VM_PATH, vm_object(cpu=2, memory="2Gi"))
    kube.seed(POD_PATH, running_vm_pod(vm_object()))  # made for 1 CPU, 1Gi
    start()
    await until(lambda: kube.writes("PATCH", POD_PATH + "/resize"))
    call = kube.writes("PATCH", POD_PATH + "/resize")[0]
    assert call.patch_type == PATCH_STRATEGIC
    size = {"cpu": "2", "memory": "2Gi"}
    assert call.body == {"spec": {"containers": [{"name": "vm", "resources": {
        "requests": size, "limits": size}}]}}
    assert not kube.writes("DELETE", POD_PATH)


async def test_a_migration_replaces_the_pod_on_its_source_node(
        kube: FakeKube, start: Start) -> None:
    moving = vm_object()
    moving["metadata"]["annotations"] = {MIGRATION_ANNOTATION: "m1",
                                         MIGRATION_SOURCE_ANNOTATION: "node-1"}
    kube.seed(VM_PATH, moving)
    kube.seed(POD_PATH, running_vm_pod(vm_object(), node="node-1"))
    start()
    await until(lambda: kube.writes("DELETE", POD_PATH))
    assert ("Migrating", "Normal") in kube.events()


async def test_deleting_the_vm_deletes_its_pod_then_destroys_the_vm_object(
        kube: FakeKube, provider: FakeProvider, start: Start) -> None:
    kube.seed(VM_PATH, vm_object())
    kube.seed(POD_PATH, running_vm_pod(vm_object()))
    provider.vms["vm-uid"] = vmpb.VirtualMachine(identity="vm-uid")
    start()
    await until(lambda: vm_status(kube).get("state") == "Running")
    await kube.delete(VM_PATH)  # held by the finalizer
    await until(lambda: kube.writes("DELETE", POD_PATH))
    await settle()
    assert not provider.called("delete_vm")  # not while its pod may still run it
    await kube.delete(POD_PATH, {"gracePeriodSeconds": 0})
    await until(lambda: kube.get_obj(VM_PATH) is None)
    assert provider.called("delete_vm") == [("vm-uid", "ns")]
    assert "vm-uid" not in provider.vms
    assert ("Destroyed", "Normal") in kube.events()
    patch = [c for c in kube.writes("PATCH", VM_PATH) if c.patch_type == PATCH_JSON]
    assert patch[0].body[0] == {"op": "test", "path": "/metadata/finalizers/0",
                                "value": FINALIZER}


async def test_the_finalizer_stays_while_the_provider_fails(
        kube: FakeKube, provider: FakeProvider, start: Start) -> None:
    kube.seed(VM_PATH, vm_object(replicas=0))
    provider.vms["vm-uid"] = vmpb.VirtualMachine(identity="vm-uid")
    provider.fail("delete_vm", Unavailable("the IaaS is down"), times=2)
    controller = start()
    await until(lambda: vm_status(kube).get("state") == "Stopped")
    await settle()  # the status write has come back through the watch
    await kube.delete(VM_PATH)
    await until(lambda: provider.called("delete_vm"))
    await settle()
    held = kube.get_obj(VM_PATH)
    assert held is not None and held["metadata"]["finalizers"] == [FINALIZER]
    assert {c["reason"] for c in held["status"]["conditions"]} >= {"DestroyPending"}
    assert 0.5 < fire_retries(controller._workers)["ns/db"] <= 1.0
    await until(lambda: len(provider.called("delete_vm")) == 2)
    await settle()
    assert 1.0 < fire_retries(controller._workers)["ns/db"] <= 2.0  # doubled
    await until(lambda: kube.get_obj(VM_PATH) is None)
    assert "vm-uid" not in provider.vms


async def test_an_unknown_provider_lets_the_vm_go_and_records_the_decision(
        kube: FakeKube, start: Start) -> None:
    orphan = vm_object(replicas=0)
    orphan["spec"]["provider"] = "gone"
    kube.seed(VM_PATH, orphan)
    start()
    await until(lambda: vm_status(kube).get("state") == "Stopped")
    await settle()  # the status write has come back through the watch
    await kube.delete(VM_PATH)
    await until(lambda: kube.get_obj(VM_PATH) is None)
    assert ("ProviderUnknown", "Warning") in kube.events()


async def test_a_conflicting_finalizer_removal_is_retried(
        kube: FakeKube, provider: FakeProvider, start: Start) -> None:
    """The fault: someone changed the finalizers meanwhile (the JSON patch's test fails, 422),
    or the write meets 409: the VirtualMachine stays until a removal succeeds."""
    kube.seed(VM_PATH, vm_object(replicas=0))
    controller = start()
    await until(lambda: vm_status(kube).get("state") == "Stopped")
    await settle()  # the status write has come back through the watch
    await kube.delete(VM_PATH)
    kube.fail("PATCH", VM_PATH, ApiError(409, "Conflict", "the object has been modified"))
    await until(lambda: provider.called("delete_vm"))
    await settle()
    assert kube.get_obj(VM_PATH) is not None
    fire_retries(controller._workers)
    await until(lambda: kube.get_obj(VM_PATH) is None)
    assert len(provider.called("delete_vm")) == 2  # destroying twice is harmless (idempotent)
    removals = [c for c in kube.writes("PATCH", VM_PATH) if c.patch_type == PATCH_JSON]
    assert len(removals) == 2 and removals[0].body == removals[1].body


async def test_a_failed_destroy_waits_for_its_back_off(
        kube: FakeKube, provider: FakeProvider, start: Start) -> None:
    """Issue 17 item 3: the controller's own status write after a failed DeleteVM
    (DestroyPending) comes back through the watch; it must not run the VirtualMachine again
    before its back-off (a change of status only does not wake a key backing off)."""
    kube.seed(VM_PATH, vm_object(replicas=0))
    provider.vms["vm-uid"] = vmpb.VirtualMachine(identity="vm-uid")
    provider.fail("delete_vm", Unavailable("the IaaS is down"))
    controller = start()
    await until(lambda: vm_status(kube).get("state") == "Stopped")
    await settle()
    await kube.delete(VM_PATH)
    await until(lambda: provider.called("delete_vm"))
    await settle()
    assert len(provider.called("delete_vm")) == 1
    assert controller._workers.retry_pending("ns/db")
