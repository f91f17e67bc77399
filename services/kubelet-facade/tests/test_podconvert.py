from __future__ import annotations

import datetime as dt
from typing import Any

from vmlet.provider.v1 import pod_pb2 as pb
from vmlet_facade.ownership import Ownership, prove
from vmlet_facade.podconvert import (
    PROGRESS_CONDITION,
    spec_fingerprint,
    status_to_k8s,
    to_provider_pod,
)
from vmlet_facade.references import Resolved


def _pod(**meta: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "vm", "namespace": "ns", "uid": "u-1",
                     "creationTimestamp": "2026-11-26T05:00:00Z", **meta},
        "spec": {"nodeName": "n1", "containers": [{
            "name": "vm", "image": "debian-12",
            "resources": {"requests": {"cpu": "500m", "memory": "1Gi"},
                          "limits": {"cpu": "2"}}}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "c1"}},
                        {"name": "cfg", "configMap": {"name": "cm"}},
                        {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}]},
        "status": {},
    }


BARE = Ownership("u-1", keep_on_delete=False)
_VM_REF = {"apiVersion": "vmlet.io/v1alpha1", "kind": "VirtualMachine", "name": "vm",
           "uid": "vm-uid", "controller": True}
_VM = {"metadata": {"name": "vm", "namespace": "ns", "uid": "vm-uid"}}


def test_identity_is_never_read_from_annotations() -> None:
    """A tenant's annotation (or label) names no identity: a bare pod is its own UID."""
    hostile = _pod(annotations={"vmlet.io/identity": "victim-uid",
                                "vmlet.io/keep-on-delete": "true"},
                   labels={"vmlet.io/vm-uid": "victim-uid"})
    assert prove(hostile, None) == BARE
    assert prove(hostile, _VM) == BARE  # no ownerReference: the VM it names does not matter


def test_a_vm_pod_is_proven_by_owner_reference_vm_and_name() -> None:
    owned = _pod(ownerReferences=[_VM_REF])
    assert prove(owned, _VM) == Ownership("vm-uid", keep_on_delete=True, owner="vm")
    # The VirtualMachine it names is missing, has another UID, lives in another namespace, or
    # the pod is not the one the VM controller names after it: a bare pod.
    assert prove(owned, None) == BARE
    assert prove(owned, {"metadata": {**_VM["metadata"], "uid": "other"}}) == BARE
    assert prove(owned, {"metadata": {**_VM["metadata"], "namespace": "victim"}}) == BARE
    assert prove({**owned, "metadata": {**owned["metadata"], "name": "vm-2"}}, _VM) == BARE
    not_controller = _pod(ownerReferences=[{**_VM_REF, "controller": False}])
    assert prove(not_controller, _VM) == BARE


def test_to_provider_pod_carries_resources_volumes_and_keep() -> None:
    resolved = Resolved(env={"vm": [("A", "1")]}, files={"cfg": {"k": b"v"}}, user_data="#cc")
    owned = _pod(ownerReferences=[_VM_REF])
    p = to_provider_pod(owned, resolved, prove(owned, _VM))
    assert p.ref.uid == "u-1" and p.node_name == "n1" and p.keep_on_delete
    assert p.identity == "vm-uid"
    r = p.containers[0].resources
    assert (r.cpu_request_millis, r.cpu_limit_millis, r.memory_request_bytes) == (500, 2000, 2**30)
    assert p.containers[0].env[0].name == "A" and p.user_data == "#cc"
    kinds = {v.name: v.WhichOneof("source") for v in p.volumes}
    assert kinds == {"data": "disk", "cfg": "files", "tmp": "scratch"}
    assert not to_provider_pod(_pod(), Resolved(), BARE).keep_on_delete


def test_fingerprint_changes_with_resources_only() -> None:
    a, b = _pod(), _pod()
    b["metadata"]["labels"] = {"x": "y"}
    assert spec_fingerprint(a) == spec_fingerprint(b)
    b["spec"]["containers"][0]["resources"]["limits"]["cpu"] = "4"
    assert spec_fingerprint(a) != spec_fingerprint(b)


def test_status_running_is_ready_with_ip() -> None:
    status = pb.PodStatus(phase=pb.POD_PHASE_RUNNING, pod_ip="10.0.0.5")
    started = pb.ContainerStatus(name="vm", ready=True)
    started.running.started_at.FromDatetime(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    status.container_statuses.append(started)
    out = status_to_k8s(status, _pod(), "192.0.2.1")
    assert out["phase"] == "Running" and out["podIP"] == "10.0.0.5"
    assert out["hostIP"] == "192.0.2.1"
    conds = {c["type"]: c["status"] for c in out["conditions"]}
    assert conds == {"PodScheduled": "True", "Initialized": "True", "ContainersReady": "True",
                     "Ready": "True"}
    assert out["containerStatuses"][0]["state"]["running"]["startedAt"] == "2026-01-01T00:00:00Z"


def test_pod_ips_hold_one_address_per_family() -> None:
    status = pb.PodStatus(phase=pb.POD_PHASE_RUNNING,
                          pod_ips=["10.0.2.5", "10.0.1.7", "fd00::7", "fd00::8"])
    out = status_to_k8s(status, _pod(), "192.0.2.1")
    assert out["podIP"] == "10.0.2.5"
    assert out["podIPs"] == [{"ip": "10.0.2.5"}, {"ip": "fd00::7"}]


def test_status_keeps_transition_time_while_unchanged() -> None:
    pod = _pod()
    pod["status"]["conditions"] = [{"type": "Ready", "status": "False",
                                    "lastTransitionTime": "2020-01-01T00:00:00Z"}]
    out = status_to_k8s(pb.PodStatus(phase=pb.POD_PHASE_PENDING), pod, "")
    ready = next(c for c in out["conditions"] if c["type"] == "Ready")
    assert ready["lastTransitionTime"] == "2020-01-01T00:00:00Z"
    assert out["podIP"] is None  # a merge patch null clears an earlier IP


def test_networks_cross_the_boundary_in_order() -> None:
    pod = _pod(annotations={"vmlet.io/networks": "frontend, backend"})
    assert [n.name for n in to_provider_pod(pod, Resolved(), BARE).networks] == [
        "frontend", "backend"]
    assert not to_provider_pod(_pod(), Resolved(), BARE).networks


def test_vm_pod_carries_networks_disks_labels_and_identity() -> None:
    from vmlet_facade.vmapi import vm_pod

    vm = {"metadata": {"name": "web", "namespace": "ns", "uid": "vm-uid", "labels": {"app": "x"}},
          "spec": {"provider": "vsphere", "image": "debian-12", "cpu": 2, "memory": "4Gi",
                   "networks": [{"name": "pg-a"}, {"name": "pg-b"}],
                   "disks": [{"name": "data", "claimName": "c1"}]},
          "status": {"nodeName": "host-1"}}
    pod = vm_pod(vm)
    meta, spec = pod["metadata"], pod["spec"]
    assert meta["annotations"]["vmlet.io/networks"] == "pg-a,pg-b"
    assert "vmlet.io/identity" not in meta["annotations"]  # the identity is metadata.uid
    assert meta["name"] == "web" and "generateName" not in meta  # one name: never two pods
    assert prove({**pod, "metadata": {**meta, "uid": "pod-uid"}}, vm).identity == "vm-uid"
    assert meta["labels"]["app"] == "x" and meta["labels"]["vmlet.io/vm-uid"] == "vm-uid"
    assert spec["volumes"] == [{"name": "data", "persistentVolumeClaim": {
        "claimName": "c1", "readOnly": False}}]
    assert spec["containers"][0]["resources"]["limits"] == {"cpu": "2", "memory": "4Gi"}
    preferred = spec["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert preferred[0]["preference"]["matchExpressions"][0]["values"] == ["host-1"]


def test_the_pods_json_is_not_sent() -> None:
    sent = to_provider_pod(_pod(), Resolved(), BARE)
    assert 11 not in [f.number for f, _ in sent.ListFields()]
    assert "pod_json" not in pb.Pod.DESCRIPTOR.fields_by_name


def test_progress_becomes_a_condition_only_when_the_provider_sets_it() -> None:
    status = pb.PodStatus(phase=pb.POD_PHASE_PENDING, progress=pb.PROGRESS_POWERING_ON)
    status.container_statuses.add(name="vm", waiting=pb.ContainerStateWaiting(
        reason="PoweringOn", message="VM web is powering on"))
    conds = {c["type"]: c for c in status_to_k8s(status, _pod(), "")["conditions"]}
    progress = conds[PROGRESS_CONDITION]
    assert (progress["status"], progress["reason"], progress["message"]) == (
        "True", "PoweringOn", "VM web is powering on")
    status.progress = pb.PROGRESS_NONE
    assert {c["type"]: c["status"] for c in status_to_k8s(status, _pod(), "")["conditions"]}[
        PROGRESS_CONDITION] == "False"
    status.progress = pb.PROGRESS_UNSPECIFIED
    assert PROGRESS_CONDITION not in {
        c["type"] for c in status_to_k8s(status, _pod(), "")["conditions"]}


def test_the_size_reported_is_the_one_the_provider_read() -> None:
    """The container's resources are what the IaaS says the VM has; the spec's own spelling is
    kept when it is that much, and no request is left above a limit."""
    status = pb.PodStatus(phase=pb.POD_PHASE_RUNNING,
                          resources=pb.VmResources(cpu_millis=1000, memory_bytes=3 * 2**30))
    status.container_statuses.add(name="vm", ready=True, running=pb.ContainerStateRunning())
    pod = _pod()
    pod["spec"]["containers"][0]["resources"] = {
        "requests": {"cpu": "2", "memory": "3072Mi"}, "limits": {"cpu": "2", "memory": "3072Mi"}}
    reported = status_to_k8s(status, pod, "")["containerStatuses"][0]["resources"]
    assert reported == {"requests": {"cpu": "1", "memory": "3072Mi"},
                        "limits": {"cpu": "1", "memory": "3072Mi"}}
    status.resources.cpu_millis = 1500
    status.resources.memory_bytes = 2**30 + 2**20
    reported = status_to_k8s(status, pod, "")["containerStatuses"][0]["resources"]
    assert reported["limits"] == {"cpu": "1500m", "memory": "1025Mi"}
    status.ClearField("resources")
    reported = status_to_k8s(status, pod, "")["containerStatuses"][0]["resources"]
    assert reported == pod["spec"]["containers"][0]["resources"]


def test_restart_count_never_goes_back_and_the_previous_run_becomes_last_state() -> None:
    """A grown restartCount turns the state the container had into its lastState, as a kubelet
    keeps the previous run; a provider that forgot its count (a restart) does not lower it."""
    first = pb.PodStatus(phase=pb.POD_PHASE_RUNNING, ready=True)
    cs = first.container_statuses.add(name="vm", ready=True)
    cs.running.started_at.FromSeconds(1_767_225_600)
    pod = _pod()
    pod["status"] = status_to_k8s(first, pod, "")
    again = pb.PodStatus()
    again.CopyFrom(first)
    again.container_statuses[0].restart_count = 1
    again.container_statuses[0].running.started_at.FromSeconds(1_767_225_900)
    pod["status"] = status_to_k8s(again, pod, "")
    [restarted] = pod["status"]["containerStatuses"]
    assert restarted["restartCount"] == 1
    assert restarted["state"]["running"]["startedAt"] == "2026-01-01T00:05:00Z"
    previous = restarted["lastState"]["terminated"]
    assert previous["startedAt"] == "2026-01-01T00:00:00Z" and previous["exitCode"] == 0
    forgot = pb.PodStatus()
    forgot.CopyFrom(again)
    forgot.container_statuses[0].restart_count = 0
    [kept] = status_to_k8s(forgot, pod, "")["containerStatuses"]
    assert kept["restartCount"] == 1 and kept["lastState"] == restarted["lastState"]


def test_a_container_the_provider_does_not_name_gets_the_state_of_the_phase() -> None:
    pod = _pod()
    pod["spec"]["containers"].append({"name": "other", "image": "debian-13"})
    status = pb.PodStatus(phase=pb.POD_PHASE_SUCCEEDED)
    status.container_statuses.add(name="vm").terminated.exit_code = 0
    out = status_to_k8s(status, pod, "")["containerStatuses"]
    assert [(c["name"], c["image"]) for c in out] == [("vm", "debian-12"), ("other", "debian-13")]
    assert out[1]["state"]["terminated"]["exitCode"] == 0
    assert not out[1]["ready"] and not out[1]["started"]


def test_init_containers_wait_until_the_vm_first_runs_then_are_handed_to_the_guest() -> None:
    """Issue 18 item 6: one initContainerStatuses entry per init container. Their commands run
    at the VM's first boot and no guest reports back: PodInitializing (Initialized False) until
    the VM runs, then terminated HandedToGuest with exit code 0, for good."""
    pod = _pod()
    pod["spec"]["initContainers"] = [{"name": "prep", "image": "debian-12"},
                                     {"name": "seed", "image": "debian-12"}]
    pending = status_to_k8s(pb.PodStatus(phase=pb.POD_PHASE_PENDING), pod, "10.0.0.1")
    assert [c["state"] for c in pending["initContainerStatuses"]] == [
        {"waiting": {"reason": "PodInitializing"}}] * 2
    initialized = {c["type"]: c for c in pending["conditions"]}["Initialized"]
    assert (initialized["status"], initialized["reason"], initialized["message"]) == (
        "False", "ContainersNotInitialized", "containers with incomplete status: [prep seed]")

    status = pb.PodStatus(phase=pb.POD_PHASE_RUNNING, pod_ip="10.1.1.1", ready=True)
    cs = status.container_statuses.add(name="vm", ready=True)
    cs.running.started_at.FromDatetime(dt.datetime(2026, 11, 26, 5, 1, tzinfo=dt.UTC))
    running = status_to_k8s(status, pod, "10.0.0.1")
    inits = running["initContainerStatuses"]
    assert [(c["name"], c["image"], c["ready"], c["restartCount"]) for c in inits] == [
        ("prep", "debian-12", True, 0), ("seed", "debian-12", True, 0)]
    done = inits[0]["state"]["terminated"]
    assert (done["exitCode"], done["reason"], done["startedAt"]) == (
        0, "HandedToGuest", "2026-11-26T05:01:00Z")
    assert {c["type"]: c["status"] for c in running["conditions"]}["Initialized"] == "True"

    # The VM stops and its status says nothing of a run: the init containers stay done.
    pod["status"] = running
    stopped = status_to_k8s(pb.PodStatus(phase=pb.POD_PHASE_RUNNING), pod, "10.0.0.1")
    assert stopped["initContainerStatuses"] == inits


def test_a_pod_without_init_containers_has_no_init_statuses() -> None:
    assert "initContainerStatuses" not in status_to_k8s(
        pb.PodStatus(phase=pb.POD_PHASE_PENDING), _pod(), "10.0.0.1")
