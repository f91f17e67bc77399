"""References stay in their namespace, through the real apiserver and the facade.

A VirtualMachine naming ``../../victim/secrets/topsecret`` is refused at admission by the CRD's
patterns; a bare pod carrying the same path in its ``vmlet.io/user-data-secret`` annotation (no
schema guards annotations) is refused by the facade with a clear status, and the facade's own
record of its requests (VMLET_KUBE_REQUEST_LOG) shows it read nothing of the victim's.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vmlet.provider.v1 import pod_lifecycle_service_pb2 as lifecycle
from vmlet.provider.v1 import pod_lifecycle_service_pb2_grpc as lifecycle_grpc
from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.stack import Stack, eventually

PROVIDER = "mem-ref"
HOSTILE = "../../victim/secrets/topsecret"


@pytest.fixture(scope="module")
def request_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("requests") / "facade-requests.jsonl"


@pytest.fixture(scope="module")
def stack(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory,
          request_log: Path) -> Iterator[Stack]:
    before = os.environ.get("VMLET_KUBE_REQUEST_LOG")
    os.environ["VMLET_KUBE_REQUEST_LOG"] = str(request_log)  # inherited by the facade process
    try:
        s = Stack(control_plane, tmp_path_factory.mktemp("stack"),
                  {PROVIDER: ["--nodes", "1"]}).start()
    finally:
        if before is None:
            os.environ.pop("VMLET_KUBE_REQUEST_LOG", None)
        else:
            os.environ["VMLET_KUBE_REQUEST_LOG"] = before
    try:
        eventually(lambda: len(s.ready_nodes(PROVIDER)) == 1, what="node Ready")
        yield s
    finally:
        s.stop()


@pytest.fixture
def namespaces(control_plane: ControlPlane) -> tuple[str, str]:
    """A tenant's namespace and a victim's, with the victim's Secret."""
    tenant, victim = f"tenant-{uuid.uuid4().hex[:6]}", f"victim-{uuid.uuid4().hex[:6]}"
    for ns in (tenant, victim):
        control_plane.kubectl("create", "namespace", ns)
    control_plane.kubectl("create", "secret", "generic", "topsecret", "-n", victim,
                          "--from-literal=userdata=#cloud-config\npassword: stolen")
    return tenant, victim


def _apply(cp: ControlPlane, ns: str, obj: dict[str, Any]) -> Any:
    return cp.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(obj), check=False)


@pytest.mark.parametrize("field,spec", [
    ("spec.userData.secretName", {"userData": {"secretName": HOSTILE}}),
    ("spec.userData.secretName", {"userData": {"secretName": "%2e%2e"}}),
    ("spec.userData.secretName", {"userData": {"secretName": "a" * 254}}),
    ("spec.userData.key", {"userData": {"secretName": "ok", "key": "../userdata"}}),
    ("spec.access.sshSecretName", {"access": {"sshSecretName": "../victim"}}),
    ("spec.disks[0].claimName", {"disks": [{"name": "d", "claimName": "a/b"}]}),
    ("spec.networks[0].name", {"networks": [{"name": "a,b"}]}),
    ("spec.placement.nodeName", {"placement": {"nodeName": "../n"}}),
])
def test_the_crd_refuses_a_reference_that_is_no_name(
    stack: Stack, control_plane: ControlPlane, namespaces: tuple[str, str], field: str,
    spec: dict[str, Any],
) -> None:
    tenant, _ = namespaces
    vm = {"apiVersion": "vmlet.io/v1alpha1", "kind": "VirtualMachine",
          "metadata": {"name": "vm"},
          "spec": {"provider": PROVIDER, "image": "debian-12", "cpu": 1, "memory": "1Gi",
                   **spec}}
    out = _apply(control_plane, tenant, vm)
    assert out.returncode != 0 and "is invalid" in out.stderr, out.stderr
    assert field in out.stderr, out.stderr
    for kind, body in (("VirtualMachineBackup", {"vmName": "../x"}),
                       ("VirtualMachineRestore", {"backupName": "a/b"}),
                       ("VirtualMachineMigration", {"vmName": "vm", "targetNode": "../n"})):
        out = _apply(control_plane, tenant, {"apiVersion": "vmlet.io/v1alpha1", "kind": kind,
                                             "metadata": {"name": "op"}, "spec": body})
        assert out.returncode != 0 and "is invalid" in out.stderr, (kind, out.stderr)


def test_a_pod_annotation_naming_another_namespace_reads_nothing(
    stack: Stack, control_plane: ControlPlane, namespaces: tuple[str, str], request_log: Path,
) -> None:
    tenant, victim = namespaces
    pod = stack.vm_pod("thief", PROVIDER)
    pod["metadata"].setdefault("annotations", {})["vmlet.io/user-data-secret"] = (
        f"../../{victim}/secrets/topsecret")
    out = _apply(control_plane, tenant, pod)
    assert out.returncode == 0, out.stderr

    def refused() -> dict[str, Any] | None:
        p = stack.kubectl_json("get", "pod", "thief", "-n", tenant)
        for cs in p.get("status", {}).get("containerStatuses") or []:
            waiting = cs.get("state", {}).get("waiting") or {}
            if waiting.get("reason") == "CreateContainerConfigError":
                return dict(waiting)
        return None

    waiting = eventually(refused, what="the pod refused with CreateContainerConfigError")
    assert "is not a valid name" in waiting["message"], waiting
    events = stack.kubectl_json("get", "events", "-n", tenant,
                                "--field-selector", "involvedObject.name=thief")["items"]
    assert any(e["reason"] == "InvalidReference" for e in events), events
    with stack.channel(PROVIDER) as channel:
        pods = lifecycle_grpc.PodLifecycleServiceStub(channel).GetPods(
            lifecycle.GetPodsRequest(), timeout=10).pods
    assert not [p for p in pods if p.pod.ref.name == "thief"]
    requests = [json.loads(line) for line in request_log.read_text().splitlines()]
    assert requests, "the facade records its requests"
    assert not [r for r in requests if victim in r["path"] or "topsecret" in r["path"]
                or ("/secrets/" in r["path"] and not r["path"].startswith(
                    f"/api/v1/namespaces/{tenant}/"))]
