"""Backup, restore and migration of VirtualMachines, as their own resources.

A VirtualMachineBackup becomes a Job whose pod is pinned to the node the VM is on (its pod's node,
else the node it last ran on, so a VM stopped, before or after the Backup, is backed up where it
rests); the facade serving that node carries the Job's pod out as the provider's CreateSnapshot
and ends it Succeeded with the snapshot's ID as its termination message. The Backup's status
mirrors the Job's: Pending until the VM has a node and while the Job's pod is not yet bound
(with the scheduler's reason), Running while it runs. A VirtualMachineRestore reverts the VM to a
Backup's snapshot. A VirtualMachineMigration marks the VM so its controller replaces the VM pod by
one the scheduler binds to the target (or any other) node; the provider moves the VM there.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable
from typing import cast

from vmlet_api import names
from vmlet_contract import ProviderError, is_retryable
from vmlet_facade.events import EventRecorder
from vmlet_facade.kube import ApiError, KubeClient
from vmlet_facade.kube.informer import Informer, key_of, synced_gate
from vmlet_facade.kube.objects import (
    Node,
    Obj,
    Pod,
    VirtualMachine,
    VirtualMachineBackup,
    VirtualMachineBackupStatus,
    VirtualMachineMigration,
    VirtualMachineMigrationStatus,
    VirtualMachineRestore,
    VirtualMachineRestoreStatus,
)
from vmlet_facade.kube.paths import api_path
from vmlet_facade.provider import VmOperations
from vmlet_facade.queueing import SerialWorkers, status_only_change
from vmlet_facade.virtualmachines import VirtualMachineController
from vmlet_facade.vmapi import (
    MIGRATION_ANNOTATION,
    MIGRATION_SOURCE_ANNOTATION,
    MIGRATION_TARGET_ANNOTATION,
    OPERATION_ANNOTATION,
    SNAPSHOT_NAME_ANNOTATION,
    TARGET_IDENTITY_ANNOTATION,
    VM_UID_LABEL,
    now,
    object_key,
    owner_ref,
    path,
    provider_tolerations,
    set_condition,
)

__all__ = ["OperationsController"]

log = logging.getLogger(__name__)

PLACEMENT_POLL_SECONDS = 5.0  # a Backup of a VM not yet placed looks again this often
MIGRATION_RESYNC_SECONDS = 60.0  # unfinished migrations are looked at again this often
_BACKUPS = names.VIRTUAL_MACHINE_BACKUP.plural
_RESTORES = names.VIRTUAL_MACHINE_RESTORE.plural
_MIGRATIONS = names.VIRTUAL_MACHINE_MIGRATION.plural

#: An object of the operation kinds, and the status fields ``_status`` writes into one.
Operation = VirtualMachineBackup | VirtualMachineRestore | VirtualMachineMigration
OperationStatusFields = (VirtualMachineBackupStatus | VirtualMachineRestoreStatus
                         | VirtualMachineMigrationStatus)


def _age_seconds(stamp: str | None) -> float:
    if not stamp:
        return 0.0
    when = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return (dt.datetime.now(dt.UTC) - when).total_seconds()


def backup_job(backup: VirtualMachineBackup, vm: VirtualMachine, node: str) -> Obj:
    """The Job that takes ``backup`` of ``vm`` on ``node``, the VM's node."""
    meta = backup["metadata"]
    uid = vm["metadata"]["uid"]
    provider = vm["spec"]["provider"]
    labels = {names.BACKUP_LABEL: meta["name"]}
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": f"{meta['name']}-backup", "namespace": meta["namespace"],
                     "labels": labels, "ownerReferences": [owner_ref(
                         backup, names.VIRTUAL_MACHINE_BACKUP.kind)]},
        "spec": {
            "backoffLimit": 3, "ttlSecondsAfterFinished": 86400,
            "template": {
                "metadata": {"labels": labels, "annotations": {
                    OPERATION_ANNOTATION: names.BACKUP_OPERATION, TARGET_IDENTITY_ANNOTATION: uid,
                    SNAPSHOT_NAME_ANNOTATION: f"{meta['namespace']}-{meta['name']}"}},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "containers": [{"name": "backup", "image": names.BACKUP_IMAGE}],
                    "nodeSelector": {names.PROVIDER_LABEL: provider,
                                     "kubernetes.io/hostname": node},
                    "tolerations": provider_tolerations(provider),
                },
            },
        },
    }


class OperationsController:
    """Backups, restores and migrations, next to the VirtualMachine controller."""

    def __init__(self, client: KubeClient, providers: Callable[[str], VmOperations | None],
                 events: EventRecorder, vms: VirtualMachineController) -> None:
        self._client = client
        self._providers = providers
        self._events = events
        self._vms = vms
        self.backups = Informer(client, path(_BACKUPS),
                                on_change=self._backup_changed)
        self.restores = Informer(client, path(_RESTORES),
                                 on_change=lambda o, n: self._submit("restore", o, n))
        self.migrations = Informer(client, path(_MIGRATIONS),
                                   on_change=lambda o, n: self._submit("migration", o, n))
        self.jobs = Informer(client, "/apis/batch/v1/jobs", {"labelSelector": names.BACKUP_LABEL},
                             on_change=self._job_changed)
        self.job_pods = Informer(client, "/api/v1/pods", {"labelSelector": names.BACKUP_LABEL},
                                 on_change=self._job_changed)
        self.nodes = Informer(client, "/api/v1/nodes")
        self._workers = SerialWorkers(
            self._reconcile, concurrency=8, name="vmops",
            ready=synced_gate(self.backups, self.restores, self.migrations, self.jobs,
                              self.job_pods, self.nodes, vms.vms, vms.pods))
        self.migration_timeout = 600.0
        vms.changes.append(self._vm_changed)

    async def run(self) -> None:
        await asyncio.gather(self.backups.run(), self.restores.run(), self.migrations.run(),
                             self.jobs.run(), self.job_pods.run(), self.nodes.run(),
                             self._resync_migrations())

    async def stop(self) -> None:
        await self._workers.stop()

    def _vm_changed(self, old: Obj | None, new: Obj | None) -> None:
        """A migration waits for its VM (Running to start; on another node to end): look at the
        VM's unfinished migrations whenever the VM changes."""
        vm = new or old
        if vm is None:
            return
        ns, name = vm["metadata"]["namespace"], vm["metadata"]["name"]
        for mig in self._all_migrations():
            if mig["metadata"]["namespace"] == ns and mig["spec"].get("vmName") == name:
                self._submit_unfinished(mig)

    def _all_migrations(self) -> list[VirtualMachineMigration]:
        return cast("list[VirtualMachineMigration]", self.migrations.values())

    def _submit_unfinished(self, mig: VirtualMachineMigration) -> None:
        if (mig.get("status") or {}).get("state") not in names.OPERATION_ENDED:
            self._workers.submit(f"migration:{object_key(mig)}", wake=False)

    async def _resync_migrations(self) -> None:
        """A safety net only: migrations follow their VM's changes (``_vm_changed``)."""
        while True:
            await asyncio.sleep(MIGRATION_RESYNC_SECONDS)
            for mig in self._all_migrations():
                self._submit_unfinished(mig)

    def _submit(self, kind: str, old: Obj | None, new: Obj | None) -> None:
        obj = new or old
        if obj is not None:
            # Its own status write (a restore still Running) does not cut a back-off short.
            self._workers.submit(f"{kind}:{key_of(obj)}", wake=not status_only_change(old, new))

    def _backup_changed(self, old: Obj | None, new: Obj | None) -> None:
        self._submit("backup", old, new)
        backup = new or old
        if backup is None:
            return
        for restore in self.restores.values():  # restores waiting for this backup
            if (restore["metadata"]["namespace"] == backup["metadata"]["namespace"]
                    and restore["spec"].get("backupName") == backup["metadata"]["name"]):
                self._workers.submit(f"restore:{key_of(restore)}")

    def _job_changed(self, old: Obj | None, new: Obj | None) -> None:
        obj = new or old
        if obj is None:
            return
        name = obj["metadata"].get("labels", {}).get(names.BACKUP_LABEL)
        if name:
            self._workers.submit(f"backup:{obj['metadata']['namespace']}/{name}")

    def _schedulable(self, name: str) -> bool:
        node = cast("Node | None", self.nodes.get(name))
        if node is None or node.get("spec", {}).get("unschedulable"):
            return False
        return any(c.get("type") == "Ready" and c.get("status") == "True"
                   for c in node.get("status", {}).get("conditions", []))

    async def _reconcile(self, key: str) -> None:
        kind, _, ref = key.partition(":")
        try:
            if kind == "backup":
                await self._backup(ref)
            elif kind == "restore":
                await self._restore(ref)
            elif kind == "migration":
                await self._migration(ref)
        except (ApiError, ProviderError) as err:
            delay = self._workers.retry(key)
            log.warning("%s: %s (again in %.0f s)", key, err, delay)

    async def _status(self, plural: str, obj: Operation, status: OperationStatusFields,
                      reason: str, message: str) -> None:
        old = obj.get("status") or {}
        generation = int(obj["metadata"].get("generation", 1))
        state = status.get("state", old.get("state"))
        conditions = set_condition(
            old.get("conditions") or [], names.CONDITION_COMPLETE,
            "True" if state == names.STATE_SUCCEEDED else "False", reason, message, generation)
        if state == names.STATE_FAILED:
            conditions = set_condition(conditions, names.CONDITION_FAILED, "True", reason, message,
                                       generation)
        new = {**old, **status, "conditions": conditions, "observedGeneration": generation}
        if new == old:
            return
        meta = obj["metadata"]
        await self._client.patch(path(plural, meta["namespace"], meta["name"], "status"),
                                 {"status": new})
        if old.get("state") != state:
            await self._events.emit(obj, reason, message, warning=state == names.STATE_FAILED)

    # -- backups -----------------------------------------------------------------------------

    async def _backup(self, ref: str) -> None:
        backup = cast("VirtualMachineBackup | None", self.backups.get(ref))
        if backup is None or (backup.get("status") or {}).get("state") in names.OPERATION_ENDED:
            return
        ns = backup["metadata"]["namespace"]
        vm = self._vms.vm(f"{ns}/{backup['spec']['vmName']}")
        if vm is None:
            await self._status(_BACKUPS, backup, {"state": names.STATE_FAILED},
                               names.REASON_VM_NOT_FOUND,
                               f"no VirtualMachine {backup['spec']['vmName']}")
            return
        job_name = f"{backup['metadata']['name']}-backup"
        job = self.jobs.get(f"{ns}/{job_name}")
        if job is None:
            node = self._vm_node(vm)
            if not node:
                await self._status(_BACKUPS, backup, {"state": names.STATE_PENDING},
                                   names.REASON_VM_NOT_PLACED,
                                   f"VirtualMachine {vm['metadata']['name']} "
                                   "has not been placed on a node yet")
                self._workers.submit_after(f"backup:{ref}", PLACEMENT_POLL_SECONDS)
                return
            try:
                job = await self._client.create(api_path("jobs", namespace=ns, group="batch"),
                                                backup_job(backup, vm, node))
            except ApiError as err:
                if not err.conflict:
                    raise
                return
            await self._status(_BACKUPS, backup, {
                "state": names.STATE_PENDING, "jobName": job_name,
                "identity": vm["metadata"]["uid"],
                "snapshotName": f"{ns}-{backup['metadata']['name']}"},
                names.REASON_JOB_CREATED, f"job {job_name} takes the backup on the VM's node")
            await self._events.emit(vm, "BackingUp", f"backup {backup['metadata']['name']} "
                                     f"started (job {job_name})")
            return
        js = job.get("status") or {}
        conds = {c["type"]: c for c in js.get("conditions") or [] if c.get("status") == "True"}
        status: VirtualMachineBackupStatus = {"jobName": job_name}
        if js.get("startTime"):
            status["startTime"] = js["startTime"]
        if "Complete" in conds:
            snapshot = self._snapshot_of(ns, backup["metadata"]["name"])
            if not snapshot:
                return  # the pod that says which snapshot is not in the cache yet
            status.update({"state": names.STATE_SUCCEEDED, "snapshotID": snapshot,
                           "completionTime": js.get("completionTime") or now()})
            await self._status(_BACKUPS, backup, status, names.REASON_BACKUP_SUCCEEDED,
                               f"snapshot {snapshot} taken")
            await self._events.emit(vm, "BackedUp",
                                    f"backup {backup['metadata']['name']}: snapshot {snapshot}")
        elif "Failed" in conds:
            status.update({"state": names.STATE_FAILED, "completionTime": now()})
            await self._status(_BACKUPS, backup, status,
                               conds["Failed"].get("reason", names.REASON_JOB_FAILED),
                               conds["Failed"].get("message", "the backup job failed"))
        elif js.get("active"):
            unbound = self._unbound_job_pod(ns, backup["metadata"]["name"])
            if unbound is not None:
                status["state"] = names.STATE_PENDING
                await self._status(_BACKUPS, backup, status, names.REASON_JOB_POD_PENDING,
                                   f"job {job_name}'s pod is not on the VM's node yet: "
                                   f"{unbound or 'waiting for the scheduler'}")
                return
            status["state"] = names.STATE_RUNNING
            await self._status(_BACKUPS, backup, status, names.REASON_JOB_RUNNING,
                               f"job {job_name} is running")

    def _vm_node(self, vm: VirtualMachine) -> str:
        """The node ``vm`` is on: its pod's, else the one it last ran on ("" if none yet)."""
        uid = vm["metadata"]["uid"]
        for pod in self._vms.all_pods():
            if (pod["metadata"].get("labels") or {}).get(VM_UID_LABEL) == uid \
                    and pod["spec"].get("nodeName"):
                return str(pod["spec"]["nodeName"])
        return str((vm.get("status") or {}).get("nodeName") or "")

    def _unbound_job_pod(self, ns: str, backup: str) -> str | None:
        """The scheduler's message for the backup's live Job pod not yet bound to a node ("" if
        it said nothing); None when every live one is bound (or none is known yet)."""
        for pod in self._job_pods():
            meta = pod["metadata"]
            labels = meta.get("labels") or {}
            if meta["namespace"] != ns or labels.get(names.BACKUP_LABEL) != backup \
                    or meta.get("deletionTimestamp") or pod["spec"].get("nodeName"):
                continue
            if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                continue
            for cond in (pod.get("status") or {}).get("conditions") or []:
                if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                    return str(cond.get("message") or cond.get("reason") or "")
            return ""
        return None

    def _job_pods(self) -> list[Pod]:
        return cast("list[Pod]", self.job_pods.values())

    def _snapshot_of(self, ns: str, backup: str) -> str:
        for pod in self._job_pods():
            meta = pod["metadata"]
            if meta["namespace"] != ns or meta.get("labels", {}).get(names.BACKUP_LABEL) != backup:
                continue
            for cs in pod.get("status", {}).get("containerStatuses") or []:
                term = cs.get("state", {}).get("terminated") or {}
                if term.get("exitCode") == 0 and term.get("message"):
                    return str(term["message"]).strip()
        return ""

    # -- restores ----------------------------------------------------------------------------

    async def _restore(self, ref: str) -> None:
        restore = cast("VirtualMachineRestore | None", self.restores.get(ref))
        if restore is None or (restore.get("status") or {}).get("state") in names.OPERATION_ENDED:
            return
        ns = restore["metadata"]["namespace"]
        backup = cast("VirtualMachineBackup | None",
                      self.backups.get(f"{ns}/{restore['spec']['backupName']}"))
        bstatus: VirtualMachineBackupStatus = (backup.get("status") or {}) if backup else {}
        if backup is None or bstatus.get("state") == names.STATE_FAILED:
            await self._status(_RESTORES, restore, {"state": names.STATE_FAILED},
                               names.REASON_BACKUP_NOT_USABLE,
                               f"backup {restore['spec']['backupName']} is missing or failed")
            return
        if bstatus.get("state") != names.STATE_SUCCEEDED:
            await self._status(_RESTORES, restore, {"state": names.STATE_PENDING},
                               names.REASON_WAITING_FOR_BACKUP, "the backup has not completed yet")
            return
        vm = self._vms.vm(f"{ns}/{backup['spec']['vmName']}")
        provider = self._providers(vm["spec"]["provider"]) if vm else None
        if vm is None or provider is None:
            await self._status(_RESTORES, restore, {"state": names.STATE_FAILED},
                               names.REASON_VM_NOT_FOUND,
                               "the backup's VirtualMachine or provider is gone")
            return
        started = (restore.get("status") or {}).get("startTime") or now()  # kept on a retry
        await self._status(_RESTORES, restore, {
            "state": names.STATE_RUNNING, "startTime": started, "vmName": vm["metadata"]["name"],
            "snapshotID": bstatus["snapshotID"]},
            names.REASON_RESTORING, f"reverting the VM to snapshot {bstatus['snapshotID']}")
        try:
            await provider.revert_to_snapshot(bstatus["identity"], bstatus["snapshotID"], ns)
        except ProviderError as err:
            if is_retryable(err.code):
                raise
            await self._status(_RESTORES, restore, {
                "state": names.STATE_FAILED, "completionTime": now()}, err.reason, err.message)
            return
        await self._status(_RESTORES, restore, {
            "state": names.STATE_SUCCEEDED, "completionTime": now()}, names.REASON_RESTORED,
            f"the VM is back to snapshot {bstatus['snapshotID']}")
        await self._events.emit(vm, "Restored",
                                f"restored from backup {backup['metadata']['name']}")

    # -- migrations --------------------------------------------------------------------------

    async def _migration(self, ref: str) -> None:
        mig = cast("VirtualMachineMigration | None", self.migrations.get(ref))
        status: VirtualMachineMigrationStatus = (mig.get("status") or {}) if mig else {}
        if mig is None or status.get("state") in names.OPERATION_ENDED:
            self._workers.cancel_retry(f"migration:{ref}")  # its timeout: nothing left to time
            return
        ns = mig["metadata"]["namespace"]
        vm = self._vms.vm(f"{ns}/{mig['spec']['vmName']}")
        if vm is None:
            await self._status(_MIGRATIONS, mig, {"state": names.STATE_FAILED},
                               names.REASON_VM_NOT_FOUND,
                               f"no VirtualMachine {mig['spec']['vmName']}")
            return
        annotations = vm["metadata"].get("annotations") or {}
        vm_path = path(names.VIRTUAL_MACHINE.plural, ns, vm["metadata"]["name"])
        name = mig["metadata"]["name"]
        if not status.get("state") or status.get("state") == names.STATE_PENDING:
            source = (vm.get("status") or {}).get("nodeName")
            if (vm.get("status") or {}).get("state") != names.STATE_RUNNING or not source:
                await self._status(_MIGRATIONS, mig, {"state": names.STATE_PENDING},
                                   names.REASON_WAITING_FOR_VM, "the VM must be Running to migrate")
                return
            if annotations.get(MIGRATION_ANNOTATION) not in (None, name):
                await self._status(_MIGRATIONS, mig, {"state": names.STATE_PENDING},
                                   names.REASON_ANOTHER_MIGRATION,
                                   "another migration of the VM runs")
                return
            target = mig["spec"].get("targetNode", "")
            if target and not self._schedulable(target):
                await self._status(_MIGRATIONS, mig, {
                    "state": names.STATE_FAILED, "sourceNode": source, "targetNode": target},
                    names.REASON_TARGET_NOT_READY,
                    f"node {target} does not exist or is not Ready and schedulable: the VM stays "
                    "where it is")
                return
            if target == source:
                await self._status(_MIGRATIONS, mig, {
                    "state": names.STATE_FAILED, "sourceNode": source, "targetNode": target},
                    names.REASON_SAME_NODE, f"the VM already runs on {source}")
                return
            await self._client.patch(vm_path, {"metadata": {"annotations": {
                MIGRATION_ANNOTATION: name, MIGRATION_SOURCE_ANNOTATION: source,
                MIGRATION_TARGET_ANNOTATION: target}}})
            await self._status(_MIGRATIONS, mig, {
                "state": names.STATE_RUNNING, "sourceNode": source, "targetNode": target,
                "startTime": now()}, names.REASON_MIGRATING,
                f"moving the VM from {source} to {target or 'another node'}")
            return
        vstatus = vm.get("status") or {}
        node = vstatus.get("nodeName")
        if int(vm["spec"].get("replicas", 1)) == 0:
            # Stopped before it moved: nothing will carry it elsewhere; say so now rather than
            # at the timeout.
            await self._client.patch(vm_path, {"metadata": {"annotations": {
                MIGRATION_ANNOTATION: None, MIGRATION_SOURCE_ANNOTATION: None,
                MIGRATION_TARGET_ANNOTATION: None}}})
            await self._status(_MIGRATIONS, mig, {
                "state": names.STATE_FAILED, "completionTime": now()}, names.REASON_VM_STOPPED,
                f"the VM was stopped before it moved; it stays on {status.get('sourceNode')}")
            return
        if _age_seconds(status.get("startTime")) > self.migration_timeout:
            # The VM could not land elsewhere: let it be scheduled as usual again.
            await self._client.patch(vm_path, {"metadata": {"annotations": {
                MIGRATION_ANNOTATION: None, MIGRATION_SOURCE_ANNOTATION: None,
                MIGRATION_TARGET_ANNOTATION: None}}})
            await self._status(_MIGRATIONS, mig, {
                "state": names.STATE_FAILED, "completionTime": now()},
                names.REASON_MIGRATION_TIMED_OUT,
                f"the VM did not run elsewhere within {self.migration_timeout:.0f}s; it is "
                "scheduled as usual again")
            return
        if vstatus.get("state") == names.STATE_RUNNING and node \
                and node != status.get("sourceNode"):
            await self._client.patch(vm_path, {"metadata": {"annotations": {
                MIGRATION_ANNOTATION: None, MIGRATION_SOURCE_ANNOTATION: None,
                MIGRATION_TARGET_ANNOTATION: None}}})
            await self._status(_MIGRATIONS, mig, {
                "state": names.STATE_SUCCEEDED, "targetNode": node, "completionTime": now()},
                names.REASON_MIGRATED, f"the VM moved from {status.get('sourceNode')} to {node}")
            await self._events.emit(vm, "Migrated",
                                    f"moved from {status.get('sourceNode')} to {node}")
            return
        # Still moving: the VM's changes bring it back; its timeout, if nothing else does.
        self._workers.submit_after(f"migration:{ref}", max(
            0.0, self.migration_timeout - _age_seconds(status.get("startTime"))) + 1.0)
