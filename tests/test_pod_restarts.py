"""VMs that stop on their own, through the real apiserver (issue 18, items 3 and 4): Jobs of VM
pods complete or fail by the guest's exit code, restartPolicy Always and OnFailure power the VM
on again with restartCount, lastState and CrashLoopBackOff, a failing liveness probe kills the
VM (StopPod, exit code 137) for its restartPolicy to act on, and a facade SIGKILLed in the middle
loses neither the count nor an ended pod.

The memory provider's guest stops itself after each boot with its `memory.vmlet.io/exit-after`
annotation ("SECONDS:CODE"), or when `poweroff CODE` runs in it (through the provider's Exec,
as the guest's own doing).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from vmlet.provider.v1 import kubelet_endpoint_service_pb2 as endpoints
from vmlet.provider.v1 import kubelet_endpoint_service_pb2_grpc as endpoints_grpc
from vmlet.provider.v1 import pod_lifecycle_service_pb2 as lifecycle
from vmlet.provider.v1 import pod_lifecycle_service_pb2_grpc as lifecycle_grpc
from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.stack import Stack, eventually

PROVIDER = "mem-r"
EXIT_AFTER = "memory.vmlet.io/exit-after"


@pytest.fixture(scope="module")
def stack(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(control_plane, tmp_path_factory.mktemp("restarts"), {PROVIDER: ["--nodes", "1"]})
    s.start()
    try:
        eventually(lambda: len(s.ready_nodes(PROVIDER)) == 1, what="node Ready")
        yield s
    finally:
        s.stop()


@pytest.fixture
def ns(control_plane: ControlPlane) -> str:
    name = f"r-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", name)
    return name


def apply(cp: ControlPlane, ns: str, obj: dict[str, Any]) -> None:
    cp.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(obj))


def vm_pod(stack: Stack, name: str, policy: str, exit_after: str | None) -> dict[str, Any]:
    manifest = stack.vm_pod(name, PROVIDER, extra={"restartPolicy": policy})
    if exit_after is not None:
        manifest["metadata"]["annotations"] = {EXIT_AFTER: exit_after}
    return manifest


def job(stack: Stack, name: str, exit_after: str, **spec: Any) -> dict[str, Any]:
    template = vm_pod(stack, "unused", "Never", exit_after)
    template.pop("apiVersion"), template.pop("kind")
    template["metadata"] = {"annotations": template["metadata"]["annotations"]}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"template": template, **spec}}


def job_condition(stack: Stack, ns: str, name: str, kind: str) -> dict[str, Any] | None:
    got = stack.kubectl_json("get", "job", name, "-n", ns)
    conditions = {c["type"]: c for c in got["status"].get("conditions") or []}
    condition = conditions.get(kind)
    return got if condition and condition["status"] == "True" else None


def pods_of(stack: Stack, ns: str, job_name: str) -> list[dict[str, Any]]:
    return list(stack.kubectl_json("get", "pods", "-n", ns, "-l",
                                   f"batch.kubernetes.io/job-name={job_name}")["items"])


def container(stack: Stack, ns: str, name: str) -> dict[str, Any]:
    pod = stack.kubectl_json("get", "pod", name, "-n", ns)
    return dict((pod["status"].get("containerStatuses") or [{}])[0])


def provider_pods(stack: Stack) -> set[tuple[str, str]]:
    with stack.channel(PROVIDER) as channel:
        resp = lifecycle_grpc.PodLifecycleServiceStub(channel).GetPods(
            lifecycle.GetPodsRequest(), timeout=10)
    return {(p.pod.ref.namespace, p.pod.ref.name) for p in resp.pods}


def poweroff(stack: Stack, ns: str, name: str, code: int) -> None:
    """The guest of pod ns/name shuts itself down with exit code ``code``."""
    start = endpoints.ExecStart(namespace=ns, pod_name=name, container_name="vm",
                                command=["poweroff", str(code)], stdout=True)
    with stack.channel(PROVIDER) as channel:
        replies = list(endpoints_grpc.KubeletEndpointServiceStub(channel).Exec(
            iter([endpoints.ExecRequest(start=start)]), timeout=10))
    assert replies[-1].exit.exit_code == 0, replies


def reasons(stack: Stack, ns: str, name: str) -> list[str]:
    items = stack.kubectl_json("get", "events", "-n", ns,
                               "--field-selector", f"involvedObject.name={name}")["items"]
    return [e["reason"] for e in items]


def test_a_job_of_vm_pods_completes_when_its_guests_exit_zero(
        stack: Stack, control_plane: ControlPlane, ns: str) -> None:
    apply(control_plane, ns, job(stack, "done", "2:0", completions=2, parallelism=2))
    eventually(lambda: job_condition(stack, ns, "done", "Complete"), timeout=90,
               what="the Job Complete")
    pods = pods_of(stack, ns, "done")
    assert [p["status"]["phase"] for p in pods] == ["Succeeded", "Succeeded"]
    for p in pods:
        (state,) = [cs["state"]["terminated"] for cs in p["status"]["containerStatuses"]]
        assert (state["exitCode"], state["reason"]) == (0, "Completed")
        assert state["finishedAt"] >= state["startedAt"]
    # A completed pod's VM is kept (off) until the pod goes; the Job's deletion takes both.
    assert {(ns, p["metadata"]["name"]) for p in pods} <= provider_pods(stack)
    control_plane.kubectl("delete", "job", "done", "-n", ns, "--cascade=foreground",
                          "--wait=true", "--timeout=60s")
    eventually(lambda: not {(ns, p["metadata"]["name"]) for p in pods} & provider_pods(stack),
               what="the Job's VMs destroyed with its pods")


def test_a_job_whose_guest_exits_non_zero_fails_at_its_backoff_limit(
        stack: Stack, control_plane: ControlPlane, ns: str) -> None:
    apply(control_plane, ns, job(stack, "broken", "1:3", backoffLimit=1))
    got = eventually(lambda: job_condition(stack, ns, "broken", "Failed"), timeout=120,
                     what="the Job Failed")
    assert got["status"]["failed"] == 2
    assert {c["reason"] for c in got["status"]["conditions"]
            if c["type"] == "Failed"} == {"BackoffLimitExceeded"}
    for p in pods_of(stack, ns, "broken"):
        assert p["status"]["phase"] == "Failed"
        (state,) = [cs["state"]["terminated"] for cs in p["status"]["containerStatuses"]]
        assert (state["exitCode"], state["reason"]) == (3, "Error")
    name = pods_of(stack, ns, "broken")[0]["metadata"]["name"]
    described = control_plane.kubectl("describe", "pod", name, "-n", ns).stdout
    assert "Status:           Failed" in described and "Exit Code:    3" in described


def test_restart_policy_always_starts_the_vm_again_with_the_back_off(
        stack: Stack, control_plane: ControlPlane, ns: str) -> None:
    apply(control_plane, ns, vm_pod(stack, "crashy", "Always", "1:1"))
    # Restart 1 is at once, restart 2 after 10 s: in between the pod shows CrashLoopBackOff.
    backing_off = eventually(
        lambda: (cs := container(stack, ns, "crashy")).get("state", {}).get("waiting", {})
        .get("reason") == "CrashLoopBackOff" and cs, timeout=60, what="CrashLoopBackOff")
    assert backing_off["restartCount"] >= 1
    assert backing_off["lastState"]["terminated"]["exitCode"] == 1
    assert backing_off["state"]["waiting"]["message"].startswith("back-off 10s restarting")
    got = eventually(lambda: (cs := container(stack, ns, "crashy"))["restartCount"] >= 2 and cs,
                     timeout=60, what="a second restart")
    assert got["lastState"]["terminated"]["reason"] == "Error"
    pod = stack.kubectl_json("get", "pod", "crashy", "-n", ns)
    assert pod["status"]["phase"] == "Running"
    assert {"BackOff", "Started"} <= set(reasons(stack, ns, "crashy"))
    listed = control_plane.kubectl("get", "pod", "crashy", "-n", ns).stdout
    assert "crashy" in listed and "RESTARTS" in listed


def test_on_failure_restarts_a_guest_that_fails_and_ends_one_that_succeeds(
        stack: Stack, control_plane: ControlPlane, ns: str) -> None:
    apply(control_plane, ns, vm_pod(stack, "worker", "OnFailure", None))
    eventually(lambda: "running" in container(stack, ns, "worker").get("state", {}),
               what="the VM running")
    poweroff(stack, ns, "worker", 5)
    got = eventually(lambda: (cs := container(stack, ns, "worker"))["restartCount"] == 1
                     and "running" in cs["state"] and cs, timeout=60, what="restarted once")
    assert got["lastState"]["terminated"]["exitCode"] == 5
    poweroff(stack, ns, "worker", 0)
    eventually(lambda: stack.kubectl_json("get", "pod", "worker", "-n", ns)["status"]["phase"]
               == "Succeeded", timeout=60, what="Succeeded")
    assert container(stack, ns, "worker")["restartCount"] == 1


def test_a_facade_killed_mid_back_off_keeps_the_count_and_the_ended_pods(
        stack: Stack, control_plane: ControlPlane, ns: str) -> None:
    apply(control_plane, ns, vm_pod(stack, "loop", "Always", "1:2"))
    apply(control_plane, ns, vm_pod(stack, "once", "Never", "1:0"))
    eventually(lambda: container(stack, ns, "loop").get("restartCount", 0) >= 1
               and stack.kubectl_json("get", "pod", "once", "-n", ns)["status"]["phase"]
               == "Succeeded", timeout=60, what="a restart and an ended pod")
    assert stack.facade is not None
    stack.facade.kill()
    before = container(stack, ns, "loop")["restartCount"]
    stack.start_facade()
    got = eventually(lambda: (cs := container(stack, ns, "loop"))["restartCount"] > before
                     and cs, timeout=90, what="restarted by the new facade")
    assert got["restartCount"] == before + 1  # counted on from the pod's status, not from 0
    once = stack.kubectl_json("get", "pod", "once", "-n", ns)
    assert once["status"]["phase"] == "Succeeded"
    assert once["status"]["containerStatuses"][0]["restartCount"] == 0
    assert (ns, "once") in provider_pods(stack)  # its VM kept, off, until the pod goes


def test_a_failing_liveness_probe_kills_the_vm_for_its_restart_policy(
        stack: Stack, control_plane: ControlPlane, ns: str) -> None:
    live = {"exec": {"command": ["false"]}, "periodSeconds": 1, "failureThreshold": 2}
    for name, policy in (("dies", "Always"), ("once", "Never")):
        manifest = vm_pod(stack, name, policy, None)
        manifest["spec"]["containers"][0]["livenessProbe"] = live
        apply(control_plane, ns, manifest)
    got = eventually(lambda: (cs := container(stack, ns, "dies")).get("restartCount", 0) >= 1
                     and cs, timeout=60, what="killed and restarted")
    last = got["lastState"]["terminated"]
    assert (last["exitCode"], last["reason"]) == (137, "Error")
    said = reasons(stack, ns, "dies")
    assert {"Unhealthy", "Killing", "Started"} <= set(said), said
    ended = eventually(lambda: (p := stack.kubectl_json("get", "pod", "once", "-n", ns))
                       ["status"]["phase"] == "Failed" and p, timeout=60, what="Failed")
    state = ended["status"]["containerStatuses"][0]["state"]["terminated"]
    assert state["exitCode"] == 137
    assert "FieldsNotHonoured" not in reasons(stack, ns, "dies")
    # A passing liveness probe kills nothing.
    manifest = vm_pod(stack, "fine", "Always", None)
    manifest["spec"]["containers"][0]["livenessProbe"] = {**live, "exec": {"command": ["true"]}}
    apply(control_plane, ns, manifest)
    eventually(lambda: "running" in container(stack, ns, "fine").get("state", {}),
               what="fine running")
    time.sleep(5)
    assert container(stack, ns, "fine")["restartCount"] == 0
    assert "Killing" not in reasons(stack, ns, "fine")
