"""restartPolicy on VMs that stop on their own: pods end, or their VMs start again with the
kubelet's back-off; through PodController against the fakes."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fakes import FakeKube, FakeProvider, running, settle, until

from vmlet.provider.v1 import pod_pb2 as pb
from vmlet_contract import podstatus
from vmlet_contract.errors import Unavailable
from vmlet_facade import restarts
from vmlet_facade.pods import PodController

Obj = dict[str, Any]
NODE = "node-1"
POD_PATH = "/api/v1/namespaces/ns/pods/job"
Start = Callable[[], Awaitable[PodController[FakeProvider]]]


class Clock:
    """Stands in for the back-off's sleeps: records each and lets a test end it."""

    def __init__(self) -> None:
        self.waits: list[float] = []
        self.gate = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        await self.gate.wait()
        self.gate.clear()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(restarts, "_sleep", c.sleep)
    return c


def job_pod(policy: str | None, status: Obj | None = None) -> Obj:
    spec: Obj = {"nodeName": NODE, "containers": [{"name": "vm", "image": "debian-12"}]}
    if policy is not None:
        spec["restartPolicy"] = policy
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "job", "namespace": "ns", "uid": "job-uid"},
            "spec": spec, "status": status or {"phase": "Pending"}}


def provider_pod() -> pb.Pod:
    return pb.Pod(ref=pb.PodRef(namespace="ns", name="job", uid="job-uid"), identity="job-uid",
                  node_name=NODE, containers=[pb.Container(name="vm", image="debian-12")])


_BOOT = datetime(2026, 1, 1, tzinfo=UTC)


def stopped(code: int, run: int = 0, ran: float = 5.0) -> pb.PodStatus:
    """The provider's status of the VM stopped on its own after its ``run``-th boot."""
    began = _BOOT + timedelta(hours=run)
    return podstatus.stopped(provider_pod(), reason="PoweredOff",
                             message=f"the guest shut down with exit code {code}",
                             exit_code=code, started_at=began,
                             finished_at=began + timedelta(seconds=ran))


@pytest.fixture
def start(start_pod_controller: Start) -> Start:
    return start_pod_controller


def pod_status(kube: FakeKube) -> Obj:
    return kube.status(POD_PATH)


def container(kube: FakeKube) -> Obj:
    (cs,) = pod_status(kube)["containerStatuses"]
    return dict(cs)


def events(kube: FakeKube, reason: str) -> list[Obj]:
    return [c.body for c in kube.writes("POST", "/events") if c.body["reason"] == reason]


async def running_job(kube: FakeKube, provider: FakeProvider, start: Start,
                      policy: str | None) -> None:
    kube.seed(POD_PATH, job_pod(policy))
    await start()
    await until(lambda: pod_status(kube).get("phase") == "Running")


@pytest.mark.parametrize(("policy", "code", "phase", "reason"), [
    ("Never", 0, "Succeeded", "Completed"),
    ("Never", 3, "Failed", "Error"),
    ("OnFailure", 0, "Succeeded", "Completed"),
])
async def test_a_vm_that_stops_ends_its_pod_under_the_policy(
        kube: FakeKube, provider: FakeProvider, start: Start,
        policy: str, code: int, phase: str, reason: str) -> None:
    await running_job(kube, provider, start, policy)
    provider.notify_pod(provider_pod(), stopped(code))
    await until(lambda: pod_status(kube).get("phase") == phase)
    state = container(kube)["state"]["terminated"]
    assert (state["exitCode"], state["reason"]) == (code, reason)
    assert "exit code" in state["message"]
    ready = {c["type"]: c for c in pod_status(kube)["conditions"]}["Ready"]
    assert ready["status"] == "False"
    # It ended: the VM is neither started again nor destroyed, and no later status of the
    # provider (someone powers the VM on in the IaaS) changes the pod.
    writes = len(kube.writes("PATCH", "/pods/job/status"))
    provider.notify_pod(provider_pod(), running())
    await settle()
    assert not provider.called("start_pod") and not provider.called("delete_pod")
    assert len(kube.writes("PATCH", "/pods/job/status")) == writes
    assert pod_status(kube)["phase"] == phase


@pytest.mark.parametrize("policy", [None, "Always", "OnFailure"])
async def test_a_vm_that_fails_starts_again_at_once_then_after_the_back_off(
        kube: FakeKube, provider: FakeProvider, start: Start, clock: Clock,
        policy: str | None) -> None:
    await running_job(kube, provider, start, policy)
    provider.notify_pod(provider_pod(), stopped(2))
    await until(lambda: len(provider.called("start_pod")) == 1)  # the first restart: at once
    assert provider.called("start_pod")[0].identity == "job-uid"
    await until(lambda: container(kube)["restartCount"] == 1
                and "running" in container(kube)["state"])
    last = container(kube)["lastState"]["terminated"]
    assert (last["exitCode"], last["reason"]) == (2, "Error")
    assert pod_status(kube)["phase"] == "Running" and clock.waits == []
    # The second stop waits 10 s, shown as CrashLoopBackOff with a BackOff Event.
    provider.notify_pod(provider_pod(), stopped(4, run=1))
    await until(lambda: clock.waits == [10.0])
    await until(lambda: "waiting" in container(kube)["state"])
    waiting = container(kube)["state"]["waiting"]
    assert waiting["reason"] == "CrashLoopBackOff"
    assert waiting["message"] == ("back-off 10s restarting failed container=vm "
                                  "pod=job_ns(job-uid)")
    assert container(kube)["lastState"]["terminated"]["exitCode"] == 4
    assert container(kube)["restartCount"] == 1
    assert [e["type"] for e in events(kube, "BackOff")] == ["Warning"]
    # The same stop told again (a provider's stream resent it) is not a second one.
    provider.notify_pod(provider_pod(), stopped(4, run=1))
    await settle()
    assert len(provider.called("start_pod")) == 1
    clock.gate.set()
    await until(lambda: len(provider.called("start_pod")) == 2)
    await until(lambda: container(kube)["restartCount"] == 2
                and "running" in container(kube)["state"])
    # Each next back-off doubles, up to 5 minutes.
    for run, want in enumerate((20.0, 40.0, 80.0, 160.0, 300.0, 300.0), start=2):
        provider.notify_pod(provider_pod(), stopped(1, run=run))
        await until(lambda: clock.waits[-1:] == [want])  # noqa: B023
        clock.gate.set()
        await until(lambda: len(provider.called("start_pod")) == run + 1)  # noqa: B023
        provider.notify_pod(provider_pod(), running())
        await settle()


async def test_a_long_run_forgets_the_back_off(
        kube: FakeKube, provider: FakeProvider, start: Start, clock: Clock) -> None:
    await running_job(kube, provider, start, "Always")
    provider.notify_pod(provider_pod(), stopped(0))
    await until(lambda: len(provider.called("start_pod")) == 1)
    provider.notify_pod(provider_pod(), running())
    await settle()
    provider.notify_pod(provider_pod(), stopped(0, run=1, ran=restarts.RESET_AFTER + 1))
    await until(lambda: len(provider.called("start_pod")) == 2)
    assert clock.waits == []


async def test_a_start_the_provider_refuses_is_tried_again(
        kube: FakeKube, provider: FakeProvider, start: Start, clock: Clock) -> None:
    await running_job(kube, provider, start, "Always")
    provider.fail("start_pod", Unavailable("vCenter does not answer"))
    provider.notify_pod(provider_pod(), stopped(0))
    await until(lambda: len(events(kube, "FailedRestart")) == 1)
    assert "vCenter does not answer" in events(kube, "FailedRestart")[0]["message"]
    await until(lambda: clock.waits == [restarts.BACKOFF_START])
    clock.gate.set()
    await until(lambda: len(provider.called("start_pod")) == 2)
    await until(lambda: container(kube)["restartCount"] == 1)


async def test_a_restarted_facade_keeps_the_count_and_an_ended_pod(
        kube: FakeKube, provider: FakeProvider, start: Start) -> None:
    # Before the restart, the VM was restarted twice; it is found stopped again.
    had = {"phase": "Running", "containerStatuses": [{
        "name": "vm", "restartCount": 2, "state": {"running": {}},
        "lastState": {"terminated": {"exitCode": 5, "reason": "Error"}}}]}
    kube.seed(POD_PATH, job_pod("Always", had))
    provider.run_pod(provider_pod(), stopped(6, run=3))
    await start()
    await until(lambda: len(provider.called("start_pod")) == 1)
    await until(lambda: container(kube)["restartCount"] == 3)
    assert container(kube)["lastState"]["terminated"]["exitCode"] == 6


async def test_a_pod_that_ended_before_a_restart_of_the_facade_stays_ended(
        kube: FakeKube, provider: FakeProvider, start: Start) -> None:
    ended = {"phase": "Failed", "containerStatuses": [{
        "name": "vm", "restartCount": 0, "state": {"terminated": {"exitCode": 3}}}]}
    kube.seed(POD_PATH, job_pod("Never", copy.deepcopy(ended)))
    provider.run_pod(provider_pod(), stopped(3))
    await start()
    await settle()
    provider.notify_pod(provider_pod(), running())
    await settle()
    assert not provider.called("start_pod") and not provider.called("create_pod")
    assert not provider.called("delete_pod") and not provider.called("update_pod")
    assert not kube.writes("PATCH", "/pods/job/status")


async def test_a_stopped_vm_a_restarted_provider_calls_pending_is_started_again(
        kube: FakeKube, provider: FakeProvider, start: Start) -> None:
    # The provider restarted while the VM was off: all it can say is Pending, PoweredOff.
    forgot = podstatus.pending(provider_pod(), reason="PoweredOff", message="VM x is poweredOff")
    assert forgot.progress == pb.PROGRESS_STOPPED
    had = {"phase": "Running", "containerStatuses": [{
        "name": "vm", "restartCount": 0, "state": {"running": {}}}]}
    kube.seed(POD_PATH, job_pod("Always", had))
    provider.run_pod(provider_pod(), forgot)
    await start()
    await until(lambda: len(provider.called("start_pod")) == 1)
    await until(lambda: container(kube)["restartCount"] == 1)
    assert pod_status(kube)["phase"] == "Running"
    assert all(w.body["status"]["phase"] == "Running"
               for w in kube.writes("PATCH", "/pods/job/status"))
