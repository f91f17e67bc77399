"""vmlet as a user deploys it: the manifests of k8s/ on the real control plane, and the facade
running with exactly the rights they grant.

- Every overlay passes `kubectl apply --dry-run=server -k`; the memory overlay is applied for real
  and its pods are admitted under Pod Security "restricted" (they stay Pending: no kubelet here).
- The facade then runs as a process, authenticated with a token of the ServiceAccount of k8s/
  (`kubectl create token`), bound by the ClusterRole of k8s/, against a memory provider process,
  and goes through the flows a user drives: pods, the kubelet API, disks, a VirtualMachine behind
  a Service, stop/start, resize, backup, restore, migration and deletion.
- The facade records every request it sends (VMLET_KUBE_REQUEST_LOG); each is turned into its
  RBAC attributes (verb, API group, resource[/subresource]) as the apiserver's RequestInfo does.
  A denied request fails the flow's test (a missing right), and a granted (group, resource, verb)
  that no request used fails the next one (an unused right). A copy of the role without one rule
  shows what a missing right looks like.
- Swapping the provider is one line of the providers file: the running facade is repointed.
- The certificate issuer runs for real with its own account's token on the control plane.

The checks without a control plane (manifests, mutual TLS, Dockerfiles, the providers file) are
in tests/test_deploy_manifests.py; the helpers both share in tests/deploy_support.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy_support import (
    NS,
    OVERLAYS,
    PROVIDER,
    SA,
    Facade,
    Obj,
    apply,
    approve_serving_csrs,
    denied,
    facade_role,
    get,
    granted,
    iaas,
    kubectl_json,
    kubelet_api,
    memory_provider,
    pod_running,
    provider_pods,
    ready_nodes,
    start_facade,
    succeeded,
    used,
    vm_pod_manifest,
    vm_state,
    write_token_kubeconfig,
)
from vmlet.provider.v1 import virtual_machine_service_pb2 as vm_pb
from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.services import REPO, apply_crds
from vmlet_localenv.stack import eventually


@pytest.fixture(scope="module")
def installed(control_plane: ControlPlane) -> ControlPlane:
    """The memory overlay, applied for real (the namespace first: a server dry run of namespaced
    objects needs their namespace)."""
    control_plane.kubectl("apply", "-f", str(REPO / "k8s/base/namespace.yaml"))
    for overlay in OVERLAYS:
        result = control_plane.kubectl("apply", "--dry-run=server", "-k",
                                       str(REPO / "k8s/overlays" / overlay), check=False)
        assert result.returncode == 0, f"{overlay}: {result.stderr}"
        assert "Warning" not in result.stderr, f"{overlay}: {result.stderr}"
    control_plane.kubectl("apply", "-k", str(REPO / "k8s/overlays/memory"))
    apply_crds(control_plane)  # established before VirtualMachines are made
    return control_plane


def test_every_overlay_applies_and_pods_are_admitted_as_restricted(installed: ControlPlane) -> None:
    cp = installed

    def pods() -> list[Obj]:
        items: list[Obj] = json.loads(cp.kubectl("get", "pods", "-n", NS, "-o", "json").stdout)[
            "items"]
        return items

    eventually(lambda: len(pods()) == 4,
               what="the facade's two, the provider's and the certificate issuer's pods admitted")
    for pod in pods():
        spec = pod["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    events = json.loads(cp.kubectl("get", "events", "-n", NS, "-o", "json").stdout)["items"]
    assert not [e for e in events if e["reason"] == "FailedCreate"]
    # Nothing runs them here (no kubelet): keep the rest, drop the Deployments.
    cp.kubectl("delete", "deployment", "-n", NS, "vmlet-facade", "vmlet-provider-memory")
    cp.kubectl("delete", "job,cronjob", "-n", NS, "vmlet-pki", "vmlet-pki-renew",
               "--ignore-not-found")


def test_the_issuer_keeps_the_secrets_with_its_own_rights(installed: ControlPlane,
                                                         tmp_path: Path) -> None:
    """What the Job runs, with a token of the Job's account: the three Secrets appear, a second
    run keeps them, and the account reads no other Secret."""
    cp = installed
    kubeconfig = write_token_kubeconfig(cp, "vmlet-pki", tmp_path / "kubeconfig")
    argv = [sys.executable, "-m", "vmlet_facade.providercerts",
            "--service=vmlet-provider-memory", "secrets", NS, f"--kubeconfig={kubeconfig}"]

    def secrets() -> dict[str, Obj]:
        items = json.loads(cp.kubectl("get", "secrets", "-n", NS, "-l",
                                      "app.kubernetes.io/component=provider-pki",
                                      "-o", "json").stdout)["items"]
        return {s["metadata"]["name"]: s["data"] for s in items}

    first = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    made = secrets()
    assert sorted(made) == ["vmlet-facade-provider-tls", "vmlet-provider-ca",
                            "vmlet-provider-tls"]
    assert sorted(made["vmlet-provider-tls"]) == ["ca.crt", "tls.crt", "tls.key"]
    second = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stderr
    assert secrets() == made
    user = f"system:serviceaccount:{NS}:vmlet-pki"
    assert cp.kubectl("auth", "can-i", "get", "secret/other", "-n", NS, f"--as={user}",
                      check=False).stdout.strip() == "no"
    assert cp.kubectl("auth", "can-i", "list", "secrets", "-n", NS, f"--as={user}",
                      check=False).stdout.strip() == "no"


@pytest.fixture(scope="module")
def facade(installed: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Facade]:
    directory = tmp_path_factory.mktemp("deploy")
    provider = memory_provider(directory, PROVIDER, "deploy-a").start()
    f = start_facade(installed, directory / "facade", SA, provider, PROVIDER)
    try:
        approve_serving_csrs(installed, f"system:serviceaccount:{NS}:{SA}")
        eventually(lambda: len(ready_nodes(installed, PROVIDER)) == 2, timeout=90,
                   what="the facade's nodes Ready")
        yield f
    finally:
        f.stop()


def test_facade_with_the_service_account_runs_every_flow(facade: Facade,
                                                         installed: ControlPlane) -> None:
    cp = installed
    ns = f"d-{uuid.uuid4().hex[:8]}"
    cp.kubectl("create", "namespace", ns)
    address = facade.providers["a"].address

    # A pod tolerating the taint, with env from a Secret and a ConfigMap, becomes Running.
    apply(cp, ns,
          {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
           "stringData": {"password": "s3cret"}},
          {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "conf"},
           "data": {"mode": "fast"}},
          vm_pod_manifest("web", PROVIDER, env=[
              {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds",
                                                                  "key": "password"}}},
              {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "conf",
                                                                 "key": "mode"}}}]))
    eventually(lambda: pod_running(cp, ns, "web"), timeout=90, what="pod web Running")
    assert (ns, "web") in provider_pods(address)

    # The kubelet API: logs through the apiserver (client certificate + SubjectAccessReview),
    # and a bearer token straight at the facade (TokenReview, then SubjectAccessReview).
    logs = eventually(lambda: cp.kubectl("logs", "web", "-n", ns, check=False).stdout,
                      timeout=60, what="kubectl logs through the facade's kubelet API")
    assert logs.strip()
    token = cp.kubectl("create", "token", "default", "-n", ns).stdout.strip()
    assert kubelet_api(facade.kubelet_port, "/pods", token) == 403  # no nodes/proxy right

    # Deleting the pod deletes its VM at the provider.
    cp.kubectl("delete", "pod", "web", "-n", ns, "--timeout=60s")
    assert (ns, "web") not in provider_pods(address)

    # A disk from a vmlet StorageClass, a VirtualMachine with it, behind a Service.
    cp.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": f"{PROVIDER}-disks"}, "provisioner": f"{PROVIDER}.vmlet.io",
        "allowVolumeExpansion": True, "reclaimPolicy": "Delete"}))
    apply(cp, ns, {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                   "metadata": {"name": "data"},
                   "spec": {"accessModes": ["ReadWriteOnce"],
                            "storageClassName": f"{PROVIDER}-disks",
                            "resources": {"requests": {"storage": "1Gi"}}}})
    eventually(lambda: get(cp, "pvc", ns, "data")["status"].get("phase") == "Bound",
               timeout=60, what="claim Bound")
    apply(cp, ns, {"apiVersion": "vmlet.io/v1alpha1", "kind": "VirtualMachine",
                   "metadata": {"name": "app"},
                   "spec": {"provider": PROVIDER, "image": "debian-12", "cpu": 2,
                            "memory": "2Gi", "disks": [{"name": "data", "claimName": "data"}],
                            "expose": {"ports": [{"name": "ssh", "port": 22}]}}})
    vm = eventually(lambda: vm_state(cp, ns, "app", "Running"), timeout=90, what="VM Running")
    uid = vm["metadata"]["uid"]
    machine = iaas(address, uid)
    assert machine is not None and machine.power_state == vm_pb.POWER_STATE_ON
    eventually(lambda: kubectl_json(cp, "get", "endpointslices", "-n", ns, "-l",
                                    "kubernetes.io/service-name=app")["items"],
               timeout=60, what="the VM's EndpointSlice")

    # Stop and start: the same VM powers off and on.
    cp.kubectl("patch", "vm", "app", "-n", ns, "--type=merge", "-p", '{"spec":{"replicas":0}}')
    eventually(lambda: vm_state(cp, ns, "app", "Stopped"), timeout=90, what="VM Stopped")
    machine = iaas(address, uid)
    assert machine is not None and machine.power_state == vm_pb.POWER_STATE_OFF
    cp.kubectl("patch", "vm", "app", "-n", ns, "--type=merge", "-p", '{"spec":{"replicas":1}}')
    eventually(lambda: vm_state(cp, ns, "app", "Running"), timeout=90, what="VM Running again")

    # Resize in place, and grow the disk.
    cp.kubectl("patch", "vm", "app", "-n", ns, "--type=merge", "-p", '{"spec":{"cpu":4}}')
    eventually(lambda: (m := iaas(address, uid)) is not None and m.cpus == 4, timeout=90,
               what="4 CPUs in the IaaS")
    cp.kubectl("patch", "pvc", "data", "-n", ns, "--type=merge", "-p",
               '{"spec":{"resources":{"requests":{"storage":"2Gi"}}}}')
    eventually(lambda: get(cp, "pvc", ns, "data")["status"].get("capacity", {}).get("storage")
               == "2Gi", timeout=90, what="claim grown to 2Gi")

    # Backup, restore, migration.
    apply(cp, ns, {"apiVersion": "vmlet.io/v1alpha1", "kind": "VirtualMachineBackup",
                   "metadata": {"name": "nightly"}, "spec": {"vmName": "app"}})
    eventually(lambda: succeeded(cp, "vmbackup", ns, "nightly"), timeout=120,
               what="backup Succeeded")
    apply(cp, ns, {"apiVersion": "vmlet.io/v1alpha1", "kind": "VirtualMachineRestore",
                   "metadata": {"name": "undo"}, "spec": {"backupName": "nightly"}})
    eventually(lambda: succeeded(cp, "vmrestore", ns, "undo"), timeout=120,
               what="restore Succeeded")
    source = get(cp, "vm", ns, "app")["status"]["nodeName"]
    apply(cp, ns, {"apiVersion": "vmlet.io/v1alpha1", "kind": "VirtualMachineMigration",
                   "metadata": {"name": "move"}, "spec": {"vmName": "app"}})
    mig = eventually(lambda: succeeded(cp, "vmmigration", ns, "move"), timeout=120,
                     what="migration Succeeded")
    assert mig["status"]["targetNode"] != source
    eventually(lambda: vm_state(cp, ns, "app", "Running"), timeout=90, what="VM Running moved")

    # Deletion: the VM is destroyed (finalizer), its Service goes, the released disk goes.
    cp.kubectl("delete", "vm", "app", "-n", ns, "--timeout=90s")
    assert iaas(address, uid) is None
    eventually(lambda: not kubectl_json(cp, "get", "endpointslices", "-n", ns, "-l",
                                        "kubernetes.io/service-name=app")["items"],
               timeout=60, what="the VM's EndpointSlice removed")
    pv = get(cp, "pvc", ns, "data")["spec"]["volumeName"]
    cp.kubectl("delete", "pvc", "data", "-n", ns, "--timeout=60s")
    eventually(lambda: cp.kubectl("get", "pv", pv, check=False).returncode != 0, timeout=90,
               what="the released PersistentVolume deleted")

    # Nothing the facade asked for was refused: the role of k8s/ lacks no right.
    refused = denied(facade.requests())
    assert not refused, f"the ClusterRole vmlet-facade lacks rights for {sorted(refused)}"


def test_swapping_the_provider_is_one_address_change(facade: Facade, installed: ControlPlane,
                                                     tmp_path: Path) -> None:
    """A second provider (the same IaaS: here, the memory provider's state) takes over when the
    one line of the providers file changes, while the facade keeps running."""
    cp = installed
    ns = f"s-{uuid.uuid4().hex[:8]}"
    cp.kubectl("create", "namespace", ns)
    old = facade.providers["a"]
    apply(cp, ns, vm_pod_manifest("before", PROVIDER))
    eventually(lambda: pod_running(cp, ns, "before"), timeout=90, what="pod before Running")

    state = old.dir / f"{old.name}.json"
    new = memory_provider(tmp_path, PROVIDER, "deploy-b")
    shutil.copy(state, tmp_path / "deploy-b.json")
    new.start()
    facade.providers["b"] = new
    pid = facade.process.pid
    facade.providers_file.write_text(f"# swapped\n{PROVIDER}={new.address}\n")

    def annotated() -> bool:
        nodes = kubectl_json(cp, "get", "nodes", "-l", f"vmlet.io/provider={PROVIDER}")["items"]
        return all(n["metadata"]["annotations"].get("vmlet.io/provider-address") == new.address
                   for n in nodes)

    eventually(annotated, timeout=60, what="the nodes served through the new address")
    old.stop()
    apply(cp, ns, vm_pod_manifest("after", PROVIDER))
    eventually(lambda: pod_running(cp, ns, "after"), timeout=90, what="pod after Running")
    assert {(ns, "before"), (ns, "after")} <= provider_pods(new.address)
    cp.kubectl("delete", "pod", "before", "-n", ns, "--timeout=60s")
    assert (ns, "before") not in provider_pods(new.address)
    assert facade.process.pid == pid and facade.process.running(), "no restart"
    assert sorted(ready_nodes(cp, PROVIDER)) == [f"{PROVIDER}-0", f"{PROVIDER}-1"]


def test_a_missing_right_fails_visibly(installed: ControlPlane, tmp_path: Path) -> None:
    """The facade under a copy of its role without `patch pods/status`: pods never turn Running,
    the refusals are in its log and its request log, and the nodes stay fine."""
    cp = installed
    role = facade_role()
    rules = []
    for rule in role["rules"]:
        if rule["resources"] == ["pods/status"]:
            continue
        rules.append(rule)
    assert len(rules) == len(role["rules"]) - 1
    account = "vmlet-facade-limited"
    cp.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": account, "namespace": NS}},
        {**role, "metadata": {"name": account}, "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": account},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": account},
         "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": NS}]}]}))
    provider = memory_provider(tmp_path, "limited", "limited").start()
    f = start_facade(cp, tmp_path / "facade", account, provider, "limited")
    try:
        eventually(lambda: len(ready_nodes(cp, "limited")) == 2, timeout=90,
                   what="the limited facade's nodes Ready")
        ns = f"m-{uuid.uuid4().hex[:8]}"
        cp.kubectl("create", "namespace", ns)
        apply(cp, ns, vm_pod_manifest("stuck", "limited"))
        eventually(lambda: (ns, "stuck") in provider_pods(provider.address), timeout=60,
                   what="the VM made at the provider")
        eventually(lambda: any(r == (("", "pods/status", "patch"),
                                     f"/api/v1/namespaces/{ns}/pods/stuck/status")
                               for r in denied(f.requests())),
                   timeout=60, what="a refused status write in the request log")
        log = f.process.log_path.read_text(errors="replace")
        assert "403" in log and "pods/status" not in [
            r for _, r, _ in granted({"rules": rules})]
        pod = get(cp, "pod", ns, "stuck")
        assert pod["status"].get("phase") == "Pending", "the status was never written"
    finally:
        f.stop()
        cp.kubectl("delete", "clusterrolebinding", account, "--ignore-not-found")


def test_the_role_grants_nothing_the_facade_does_not_use(facade: Facade) -> None:
    """Last, after every flow of this module (the swap re-registers nodes): every (group,
    resource, verb) the role grants was used by the facade."""
    unused = granted(facade_role()) - set(used(facade.requests()))
    assert not unused, (
        "k8s/base/facade-rbac.yaml grants rights the facade never used: "
        + ", ".join(f"{v} {g or 'core'}/{r}" for g, r, v in sorted(unused)))


def test_an_unused_right_is_reported(facade: Facade) -> None:
    """The same check on a role with one right too many names that right."""
    role = facade_role()
    before = granted(role) - set(used(facade.requests()))
    role["rules"].append({"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]})
    assert granted(role) - set(used(facade.requests())) == before | {("", "secrets", "list")}
