"""The facade on the real control plane, with in-memory providers as separate processes.

Pods are applied with kubectl, bound by the real kube-scheduler, and followed through the
facade to the provider and back. The facade runs with only the rights of k8s/base/facade-rbac.yaml.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vmlet.provider.v1 import kubelet_endpoint_service_pb2 as endpoints
from vmlet.provider.v1 import kubelet_endpoint_service_pb2_grpc as endpoints_grpc
from vmlet.provider.v1 import pod_lifecycle_service_pb2 as lifecycle
from vmlet.provider.v1 import pod_lifecycle_service_pb2_grpc as lifecycle_grpc
from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.stack import Stack, eventually

PROVIDERS = ("mem-a", "mem-b")


@pytest.fixture(scope="module")
def stack(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(control_plane, tmp_path_factory.mktemp("stack"),
              {name: ["--nodes", "2"] for name in PROVIDERS}).start()
    try:
        for name in PROVIDERS:
            eventually(lambda n=name: len(s.ready_nodes(n)) == 2, what=f"nodes of {name} Ready")
        yield s
    finally:
        s.stop()


@pytest.fixture
def ns(control_plane: ControlPlane) -> str:
    name = f"f-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", name)
    return name


def apply(cp: ControlPlane, ns: str, *objs: dict[str, Any]) -> None:
    cp.kubectl("apply", "-n", ns, "-f", "-",
               input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objs)}))


def pod(stack: Stack, ns: str, name: str) -> dict[str, Any]:
    return dict(stack.kubectl_json("get", "pod", name, "-n", ns))


def provider_pods(stack: Stack, provider: str) -> dict[tuple[str, str], Any]:
    with stack.channel(provider) as channel:
        resp = lifecycle_grpc.PodLifecycleServiceStub(channel).GetPods(
            lifecycle.GetPodsRequest(), timeout=10)
    return {(p.pod.ref.namespace, p.pod.ref.name): p for p in resp.pods}


def running_ready(stack: Stack, ns: str, name: str) -> dict[str, Any] | None:
    p = pod(stack, ns, name)
    ready = any(c["type"] == "Ready" and c["status"] == "True"
                for c in p["status"].get("conditions", []))
    return p if p["status"].get("phase") == "Running" and ready else None


def events(stack: Stack, ns: str, name: str) -> list[dict[str, Any]]:
    items = stack.kubectl_json("get", "events", "-n", ns,
                               "--field-selector", f"involvedObject.name={name}")["items"]
    return list(items)


def test_nodes_come_from_both_providers(stack: Stack) -> None:
    for name in PROVIDERS:
        nodes = stack.nodes(name)
        assert sorted(n["metadata"]["name"] for n in nodes) == [f"{name}-0", f"{name}-1"]
        for node in nodes:
            # The node lifecycle controller may still hold its not-ready taint from before the
            # first status: ours is the only other one.
            taints = [t for t in node["spec"]["taints"]
                      if not t["key"].startswith("node.kubernetes.io/")]
            assert taints == [
                {"key": "virtual-kubelet.io/provider", "value": name, "effect": "NoSchedule"}]
            status = node["status"]
            assert status["capacity"]["cpu"] and status["allocatable"]["pods"]
            assert status["daemonEndpoints"]["kubeletEndpoint"]["Port"] == 10250
            assert {"type": "InternalIP", "address": "127.0.0.1"} in status["addresses"]
            assert node["metadata"]["labels"]["type"] == "virtual-kubelet"


def test_pod_is_scheduled_and_runs(stack: Stack, control_plane: ControlPlane, ns: str) -> None:
    apply(control_plane, ns, stack.vm_pod("vm", "mem-a"))
    p = eventually(lambda: running_ready(stack, ns, "vm"), what="pod Running and Ready")
    assert p["spec"]["nodeName"] in ("mem-a-0", "mem-a-1")
    assert p["status"]["podIP"] and p["status"]["hostIP"] == "127.0.0.1"
    assert p["status"]["containerStatuses"][0]["ready"] is True
    scheduled = [e for e in events(stack, ns, "vm") if e["reason"] == "Scheduled"]
    assert scheduled, "the real scheduler bound the pod"
    provider_view = provider_pods(stack, "mem-a")[(ns, "vm")]
    assert provider_view.pod.identity == p["metadata"]["uid"]
    assert provider_view.pod.containers[0].resources.cpu_limit_millis == 2000


def test_pod_without_toleration_is_not_placed(stack: Stack, control_plane: ControlPlane,
                                              ns: str) -> None:
    manifest = stack.vm_pod("plain", "mem-a")
    del manifest["spec"]["tolerations"]
    del manifest["spec"]["nodeSelector"]
    apply(control_plane, ns, manifest)
    failed = eventually(lambda: [e for e in events(stack, ns, "plain")
                                 if e["reason"] == "FailedScheduling"], what="FailedScheduling")
    assert "untolerated taint" in failed[0]["message"]
    assert pod(stack, ns, "plain")["spec"].get("nodeName") is None


def test_graceful_delete(stack: Stack, control_plane: ControlPlane, ns: str) -> None:
    apply(control_plane, ns, stack.vm_pod("gone", "mem-b"))
    eventually(lambda: running_ready(stack, ns, "gone"), what="pod Running")
    control_plane.kubectl("delete", "pod", "gone", "-n", ns, "--wait=true", "--timeout=60s")
    assert (ns, "gone") not in provider_pods(stack, "mem-b")


def test_force_delete(stack: Stack, control_plane: ControlPlane, ns: str) -> None:
    apply(control_plane, ns, stack.vm_pod("forced", "mem-b"))
    eventually(lambda: running_ready(stack, ns, "forced"), what="pod Running")
    control_plane.kubectl("delete", "pod", "forced", "-n", ns, "--grace-period=0", "--force")
    eventually(lambda: (ns, "forced") not in provider_pods(stack, "mem-b"),
               what="VM removed at the provider")


def test_env_references_are_resolved(stack: Stack, control_plane: ControlPlane, ns: str) -> None:
    apply(control_plane, ns,
          {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"},
           "data": {"color": "blue", "size": "xl"}},
          {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "sec"},
           "stringData": {"token": "s3cr3t"}},
          stack.vm_pod("env", "mem-a", env=[
              {"name": "PLAIN", "value": "x"},
              {"name": "COLOR", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "color"}}},
              {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "token"}}},
              {"name": "ME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
              {"name": "HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
              {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
              {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "requests.memory",
                                                                 "divisor": "1Mi"}}},
              {"name": "BOTH", "value": "$(COLOR)-$(PLAIN)"},
          ]))
    eventually(lambda: running_ready(stack, ns, "env"), what="pod Running")
    env = {e.name: e.value for e in provider_pods(stack, "mem-a")[(ns, "env")].pod
           .containers[0].env}
    assert env == {"PLAIN": "x", "COLOR": "blue", "TOKEN": "s3cr3t", "ME": "env",
                   "HOST": "127.0.0.1", "CPU": "2", "MEM": "1024", "BOTH": "blue-x"}


def test_unhonoured_fields_are_named_and_first_boot_commands_reach_the_vm(
        stack: Stack, control_plane: ControlPlane, ns: str) -> None:
    """Issue 18: a pod's unrunnable hooks and scratch volumes were ignored without a word,
    and its command and init containers never reached the VM. Now one Warning Event names what
    vmlet does not honour, the VM's first boot runs (memory: logs) the commands in order, with
    $(VAR) expanded from the container's env, and the init container's status says it was
    handed to the guest."""
    manifest = stack.vm_pod("booted", "mem-a", extra={
        "initContainers": [{"name": "prep", "image": "debian-12",
                            "command": ["mkdir", "-p", "/srv/app"]}],
        "volumes": [{"name": "scratch", "emptyDir": {}}]})
    container = manifest["spec"]["containers"][0]
    container.update({"command": ["/usr/bin/serve"], "args": ["--port", "$(PORT)"],
                      "env": [{"name": "PORT", "value": "8080"}],
                      "lifecycle": {"preStop": {"tcpSocket": {"port": 22}}}})
    apply(control_plane, ns, manifest)
    eventually(lambda: running_ready(stack, ns, "booted"), what="pod Running")
    told = eventually(lambda: [e for e in events(stack, ns, "booted")
                               if e["reason"] == "FieldsNotHonoured"], what="Warning Event")
    assert len(told) == 1 and told[0]["type"] == "Warning"
    for field in ("spec.containers[vm].lifecycle.preStop.tcpSocket",
                  "spec.volumes[scratch].emptyDir"):
        assert field in told[0]["message"]
    assert "command" not in told[0]["message"] and "initContainers" not in told[0]["message"]
    with stack.channel("mem-a") as channel:
        lines = [r.line.decode() for r in endpoints_grpc.KubeletEndpointServiceStub(channel)
                 .GetContainerLogs(endpoints.GetContainerLogsRequest(
                     namespace=ns, pod_name="booted", container_name="vm"), timeout=10)]
    assert [line for line in lines if "first-boot:" in line] == [
        "first-boot: prep: mkdir -p /srv/app", "first-boot: vm: /usr/bin/serve --port 8080"]
    # The init container is reported as handed to the guest's first boot, so the pod reads
    # Initialized and `kubectl get` shows it Running, not Init:0/1.
    status = pod(stack, ns, "booted")["status"]
    (init,) = status["initContainerStatuses"]
    assert (init["name"], init["state"]["terminated"]["exitCode"],
            init["state"]["terminated"]["reason"]) == ("prep", 0, "HandedToGuest"), init
    assert {c["type"]: c["status"] for c in status["conditions"]}["Initialized"] == "True"
    shown = control_plane.kubectl("get", "pod", "booted", "-n", ns, "--no-headers").stdout
    assert shown.split()[2] == "Running", shown


def test_optional_missing_references_warn_and_run(stack: Stack, control_plane: ControlPlane,
                                                  ns: str) -> None:
    apply(control_plane, ns, stack.vm_pod("opt", "mem-a", env=[
        {"name": "A", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k",
                                                     "optional": True}}},
        {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k",
                                                        "optional": True}}},
    ]))
    eventually(lambda: running_ready(stack, ns, "opt"), what="pod Running")
    reasons = {e["reason"] for e in events(stack, ns, "opt")}
    assert {"OptionalSecretNotFound", "OptionalConfigMapNotFound"} <= reasons


@pytest.mark.parametrize("kind", ["Secret", "ConfigMap"])
def test_mandatory_missing_reference_holds_the_pod(stack: Stack, control_plane: ControlPlane,
                                                   ns: str, kind: str) -> None:
    ref = "secretKeyRef" if kind == "Secret" else "configMapKeyRef"
    apply(control_plane, ns, stack.vm_pod("held", "mem-a", env=[
        {"name": "A", "valueFrom": {ref: {"name": "later", "key": "k"}}}]))
    waiting = eventually(
        lambda: pod(stack, ns, "held")["status"].get("containerStatuses", [{}])[0]
        .get("state", {}).get("waiting"), what="container waiting")
    assert waiting["reason"] == "CreateContainerConfigError"
    assert f'{kind.lower()} "later" not found' in waiting["message"]
    assert f"Mandatory{kind}NotFound" in {e["reason"] for e in events(stack, ns, "held")}
    assert (ns, "held") not in provider_pods(stack, "mem-a"), "never reached the provider"
    data = {"stringData": {"k": "v"}} if kind == "Secret" else {"data": {"k": "v"}}
    apply(control_plane, ns, {"apiVersion": "v1", "kind": kind, "metadata": {"name": "later"},
                              **data})
    eventually(lambda: running_ready(stack, ns, "held"), timeout=90,
               what="pod Running once the reference exists")


def test_provider_errors_become_reasons_and_events(stack: Stack, control_plane: ControlPlane,
                                                   ns: str) -> None:
    """An error the IaaS may get over keeps the pod Pending, every container waiting with the
    reason, and a Warning Event; kubectl describe reads it like a kubelet's pod."""
    manifest = stack.vm_pod("bad", "mem-a")
    manifest["metadata"]["annotations"] = {
        "memory.vmlet.io/fail-create": "RESOURCE_EXHAUSTED: no room for 2 vCPUs"}
    apply(control_plane, ns, manifest)
    waiting = eventually(
        lambda: pod(stack, ns, "bad")["status"].get("containerStatuses", [{}])[0]
        .get("state", {}).get("waiting"), what="container waiting")
    assert waiting == {"reason": "InsufficientResources", "message": "no room for 2 vCPUs"}
    [status] = pod(stack, ns, "bad")["status"]["containerStatuses"]
    assert (status["name"], status["image"], status["restartCount"]) == ("vm", "debian-12", 0)
    failed = eventually(lambda: [e for e in events(stack, ns, "bad")
                                 if e["reason"] == "ProviderCreateFailed"], what="Event")
    assert failed[0]["type"] == "Warning" and failed[0]["message"] == "no room for 2 vCPUs"
    assert "Traceback" not in json.dumps(pod(stack, ns, "bad")["status"])
    described = control_plane.kubectl("describe", "pod", "bad", "-n", ns).stdout
    for line in ("State:          Waiting", "Reason:       InsufficientResources",
                 "Ready:          False", "Restart Count:  0"):
        assert line in described, described


def test_a_pod_the_provider_refuses_fails_and_its_job_reaches_its_backoff_limit(
        stack: Stack, control_plane: ControlPlane, ns: str) -> None:
    """Issue 18: a pod vmlet will not run sat Pending forever, so its Job never failed. Now it
    fails as a kubelet's admission rejects a pod: phase Failed, reason and message, a Warning
    Event; the Job counts each pod and fails at its backoffLimit."""
    manifest = stack.vm_pod("refused", "mem-a")
    manifest["spec"]["containers"].append({"name": "sidecar", "image": "debian-12"})
    apply(control_plane, ns, manifest)
    failed = eventually(lambda: pod(stack, ns, "refused")["status"].get("phase") == "Failed"
                        and pod(stack, ns, "refused")["status"], what="pod Failed")
    assert failed["reason"] == "InvalidSpec"
    assert failed["message"] == (f"Pod was rejected: pod {ns}/refused has 2 containers; "
                                 "a VM pod has one")
    assert [(c["name"], c["image"], c["state"]["terminated"]["exitCode"])
            for c in failed["containerStatuses"]] == [("vm", "debian-12", 128),
                                                       ("sidecar", "debian-12", 128)]
    warned = eventually(lambda: [e for e in events(stack, ns, "refused")
                                 if e["reason"] == "InvalidSpec"], what="Warning Event")
    assert warned[0]["type"] == "Warning"
    assert (ns, "refused") not in provider_pods(stack, "mem-a")
    described = control_plane.kubectl("describe", "pod", "refused", "-n", ns).stdout
    assert "Status:           Failed" in described and "Exit Code:    128" in described

    template = {"spec": stack.vm_pod("unused", "mem-a")["spec"]}
    template["spec"]["containers"].append({"name": "sidecar", "image": "debian-12"})
    template["spec"]["restartPolicy"] = "Never"
    control_plane.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps({
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "refused"},
        "spec": {"backoffLimit": 1, "template": template}}))

    def job_failed() -> dict[str, Any] | None:
        job = stack.kubectl_json("get", "job", "refused", "-n", ns)
        conditions = {c["type"]: c for c in job["status"].get("conditions") or []}
        failure = conditions.get("Failed")
        return job if failure and failure["status"] == "True" else None

    job = eventually(job_failed, timeout=120, what="the Job Failed")
    assert job["status"]["failed"] == 2
    assert {c["reason"] for c in job["status"]["conditions"]
            if c["type"] == "Failed"} == {"BackoffLimitExceeded"}


def test_lease_is_renewed(stack: Stack, control_plane: ControlPlane) -> None:
    path = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/mem-a-0"
    first = json.loads(control_plane.kubectl("get", "--raw", path).stdout)
    assert first["spec"]["holderIdentity"] == "mem-a-0"
    assert first["metadata"]["ownerReferences"][0]["kind"] == "Node"
    later = eventually(
        lambda: (lease := json.loads(control_plane.kubectl("get", "--raw", path).stdout))
        ["spec"]["renewTime"] != first["spec"]["renewTime"] and lease,
        timeout=25, what="lease renewed")
    assert later["spec"]["renewTime"] > first["spec"]["renewTime"]


def test_watch_relists_after_410(stack: Stack, control_plane: ControlPlane, ns: str) -> None:
    """A watch from an expired resourceVersion gets 410 Gone from the real apiserver; the
    facade's list-and-watch relists and goes on delivering events."""
    import asyncio

    from vmlet_facade.kube import KubeClient, KubeConfig, list_and_watch

    async def scenario() -> list[str]:
        client = KubeClient(KubeConfig.from_file(control_plane.kubeconfig))
        seen: list[str] = []
        try:
            stream = list_and_watch(client, f"/api/v1/namespaces/{ns}/configmaps",
                                    resource_version="1")
            async for event in stream:
                seen.append(event.type if event.type == "SYNCED"
                            else f"{event.type}:{event.object['metadata']['name']}")
                if event.type == "SYNCED" and "late" not in str(seen):
                    await client.create(f"/api/v1/namespaces/{ns}/configmaps", {
                        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "late"}})
                if "ADDED:late" in seen:
                    break
        finally:
            await client.close()
        return seen

    apply(control_plane, ns, {"apiVersion": "v1", "kind": "ConfigMap",
                              "metadata": {"name": "early"}})
    control_plane.compact_etcd()
    seen = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert seen.index("ADDED:early") < seen.index("SYNCED") < seen.index("ADDED:late")


def test_reflection_and_health(stack: Stack) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with stack.channel("mem-a") as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                            timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        answers = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        names = {s.name for a in answers for s in a.list_services_response.service}
    assert {"vmlet.provider.v1.PodLifecycleService", "vmlet.provider.v1.PodNotifierService",
            "vmlet.provider.v1.NodeProviderService", "grpc.health.v1.Health"} <= names


# -- restarts: a stack of their own, so the shared one stays healthy ---------------------------

@pytest.fixture
def own_stack(control_plane: ControlPlane, tmp_path: Path) -> Iterator[Stack]:
    name = f"mem-{uuid.uuid4().hex[:5]}"
    s = Stack(control_plane, tmp_path, {name: ["--nodes", "1"]},
              facade_args=["--ping-seconds", "1"]).start()
    s.name = name  # type: ignore[attr-defined]
    try:
        eventually(lambda: len(s.ready_nodes(name)) == 1, what="node Ready")
        yield s
    finally:
        s.stop()


def _ready_condition(stack: Stack, name: str) -> dict[str, Any]:
    node = stack.nodes(name)[0]
    return next(c for c in node["status"]["conditions"] if c["type"] == "Ready")


def test_provider_sigkill_and_restart(own_stack: Stack, control_plane: ControlPlane,
                                      ns: str) -> None:
    name = own_stack.name  # type: ignore[attr-defined]
    apply(control_plane, ns, own_stack.vm_pod("survivor", name))
    before = eventually(lambda: running_ready(own_stack, ns, "survivor"), what="pod Running")
    own_stack.providers[name].kill()
    cond = eventually(lambda: (c := _ready_condition(own_stack, name))["status"] == "Unknown"
                      and c, timeout=30, what="node Ready=Unknown")
    assert cond["reason"] == "ProviderUnavailable"
    after_kill = pod(own_stack, ns, "survivor")
    assert after_kill["metadata"]["uid"] == before["metadata"]["uid"], "nothing deleted"
    own_stack.providers[name].start()
    eventually(lambda: _ready_condition(own_stack, name)["status"] == "True", timeout=30,
               what="node Ready again")
    assert running_ready(own_stack, ns, "survivor")
    assert (ns, "survivor") in provider_pods(own_stack, name)


def test_facade_sigkill_and_restart_creates_nothing_twice(own_stack: Stack,
                                                          control_plane: ControlPlane,
                                                          ns: str) -> None:
    name = own_stack.name  # type: ignore[attr-defined]
    apply(control_plane, ns, *[own_stack.vm_pod(f"p{i}", name) for i in range(5)])
    for i in range(5):
        eventually(lambda i=i: running_ready(own_stack, ns, f"p{i}"), what=f"p{i} Running")
    creates = own_stack.provider_calls(name, "CreatePod")
    assert creates == 5
    assert own_stack.facade is not None
    own_stack.facade.kill()
    own_stack.start_facade()
    apply(control_plane, ns, own_stack.vm_pod("after", name))
    eventually(lambda: running_ready(own_stack, ns, "after"), what="new pod Running")
    time.sleep(2)
    assert own_stack.provider_calls(name, "CreatePod") == creates + 1
    for i in range(5):
        assert running_ready(own_stack, ns, f"p{i}")


def test_orphans_are_removed_at_start(own_stack: Stack, control_plane: ControlPlane,
                                      ns: str) -> None:
    name = own_stack.name  # type: ignore[attr-defined]
    apply(control_plane, ns, own_stack.vm_pod("orphan", name))
    eventually(lambda: running_ready(own_stack, ns, "orphan"), what="pod Running")
    assert own_stack.facade is not None
    own_stack.facade.kill()
    control_plane.kubectl("delete", "pod", "orphan", "-n", ns, "--grace-period=0", "--force")
    assert (ns, "orphan") in provider_pods(own_stack, name)
    own_stack.start_facade()
    eventually(lambda: (ns, "orphan") not in provider_pods(own_stack, name),
               what="orphan removed from the provider")
