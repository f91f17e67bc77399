"""vmlet's deployment files, checked statically (no container engine runs here) and without a
control plane.

- Every request the facade sends is turned into its RBAC attributes (verb, API group,
  resource[/subresource]) as the apiserver's RequestInfo does; checked here against known requests.
- The providers file: its syntax, and that a running facade repoints only a changed address.
- k8s/: the base installs every CRD and the facade's role; every overlay runs under Pod Security
  "restricted" with least privilege.
- Facade and providers talk mutual TLS everywhere: every overlay and compose give each provider
  its serving pair, the client CA and the facade's identity, give the facade its client pair,
  never a plaintext flag, probe the plaintext health-only port, and issue the certificates
  themselves (k8s/base/pki.yaml, compose's `pki`).
- The Dockerfiles and docker-compose.yml are checked by hack/validate-deploy.sh (hadolint and
  the Compose Specification's JSON schema), which installs its own tools.

On the control plane: tests/test_deploy.py. The StorageClass each overlay ships:
tests/test_storageclasses.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy_support import NS, OVERLAYS, SA, Obj, facade_role, kustomize, request_attributes
from vmlet_contract import READINESS_SERVICE
from vmlet_contract.cli import SERVER_ENVIRONMENT
from vmlet_contract.settings import Options
from vmlet_facade.providerfile import follow_providers_file, parse_providers
from vmlet_localenv.providerpki import FACADE_IDENTITY
from vmlet_localenv.services import REPO
from vmlet_memory.config import OPTIONS as MEMORY_OPTIONS
from vmlet_openstack.config import OPTIONS as OPENSTACK_OPTIONS
from vmlet_vmware.config import OPTIONS as VSPHERE_OPTIONS


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


PROVIDER_OPTIONS: dict[str, Options] = {
    "memory": MEMORY_OPTIONS, "vsphere": VSPHERE_OPTIONS, "openstack": OPENSTACK_OPTIONS}


def _unread(kind: str, env: dict[str, str]) -> list[str]:
    """The vmlet variables in ``env`` that provider ``kind`` does not read (a stale name)."""
    known = set(SERVER_ENVIRONMENT) | PROVIDER_OPTIONS[kind].environment()
    return sorted(n for n in env if n.startswith(("VMLET_", "MEMORY_")) and n not in known)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_sets_only_settings_the_provider_reads(overlay: str) -> None:
    docs = kustomize(f"k8s/overlays/{overlay}")
    configmaps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    deployment = next(d for d in docs if d["kind"] == "Deployment"
                      and d["metadata"]["name"] == f"vmlet-provider-{overlay}")
    provider = deployment["spec"]["template"]["spec"]["containers"][0]
    assert _unread(overlay, _env(provider, configmaps)) == []
    assert not [a for a in provider.get("args", []) if "$(" in a], "settings come from env"


def test_compose_sets_only_settings_the_providers_read() -> None:
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    for name, kind in (("memory-provider", "memory"), ("vsphere-provider", "vsphere"),
                       ("openstack-provider", "openstack")):
        assert _unread(kind, services[name]["environment"]) == [], name


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
