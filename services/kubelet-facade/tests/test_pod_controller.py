"""PodController against the fakes: create, adopt, status, back-off and the two delete paths."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import pytest
from fakes import (
    Background,
    FakeKube,
    FakeProvider,
    fire_retries,
    running,
    settle,
    until,
    vm_object,
)

from vmlet.provider.v1 import node_pb2
from vmlet.provider.v1 import pod_pb2 as pb
from vmlet.provider.v1 import virtual_machine_service_pb2 as vmpb
from vmlet_contract import ProviderError
from vmlet_contract.errors import FailedPrecondition, InvalidArgument, Unavailable
from vmlet_facade.events import EventRecorder
from vmlet_facade.kube import ApiError
from vmlet_facade.kubeletapi.directory import Directory
from vmlet_facade.pods import PodController, Route
from vmlet_facade.references import Resolver
from vmlet_facade.vmapi import path, vm_pod

Obj = dict[str, Any]
NODE = "node-1"  # the fake provider's one node
POD_PATH = "/api/v1/namespaces/ns/pods/web"
VM = vm_object()
Start = Callable[[], Awaitable[PodController[FakeProvider]]]


def bare_pod(name: str = "web", uid: str = "pod-uid") -> Obj:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "ns", "uid": uid},
            "spec": {"nodeName": NODE, "containers": [{
                "name": "vm", "image": "debian-12",
                "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]},
            "status": {"phase": "Pending"}}


def seeded_vm_pod(kube: FakeKube) -> Obj:
    kube.seed(path("virtualmachines", "ns", "db"), VM)
    pod = vm_pod(VM)
    pod["metadata"]["uid"] = "vm-pod-uid"
    pod["spec"]["nodeName"] = NODE
    return kube.seed("/api/v1/namespaces/ns/pods/db", pod)


def provider_pod(uid: str, identity: str, name: str = "web") -> pb.Pod:
    return pb.Pod(ref=pb.PodRef(namespace="ns", name=name, uid=uid), identity=identity,
                  node_name=NODE, keep_on_delete=identity != uid)


@pytest.fixture
def start(start_pod_controller: Start) -> Start:
    return start_pod_controller


async def failed_create(kube: FakeKube, provider: FakeProvider, start: Start,
                        error: ProviderError) -> PodController[FakeProvider]:
    """The controller after the pod's CreatePod failed with ``error``, its status written and
    come back through the watch."""
    provider.fail("create_pod", error)
    kube.seed(POD_PATH, bare_pod())
    controller = await start()
    await until(lambda: status_writes(kube))
    await settle()
    return controller


def status_writes(kube: FakeKube, name: str = "web") -> list[Obj]:
    return [c.body["status"] for c in kube.writes("PATCH", f"/pods/{name}/status")]


async def test_a_bound_pod_becomes_one_provider_pod_and_its_status_is_written(
        kube: FakeKube, provider: FakeProvider, start: Start) -> None:
    kube.seed(POD_PATH, bare_pod())
    await start()
    await until(lambda: status_writes(kube))
    created = provider.called("create_pod")
    assert len(created) == 1
    assert (created[0].identity, created[0].keep_on_delete) == ("pod-uid", False)
    assert created[0].node_name == NODE
    status = kube.get_obj(POD_PATH)["status"]  # type: ignore[index]
    assert status["phase"] == "Running" and status["podIP"] == "10.0.0.5"
    assert status["hostIP"] == "192.0.2.1"
    await settle()  # the pod's own status write comes back through the watch: no second call
    assert len(provider.called("create_pod")) == 1 and not provider.called("update_pod")
    assert len(status_writes(kube)) == 1


async def test_a_vm_the_provider_runs_is_adopted_not_created_again(
        kube: FakeKube, provider: FakeProvider, start: Start) -> None:
    kube.seed(POD_PATH, bare_pod())
    provider.run_pod(provider_pod("pod-uid", "pod-uid"))
    await start()
    await settle()
    assert provider.called("get_pods")
    assert not provider.called("create_pod") and not provider.called("delete_pod")
    # What the VM became while no facade ran is written at once (found by tests/
    # test_outage_survival.py: VMs that went Running meanwhile left their pods Pending).
    assert [w["podIP"] for w in status_writes(kube)] == ["10.0.0.5"]
    provider.notify_pod(provider_pod("pod-uid", "pod-uid"), running("10.0.0.9"))
    await until(lambda: len(status_writes(kube)) == 2)
    assert kube.get_obj(POD_PATH)["status"]["podIP"] == "10.0.0.9"  # type: ignore[index]


async def test_orphans_are_settled_a_bare_pods_vm_destroyed_a_vm_pods_vm_kept(
        kube: FakeKube, provider: FakeProvider, start: Start) -> None:
    provider.run_pod(provider_pod("gone-bare", "gone-bare", "old"))
    vm_pod_gone = provider_pod("gone-vm-pod", "vm-uid", "db")
    vm_pod_gone.keep_on_delete = False  # recorded before keep-on-delete was: still a VM's
    provider.run_pod(vm_pod_gone)
    await start()
    await until(lambda: len(provider.called("delete_pod")) == 2)
    keep = {p.ref.uid: p.keep_on_delete for p in provider.called("delete_pod")}
    assert keep == {"gone-bare": False, "gone-vm-pod": True}
    assert "gone-bare" not in provider.vms
    assert provider.vms["vm-uid"].power_state == vmpb.POWER_STATE_OFF


async def test_nothing_is_decided_before_the_nodes_pods_are_listed(
        kube: FakeKube, provider: FakeProvider, start: Start) -> None:
    """The fault: the pod list is slow. The provider's pod that Kubernetes has must not be
    taken for an orphan, and no pod is created, until the list is complete."""
    listed = kube.hold_list("/api/v1/pods")
    kube.seed(POD_PATH, bare_pod())
    kube.seed("/api/v1/namespaces/ns/pods/new", bare_pod("new", "new-uid"))
    provider.run_pod(provider_pod("pod-uid", "pod-uid"))
    await start()
    await settle()
    assert not provider.called("delete_pod") and not provider.called("create_pod")
    listed.set()
    await until(lambda: provider.called("create_pod"))
    await settle()
    assert [p.ref.uid for p in provider.called("create_pod")] == ["new-uid"]
    assert not provider.called("delete_pod")
    assert "pod-uid" in provider.pods


async def test_a_provider_error_is_shown_and_backed_off_then_retried(
        kube: FakeKube, provider: FakeProvider, start: Start) -> None:
    provider.fail("create_pod", Unavailable("the IaaS is down"))
    kube.seed(POD_PATH, bare_pod())
    controller = await start()
    await until(lambda: status_writes(kube))
    waiting = status_writes(kube)[0]["containerStatuses"][0]["state"]["waiting"]
    assert waiting == {"reason": "ProviderUnavailable", "message": "the IaaS is down"}
    assert "ProviderCreateFailed" in kube.event_reasons()
    await settle()
    # The facade's own status write came back through the watch: the back-off stands.
    assert len(provider.called("create_pod")) == 1
    delays = fire_retries(controller._sync)
    assert 0.5 < delays["pod-uid"] <= 1.0
    await until(lambda: len(provider.called("create_pod")) == 2)
    await settle()
    assert not controller._sync.retry_pending("pod-uid")
    provider.notify_pod(provider_pod("pod-uid", "pod-uid"), running())
    await until(lambda: len(status_writes(kube)) == 2)
    assert kube.get_obj(POD_PATH)["status"]["phase"] == "Running"  # type: ignore[index]


async def test_the_status_a_retried_create_returns_is_written(
        kube: FakeKube, provider: FakeProvider, start: Start) -> None:
    """Issue 17: after a failed CreatePod, the status the retried CreatePod returned was
    dropped (``_create`` kept the failure's status): the pod showed the old error until the
    provider's NotifyPods stream said otherwise."""
    controller = await failed_create(kube, provider, start, Unavailable("the IaaS is down"))
    fire_retries(controller._sync)
    await until(lambda: len(provider.called("create_pod")) == 2)
    await settle()
    status = kube.get_obj(POD_PATH)["status"]  # type: ignore[index]
    assert status["phase"] == "Running" and status["podIP"] == "10.0.0.5"
    assert "waiting" not in status["containerStatuses"][0]["state"]


async def test_a_permanent_provider_error_backs_off_longer(
        kube: FakeKube, provider: FakeProvider, start: Start) -> None:
    controller = await failed_create(kube, provider, start,
                                     FailedPrecondition("no template debian-12"))
    assert fire_retries(controller._sync)["pod-uid"] > 7.0
    await until(lambda: len(provider.called("create_pod")) == 2)


async def test_a_spec_the_provider_refuses_fails_the_pod_as_a_kubelet_rejects_one(
        kube: FakeKube, provider: FakeProvider, start: Start) -> None:
    """INVALID_ARGUMENT: the provider will never run this spec. The pod goes Failed (a Job
    counts it), every container terminated with its name and image, and a Warning Event says
    why; no second CreatePod, nothing at the provider, and a restart does not try again."""
    controller = await failed_create(
        kube, provider, start, InvalidArgument("pod ns/web has 2 containers; a VM pod has one"))
    status = kube.get_obj(POD_PATH)["status"]  # type: ignore[index]
    assert status["phase"] == "Failed" and status["reason"] == "InvalidSpec"
    assert status["message"] == "Pod was rejected: pod ns/web has 2 containers; a VM pod has one"
    [cs] = status["containerStatuses"]
    assert (cs["name"], cs["image"], cs["ready"], cs["started"]) == ("vm", "debian-12", False,
                                                                     False)
    assert cs["state"]["terminated"]["exitCode"] == 128
    assert cs["state"]["terminated"]["reason"] == "InvalidSpec"
    ready = {c["type"]: c for c in status["conditions"]}["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "PodFailed")
    events = [c.body for c in kube.writes("POST", "/events") if c.body["reason"] == "InvalidSpec"]
    assert [e["type"] for e in events] == ["Warning"]
    assert events[0]["message"] == status["message"]
    assert not fire_retries(controller._sync)
    await settle()
    assert len(provider.called("create_pod")) == 1 and not provider.pods
    await controller.stop()
    again = await start()  # a restarted facade reads Failed: it does not create the pod again
    await settle()
    assert len(provider.called("create_pod")) == 1 and not fire_retries(again._sync)


async def test_waiting_and_failed_statuses_name_every_container(
        kube: FakeKube, provider: FakeProvider, start: Start) -> None:
    """Issue 18: a status the facade makes (a failed create) was one containerStatuses entry
    with no name and no image, so kubectl describe showed no State, Ready or Restart Count."""
    pod = bare_pod()
    pod["spec"]["containers"].append({"name": "second", "image": "debian-13"})
    provider.fail("create_pod", Unavailable("the IaaS is down"))
    kube.seed(POD_PATH, pod)
    await start()
    await until(lambda: status_writes(kube))
    statuses = status_writes(kube)[-1]["containerStatuses"]
    assert [(c["name"], c["image"]) for c in statuses] == [("vm", "debian-12"),
                                                           ("second", "debian-13")]
    for c in statuses:
        assert c["state"] == {"waiting": {"reason": "ProviderUnavailable",
                                          "message": "the IaaS is down"}}
        assert (c["ready"], c["started"], c["restartCount"], c["lastState"]) == (
            False, False, 0, {})


async def test_deleting_a_bare_pod_destroys_its_vm_and_releases_the_pod(
        kube: FakeKube, provider: FakeProvider, start: Start) -> None:
    kube.seed(POD_PATH, bare_pod())
    await start()
    await until(lambda: status_writes(kube))
    await kube.delete(POD_PATH)  # graceful: the pod waits for its kubelet, the facade
    assert kube.get_obj(POD_PATH)["metadata"]["deletionTimestamp"]  # type: ignore[index]
    await until(lambda: kube.get_obj(POD_PATH) is None)
    deleted = provider.called("delete_pod")
    assert [(p.identity, p.keep_on_delete) for p in deleted] == [("pod-uid", False)]
    assert "pod-uid" not in provider.vms
    final = kube.writes("DELETE", POD_PATH)[-1].body
    assert final["gracePeriodSeconds"] == 0 and final["preconditions"] == {"uid": "pod-uid"}


async def test_deleting_a_vm_pod_stops_the_vm_and_keeps_it(
        kube: FakeKube, provider: FakeProvider, start: Start) -> None:
    seeded_vm_pod(kube)
    await start()
    await until(lambda: provider.called("create_pod"))
    created = provider.called("create_pod")[0]
    assert (created.identity, created.keep_on_delete) == ("vm-uid", True)
    await kube.delete("/api/v1/namespaces/ns/pods/db")
    await until(lambda: kube.get_obj("/api/v1/namespaces/ns/pods/db") is None)
    assert [p.keep_on_delete for p in provider.called("delete_pod")] == [True]
    assert provider.vms["vm-uid"].power_state == vmpb.POWER_STATE_OFF


async def test_a_failed_provider_delete_keeps_the_pod_until_it_succeeds(
        kube: FakeKube, provider: FakeProvider, start: Start) -> None:
    kube.seed(POD_PATH, bare_pod())
    controller = await start()
    await until(lambda: status_writes(kube))
    await settle()  # the status write has come back through the watch
    provider.fail("delete_pod", Unavailable("the IaaS is down"))
    await kube.delete(POD_PATH)
    await until(lambda: "ProviderDeleteFailed" in kube.event_reasons())
    await settle()
    assert kube.get_obj(POD_PATH) is not None  # not released while its VM may still run
    assert "pod-uid" in provider.vms
    fire_retries(controller._sync)
    await until(lambda: kube.get_obj(POD_PATH) is None)
    assert "pod-uid" not in provider.vms


async def test_a_conflict_on_the_final_delete_is_a_pod_already_replaced(
        kube: FakeKube, provider: FakeProvider, start: Start) -> None:
    """The fault: the final delete meets 409 (the name now belongs to a new pod, the uid
    precondition fails). Nothing is retried and the new pod is left alone."""
    kube.seed(POD_PATH, bare_pod())
    controller = await start()
    await until(lambda: status_writes(kube))
    await kube.delete(POD_PATH)  # graceful: the facade's final delete follows, and fails
    kube.fail("DELETE", POD_PATH, ApiError(409, "Conflict", "Precondition failed: uid"))
    await until(lambda: provider.called("delete_pod"))
    await settle()
    assert not controller._sync.retry_pending("pod-uid")
    assert len(provider.called("delete_pod")) == 1


async def test_a_force_deleted_pod_is_removed_from_the_provider(
        kube: FakeKube, provider: FakeProvider, start: Start) -> None:
    kube.seed(POD_PATH, bare_pod())
    await start()
    await until(lambda: status_writes(kube))
    await kube.delete(POD_PATH, {"gracePeriodSeconds": 0})  # gone without a deletionTimestamp
    await until(lambda: provider.called("delete_pod"))
    assert provider.called("delete_pod")[0].keep_on_delete is False
    assert "pod-uid" not in provider.vms


async def test_a_spec_change_is_an_update_not_a_second_create(
        kube: FakeKube, provider: FakeProvider, start: Start) -> None:
    kube.seed(POD_PATH, bare_pod())
    await start()
    await until(lambda: status_writes(kube))
    resized = copy.deepcopy(kube.get_obj(POD_PATH))
    assert resized is not None
    resized["spec"]["containers"][0]["resources"]["limits"]["cpu"] = "2"
    await kube.replace(POD_PATH, resized)
    await until(lambda: provider.called("update_pod"))
    assert len(provider.called("create_pod")) == 1
    assert provider.called("update_pod")[0].containers[0].resources.cpu_limit_millis == 2000


async def test_status_from_the_provider_stream_reaches_only_its_own_pod(
        kube: FakeKube, provider: FakeProvider, start: Start) -> None:
    kube.seed(POD_PATH, bare_pod())
    await start()
    await until(lambda: status_writes(kube))
    # A status for an older pod of the same name (another UID) is not this pod's.
    provider.notify_pod(pb.PodRef(namespace="ns", name="web", uid="older-uid"),
                        running("10.0.0.66"))
    provider.notify_pod(pb.PodRef(namespace="ns", name="web", uid="pod-uid"),
                        running("10.0.0.7"))
    await until(lambda: len(status_writes(kube)) == 2)
    await settle()
    assert [s["podIP"] for s in status_writes(kube)] == ["10.0.0.5", "10.0.0.7"]


async def test_the_kubelet_api_reads_the_pods_through_the_controller(
        kube: FakeKube, provider: FakeProvider, start: Start) -> None:
    kube.seed(POD_PATH, bare_pod())
    controller = await start()
    await until(lambda: status_writes(kube))
    assert [p["metadata"]["uid"] for p in controller.pods_named("ns", "web")] == ["pod-uid"]
    assert controller.pods_named("ns", "db") == []
    assert [p["metadata"]["name"] for p in controller.pods_on({NODE})] == ["web"]
    assert controller.pods_on({"node-2"}) == []
    assert controller.provider_of(NODE) is provider and controller.provider_of("node-2") is None
    nodes = SimpleNamespace(provider=provider, nodes={NODE: node_pb2.Node(name=NODE)})
    directory = Directory(controller, [nodes])
    found = directory.pod("ns", "web")
    assert found is not None and found["metadata"]["uid"] == "pod-uid"
    assert directory.provider_of(NODE) is provider


async def test_nothing_is_kept_of_a_pod_once_it_is_gone_from_both_sides(
        kube: FakeKube, provider: FakeProvider, start: Start) -> None:
    kube.seed(POD_PATH, bare_pod())
    controller = await start()
    await until(lambda: status_writes(kube))
    await kube.delete(POD_PATH, {"gracePeriodSeconds": 0})
    await until(lambda: "pod-uid" not in provider.vms)
    await settle()
    assert controller.pods_named("ns", "web") == []
    assert "pod-uid" not in controller._states


async def test_a_quantity_vmlet_cannot_read_is_invalid_pod_spec_on_the_pod(
        kube: FakeKube, provider: FakeProvider, start: Start) -> None:
    pod = bare_pod()
    pod["spec"]["containers"][0]["resources"]["limits"]["memory"] = "lots"
    kube.seed(POD_PATH, pod)
    await start()
    await until(lambda: status_writes(kube))
    status = status_writes(kube)[-1]
    assert (status["phase"], status["reason"]) == ("Failed", "InvalidPodSpec")
    ended = status["containerStatuses"][0]["state"]["terminated"]
    assert ended["reason"] == "InvalidPodSpec"
    assert "invalid quantity 'lots'" in ended["message"]
    assert not provider.called("create_pod")


async def test_a_fault_of_vmlet_is_no_invalid_pod_spec_and_is_retried(
        kube: FakeKube, provider: FakeProvider, start: Start,
        caplog: pytest.LogCaptureFixture) -> None:
    """A KeyError raised inside vmlet (here by the provider client) is vmlet's fault: it is
    logged as an error with its traceback and retried, never blamed on the pod."""
    provider.fail("create_pod", KeyError("bug"))  # type: ignore[arg-type]
    kube.seed(POD_PATH, bare_pod())
    controller = await start()
    await until(lambda: any(r.levelname == "ERROR" and r.exc_info for r in caplog.records))
    await settle()
    assert not status_writes(kube)
    assert "pod-uid" in fire_retries(controller._sync)
    await until(lambda: status_writes(kube))
    assert len(provider.called("create_pod")) == 2
    assert kube.get_obj(POD_PATH)["status"]["phase"] == "Running"  # type: ignore[index]


async def test_the_fields_vmlet_does_not_honour_are_named_once_when_the_pod_is_accepted(
        kube: FakeKube, provider: FakeProvider, start: Start) -> None:
    """Issue 18: pod fields vmlet does not act on were ignored without a word. One Warning Event
    names them when the pod is accepted, not again at each retried create."""
    pod = bare_pod()
    pod["spec"]["containers"][0]["lifecycle"] = {"preStop": {"tcpSocket": {"port": 22}}}
    pod["spec"]["hostNetwork"] = True
    provider.fail("create_pod", Unavailable("the IaaS is down"))
    kube.seed(POD_PATH, pod)
    controller = await start()
    await until(lambda: status_writes(kube))
    fire_retries(controller._sync)
    await until(lambda: len(provider.called("create_pod")) == 2)
    await settle()
    told = [c.body for c in kube.writes("POST", "/events")
            if c.body["reason"] == "FieldsNotHonoured"]
    assert [e["type"] for e in told] == ["Warning"]
    assert "spec.containers[vm].lifecycle.preStop.tcpSocket" in told[0]["message"]
    assert "spec.hostNetwork" in told[0]["message"]


async def test_a_pod_vmlet_honours_whole_gets_no_warning(
        kube: FakeKube, provider: FakeProvider, start: Start) -> None:
    seeded_vm_pod(kube)
    kube.seed(POD_PATH, bare_pod())
    await start()
    await until(lambda: len(provider.called("create_pod")) == 2)
    await settle()
    assert "FieldsNotHonoured" not in kube.event_reasons()


async def test_ready_follows_the_readiness_probe_run_in_the_guest(
        kube: FakeKube, provider: FakeProvider, background: Background,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 18: a pod with a readiness probe was Ready the moment its VM ran. Ready now waits
    for the probe (run in the guest through the provider's exec) and follows it."""
    from vmlet_facade import probes
    sleep = asyncio.sleep
    monkeypatch.setattr(probes, "_sleep", lambda seconds: sleep(seconds / 100))
    answer = {"code": 1}
    ran: list[tuple[str, list[str]]] = []

    async def guest_exec(host: FakeProvider, pod: Obj, container: str,
                         command: list[str]) -> tuple[int, str]:
        assert host is provider
        ran.append((container, command))
        return answer["code"], "not yet"

    pod = bare_pod()
    pod["spec"]["containers"][0]["readinessProbe"] = {"exec": {"command": ["ready"]},
                                                      "periodSeconds": 1}
    kube.seed(POD_PATH, pod)
    controller: PodController[FakeProvider] = PodController(
        kube.client, Resolver(kube.client), EventRecorder(kube.client), guest_exec=guest_exec)
    background.at_end(controller.stop)
    controller.add_node(NODE, Route(provider, lambda: "192.0.2.1"))

    def ready() -> str:
        status = kube.get_obj(POD_PATH).get("status", {})  # type: ignore[union-attr]
        return {c["type"]: c for c in status.get("conditions") or []}.get(
            "Ready", {}).get("status", "")

    await until(lambda: status_writes(kube))
    status = kube.get_obj(POD_PATH)["status"]  # type: ignore[index]
    assert status["phase"] == "Running" and ready() == "False"
    condition = {c["type"]: c for c in status["conditions"]}["Ready"]
    assert (condition["reason"], condition["message"]) == (
        "ContainersNotReady", "containers with unready status: [vm]")
    assert not status["containerStatuses"][0]["ready"]
    await until(lambda: "Unhealthy" in kube.event_reasons(), rounds=200_000)
    answer["code"] = 0
    await until(lambda: ready() == "True", rounds=200_000)
    assert ran[0] == ("vm", ["ready"])
    answer["code"] = 1
    await until(lambda: ready() == "False", rounds=200_000)


async def test_a_pod_tolerates_its_nodes_outage_for_ever_before_its_vm_is_made(
        kube: FakeKube, provider: FakeProvider, start: Start) -> None:
    """Issue 19: a facade away past DefaultTolerationSeconds (300 s) let the taint manager
    evict its bare pods, and a deleted bare pod's VM is destroyed. The pod's tolerations of
    not-ready and unreachable lose their seconds first; while that fails, no VM is made."""
    pod = bare_pod()
    pod["spec"]["tolerations"] = [
        {"key": taint, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
        for taint in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")]
    kube.seed(POD_PATH, pod)
    kube.fail("PATCH", "/pods/web", ApiError(409, "Conflict", "the pod changed"))
    controller = await start()
    await settle()
    assert not provider.called("create_pod")
    fire_retries(controller._sync)
    await until(lambda: provider.called("create_pod"))
    tolerations = kube.get_obj(POD_PATH)["spec"]["tolerations"]  # type: ignore[index]
    assert all("tolerationSeconds" not in t for t in tolerations) and len(tolerations) == 2
