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
- The Dockerfiles and docker-compose.yml are checked by hack/validate-deploy.sh (hadolint and
  the Compose Specification's JSON schema), which installs its own tools.
- Facade and providers talk mutual TLS everywhere, checked statically (no container engine runs
  here): every overlay and compose give each provider its serving pair, the client CA and the
  facade's identity, give the facade its client pair, never a plaintext flag, probe the
  plaintext health-only port, and issue the certificates themselves (k8s/base/pki.yaml,
  compose's `pki`). The issuer runs for real with its own account's token on the control plane.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from vmlet.provider.v1 import pod_lifecycle_service_pb2 as lifecycle
from vmlet.provider.v1 import pod_lifecycle_service_pb2_grpc as lifecycle_grpc
from vmlet.provider.v1 import virtual_machine_service_pb2 as vm_pb
from vmlet.provider.v1 import virtual_machine_service_pb2_grpc as vm_grpc
from vmlet_contract import READINESS_SERVICE
from vmlet_facade.providerfile import follow_providers_file, parse_providers
from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.processes import Process, free_port, wait_for
from vmlet_localenv.providerpki import FACADE_IDENTITY, default_pki
from vmlet_localenv.services import REPO, ProviderProcess, apply_crds
from vmlet_localenv.stack import eventually

NS = "vmlet-system"
SA = "vmlet-facade"
PROVIDER = "deploy"
OVERLAYS = ("memory", "vsphere", "openstack")
Obj = dict[str, Any]
Triple = tuple[str, str, str]  # (API group, resource[/subresource], verb)


# -- RBAC attributes of a request ----------------------------------------------------------------

def request_attributes(method: str, path: str, watch: bool) -> Triple:
    """(group, resource[/subresource], verb) of one API request, as the apiserver's RequestInfo
    resolves it for authorization."""
    parts = path.split("?", 1)[0].strip("/").split("/")
    if parts[0] == "api":
        group, rest = "", parts[2:]
    elif parts[0] == "apis":
        group, rest = parts[1], parts[3:]
    else:
        raise ValueError(f"not a resource path: {path}")
    if len(rest) > 2 and rest[0] == "namespaces":
        rest = rest[2:]
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else None
    if len(rest) > 2:
        resource = f"{resource}/{rest[2]}"
    if method == "GET":
        verb = "watch" if watch else ("get" if name else "list")
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch",
                "DELETE": "delete" if name else "deletecollection"}[method]
    return group, resource, verb


def granted(role: Obj) -> set[Triple]:
    """Every (group, resource, verb) a ClusterRole's rules grant (no wildcards allowed)."""
    out: set[Triple] = set()
    for rule in role["rules"]:
        assert not rule.get("nonResourceURLs") and not rule.get("resourceNames"), rule
        for g in rule["apiGroups"]:
            for r in rule["resources"]:
                for v in rule["verbs"]:
                    assert "*" not in (g, r, v), f"wildcard in {rule}"
                    out.add((g, r, v))
    return out


def read_requests(log: Path) -> list[Obj]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def used(requests: list[Obj]) -> dict[Triple, int]:
    out: dict[Triple, int] = {}
    for r in requests:
        group, resource, verb = request_attributes(r["method"], r["path"], r["watch"])
        keys = [(group, resource, verb)]
        if verb == "patch" and r["status"] == 201:  # a server-side apply that created
            keys.append((group, resource, "create"))
        for key in keys:
            out[key] = out.get(key, 0) + 1
    return out


def denied(requests: list[Obj]) -> set[tuple[Triple, str]]:
    return {(request_attributes(r["method"], r["path"], r["watch"]), r["path"])
            for r in requests if r["status"] == 403}


def test_request_attributes_follow_the_apiserver() -> None:
    assert request_attributes("GET", "/api/v1/pods", True) == ("", "pods", "watch")
    assert request_attributes("GET", "/api/v1/pods", False) == ("", "pods", "list")
    assert request_attributes("PATCH", "/api/v1/namespaces/a/pods/p/status", False) == (
        "", "pods/status", "patch")
    assert request_attributes("GET", "/api/v1/namespaces/a", False) == (
        "", "namespaces", "get")
    assert request_attributes("POST", "/apis/batch/v1/namespaces/a/jobs", False) == (
        "batch", "jobs", "create")
    assert request_attributes("PUT", "/apis/coordination.k8s.io/v1/namespaces/x/leases/l",
                              False) == ("coordination.k8s.io", "leases", "update")
    assert request_attributes("DELETE", "/api/v1/namespaces/a/pods", False) == (
        "", "pods", "deletecollection")


# -- the providers file ---------------------------------------------------------------------------

def test_providers_file_syntax() -> None:
    text = "# comment\nmemory=vmlet-provider-memory:50051\n\na=h:1, b=h:2  # two\n"
    assert parse_providers(text) == {"memory": "vmlet-provider-memory:50051", "a": "h:1",
                                     "b": "h:2"}
    with pytest.raises(ValueError, match="NAME=HOST:PORT"):
        parse_providers("memory\n")


async def test_providers_file_repoints_a_changed_address_only(tmp_path: Path) -> None:
    path = tmp_path / "providers"
    path.write_text("a=h:1\nb=h:2\n")
    current = {"a": "h:1", "b": "h:2"}
    calls: list[tuple[str, str]] = []

    async def repoint(name: str, address: str) -> None:
        calls.append((name, address))

    task = asyncio.create_task(follow_providers_file(path, current, repoint, interval=0.05))
    try:
        await asyncio.sleep(0.2)
        assert calls == []
        path.write_text("a=h:9\nb=h:2\nc=h:3\n")  # c: added, needs a restart (logged)
        for _ in range(100):
            if calls:
                break
            await asyncio.sleep(0.05)
        path.write_text("not a provider line\n")  # a bad edit is logged and ignored
        await asyncio.sleep(0.2)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert calls == [("a", "h:9")]
    assert current == {"a": "h:9", "b": "h:2"}


# -- manifests -----------------------------------------------------------------------------------

def kustomize(target: str) -> list[Obj]:
    out = subprocess.run(["kubectl", "kustomize", str(REPO / target)], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def facade_role() -> Obj:
    docs = yaml.safe_load_all((REPO / "k8s/base/facade-rbac.yaml").read_text())
    return next(d for d in docs if d and d["kind"] == "ClusterRole")


def test_base_installs_every_crd_and_the_facade_role() -> None:
    base = kustomize("k8s/base")
    crds = {d["metadata"]["name"] for d in base if d["kind"] == "CustomResourceDefinition"}
    on_disk = {d["metadata"]["name"] for p in sorted((REPO / "k8s/base/crds").glob("*.yaml"))
               for d in yaml.safe_load_all(p.read_text()) if d}
    assert crds == on_disk, "k8s/base/kustomization.yaml must list every file of k8s/base/crds"
    role = next(d for d in base if d["kind"] == "ClusterRole"
                and d["metadata"]["name"] == "vmlet-facade")
    assert role["rules"] == facade_role()["rules"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_is_restricted_and_least_privileged(overlay: str) -> None:
    docs = kustomize(f"k8s/overlays/{overlay}")
    ns = next(d for d in docs if d["kind"] == "Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    assert set(deployments) == {"vmlet-facade", f"vmlet-provider-{overlay}"}
    provider = deployments[f"vmlet-provider-{overlay}"]["spec"]["template"]["spec"]
    assert provider["automountServiceAccountToken"] is False, "providers never call the apiserver"
    probes = provider["containers"][0]
    # On the plaintext health-only port: liveness (and startup) the overall service, readiness
    # the service that follows the IaaS.
    for probe, name in (("startupProbe", ""), ("readinessProbe", READINESS_SERVICE),
                        ("livenessProbe", "")):
        assert probes[probe]["grpc"] == {"port": 50050, "service": name}, probe
    service = next(d for d in docs if d["kind"] == "Service"
                   and d["metadata"]["name"] == f"vmlet-provider-{overlay}")
    assert service["spec"]["publishNotReadyAddresses"] is True, "the facade sees an IaaS outage"
    bindings = [d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")]
    assert sorted((b["kind"], b["roleRef"]["name"], str(b["subjects"])) for b in bindings) == [
        ("ClusterRoleBinding", "vmlet-facade",
         str([{"kind": "ServiceAccount", "name": SA, "namespace": NS}])),
        ("RoleBinding", "vmlet-pki",
         str([{"kind": "ServiceAccount", "name": "vmlet-pki", "namespace": NS}]))]
    providers = next(d for d in docs if d["kind"] == "ConfigMap"
                     and d["metadata"]["name"] == "vmlet-providers")
    assert f"{overlay}=vmlet-provider-{overlay}:50051" in providers["data"]["providers"]
    policy = next(d for d in docs if d["kind"] == "NetworkPolicy"
                  and d["spec"]["podSelector"]["matchLabels"].get(
                      "app.kubernetes.io/component") == "provider")
    assert policy["spec"]["ingress"] == [{"from": [{"podSelector": {"matchLabels": {
        "app.kubernetes.io/name": "vmlet", "app.kubernetes.io/component": "facade"}}}]}]


def _env(container: Obj, configmaps: dict[str, Obj]) -> dict[str, str]:
    """A container's environment as the kubelet builds it (envFrom ConfigMaps, then env)."""
    out: dict[str, str] = {}
    for source in container.get("envFrom", []):
        out.update(configmaps[source["configMapRef"]["name"]]["data"])
    out.update({e["name"]: e.get("value", "<from>") for e in container.get("env", [])})
    return out


def _secret_dir(pod: Obj, container: Obj, path: str) -> str:
    """The Secret mounted (as a directory, which the kubelet keeps up to date) where ``path``
    lives."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container["volumeMounts"]:
        if path.startswith(mount["mountPath"].rstrip("/") + "/"):
            assert "subPath" not in mount, f"{path}: a subPath mount is never updated"
            assert mount.get("readOnly") is True
            return str(volumes[mount["name"]]["secret"]["secretName"])
    raise AssertionError(f"{path} is on no mounted volume")


PLAINTEXT_FLAGS = ("--insecure-plaintext", "--provider-insecure-plaintext")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_configures_mutual_tls(overlay: str) -> None:
    docs = kustomize(f"k8s/overlays/{overlay}")
    assert not [f for f in PLAINTEXT_FLAGS if f in yaml.safe_dump_all(docs)]
    configmaps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}

    pod = deployments[f"vmlet-provider-{overlay}"]["spec"]["template"]["spec"]
    provider = pod["containers"][0]
    env = _env(provider, configmaps)
    assert env["VMLET_TLS_CLIENT_IDENTITY"] == FACADE_IDENTITY
    assert env["VMLET_HEALTH_LISTEN"] == "0.0.0.0:50050"
    assert {_secret_dir(pod, provider, env[k]) for k in
            ("VMLET_TLS_CERT", "VMLET_TLS_KEY", "VMLET_TLS_CLIENT_CA")} == {"vmlet-provider-tls"}
    assert {"name": "health", "containerPort": 50050, "protocol": "TCP"} in provider["ports"]

    pod = deployments["vmlet-facade"]["spec"]["template"]["spec"]
    facade = pod["containers"][0]
    env = _env(facade, configmaps)
    assert {_secret_dir(pod, facade, env[k]) for k in
            ("VMLET_PROVIDER_CA", "VMLET_PROVIDER_CERT", "VMLET_PROVIDER_KEY")} == {
        "vmlet-facade-provider-tls"}

    # The deployment issues them: a Job now and a CronJob after, naming this overlay's Service.
    jobs = [d for d in docs if d["kind"] == "Job"] + [
        d["spec"]["jobTemplate"] for d in docs if d["kind"] == "CronJob"]
    assert len(jobs) == 2
    for job in jobs:
        spec = job["spec"]["template"]["spec"]
        assert spec["serviceAccountName"] == "vmlet-pki"
        issuer = spec["containers"][0]
        assert issuer["command"] == ["python", "-m", "vmlet_facade.providercerts"]
        assert f"--service=vmlet-provider-{overlay}" in issuer["args"]
        assert issuer["args"][-2:] == ["secrets", "$(NAMESPACE)"]
    role = next(d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == "vmlet-pki")
    for rule in role["rules"]:
        assert rule["resources"] == ["secrets"]
        assert rule["verbs"] == ["create"] or rule.get("resourceNames") == [
            "vmlet-provider-ca", "vmlet-provider-tls", "vmlet-facade-provider-tls"]


def test_compose_configures_mutual_tls() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services: dict[str, Obj] = compose["services"]
    assert not [f for f in PLAINTEXT_FLAGS if f in yaml.safe_dump(compose)]

    def volumes(service: Obj) -> dict[str, str]:
        out = {}
        for v in service.get("volumes", []):
            source, target, *mode = v.split(":")
            out[source] = target + (":" + mode[0] if mode else "")
        return out

    providers = [n for n, s in services.items()
                 if s.get("build", {}).get("target") == "provider"]
    assert sorted(providers) == ["memory-provider", "openstack-provider", "vsphere-provider"]
    for name in providers:
        service = services[name]
        env = service["environment"]
        assert env["VMLET_TLS_CLIENT_IDENTITY"] == FACADE_IDENTITY, name
        assert volumes(service)["provider-pki"] == "/etc/vmlet/tls:ro", name
        for key in ("VMLET_TLS_CERT", "VMLET_TLS_KEY", "VMLET_TLS_CLIENT_CA"):
            assert env[key].startswith("/etc/vmlet/tls/"), (name, key)
        assert "VMLET_HEALTH_LISTEN" in " ".join(service["healthcheck"]["test"]), name
        assert service["depends_on"]["pki"] == {"condition": "service_completed_successfully"}

    facade = services["facade"]
    assert volumes(facade)["facade-pki"] == "/etc/vmlet/provider-tls:ro"
    for key in ("VMLET_PROVIDER_CA", "VMLET_PROVIDER_CERT", "VMLET_PROVIDER_KEY"):
        assert facade["environment"][key].startswith("/etc/vmlet/provider-tls/"), key
    assert facade["depends_on"]["pki"] == {"condition": "service_completed_successfully"}

    pki = services["pki"]
    assert pki["entrypoint"] == ["python", "-m", "vmlet_facade.providercerts"]
    assert pki["command"][-2:] == ["files", "/pki"] and pki["restart"] == "no"
    assert volumes(pki) == {"pki-ca": "/pki/ca", "provider-pki": "/pki/provider",
                            "facade-pki": "/pki/facade"}
    # Only the issuer sees the CA key; a provider never holds the facade's key.
    assert [n for n, s in services.items() if "pki-ca" in volumes(s)] == ["pki"]
    assert [n for n, s in services.items() if "facade-pki" in volumes(s)] == ["pki", "facade"]


def test_dockerfiles_and_compose_validate() -> None:
    """hadolint on every Dockerfile, docker-compose.yml against the Compose Specification."""
    result = subprocess.run(["bash", str(REPO / "hack/validate-deploy.sh")], capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr


# -- on the control plane ------------------------------------------------------------------------

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

    eventually(lambda: len(pods()) == 3,
               what="the facade's, the provider's and the certificate issuer's pods admitted")
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


def write_token_kubeconfig(cp: ControlPlane, account: str, path: Path) -> Path:
    token = cp.kubectl("create", "token", account, "-n", NS, "--duration=3h").stdout.strip()
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": account,
        "clusters": [{"name": "vmlet", "cluster": {
            "server": cp.server, "certificate-authority": str(cp.pki.ca.cert)}}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": account, "context": {"cluster": "vmlet", "user": account}}],
    }))
    return path


@dataclass
class Facade:
    """The facade process, its request log and where it reads its providers."""

    process: Process
    request_log: Path
    providers_file: Path
    metrics_port: int
    kubelet_port: int
    kubeconfig: Path
    providers: dict[str, ProviderProcess] = field(default_factory=dict)

    def requests(self) -> list[Obj]:
        return read_requests(self.request_log)

    def stop(self) -> None:
        self.process.stop()
        for p in self.providers.values():
            p.stop()


def start_facade(cp: ControlPlane, directory: Path, account: str, provider: ProviderProcess,
                 name: str) -> Facade:
    directory.mkdir(parents=True, exist_ok=True)
    kubeconfig = write_token_kubeconfig(cp, account, directory / "kubeconfig")
    providers_file = directory / "providers"
    providers_file.write_text(f"# NAME=HOST:PORT\n{name}={provider.address}\n")
    log = directory / "requests.jsonl"
    metrics, kubelet = free_port(), free_port()
    process = Process(f"facade-{name}", [
        sys.executable, "-m", "vmlet_facade", f"--kubeconfig={kubeconfig}",
        f"--providers-file={providers_file}", f"--metrics-addr=127.0.0.1:{metrics}",
        f"--leader-election-namespace={NS}", "--ping-seconds=1",
        f"--kubelet-port={kubelet}", "--kubelet-address=127.0.0.1", "--node-ip=127.0.0.1",
        f"--kubelet-cert-dir={directory / 'kubelet-pki'}", f"--client-ca-file={cp.pki.ca.cert}",
        *default_pki().facade_args(),
    ], log_dir=directory / "logs", env={**os.environ, "VMLET_KUBE_REQUEST_LOG": str(log)})
    process.start()

    def metrics_up() -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as r:
            return b"vmlet_facade" in r.read()

    wait_for(metrics_up, timeout=60, what="facade", alive=process.check_alive)
    return Facade(process, log, providers_file, metrics, kubelet, kubeconfig, {"a": provider})


def memory_provider(directory: Path, name: str, label: str) -> ProviderProcess:
    return ProviderProcess("memory", directory, name=label, args=[
        "--node-prefix", name, "--nodes", "2", "--state-file", str(directory / f"{label}.json"),
        "--metrics-listen", f"127.0.0.1:{free_port()}"])


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


def approve_serving_csrs(cp: ControlPlane, username: str) -> None:
    """Approve the facade's kubelet-serving CSR, as an operator does."""
    def pending() -> list[str]:
        items = json.loads(cp.kubectl("get", "csr", "-o", "json").stdout)["items"]
        return [c["metadata"]["name"] for c in items if c["spec"].get("username") == username
                and not c.get("status", {}).get("conditions")]

    names = eventually(pending, timeout=60, what="the facade's kubelet-serving CSR")
    cp.kubectl("certificate", "approve", *names)


def kubectl_json(cp: ControlPlane, *args: str) -> Any:
    return json.loads(cp.kubectl(*args, "-o", "json").stdout)


def ready_nodes(cp: ControlPlane, provider: str) -> list[str]:
    items = kubectl_json(cp, "get", "nodes", "-l", f"vmlet.io/provider={provider}")["items"]
    return [n["metadata"]["name"] for n in items
            if any(c["type"] == "Ready" and c["status"] == "True"
                   for c in n["status"].get("conditions", []))]


def apply(cp: ControlPlane, ns: str, *objs: Obj) -> None:
    cp.kubectl("apply", "-n", ns, "-f", "-",
               input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objs)}))


def vm_pod_manifest(name: str, provider: str, env: list[Obj] | None = None) -> Obj:
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"vmlet.io/provider": provider},
            "tolerations": [{"key": "virtual-kubelet.io/provider", "operator": "Equal",
                             "value": provider, "effect": "NoSchedule"}],
            "containers": [{"name": "vm", "image": "debian-12", "env": env or [],
                            "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}],
        },
    }


def pod_running(cp: ControlPlane, ns: str, name: str) -> Obj | None:
    pod: Obj = kubectl_json(cp, "get", "pod", name, "-n", ns)
    return pod if pod["status"].get("phase") == "Running" else None


def get(cp: ControlPlane, kind: str, ns: str, name: str) -> Obj:
    obj: Obj = kubectl_json(cp, "get", kind, name, "-n", ns)
    return obj


def vm_state(cp: ControlPlane, ns: str, name: str, want: str) -> Obj | None:
    vm = get(cp, "vm", ns, name)
    return vm if vm.get("status", {}).get("state") == want else None


def succeeded(cp: ControlPlane, kind: str, ns: str, name: str) -> Obj | None:
    obj = get(cp, kind, ns, name)
    return obj if obj.get("status", {}).get("state") == "Succeeded" else None


def iaas(address: str, identity: str) -> vm_pb.VirtualMachine | None:
    with default_pki().channel(address) as channel:
        try:
            return vm_grpc.VirtualMachineServiceStub(channel).GetVirtualMachine(
                vm_pb.GetVirtualMachineRequest(identity=identity), timeout=10).virtual_machine
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise


def provider_pods(address: str) -> set[tuple[str, str]]:
    with default_pki().channel(address) as channel:
        resp = lifecycle_grpc.PodLifecycleServiceStub(channel).GetPods(
            lifecycle.GetPodsRequest(), timeout=10)
    return {(p.pod.ref.namespace, p.pod.ref.name) for p in resp.pods}


def kubelet_api(port: int, path: str, token: str) -> int:
    """Call the facade's kubelet API with a bearer token; return the HTTP status."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    req = urllib.request.Request(f"https://127.0.0.1:{port}{path}",
                                 headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


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
