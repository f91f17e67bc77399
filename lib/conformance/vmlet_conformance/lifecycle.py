"""PodLifecycleService: idempotent creates (twice, concurrently), keep versus destroy on delete,
identity moves, StartPod and StopPod, and what a provider answers for pods it does not know."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from vmlet.provider.v1 import pod_lifecycle_service_pb2 as lpb
from vmlet.provider.v1 import pod_pb2
from vmlet.provider.v1 import virtual_machine_service_pb2 as vpb

from .registry import check
from .subject import Subject, code_of, eventually

NOT_FOUND = grpc.StatusCode.NOT_FOUND
CONCURRENT_CREATES = 8


def _one_vm(subject: Subject, pod: pod_pb2.Pod) -> str:
    """The provider ID of the one VM of ``pod``'s identity; asserts GetPods lists the pod once."""
    listed = subject.listed_named(pod.ref.name)
    assert len(listed) == 1, f"GetPods lists {pod.ref.name} {len(listed)} times"
    vm = subject.vm(pod.identity, pod.ref.namespace)
    assert vm.identity == pod.identity and vm.provider_id
    return str(vm.provider_id)


@check
def create_twice_is_one_vm(subject: Subject) -> None:
    """CreatePod twice for one pod (and again once it runs) finds the first VM: one provider ID,
    one pod in GetPods."""
    pod = subject.pod()
    with subject.cleanup(pod.identity):
        first = subject.create(pod)
        second = subject.create(pod)
        vm_id = _one_vm(subject, pod)
        assert {first.provider_id, second.provider_id} <= {vm_id, ""}, (first, second, vm_id)
        assert subject.wait_running(pod).provider_id == vm_id
        again = subject.create(pod)
        assert again.provider_id in (vm_id, "")
        assert _one_vm(subject, pod) == vm_id


@check
def concurrent_creates_are_one_vm(subject: Subject) -> None:
    """Eight concurrent CreatePod calls for one pod make one VM."""
    pod = subject.pod()
    with subject.cleanup(pod.identity):
        with ThreadPoolExecutor(CONCURRENT_CREATES) as pool:
            statuses = list(pool.map(lambda _: subject.create(pod), range(CONCURRENT_CREATES)))
        vm_id = _one_vm(subject, pod)
        assert {s.provider_id for s in statuses} <= {vm_id, ""}
        assert subject.wait_running(pod).provider_id == vm_id
        assert _one_vm(subject, pod) == vm_id


@check
def delete_without_keep_destroys_the_vm(subject: Subject) -> None:
    """DeletePod of a pod without keep_on_delete destroys its VM; a second DeletePod succeeds."""
    pod = subject.pod()
    with subject.cleanup(pod.identity):
        subject.create(pod)
        subject.wait_running(pod)
        subject.delete(pod)
        assert code_of(lambda: subject.status(pod)) == NOT_FOUND
        assert not subject.listed_named(pod.ref.name)
        assert code_of(lambda: subject.vm(pod.identity)) == NOT_FOUND
        subject.delete(pod)


@check
def delete_right_after_create_destroys_the_vm(subject: Subject) -> None:
    """DeletePod while the VM is still being made (no wait for Running) leaves no VM."""
    pod = subject.pod()
    with subject.cleanup(pod.identity):
        subject.create(pod)
        subject.delete(pod)
        assert code_of(lambda: subject.vm(pod.identity)) == NOT_FOUND
        assert not subject.listed_named(pod.ref.name)


@check
def delete_with_keep_stops_and_keeps_the_vm(subject: Subject) -> None:
    """DeletePod with keep_on_delete powers the VM off and keeps it; the identity's next pod gets
    the same VM back; DeleteVirtualMachine destroys it (twice: the second succeeds)."""
    pod = subject.pod(keep=True)
    with subject.cleanup(pod.identity):
        subject.create(pod)
        vm_id = subject.wait_running(pod).provider_id
        subject.delete(pod)
        assert code_of(lambda: subject.status(pod)) == NOT_FOUND
        kept = subject.vm(pod.identity, pod.ref.namespace)
        assert kept.power_state == vpb.POWER_STATE_OFF, kept
        assert kept.provider_id == vm_id
        again = subject.pod(identity=pod.identity, keep=True)
        subject.create(again)
        assert subject.wait_running(again).provider_id == vm_id
        assert subject.vm(pod.identity).power_state == vpb.POWER_STATE_ON
        subject.delete(again)
        subject.destroy(pod.identity)
        assert code_of(lambda: subject.vm(pod.identity)) == NOT_FOUND
        subject.destroy(pod.identity)


@check
def a_kept_vm_stays_kept(subject: Subject) -> None:
    """A VM made for a kept pod is recorded as kept: a DeletePod that no longer says keep (a pod
    rebuilt after a restart, say) still only stops it."""
    pod = subject.pod(keep=True)
    with subject.cleanup(pod.identity):
        subject.create(pod)
        subject.wait_running(pod)
        unkept = pod_pb2.Pod()
        unkept.CopyFrom(pod)
        unkept.keep_on_delete = False
        subject.delete(unkept)
        assert subject.vm(pod.identity).power_state == vpb.POWER_STATE_OFF


@check
def unknown_pods(subject: Subject) -> None:
    """A pod the provider does not run: GetPod and GetPodStatus are NOT_FOUND, DeletePod
    succeeds and makes nothing."""
    pod = subject.pod()
    request = lpb.GetPodRequest(namespace=pod.ref.namespace, name=pod.ref.name)
    assert code_of(lambda: subject.pods.GetPod(request, timeout=60)) == NOT_FOUND
    assert code_of(lambda: subject.status(pod)) == NOT_FOUND
    subject.delete(pod)
    subject.delete(subject.pod(keep=True))
    assert code_of(lambda: subject.vm(pod.identity)) == NOT_FOUND


@check
def get_pod_and_update_pod(subject: Subject) -> None:
    """GetPod returns the pod (namespace, name, identity) with the status GetPodStatus gives;
    UpdatePod of a changed annotation keeps the VM."""
    pod = subject.pod()
    with subject.cleanup(pod.identity):
        subject.create(pod)
        vm_id = subject.wait_running(pod).provider_id
        got = subject.pods.GetPod(lpb.GetPodRequest(namespace=pod.ref.namespace,
                                                     name=pod.ref.name), timeout=60)
        assert (got.pod.ref.namespace, got.pod.ref.name) == (pod.ref.namespace, pod.ref.name)
        assert got.pod.identity == pod.identity
        assert got.status.provider_id == vm_id
        pod.annotations["conformance.vmlet.io/changed"] = "yes"
        updated = subject.pods.UpdatePod(lpb.UpdatePodRequest(pod=pod), timeout=subject.timeout)
        assert updated.status.provider_id in (vm_id, "")
        assert subject.wait_running(pod).provider_id == vm_id
        assert _one_vm(subject, pod) == vm_id


@check
def a_pod_on_another_node_moves_the_vm(subject: Subject) -> None:
    """A pod for an identity whose VM runs on another node moves that VM (never a second one)."""
    nodes = subject.node_names()
    if len(nodes) < 2:
        pytest.skip("the provider serves one node: nowhere to move a VM to")
    pod = subject.pod(node=nodes[0], keep=True)
    with subject.cleanup(pod.identity):
        subject.create(pod)
        vm_id = subject.wait_running(pod).provider_id
        moved = subject.pod(node=nodes[1], identity=pod.identity, keep=True)
        subject.create(moved)
        def on_new_node() -> pod_pb2.PodStatus | None:
            status = subject.wait_running(moved)
            return status if status.actual_node_name == nodes[1] else None

        status = eventually(on_new_node, timeout=subject.timeout,
                            what=f"the VM running on {nodes[1]}")
        assert status.provider_id == vm_id
        vm = subject.vm(pod.identity)
        assert (vm.provider_id, vm.node_name) == (vm_id, nodes[1])
        subject.delete(pod)  # the pod that lost its VM: deleting it leaves the VM alone
        vm = subject.vm(pod.identity)
        assert (vm.provider_id, vm.power_state) == (vm_id, vpb.POWER_STATE_ON)


def _stopped(status: pod_pb2.PodStatus) -> bool:
    return (status.phase == pod_pb2.POD_PHASE_RUNNING and not status.ready
            and status.progress == pod_pb2.PROGRESS_STOPPED
            and all(c.WhichOneof("state") == "terminated" for c in status.container_statuses))


@check
def start_pod_starts_a_stopped_vm_and_nothing_else(subject: Subject) -> None:
    """StartPod leaves a running VM alone and is NOT_FOUND for a pod the provider does not run; a
    VM stopped behind the provider's back is reported Running, not ready, progress STOPPED, its
    container terminated, and stays stopped until StartPod powers the same VM on again."""
    pod = subject.pod()
    start = lpb.StartPodRequest(pod=pod)
    assert code_of(lambda: subject.pods.StartPod(start, timeout=60)) == NOT_FOUND
    with subject.cleanup(pod.identity):
        subject.create(pod)
        vm_id = subject.wait_running(pod).provider_id
        subject.pods.StartPod(start, timeout=subject.timeout)
        assert subject.wait_running(pod).provider_id == vm_id
        if subject.stop_vm is None:
            return
        subject.stop_vm(pod)
        stopped = eventually(lambda: s if _stopped(s := subject.status(pod)) else None,
                             timeout=subject.timeout, what=f"pod {pod.ref.name} reported stopped")
        assert stopped.provider_id == vm_id
        time.sleep(3)  # the provider does not power it on by itself
        assert _stopped(subject.status(pod))
        assert subject.vm(pod.identity).power_state == vpb.POWER_STATE_OFF
        subject.pods.StartPod(start, timeout=subject.timeout)
        assert subject.wait_running(pod).provider_id == vm_id
        assert _one_vm(subject, pod) == vm_id


@check
def stop_pod_kills_the_vm_and_keeps_it(subject: Subject) -> None:
    """StopPod (grace 0) answers once the VM is off: the pod reports its container terminated
    with exit code 137 and progress STOPPED, the VM is kept (its provider ID) and powered off; a
    second StopPod changes nothing, StartPod runs the same VM again, and StopPod of a pod the
    provider does not run is NOT_FOUND."""
    pod = subject.pod()
    stop = lpb.StopPodRequest(pod=pod, grace_seconds=0)
    assert code_of(lambda: subject.pods.StopPod(stop, timeout=60)) == NOT_FOUND
    with subject.cleanup(pod.identity):
        subject.create(pod)
        vm_id = subject.wait_running(pod).provider_id
        subject.pods.StopPod(stop, timeout=subject.timeout)
        stopped = eventually(lambda: s if _stopped(s := subject.status(pod)) else None,
                             timeout=60, what=f"pod {pod.ref.name} reported stopped")
        assert stopped.provider_id == vm_id
        codes = {c.terminated.exit_code for c in stopped.container_statuses}
        assert codes == {137}, f"a VM StopPod stopped reports exit code 137, not {codes}"
        assert subject.vm(pod.identity).power_state == vpb.POWER_STATE_OFF
        subject.pods.StopPod(stop, timeout=subject.timeout)
        assert _stopped(subject.status(pod))
        subject.pods.StartPod(lpb.StartPodRequest(pod=pod), timeout=subject.timeout)
        assert subject.wait_running(pod).provider_id == vm_id
        assert _one_vm(subject, pod) == vm_id
