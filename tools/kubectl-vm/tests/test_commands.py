"""The verbs against a fake cluster and a fake clock: what they edit, what they wait for, and how
they fail. (tests/test_kubectl_vm.py runs them on the real control plane.)
"""

from __future__ import annotations

import copy
import datetime as dt
import io
from collections.abc import Callable
from typing import Any

import pytest

from vmlet_kubectl.api import Forbidden, NotFound, Target
from vmlet_kubectl.commands import COMMANDS
from vmlet_kubectl.invocation import Invocation
from vmlet_kubectl.session import BACKUP, MIGRATION, RESTORE, VM, Failure, Session
from vmlet_kubectl.status import render_status

Obj = dict[str, Any]


class FakeApi:
    """Objects by (resource, name); ``step`` runs before every get, as the controllers would."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], Obj] = {}
        self.patches: list[tuple[str, str, Obj]] = []
        self.created: list[Obj] = []
        self.step: Callable[[FakeApi], None] = lambda api: None
        self.watched: list[Target] = []
        self.sleep: Callable[[float], None] = lambda seconds: None

    def add(self, resource: str, obj: Obj) -> Obj:
        obj.setdefault("metadata", {}).setdefault("generation", 1)
        obj["metadata"].setdefault("uid", f"uid-{obj['metadata']['name']}")
        self.objects[(resource, obj["metadata"]["name"])] = obj
        return obj

    def vm(self) -> Obj:
        return self.objects[(VM, "web")]

    def get(self, resource: str, name: str) -> Obj:
        self.step(self)
        if (resource, name) not in self.objects:
            raise NotFound(f'{resource} "{name}" not found')
        return copy.deepcopy(self.objects[(resource, name)])

    def list(self, resource: str, field_selector: str | None = None) -> list[Obj]:
        return [copy.deepcopy(o) for (r, _), o in self.objects.items() if r == resource]

    def patch(self, resource: str, name: str, body: Obj) -> Obj:
        if (resource, name) not in self.objects:
            raise NotFound(f'{resource} "{name}" not found')
        obj = self.objects[(resource, name)]
        self.patches.append((resource, name, body))
        spec = {**obj.get("spec", {}), **body.get("spec", {})}
        if spec != obj.get("spec"):
            obj["spec"] = spec
            obj["metadata"]["generation"] += 1
        return copy.deepcopy(obj)

    def create(self, obj: Obj) -> Obj:
        obj = copy.deepcopy(obj)
        meta = obj["metadata"]
        meta.setdefault("name", f"{meta.pop('generateName', 'x-')}abcde")
        plural = {"VirtualMachineBackup": BACKUP, "VirtualMachineRestore": RESTORE,
                  "VirtualMachineMigration": MIGRATION}[obj["kind"]]
        self.created.append(copy.deepcopy(obj))
        return copy.deepcopy(self.add(plural, obj))

    def namespace(self) -> str:
        return "default"

    def wait_for_change(self, target: Target, timeout: float) -> None:
        """An event a second: the controller (``step``) acts between looks as it would."""
        self.watched.append(target)
        self.sleep(min(1.0, timeout))


def vm(state: str = "Running", replicas: int = 1, observed: int = 1, **status: Any) -> Obj:
    return {"metadata": {"name": "web", "namespace": "default", "generation": 1},
            "spec": {"replicas": replicas, "provider": "mem", "image": "img", "cpu": 1,
                     "memory": "1Gi"},
            "status": {"state": state, "observedGeneration": observed, "nodeName": "n-0",
                       "addresses": ["10.0.0.1"], "cpu": 1, "memory": "1Gi", **status}}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def run(api: FakeApi, verb: str, **kw: Any) -> str:
    out = io.StringIO()
    clock = Clock()
    session = Session(api=api, out=out, poll=1.0, clock=clock, sleep=clock.sleep)
    api.sleep = clock.sleep
    COMMANDS[verb](session, Invocation(verb=verb, name=kw.pop("name", "web"), **kw))
    return out.getvalue()


def settle(state: str, *, after: int = 0, **status: Any) -> Callable[[FakeApi], None]:
    """The controller writes ``state`` for the current generation after ``after`` looks."""
    looks = {"n": 0}

    def step(api: FakeApi) -> None:
        looks["n"] += 1
        if looks["n"] > after and (VM, "web") in api.objects:
            obj = api.vm()
            obj["status"].update(state=state, observedGeneration=obj["metadata"]["generation"],
                                 cpu=obj["spec"]["cpu"], memory=obj["spec"]["memory"], **status)
    return step


def test_stop_without_wait_flips_the_switch() -> None:
    api = FakeApi()
    api.add(VM, vm())
    assert run(api, "stop") == "virtualmachine.vmlet.io/web stopping (spec.replicas=0)\n"
    assert api.patches == [(VM, "web", {"spec": {"replicas": 0}})]


def test_start_of_a_running_vm_says_so() -> None:
    api = FakeApi()
    api.add(VM, vm())
    assert run(api, "start") == "virtualmachine.vmlet.io/web is already Running\n"


def test_wait_ignores_status_older_than_the_edit() -> None:
    api = FakeApi()
    api.add(VM, vm("Running"))
    api.step = settle("Stopped", after=3)  # 'Running' of generation 1 is stale once patched
    out = run(api, "stop", wait=True)
    assert out.splitlines() == [
        "virtualmachine.vmlet.io/web: Running (the change is not yet seen by the controller)",
        "virtualmachine.vmlet.io/web is Stopped"]


def test_start_wait_prints_progress_and_where() -> None:
    api = FakeApi()
    api.add(VM, vm("Stopped", replicas=0))
    states = iter(["Provisioning", "Starting", "Starting", "Running"])
    api.step = lambda a: settle(next(states, "Running"))(a)
    out = run(api, "start", wait=True)
    assert out.splitlines() == ["virtualmachine.vmlet.io/web: Provisioning",
                                "virtualmachine.vmlet.io/web: Starting",
                                "virtualmachine.vmlet.io/web is Running on n-0 (10.0.0.1)"]


def test_start_of_a_failed_vm_fails_with_the_reason() -> None:
    api = FakeApi()
    api.add(VM, vm("Stopped", replicas=0))
    api.step = settle("Failed", conditions=[
        {"type": "Failure", "status": "True", "reason": "ImageNotFound",
         "message": "no image img"}])
    with pytest.raises(Failure, match='"web" Failed: ImageNotFound: no image img'):
        run(api, "start", wait=True)


def test_timeout_names_the_last_state_seen() -> None:
    api = FakeApi()
    api.add(VM, vm("Stopped", replicas=0))
    api.step = settle("Provisioning", conditions=[
        {"type": "Ready", "status": "False", "reason": "Unscheduled",
         "message": "waiting for the scheduler"}])
    with pytest.raises(Failure) as err:
        run(api, "start", wait=True, timeout=30.0)
    assert str(err.value) == (
        "timed out after 30s waiting for virtualmachine.vmlet.io/web to be Running; "
        "last seen: Provisioning (Unscheduled: waiting for the scheduler)")


def test_timeout_without_a_controller_says_so() -> None:
    api = FakeApi()
    api.add(VM, vm("Running"))
    with pytest.raises(Failure, match=r"status for generation 1 of 2 \(is the vmlet facade"):
        run(api, "stop", wait=True, timeout=5.0)


def test_vm_deleted_while_waiting() -> None:
    api = FakeApi()
    api.add(VM, vm("Running"))

    def delete(a: FakeApi) -> None:
        if a.patches:
            a.objects.pop((VM, "web"), None)
    api.step = delete
    with pytest.raises(Failure, match='"web" was deleted'):
        run(api, "stop", wait=True)


def test_missing_vm() -> None:
    cases: list[tuple[str, dict[str, Any]]] = [
        ("start", {}), ("stop", {"wait": True}), ("resize", {"cpu": 2}), ("migrate", {}),
        ("backup", {}), ("restore", {"backup": "b"}), ("status", {})]
    for verb, kw in cases:
        with pytest.raises(Failure, match='VirtualMachine "web" not found in namespace "default"'):
            run(FakeApi(), verb, **kw)


def test_restart_stops_then_starts() -> None:
    api = FakeApi()
    api.add(VM, vm("Running"))

    def controller(a: FakeApi) -> None:
        obj = a.vm()
        settle("Running" if obj["spec"]["replicas"] else "Stopped")(a)
    api.step = controller
    out = run(api, "restart", wait=True)
    assert [p[2] for p in api.patches] == [{"spec": {"replicas": 0}}, {"spec": {"replicas": 1}}]
    assert out.splitlines() == ["virtualmachine.vmlet.io/web is Stopped",
                                "virtualmachine.vmlet.io/web is Running on n-0 (10.0.0.1)"]


def test_restart_without_wait_still_waits_for_stopped() -> None:
    api = FakeApi()
    api.add(VM, vm("Running"))
    api.step = settle("Stopped", after=2)
    out = run(api, "restart")
    assert out.splitlines()[-2:] == ["virtualmachine.vmlet.io/web is Stopped",
                                     "virtualmachine.vmlet.io/web starting (spec.replicas=1)"]
    assert api.vm()["spec"]["replicas"] == 1


def pod(cpu: str, memory: str, conditions: list[Obj] | None = None) -> Obj:
    limits = {"cpu": cpu, "memory": memory}
    return {"metadata": {"name": "web-abc"},
            "spec": {"nodeName": "n-0", "containers": [{"resources": {"limits": limits}}]},
            "status": {"conditions": conditions or [],
                       "containerStatuses": [{"resources": {"limits": limits}}]}}


def test_resize_waits_for_the_pod_to_have_the_new_size() -> None:
    api = FakeApi()
    api.add(VM, vm(podName="web-abc"))
    api.add("pods", pod("1", "1Gi"))
    looks = {"n": 0}

    def controller(a: FakeApi) -> None:
        settle("Running")(a)
        looks["n"] += 1
        if looks["n"] == 4:
            a.objects[("pods", "web-abc")] = pod("2", "4096Mi")
    api.step = controller
    out = run(api, "resize", cpu=2, memory="4Gi", wait=True)
    assert api.patches == [(VM, "web", {"spec": {"cpu": 2, "memory": "4Gi"}})]
    assert out.splitlines() == [
        "virtualmachine.vmlet.io/web: Running, the VM pod has 1 CPU, 1Gi memory",
        "virtualmachine.vmlet.io/web resized to 2 CPU, 4Gi memory, Running on n-0 (10.0.0.1)"]


def test_waits_watch_what_they_wait_on() -> None:
    """Each look names its object and resourceVersion: the VM, then the VM pod being resized."""
    api = FakeApi()
    api.add(VM, vm(podName="web-abc"))["metadata"]["resourceVersion"] = "7"
    api.add("pods", pod("1", "1Gi"))["metadata"]["resourceVersion"] = "8"
    looks = {"n": 0}

    def controller(a: FakeApi) -> None:
        looks["n"] += 1
        if looks["n"] >= 3:
            settle("Running")(a)
        if looks["n"] == 5:
            a.objects[("pods", "web-abc")] = pod("2", "1Gi")
    api.step = controller
    run(api, "resize", cpu=2, wait=True)
    assert api.watched == [(VM, "web", "7"), (VM, "web", "7"), ("pods", "web-abc", "8")]


def test_resize_that_does_not_fit_fails() -> None:
    api = FakeApi()
    api.add(VM, vm(podName="web-abc"))
    api.add("pods", pod("1", "1Gi", [{"type": "PodResizePending", "status": "True",
                                      "reason": "Infeasible", "message": "Node didn't have "
                                      "enough capacity"}]))
    api.step = settle("Running")
    with pytest.raises(Failure, match="does not fit on n-0: Node didn't have enough capacity"):
        run(api, "resize", cpu=64, wait=True)


def test_resize_of_a_stopped_vm_waits_for_stopped_and_the_status() -> None:
    api = FakeApi()
    api.add(VM, vm("Stopped", replicas=0))
    api.step = settle("Stopped", after=1)
    out = run(api, "resize", memory="2Gi", wait=True)
    assert out.splitlines()[-1] == (
        "virtualmachine.vmlet.io/web resized to 1 CPU, 2Gi memory, Stopped")


def test_migrate_creates_a_migration_and_waits() -> None:
    api = FakeApi()
    api.add(VM, vm())
    api.add("nodes", {"metadata": {"name": "n-1"}})
    states = iter([{}, {"state": "Running", "sourceNode": "n-0", "targetNode": "n-1"},
                   {"state": "Succeeded", "sourceNode": "n-0", "targetNode": "n-1"}])

    def controller(a: FakeApi) -> None:
        if (MIGRATION, "web-abcde") in a.objects:
            a.objects[(MIGRATION, "web-abcde")]["status"] = next(states, {"state": "Succeeded",
                                                                         "sourceNode": "n-0",
                                                                         "targetNode": "n-1"})
    api.step = controller
    out = run(api, "migrate", target_node="n-1", wait=True)
    assert api.created == [{"apiVersion": "vmlet.io/v1alpha1", "kind": "VirtualMachineMigration",
                            "metadata": {"name": "web-abcde"},
                            "spec": {"vmName": "web", "targetNode": "n-1"}}]
    assert out.splitlines() == [
        "virtualmachinemigration.vmlet.io/web-abcde created: web from n-0 to n-1",
        "virtualmachinemigration.vmlet.io/web-abcde: Pending",
        "virtualmachinemigration.vmlet.io/web-abcde: Running (n-0 -> n-1)",
        "virtualmachine.vmlet.io/web migrated from n-0 to n-1"]


def test_migrate_refusals() -> None:
    api = FakeApi()
    api.add(VM, vm())
    with pytest.raises(Failure, match="already runs on n-0"):
        run(api, "migrate", target_node="n-0")
    with pytest.raises(Failure, match='node "n-9" not found'):
        run(api, "migrate", target_node="n-9")
    api.vm()["spec"]["replicas"] = 0
    with pytest.raises(Failure, match="is stopped; only a running VM migrates"):
        run(api, "migrate")
    assert api.created == []


def test_failed_migration_fails_with_its_condition() -> None:
    api = FakeApi()
    api.add(VM, vm())

    def controller(a: FakeApi) -> None:
        for (r, _), obj in a.objects.items():
            if r == MIGRATION:
                obj["status"] = {"state": "Failed", "conditions": [
                    {"type": "Failed", "status": "True", "reason": "SameNode",
                     "message": "the VM already runs on n-0"}]}
    api.step = controller
    with pytest.raises(Failure, match="web-abcde Failed: SameNode: the VM already runs on n-0"):
        run(api, "migrate", wait=True)


def test_backup_named_and_generated() -> None:
    api = FakeApi()
    api.add(VM, vm())
    assert run(api, "backup", resource_name="b1") == "virtualmachinebackup.vmlet.io/b1 created\n"
    run(api, "backup")
    assert [c["metadata"] for c in api.created] == [{"name": "b1"}, {"name": "web-abcde"}]
    assert all(c["spec"] == {"vmName": "web"} for c in api.created)


def test_backup_wait_reports_the_snapshot() -> None:
    api = FakeApi()
    api.add(VM, vm())

    def controller(a: FakeApi) -> None:
        if (BACKUP, "b1") in a.objects:
            a.objects[(BACKUP, "b1")]["status"] = {"state": "Succeeded", "snapshotID": "snap-1"}
    api.step = controller
    out = run(api, "backup", resource_name="b1", wait=True)
    assert out.splitlines()[-1] == "virtualmachinebackup.vmlet.io/b1 Succeeded: snapshot snap-1"


def backup(name: str, of: str = "web", state: str = "Succeeded") -> Obj:
    return {"metadata": {"name": name}, "spec": {"vmName": of},
            "status": {"state": state, "snapshotID": f"snap-{name}"}}


def test_restore_checks_the_backup_first() -> None:
    api = FakeApi()
    api.add(VM, vm())
    api.add(BACKUP, backup("theirs", of="db"))
    api.add(BACKUP, backup("broken", state="Failed"))
    api.add(BACKUP, backup("busy", state="Running"))
    with pytest.raises(Failure, match='VirtualMachineBackup "nope" not found'):
        run(api, "restore", backup="nope")
    with pytest.raises(Failure, match='is a backup of "db", not of "web"'):
        run(api, "restore", backup="theirs")
    with pytest.raises(Failure, match='"broken" Failed; it cannot be restored'):
        run(api, "restore", backup="broken")
    with pytest.raises(Failure, match='"busy" is Running; restore it once it has Succeeded'):
        run(api, "restore", backup="busy")
    assert api.created == []


def test_restore_waits_for_a_running_backup_then_restores() -> None:
    api = FakeApi()
    api.add(VM, vm())
    api.add(BACKUP, backup("b1", state="Running"))

    def controller(a: FakeApi) -> None:
        a.objects[(BACKUP, "b1")]["status"]["state"] = "Succeeded"
        for (r, _), obj in a.objects.items():
            if r == RESTORE:
                obj["status"] = {"state": "Succeeded", "vmName": "web"}
    api.step = controller
    out = run(api, "restore", backup="b1", wait=True)
    assert api.created[0]["spec"] == {"backupName": "b1"}
    assert out.splitlines()[-2:] == [
        "virtualmachinerestore.vmlet.io/web-abcde created: web back to backup b1",
        "virtualmachine.vmlet.io/web restored from backup b1 (snapshot snap-b1)"]


def test_status_view() -> None:
    now = dt.datetime(2025, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
    obj = vm(conditions=[{"type": "Ready", "status": "True", "reason": "Running",
                          "message": "the VM runs on n-0",
                          "lastTransitionTime": "2025-01-01T11:58:00Z"}],
             providerID="memory://x", podName="web-abc")
    obj["metadata"]["creationTimestamp"] = "2025-01-01T11:00:00Z"
    events = [{"metadata": {"resourceVersion": str(i)}, "lastTimestamp": "2025-01-01T11:59:00Z",
               "type": "Normal", "reason": f"R{i}", "message": f"m{i}"} for i in range(12, 0, -1)]
    lines = render_status(obj, [backup("b1")], [], [], events, now)
    text = "\n".join(lines)
    assert lines[:5] == ["Name:        web", "Namespace:   default", "State:       Running",
                         "Power:       on (spec.replicas=1)", "Node:        n-0"]
    assert "Addresses:   10.0.0.1" in lines and "Age:         60m" in lines
    assert "  Ready   True     Running   2m    the VM runs on n-0" in lines
    assert "  b1     Succeeded   snap-b1    -           <unknown>" in lines
    assert "Events (last 10):" in lines and "Restores:" not in text
    assert [line.split()[2] for line in lines[-10:]] == [f"R{i}" for i in range(3, 13)]

    stale = vm()
    stale["metadata"]["generation"] = 3
    assert "State:       Running (status is for generation 1 of 3" in "\n".join(
        render_status(stale, [], [], [], [], now))


def test_status_skips_what_it_may_not_list() -> None:
    api = FakeApi()
    api.add(VM, vm())

    def forbidden(resource: str, field_selector: str | None = None) -> list[Obj]:
        raise Forbidden("cannot list")
    api.list = forbidden  # type: ignore[method-assign]
    out = run(api, "status")
    assert "Backups:\n  <none>" in out and "Events:\n  <none>" in out
