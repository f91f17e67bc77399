"""VirtualMachineService: the documented codes (NOT_FOUND for an unknown identity, success for
deleting what is not there, PERMISSION_DENIED for a VM of another namespace), snapshots
idempotent by name, snapshot descriptions kept, a revert (UNAVAILABLE until the snapshot is
ready), each namespace field set and unset. Disks are `disks`'."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import grpc

from vmlet.provider.v1 import virtual_machine_service_pb2 as vpb

from .registry import check
from .subject import Subject, code_of, eventually

OK = grpc.StatusCode.OK
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
NOT_FOUND = grpc.StatusCode.NOT_FOUND
DENIED = grpc.StatusCode.PERMISSION_DENIED


def _calls(subject: Subject, identity: str, namespace: str, snapshot_id: str = "none"
           ) -> dict[str, Callable[[], Any]]:
    """Every VM call naming ``identity``, for ``namespace``."""
    vms, timeout = subject.vms, subject.timeout
    return {
        "GetVirtualMachine": lambda: vms.GetVirtualMachine(vpb.GetVirtualMachineRequest(
            identity=identity, namespace=namespace), timeout=timeout),
        "ListSnapshots": lambda: vms.ListSnapshots(vpb.ListSnapshotsRequest(
            identity=identity, namespace=namespace), timeout=timeout),
        "CreateSnapshot": lambda: vms.CreateSnapshot(vpb.CreateSnapshotRequest(
            identity=identity, name="conformance", namespace=namespace), timeout=timeout),
        "RevertToSnapshot": lambda: vms.RevertToSnapshot(vpb.RevertToSnapshotRequest(
            identity=identity, snapshot_id=snapshot_id, namespace=namespace), timeout=timeout),
        "DeleteSnapshot": lambda: vms.DeleteSnapshot(vpb.DeleteSnapshotRequest(
            identity=identity, snapshot_id=snapshot_id, namespace=namespace), timeout=timeout),
        "DeleteVirtualMachine": lambda: vms.DeleteVirtualMachine(vpb.DeleteVirtualMachineRequest(
            identity=identity, namespace=namespace), timeout=timeout),
    }


@check
def vm_calls_for_an_unknown_identity(subject: Subject) -> None:
    """For an identity with no VM: GetVirtualMachine, CreateSnapshot and RevertToSnapshot are
    NOT_FOUND; DeleteVirtualMachine succeeds; ListSnapshots is NOT_FOUND or empty; DeleteSnapshot
    succeeds or is NOT_FOUND. None of them makes a VM."""
    identity = str(uuid.uuid4())
    allowed = {"GetVirtualMachine": {NOT_FOUND}, "ListSnapshots": {OK, NOT_FOUND},
               "CreateSnapshot": {NOT_FOUND}, "RevertToSnapshot": {NOT_FOUND},
               "DeleteSnapshot": {OK, NOT_FOUND}, "DeleteVirtualMachine": {OK}}
    for namespace in ("", subject.namespace):
        codes = {name: code_of(call) for name, call in _calls(subject, identity, namespace).items()}
        wrong = {name: code for name, code in codes.items() if code not in allowed[name]}
        assert not wrong, (namespace, wrong)
        if codes["ListSnapshots"] == OK:
            listed = subject.vms.ListSnapshots(vpb.ListSnapshotsRequest(identity=identity),
                                               timeout=60)
            assert not listed.snapshots
    assert code_of(lambda: subject.vm(identity)) == NOT_FOUND


@check
def another_namespace_is_permission_denied(subject: Subject) -> None:
    """A VM recorded for one namespace: every VM call for another namespace is PERMISSION_DENIED
    and changes nothing; a pod of another namespace with its identity is refused
    (PERMISSION_DENIED) and neither adopts, moves nor deletes it; an empty namespace skips the
    check."""
    pod = subject.pod(keep=True)
    other = f"{subject.namespace}-other"
    with subject.cleanup(pod.identity):
        subject.create(pod)
        vm_id = subject.wait_running(pod).provider_id
        codes = {name: code_of(call) for name, call in _calls(subject, pod.identity, other).items()}
        assert codes == dict.fromkeys(codes, DENIED), codes
        assert subject.vm(pod.identity, pod.ref.namespace).provider_id == vm_id
        assert subject.vm(pod.identity, "").provider_id == vm_id
        intruder = subject.pod(namespace=other, identity=pod.identity, keep=False,
                               node=subject.node_names()[-1])
        assert code_of(lambda: subject.create(intruder)) == DENIED
        assert code_of(lambda: subject.delete(intruder)) in (OK, DENIED)
        assert not subject.listed_named(intruder.ref.name)
        vm = subject.vm(pod.identity)
        assert (vm.provider_id, vm.power_state) == (vm_id, vpb.POWER_STATE_ON)
        assert subject.status(pod).provider_id == vm_id


@check
def snapshots_by_name(subject: Subject) -> None:
    """CreateSnapshot is idempotent by name; ListSnapshots lists it;
    an unknown snapshot ID is NOT_FOUND to revert and fine to delete; a deleted snapshot is gone
    and deleting it again succeeds."""
    pod = subject.pod(keep=True)
    with subject.cleanup(pod.identity):
        subject.create(pod)
        subject.wait_running(pod)
        ns, timeout = pod.ref.namespace, subject.timeout
        request = vpb.CreateSnapshotRequest(identity=pod.identity, name="conf-1",
                                            description="before ü", namespace=ns)
        made = subject.vms.CreateSnapshot(request, timeout=timeout).snapshot
        assert (made.name, made.identity) == ("conf-1", pod.identity)
        assert made.id and made.kind
        assert subject.vms.CreateSnapshot(request, timeout=timeout).snapshot.id == made.id
        bare = vpb.CreateSnapshotRequest(identity=pod.identity, name="conf-2")  # optional unset
        second = subject.vms.CreateSnapshot(bare, timeout=timeout).snapshot
        assert second.id != made.id
        listed = subject.vms.ListSnapshots(vpb.ListSnapshotsRequest(identity=pod.identity),
                                           timeout=60).snapshots
        assert [s.id for s in listed] == [made.id, second.id]
        unknown = _calls(subject, pod.identity, ns, snapshot_id="no-such-snapshot")
        assert code_of(unknown["RevertToSnapshot"]) == NOT_FOUND
        assert code_of(unknown["DeleteSnapshot"]) == OK
        for snap in (made, second):
            gone = _calls(subject, pod.identity, ns, snapshot_id=snap.id)["DeleteSnapshot"]
            assert code_of(gone) == OK and code_of(gone) == OK
        assert not subject.vms.ListSnapshots(vpb.ListSnapshotsRequest(identity=pod.identity),
                                             timeout=60).snapshots


@check
def snapshot_descriptions(subject: Subject) -> None:
    """A snapshot's description, set (unicode) and unset, comes back as given from
    CreateSnapshot, from CreateSnapshot again and from ListSnapshots."""
    pod = subject.pod(keep=True)
    with subject.cleanup(pod.identity):
        subject.create(pod)
        subject.wait_running(pod)
        given = {"described": "before the upgrade: naïve ☃ 雪", "bare": ""}
        for name, description in given.items():
            request = vpb.CreateSnapshotRequest(identity=pod.identity, name=name,
                                                description=description)
            first = subject.vms.CreateSnapshot(request, timeout=subject.timeout).snapshot
            again = subject.vms.CreateSnapshot(request, timeout=subject.timeout).snapshot
            assert (first.description, again.description) == (description, description), name
        listed = subject.vms.ListSnapshots(vpb.ListSnapshotsRequest(identity=pod.identity),
                                           timeout=60).snapshots
        assert {s.name: s.description for s in listed} == given


@check
def revert_to_a_snapshot(subject: Subject) -> None:
    """RevertToSnapshot of a running VM's snapshot is UNAVAILABLE (retry) while the IaaS still
    makes the snapshot, then succeeds: the same VM (provider ID) with its pod running again; the
    snapshot is still listed, and deleting it removes it."""
    pod = subject.pod(keep=True)
    with subject.cleanup(pod.identity):
        subject.create(pod)
        before = subject.wait_running(pod)
        made = subject.vms.CreateSnapshot(vpb.CreateSnapshotRequest(
            identity=pod.identity, name="conf-revert"), timeout=subject.timeout).snapshot
        subject.finish_snapshot(made.id)
        calls = _calls(subject, pod.identity, pod.ref.namespace, snapshot_id=made.id)

        def reverted() -> bool:
            code = code_of(calls["RevertToSnapshot"])
            assert code in (OK, UNAVAILABLE), f"RevertToSnapshot answered {code}"
            return bool(code == OK)

        eventually(reverted, timeout=subject.timeout, what="the revert")
        after = subject.wait_running(pod)
        assert after.provider_id == before.provider_id, "the revert made another VM"
        assert subject.vm(pod.identity).provider_id == before.provider_id
        listed = subject.vms.ListSnapshots(vpb.ListSnapshotsRequest(identity=pod.identity),
                                           timeout=60).snapshots
        assert [s.id for s in listed] == [made.id]
        assert code_of(calls["DeleteSnapshot"]) == OK
        assert not subject.vms.ListSnapshots(vpb.ListSnapshotsRequest(identity=pod.identity),
                                             timeout=60).snapshots
