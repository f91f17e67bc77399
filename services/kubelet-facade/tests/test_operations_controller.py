"""OperationsController and operation pods against the fakes: backup, restore, migration."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from fakes import Background, FakeKube, FakeProvider, fire_retries, settle, until
from fakes.objects import running_vm_pod, vm_object

from vmlet.provider.v1 import pod_pb2 as pb
from vmlet.provider.v1 import virtual_machine_service_pb2 as vmpb
from vmlet_contract.errors import NotFound, Unavailable
from vmlet_facade import operations, vmapi
from vmlet_facade.events import EventRecorder
from vmlet_facade.operationpods import run_operation
from vmlet_facade.operations import OperationsController
from vmlet_facade.virtualmachines import VirtualMachineController
from vmlet_facade.vmapi import path

Obj = dict[str, Any]
VM_PATH = path("virtualmachines", "ns", "db")
BACKUP_PATH = path("virtualmachinebackups", "ns", "b1")
RESTORE_PATH = path("virtualmachinerestores", "ns", "r1")
MIGRATION_PATH = path("virtualmachinemigrations", "ns", "m1")
JOB_PATH = "/apis/batch/v1/namespaces/ns/jobs/b1-backup"
VM = vm_object()
Start = Callable[[], Awaitable[OperationsController]]


def seed_running_vm(kube: FakeKube, node: str = "node-1") -> None:
    kube.seed(VM_PATH, VM)
    kube.seed("/api/v1/namespaces/ns/pods/db", running_vm_pod(VM, node))


def ready_node(name: str) -> Obj:
    return {"metadata": {"name": name}, "spec": {},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}}


@pytest.fixture
def start(kube: FakeKube, provider: FakeProvider, background: Background) -> Start:
    """Run the VirtualMachine and operations controllers as cluster.py does."""
    async def go() -> OperationsController:
        client = kube.client
        events = EventRecorder(client)
        vms = VirtualMachineController(client, {"fake": provider}.get, events)
        ops = OperationsController(client, {"fake": provider}.get, events, vms)
        background.run(vms.run(), ops.stop, vms.stop)
        background.run(ops.run())
        return ops
    return go


async def test_a_backup_becomes_a_job_on_the_vms_node_and_ends_with_its_snapshot(
        kube: FakeKube, start: Start) -> None:
    seed_running_vm(kube)
    kube.seed(BACKUP_PATH, {"metadata": {"name": "b1", "namespace": "ns"},
                            "spec": {"vmName": "db"}})
    await start()
    await until(lambda: kube.get_obj(JOB_PATH) is not None)
    job = kube.get_obj(JOB_PATH)
    assert job is not None
    template = job["spec"]["template"]
    assert template["spec"]["nodeSelector"]["kubernetes.io/hostname"] == "node-1"
    assert template["metadata"]["annotations"] == {
        vmapi.OPERATION_ANNOTATION: "backup", vmapi.TARGET_IDENTITY_ANNOTATION: "vm-uid",
        vmapi.SNAPSHOT_NAME_ANNOTATION: "ns-b1"}
    await until(lambda: kube.status(BACKUP_PATH).get("state") == "Pending")
    assert kube.status(BACKUP_PATH)["identity"] == "vm-uid"
    # The Job's pod ran on the VM's node (the pod controller's part) and the Job completed.
    kube.seed("/api/v1/namespaces/ns/pods/b1-backup-x", {
        "metadata": {"name": "b1-backup-x", "labels": {"vmlet.io/backup": "b1"}},
        "spec": {"nodeName": "node-1", "containers": [{"name": "backup", "image": "x"}]},
        "status": {"phase": "Succeeded", "containerStatuses": [{"name": "backup", "state": {
            "terminated": {"exitCode": 0, "message": "snap-7\n"}}}]}})
    await kube.patch(JOB_PATH + "/status", {"status": {
        "conditions": [{"type": "Complete", "status": "True"}]}})
    await until(lambda: kube.status(BACKUP_PATH).get("state") == "Succeeded")
    assert kube.status(BACKUP_PATH)["snapshotID"] == "snap-7"
    assert len(kube.writes("POST", "/jobs")) == 1


async def test_a_backup_of_a_vm_never_placed_waits_and_of_no_vm_fails(
        kube: FakeKube, start: Start) -> None:
    stopped = {**VM, "spec": {**VM["spec"], "replicas": 0}}
    kube.seed(VM_PATH, stopped)
    kube.seed(BACKUP_PATH, {"metadata": {"name": "b1", "namespace": "ns"},
                            "spec": {"vmName": "db"}})
    kube.seed(path("virtualmachinebackups", "ns", "b2"),
              {"metadata": {"name": "b2", "namespace": "ns"}, "spec": {"vmName": "nope"}})
    ops = await start()
    await until(lambda: kube.status(BACKUP_PATH).get("state") == "Pending")
    await until(lambda: kube.status(path("virtualmachinebackups", "ns", "b2")).get(
        "state") == "Failed")
    await settle()
    assert {c["reason"] for c in kube.status(BACKUP_PATH)["conditions"]} == {"VMNotPlaced"}
    assert kube.get_obj(JOB_PATH) is None
    assert ops._workers.retry_pending("backup:ns/b1")


RESTORE: Obj = {"metadata": {"name": "r1", "namespace": "ns"}, "spec": {"backupName": "b1"}}


def succeeded_backup() -> Obj:
    return {"metadata": {"name": "b1", "namespace": "ns"}, "spec": {"vmName": "db"},
            "status": {"state": "Succeeded", "identity": "vm-uid", "snapshotID": "snap-1"}}


async def test_a_restore_reverts_the_vm_to_the_backups_snapshot(
        kube: FakeKube, provider: FakeProvider, start: Start) -> None:
    seed_running_vm(kube)
    provider.snapshots["snap-1"] = vmpb.Snapshot(id="snap-1", identity="vm-uid")
    kube.seed(BACKUP_PATH, succeeded_backup())
    kube.seed(RESTORE_PATH, RESTORE)
    await start()
    await until(lambda: kube.status(RESTORE_PATH).get("state") == "Succeeded")
    assert provider.called("revert_to_snapshot") == [("vm-uid", "snap-1", "ns")]


async def test_a_restore_retries_an_unavailable_provider_after_its_back_off(
        kube: FakeKube, provider: FakeProvider, start: Start,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 17 item 3: each try of the revert rewrote the restore's startTime, and that status
    write, back through the watch, ran the restore again at once, past its back-off. The start
    time is kept and the retries wait 1, 2, 4 s."""
    ticks = iter(range(10**6))
    monkeypatch.setattr(operations, "now", lambda: f"2026-01-01T00:00:{next(ticks):02d}Z")
    seed_running_vm(kube)
    provider.snapshots["snap-1"] = vmpb.Snapshot(id="snap-1", identity="vm-uid")
    provider.fail("revert_to_snapshot", Unavailable("the IaaS is down"), times=3)
    kube.seed(BACKUP_PATH, succeeded_backup())
    kube.seed(RESTORE_PATH, RESTORE)
    ops = await start()
    await until(lambda: provider.called("revert_to_snapshot"))
    await settle()
    started = kube.status(RESTORE_PATH)["startTime"]
    assert kube.status(RESTORE_PATH)["state"] == "Running"  # not failed: tried again
    assert len(provider.called("revert_to_snapshot")) == 1  # the back-off stands
    delays: list[float] = []
    while kube.status(RESTORE_PATH)["state"] == "Running":
        assert kube.status(RESTORE_PATH)["startTime"] == started
        delays.append(fire_retries(ops._workers)["restore:ns/r1"])
        await settle()
    assert [round(d) for d in delays] == [1, 2, 4]
    assert kube.status(RESTORE_PATH)["state"] == "Succeeded"
    assert kube.status(RESTORE_PATH)["startTime"] == started
    assert len(provider.called("revert_to_snapshot")) == 4


async def test_a_restore_to_a_snapshot_the_provider_lacks_fails(
        kube: FakeKube, provider: FakeProvider, start: Start) -> None:
    seed_running_vm(kube)
    kube.seed(BACKUP_PATH, succeeded_backup())
    kube.seed(RESTORE_PATH, RESTORE)
    await start()
    await until(lambda: kube.status(RESTORE_PATH).get("state") == "Failed")
    assert {c["reason"] for c in kube.status(RESTORE_PATH)["conditions"]} == {"NotFound"}


async def test_a_restore_waits_for_its_backup(kube: FakeKube, provider: FakeProvider,
                                              start: Start) -> None:
    seed_running_vm(kube)
    kube.seed(BACKUP_PATH, {"metadata": {"name": "b1", "namespace": "ns"},
                            "spec": {"vmName": "db"}, "status": {"state": "Running"}})
    kube.seed(RESTORE_PATH, RESTORE)
    await start()
    await until(lambda: kube.status(RESTORE_PATH).get("state") == "Pending")
    assert not provider.called("revert_to_snapshot")


async def test_a_migration_marks_the_vm_for_its_target_node(
        kube: FakeKube, start: Start) -> None:
    seed_running_vm(kube)
    kube.seed("/api/v1/nodes/node-2", ready_node("node-2"))
    kube.seed(MIGRATION_PATH, {"metadata": {"name": "m1", "namespace": "ns"},
                               "spec": {"vmName": "db", "targetNode": "node-2"}})
    await start()
    await until(lambda: kube.status(MIGRATION_PATH).get("state") == "Running")
    annotations = kube.get_obj(VM_PATH)["metadata"]["annotations"]  # type: ignore[index]
    assert annotations == {vmapi.MIGRATION_ANNOTATION: "m1",
                           vmapi.MIGRATION_SOURCE_ANNOTATION: "node-1",
                           vmapi.MIGRATION_TARGET_ANNOTATION: "node-2"}
    # The VirtualMachine controller then replaces the pod on the source node.
    await until(lambda: kube.writes("DELETE", "/api/v1/namespaces/ns/pods/db"))


async def test_a_migration_to_a_node_not_ready_fails_and_leaves_the_vm_alone(
        kube: FakeKube, start: Start) -> None:
    seed_running_vm(kube)
    kube.seed(MIGRATION_PATH, {"metadata": {"name": "m1", "namespace": "ns"},
                               "spec": {"vmName": "db", "targetNode": "node-9"}})
    await start()
    await until(lambda: kube.status(MIGRATION_PATH).get("state") == "Failed")
    assert "TargetNotReady" in {c["reason"] for c in kube.status(MIGRATION_PATH)["conditions"]}
    assert not (kube.get_obj(VM_PATH) or {})["metadata"].get("annotations")
    assert not kube.writes("DELETE", "/api/v1/namespaces/ns/pods/db")


POD_PATH = "/api/v1/namespaces/ns/pods/db"


async def test_a_migration_ends_as_its_vm_runs_elsewhere_without_waiting_for_a_poll(
        kube: FakeKube, provider: FakeProvider, start: Start) -> None:
    """Issue 17 item 6: migrations were looked at again every second. Now the VM's change (its
    new pod running on the target) ends the migration at once; only its timeout is a timer."""
    seed_running_vm(kube)
    provider.vms["vm-uid"] = vmpb.VirtualMachine(identity="vm-uid")  # the VM the pod ran
    kube.seed("/api/v1/nodes/node-2", ready_node("node-2"))
    kube.seed(MIGRATION_PATH, {"metadata": {"name": "m1", "namespace": "ns"},
                               "spec": {"vmName": "db", "targetNode": "node-2"}})
    ops = await start()
    await until(lambda: kube.writes("DELETE", POD_PATH))  # the VM pod leaves node-1
    assert kube.status(MIGRATION_PATH)["state"] == "Running"
    assert ops._workers.retry_pending("migration:ns/m1")  # its timeout
    # The old pod ends; the scheduler binds the VM controller's new pod to node-2; it runs.
    await kube.delete(POD_PATH, {"gracePeriodSeconds": 0})
    await until(lambda: (kube.get_obj(POD_PATH) or {}).get("metadata", {}).get("uid")
                not in (None, "pod-uid"))
    running = running_vm_pod(VM, "node-2", ip="10.0.0.9")
    await kube.patch(POD_PATH, {"spec": {"nodeName": "node-2"}})
    await kube.patch(POD_PATH + "/status", {"status": running["status"]})
    await until(lambda: kube.status(MIGRATION_PATH).get("state") == "Succeeded")
    assert kube.status(MIGRATION_PATH)["targetNode"] == "node-2"
    assert not (kube.get_obj(VM_PATH) or {})["metadata"].get("annotations")
    await until(lambda: not ops._workers.retry_pending("migration:ns/m1"))  # no timeout left


async def test_a_migration_waiting_for_its_vm_starts_when_the_vm_runs(
        kube: FakeKube, start: Start) -> None:
    kube.seed(VM_PATH, VM)  # its pod is not there yet: the VM is not Running
    kube.seed("/api/v1/nodes/node-2", ready_node("node-2"))
    kube.seed(MIGRATION_PATH, {"metadata": {"name": "m1", "namespace": "ns"},
                               "spec": {"vmName": "db", "targetNode": "node-2"}})
    await start()
    await until(lambda: kube.status(MIGRATION_PATH).get("state") == "Pending"
                and kube.get_obj(POD_PATH) is not None)
    assert {c["reason"] for c in kube.status(MIGRATION_PATH)["conditions"]} == {"WaitingForVM"}
    running = running_vm_pod(VM, "node-1")
    await kube.patch(POD_PATH, {"spec": {"nodeName": "node-1"}})
    await kube.patch(POD_PATH + "/status", {"status": running["status"]})
    await until(lambda: kube.status(MIGRATION_PATH).get("state") == "Running")
    assert kube.status(MIGRATION_PATH)["sourceNode"] == "node-1"


def operation_pod(identity: str = "vm-uid") -> Obj:
    return {"metadata": {"name": "b1-backup-x", "namespace": "ns", "annotations": {
        vmapi.OPERATION_ANNOTATION: "backup", vmapi.TARGET_IDENTITY_ANNOTATION: identity,
        vmapi.SNAPSHOT_NAME_ANNOTATION: "ns-b1"}},
        "spec": {"containers": [{"name": "backup", "image": "vmlet.io/operation:backup"}]}}


async def test_an_operation_pod_takes_the_snapshot_and_ends_with_its_id() -> None:
    provider = FakeProvider()
    provider.vms["vm-uid"] = vmpb.VirtualMachine(identity="vm-uid")
    done = await run_operation(operation_pod(), provider)
    assert provider.called("create_snapshot") == [("vm-uid", "ns-b1", "ns")]
    assert done.phase == pb.POD_PHASE_SUCCEEDED
    assert done.container_statuses[0].terminated.message == "snap-1"
    failed = await run_operation(operation_pod("no-such-vm"), provider)
    assert failed.phase == pb.POD_PHASE_FAILED
    assert failed.container_statuses[0].terminated.reason == NotFound("x").reason
    provider.fail("create_snapshot", Unavailable("the IaaS is down"))
    with pytest.raises(Unavailable):  # retryable: the pod controller tries again
        await run_operation(operation_pod(), provider)
