"""postStart and preStop hooks, and the graceful end of a deleted pod's VM, against the fakes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fakes import Background, FakeKube, FakeProvider, running, settle, until

from vmlet.provider.v1 import pod_pb2 as pb
from vmlet_contract.errors import Unavailable
from vmlet_facade import probes
from vmlet_facade.containerstatus import k8s_time
from vmlet_facade.events import EventRecorder
from vmlet_facade.hooks import POST_START, hooks_of, run_hook
from vmlet_facade.pods import PodController, Route
from vmlet_facade.probes import ProbeManager
from vmlet_facade.references import Resolver
from vmlet_facade.termination import MIN_GRACE, deletion_grace

Obj = dict[str, Any]
NODE = "node-1"
POD_PATH = "/api/v1/namespaces/ns/pods/web"
IP = "10.0.0.5"


def hooked_pod(**lifecycle: Obj) -> Obj:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "ns", "uid": "pod-uid"},
            "spec": {"nodeName": NODE, "containers": [{
                "name": "vm", "image": "debian-12", "lifecycle": lifecycle,
                "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]},
            "status": {"phase": "Pending"}}


class Guest:
    """The guest's exec, as the provider's Exec would run it: records, answers ``code``."""

    def __init__(self, code: int = 0) -> None:
        self.code = code
        self.ran: list[list[str]] = []
        self.wait: asyncio.Event | None = None

    async def __call__(self, host: FakeProvider, pod: Obj, container: str,
                       command: list[str]) -> tuple[int, str]:
        self.ran.append(command)
        if self.wait is not None:
            await self.wait.wait()
        return self.code, "" if self.code == 0 else "it said no"


async def controller_with(kube: FakeKube, provider: FakeProvider, background: Background,
                          guest: Guest) -> PodController[FakeProvider]:
    controller: PodController[FakeProvider] = PodController(
        kube.client, Resolver(kube.client), EventRecorder(kube.client), guest_exec=guest)
    background.at_end(controller.stop)
    await controller.adopt(provider)
    controller.add_node(NODE, Route(provider, lambda: "192.0.2.1"))
    return controller


def events(kube: FakeKube, reason: str) -> list[str]:
    return [c.body["message"] for c in kube.writes("POST", "/events") if c.body["reason"] == reason]


@pytest.fixture(autouse=True)
def fast_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    sleep = asyncio.sleep
    monkeypatch.setattr(probes, "_sleep", lambda seconds: sleep(seconds / 1000))


# -- running a hook ---------------------------------------------------------------------------


async def test_a_hook_runs_exec_in_the_guest_and_a_failure_reads_as_a_kubelets() -> None:
    guest = Guest(code=3)
    pod = hooked_pod(preStop={"exec": {"command": ["shutdown-app"]}})
    handler = hooks_of(pod, "preStop")[0][1]
    message = await run_hook(handler, pod, "vm", IP,
                             lambda p, c, cmd: guest(FakeProvider(), p, c, cmd), 5)
    assert guest.ran == [["shutdown-app"]]
    assert message == ("Exec lifecycle hook (['shutdown-app']) for Container \"vm\" in Pod "
                       "\"web_ns(pod-uid)\" failed - error: it said no")
    guest.code = 0
    assert await run_hook(handler, pod, "vm", IP,
                          lambda p, c, cmd: guest(FakeProvider(), p, c, cmd), 5) is None


@pytest.mark.parametrize(("handler", "error"), [
    ({"tcpSocket": {"port": 22}}, "tcpSocket is not a lifecycle handler"),
    ({"grpc": {"port": 22}}, "the hook has no exec, httpGet or sleep"),
    ({"sleep": {"seconds": -1}}, "sleep seconds -1 is not 0-3600"),
    ({"httpGet": {"port": 80, "host": "192.0.2.9"}}, "vmlet reaches only the pod's own IP"),
    ({"exec": {"command": []}}, "the exec hook has no command"),
])
async def test_a_hook_vmlet_cannot_run_fails_saying_why(handler: Obj, error: str) -> None:
    message = await run_hook(handler, hooked_pod(), "vm", IP, None, 5)
    assert message is not None and error in message


async def test_a_hook_that_does_not_end_in_time_fails() -> None:
    guest = Guest()
    guest.wait = asyncio.Event()  # never set: the guest never answers
    pod = hooked_pod()
    message = await run_hook({"exec": {"command": ["hang"]}}, pod, "vm", IP,
                             lambda p, c, cmd: guest(FakeProvider(), p, c, cmd), 0.05)
    assert message is not None and message.endswith("error: no end within 0.05s")
    assert await run_hook({"sleep": {"seconds": 0}}, pod, "vm", IP, None, 1) is None


def test_the_grace_is_the_deletions_within_what_stop_pod_takes() -> None:
    pod = hooked_pod()
    assert deletion_grace(pod) == 30
    pod["metadata"]["deletionGracePeriodSeconds"] = 5
    assert deletion_grace(pod) == 5
    pod["metadata"]["deletionGracePeriodSeconds"] = 86_400
    assert deletion_grace(pod) == 3600


# -- preStop and the graceful end of a deleted pod ----------------------------------------------


async def test_a_deleted_pod_runs_pre_stop_then_the_guest_shuts_down_then_its_vm_goes(
        kube: FakeKube, provider: FakeProvider, background: Background) -> None:
    guest = Guest()
    kube.seed(POD_PATH, hooked_pod(preStop={"exec": {"command": ["drain"]}}))
    await controller_with(kube, provider, background, guest)
    await until(lambda: kube.writes("PATCH", "/pods/web/status"))
    await settle()
    provider.calls.clear()
    await kube.delete(POD_PATH, {"gracePeriodSeconds": 20})
    await until(lambda: kube.get_obj(POD_PATH) is None)
    assert guest.ran == [["drain"]]
    order = [name for name, _ in provider.calls if name in ("stop_pod", "delete_pod")]
    assert order == ["stop_pod", "delete_pod"]
    grace = provider.called("stop_pod")[0][1]
    assert 18 <= grace <= 20  # what the hook left of the grace
    assert events(kube, "Killing") == ["Stopping container vm"]
    assert "pod-uid" not in provider.vms


async def test_a_failed_pre_stop_is_an_event_and_the_end_goes_on(
        kube: FakeKube, provider: FakeProvider, background: Background) -> None:
    guest = Guest(code=1)
    kube.seed(POD_PATH, hooked_pod(preStop={"exec": {"command": ["drain"]}}))
    await controller_with(kube, provider, background, guest)
    await until(lambda: kube.writes("PATCH", "/pods/web/status"))
    await settle()
    await kube.delete(POD_PATH)
    await until(lambda: kube.get_obj(POD_PATH) is None)
    assert events(kube, "FailedPreStopHook") == [
        "Exec lifecycle hook (['drain']) for Container \"vm\" in Pod \"web_ns(pod-uid)\" "
        "failed - error: it said no"]
    assert [g for _, g in provider.called("stop_pod")] == [30]
    assert "pod-uid" not in provider.vms


async def test_a_pre_stop_that_takes_the_grace_leaves_the_guest_the_least_time(
        kube: FakeKube, provider: FakeProvider, background: Background) -> None:
    kube.seed(POD_PATH, hooked_pod(preStop={"sleep": {"seconds": 5}}))
    await controller_with(kube, provider, background, Guest())
    await until(lambda: kube.writes("PATCH", "/pods/web/status"))
    await settle()
    await kube.delete(POD_PATH, {"gracePeriodSeconds": 1})
    await _gone(kube)
    assert events(kube, "FailedPreStopHook")[0].endswith("error: no end within 1s")
    assert [g for _, g in provider.called("stop_pod")] == [MIN_GRACE]


async def _gone(kube: FakeKube) -> None:
    for _ in range(1000):
        if kube.get_obj(POD_PATH) is None:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the pod is still there")


async def test_a_failed_stop_pod_is_an_event_and_delete_pod_powers_off_anyway(
        kube: FakeKube, provider: FakeProvider, background: Background) -> None:
    kube.seed(POD_PATH, hooked_pod())
    await controller_with(kube, provider, background, Guest())
    await until(lambda: kube.writes("PATCH", "/pods/web/status"))
    await settle()
    provider.fail("stop_pod", Unavailable("vCenter is away"))
    await kube.delete(POD_PATH)
    await until(lambda: kube.get_obj(POD_PATH) is None)
    assert any("vCenter is away" in m for m in events(kube, "FailedKillPod"))
    assert provider.called("delete_pod") and "pod-uid" not in provider.vms


async def test_a_pod_whose_vm_is_off_is_deleted_without_a_shutdown(
        kube: FakeKube, provider: FakeProvider, background: Background) -> None:
    guest = Guest()
    kube.seed(POD_PATH, hooked_pod(preStop={"exec": {"command": ["drain"]}}))
    await controller_with(kube, provider, background, guest)
    await until(lambda: kube.writes("PATCH", "/pods/web/status"))
    stopped = pb.PodStatus(phase=pb.POD_PHASE_RUNNING)
    stopped.container_statuses.add(name="vm").terminated.exit_code = 0
    provider.notify_pod(provider.called("create_pod")[0], stopped)
    await settle()
    await kube.delete(POD_PATH)
    await until(lambda: kube.get_obj(POD_PATH) is None)
    assert guest.ran == [] and provider.called("stop_pod") == []
    assert provider.called("delete_pod")


async def test_a_force_delete_during_the_grace_deletes_the_vm_at_once(
        kube: FakeKube, provider: FakeProvider, background: Background) -> None:
    """The fault: the pod is force-deleted while its preStop hook still runs. The hook's wait
    is dropped and DeletePod follows at once; nothing else is called later."""
    guest = Guest()
    guest.wait = asyncio.Event()
    kube.seed(POD_PATH, hooked_pod(preStop={"exec": {"command": ["drain"]}}))
    controller = await controller_with(kube, provider, background, guest)
    await until(lambda: kube.writes("PATCH", "/pods/web/status"))
    await settle()
    await kube.delete(POD_PATH)
    await until(lambda: guest.ran == [["drain"]])
    await kube.delete(POD_PATH, {"gracePeriodSeconds": 0})  # kubectl delete --force
    await until(lambda: provider.called("delete_pod"))
    await settle()
    assert provider.called("stop_pod") == [] and "pod-uid" not in provider.vms
    assert not controller.terminations._tasks


# -- postStart --------------------------------------------------------------------------------


def started(kube: FakeKube) -> bool:
    statuses = (kube.get_obj(POD_PATH) or {}).get("status", {}).get("containerStatuses") or []
    return bool(statuses) and bool(statuses[0]["started"])


async def test_post_start_runs_once_the_vm_runs_and_holds_the_container_not_started(
        kube: FakeKube, provider: FakeProvider, background: Background) -> None:
    guest = Guest()
    guest.wait = asyncio.Event()
    kube.seed(POD_PATH, hooked_pod(postStart={"exec": {"command": ["warm-up"]}}))
    await controller_with(kube, provider, background, guest)
    await until(lambda: guest.ran == [["warm-up"]], rounds=50_000)
    await until(lambda: kube.writes("PATCH", "/pods/web/status"))
    await settle()
    status = kube.get_obj(POD_PATH)["status"]  # type: ignore[index]
    assert status["phase"] == "Running" and not started(kube)
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "False"
    guest.wait.set()
    await until(lambda: started(kube), rounds=50_000)
    assert guest.ran == [["warm-up"]]


async def test_a_failed_post_start_is_an_event_and_kills_the_vm(
        kube: FakeKube, provider: FakeProvider, background: Background) -> None:
    guest = Guest(code=2)
    pod = hooked_pod(postStart={"exec": {"command": ["warm-up"]}})
    pod["spec"]["terminationGracePeriodSeconds"] = 12
    kube.seed(POD_PATH, pod)
    await controller_with(kube, provider, background, guest)
    await until(lambda: provider.called("stop_pod"), rounds=50_000)
    assert [g for _, g in provider.called("stop_pod")] == [12]
    assert events(kube, "FailedPostStartHook")[0].startswith(
        "Exec lifecycle hook (['warm-up']) for Container \"vm\"")
    assert events(kube, "Killing") == [
        "Container vm failed its postStart hook, will be restarted"]
    assert not started(kube)


async def test_a_run_the_pod_shows_started_had_its_post_start_already() -> None:
    """The fault: the facade restarts while a VM runs whose hook ran before. The pod shows the
    run started (written only after the hook): the hook is not run twice. A new run (another
    startedAt, after a restart of the VM) runs it again."""
    ran: list[list[str]] = []

    async def run(pod: Obj, container: str, command: list[str]) -> tuple[int, str]:
        ran.append(command)
        return 0, ""

    async def warn(pod: Obj, reason: str, message: str) -> None:
        raise AssertionError(message)

    status = running(IP)
    status.container_statuses[0].running.started_at.FromSeconds(1_700_000_000)
    pod = hooked_pod(postStart={"exec": {"command": ["warm-up"]}})
    pod["status"] = {"phase": "Running", "containerStatuses": [{
        "name": "vm", "started": True,
        "state": {"running": {"startedAt": k8s_time(status.container_statuses[0].running
                                                    .started_at)}}}]}
    manager = ProbeManager(lambda uid: None, warn, run)
    try:
        manager.sees("pod-uid", pod, status)
        await settle(200)
        assert ran == [] and manager.verdict("pod-uid") == (frozenset(), frozenset())
        manager.forget("pod-uid")
        status.container_statuses[0].running.started_at.FromSeconds(1_700_000_600)
        manager.sees("pod-uid", pod, status)
        await until(lambda: ran == [["warm-up"]], rounds=50_000)
    finally:
        await manager.stop()


def test_hooks_of_names_each_container_with_the_hook() -> None:
    pod = hooked_pod(postStart={"sleep": {"seconds": 1}})
    assert hooks_of(pod, POST_START) == [("vm", {"sleep": {"seconds": 1}})]
    assert hooks_of(pod, "preStop") == []


async def test_a_kill_runs_to_its_end_when_the_stopping_vm_drops_its_probes() -> None:
    """The fault: the VM a failed postStart hook kills reports itself stopping while StopPod
    still runs, which drops the pod's probes and hooks. The kill is not cut short by that (it
    was: StopPod was cancelled between the power-off and the exit code)."""
    release = asyncio.Event()
    kills: list[str] = []

    async def kill(pod: Obj, container: str, grace: int, message: str) -> bool:
        await release.wait()
        kills.append(message)
        return True

    async def run(pod: Obj, container: str, command: list[str]) -> tuple[int, str]:
        return 1, "no"

    async def warn(pod: Obj, reason: str, message: str) -> None:
        pass

    manager = ProbeManager(lambda uid: None, warn, run, kill=kill)
    try:
        manager.sees("pod-uid", hooked_pod(postStart={"exec": {"command": ["x"]}}), running(IP))
        await until(lambda: manager._killing, rounds=50_000)
        stopping = pb.PodStatus(phase=pb.POD_PHASE_RUNNING)
        stopping.container_statuses.add(name="vm").waiting.reason = "PoweringOff"
        manager.sees("pod-uid", hooked_pod(), stopping)  # the probes are dropped
        assert not manager.probed("pod-uid")
        release.set()
        await until(lambda: kills == ["Container vm failed its postStart hook, will be restarted"])
    finally:
        await manager.stop()
