"""Pod conditions are built by the facade alone, from the facts a provider's PodStatus carries;
a provider older than `PodStatus.ready` still has its own conditions read."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from vmlet.provider.v1 import pod_pb2 as pb
from vmlet_contract import podstatus
from vmlet_facade.outage import PROVIDER_UNAVAILABLE, Outage, during
from vmlet_facade.podconvert import PROGRESS_CONDITION, status_to_k8s
from vmlet_facade.vmstate import observe

Obj = dict[str, Any]
POD = pb.Pod(ref=pb.PodRef(namespace="ns", name="web-x", uid="u"), node_name="n1",
             containers=[pb.Container(name="vm", image="debian-12")])
T0 = datetime(2026, 1, 1, tzinfo=UTC)
VM = {"metadata": {"name": "web", "annotations": {}}, "spec": {"replicas": 1}}


def _k8s(status: pb.PodStatus) -> Obj:
    """The pod the facade would write for ``status``."""
    pod: Obj = {"metadata": {"name": "web-x"},
                "spec": {"nodeName": "n1", "containers": [{"name": "vm", "image": "debian-12"}]}}
    pod["status"] = status_to_k8s(status, pod, "192.0.2.1")
    return pod


def _conditions(status: pb.PodStatus) -> dict[str, tuple[str, str, str]]:
    """Each condition of the written pod as (status, reason, message)."""
    return {c["type"]: (c["status"], c.get("reason", ""), c.get("message", ""))
            for c in _k8s(status)["status"]["conditions"]}


def _readiness(status: pb.PodStatus) -> tuple[str, str, str]:
    """The written pod's Ready condition, which ContainersReady repeats."""
    conds = _conditions(status)
    assert conds["PodScheduled"][0] == conds["Initialized"][0] == "True"
    assert conds["ContainersReady"] == conds["Ready"]
    return conds["Ready"]


def test_a_ready_vm_is_ready() -> None:
    status = podstatus.running(POD, ips=["10.0.0.5"], started_at=T0)
    assert _readiness(status) == ("True", "", "")


def test_the_providers_not_ready_reason_and_message_become_the_conditions() -> None:
    status = podstatus.running(POD, ips=[], started_at=T0)
    podstatus.not_ready(status, "WaitingForGuestIP", "no IP address yet (VMware Tools)")
    assert _readiness(status) == ("False", "WaitingForGuestIP",
                                  "no IP address yet (VMware Tools)")
    assert _conditions(status)[PROGRESS_CONDITION] == (
        "True", "WaitingForGuestIP", "no IP address yet (VMware Tools)")


def test_the_phase_gives_the_kubelets_reason_when_the_provider_gives_none() -> None:
    assert _readiness(podstatus.pending(POD, reason="PoweringOn")) == (
        "False", "ContainersNotReady", "")
    failed = podstatus.failed(POD, reason="VMVanished", message="server s1 was deleted")
    assert _readiness(failed) == ("False", "PodFailed", "server s1 was deleted")
    assert _readiness(podstatus.succeeded(POD, message="done")) == (
        "False", "PodCompleted", "done")


def test_ready_holds_only_while_running() -> None:
    status = podstatus.pending(POD)
    status.ready = True  # a provider contradicting its own phase
    assert _readiness(status)[0] == "False"


def test_conditions_a_provider_still_sends_are_ignored_once_it_says_ready() -> None:
    status = podstatus.running(POD, ips=["10.0.0.5"], started_at=T0)
    status.conditions.add(type="Ready", status=pb.CONDITION_STATUS_FALSE, reason="Stale")
    status.conditions.add(type="vendor.example/Thing", status=pb.CONDITION_STATUS_TRUE)
    conds = _conditions(status)
    assert conds["Ready"] == ("True", "", "") and "vendor.example/Thing" not in conds


def test_an_older_provider_has_its_own_conditions_read() -> None:
    """No `ready`: the conditions it sends are taken as sent, with their transition time; those
    it leaves out are derived from its containers."""
    status = pb.PodStatus(phase=pb.POD_PHASE_RUNNING)
    status.container_statuses.add(name="vm", ready=True, running=pb.ContainerStateRunning())
    ready = status.conditions.add(type="Ready", status=pb.CONDITION_STATUS_FALSE,
                                  reason="Busy", message="Nova is busy")
    ready.last_transition_time.FromDatetime(T0)
    status.conditions.add(type="vendor.example/Thing", status=pb.CONDITION_STATUS_TRUE)
    written = {c["type"]: c for c in _k8s(status)["status"]["conditions"]}
    assert (written["Ready"]["status"], written["Ready"]["reason"]) == ("False", "Busy")
    assert written["Ready"]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert written["ContainersReady"]["status"] == "True"
    assert written["vendor.example/Thing"]["status"] == "True"
    del status.conditions[:]
    assert _readiness(status) == ("True", "", "")
    status.container_statuses[0].ready = False
    assert _readiness(status) == ("False", "ContainersNotReady", "")


def test_an_outage_turns_new_and_older_providers_pods_not_ready_alike() -> None:
    outage = Outage(PROVIDER_UNAVAILABLE, "provider p does not answer")
    new = podstatus.running(POD, ips=["10.0.0.5"], started_at=T0)
    old = pb.PodStatus(phase=pb.POD_PHASE_RUNNING)
    old.container_statuses.add(name="vm", ready=True, running=pb.ContainerStateRunning())
    old.conditions.add(type="Ready", status=pb.CONDITION_STATUS_TRUE)
    for status in (new, old):
        marked = during(status, outage)
        assert marked.container_statuses[0].ready  # as last seen
        assert _readiness(marked) == ("False", PROVIDER_UNAVAILABLE, outage.message)
        assert observe(VM, [_k8s(marked)], False)[:3] == (
            "Unknown", PROVIDER_UNAVAILABLE, outage.message)


def test_the_virtual_machine_reads_the_providers_not_ready_reason() -> None:
    """vmstate reads the conditions built here: a VM stopped in the IaaS, or in a state the
    provider does not know, shows the provider's own reason and message."""
    ran = podstatus.running(POD, ips=[], started_at=T0)
    podstatus.not_ready(ran, "ServerStateUnknown", "Nova reports server web as WEIRD",
                        pb.PROGRESS_STATE_UNKNOWN)
    ran.phase = pb.POD_PHASE_UNKNOWN
    assert observe(VM, [_k8s(ran)], False)[:3] == (
        "Unknown", "ServerStateUnknown", "Nova reports server web as WEIRD")
    waiting = podstatus.running(POD, ips=[], started_at=T0)
    podstatus.not_ready(waiting, "WaitingForGuestIP", "no IP yet")
    assert observe(VM, [_k8s(waiting)], False)[:2] == ("Starting", "Starting")
    busy = podstatus.running(POD, ips=["10.0.0.5"], started_at=T0)
    podstatus.not_ready(busy, "Busy", "Nova is busy with server web: image_snapshot")
    assert observe(VM, [_k8s(busy)], False)[:3] == (
        "Starting", "Busy", "Nova is busy with server web: image_snapshot")
