"""A kubeconfig whose user is an exec credential plugin (client.authentication.k8s.io/v1), as
managed clusters issue, on the real control plane: the facade's KubeConfig and KubeClient, and
`kubectl vm`, authenticate with what the plugin prints — a ServiceAccount token (refreshed as it
expires, re-loaded after a 401) or a client certificate of the cluster's CA.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from vmlet_facade.kube import KubeClient, KubeConfig
from vmlet_facade.kube import config as kube_config
from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.services import REPO

pytestmark = pytest.mark.controlplane

BIN = Path(sys.executable).parent
CRDS = ["virtualmachines", "virtualmachinebackups", "virtualmachinerestores",
        "virtualmachinemigrations"]

# Counts its runs; prints the Nth of the tokens in the files given (the last repeated), as an
# ExecCredential expiring in EXPIRES seconds.
TOKEN_PLUGIN = """\
import datetime, json, os, pathlib, sys
runs = pathlib.Path(os.environ["RUNS"])
n = int(runs.read_text()) + 1 if runs.exists() else 1
runs.write_text(str(n))
token = pathlib.Path(sys.argv[min(n, len(sys.argv) - 1)]).read_text().strip()
at = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(
    seconds=int(os.environ["EXPIRES"]))
print(json.dumps({"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
                  "status": {"token": token,
                             "expirationTimestamp": at.strftime("%Y-%m-%dT%H:%M:%SZ")}}))
"""

CERT_PLUGIN = """\
import json, pathlib, sys
print(json.dumps({"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
                  "status": {"clientCertificateData": pathlib.Path(sys.argv[1]).read_text(),
                             "clientKeyData": pathlib.Path(sys.argv[2]).read_text()}}))
"""


@pytest.fixture(scope="module")
def account(control_plane: ControlPlane) -> Iterator[tuple[str, str]]:
    """A namespace and a ServiceAccount in it, cluster-admin, with a token of an hour."""
    cp = control_plane
    cp.kubectl("apply", "-f", str(REPO / "k8s/base/crds"))
    cp.kubectl("wait", "--for=condition=Established", "--timeout=60s",
               *[f"crd/{name}.vmlet.io" for name in CRDS])
    ns = f"kexec-{uuid.uuid4().hex[:6]}"
    cp.kubectl("create", "namespace", ns)
    cp.kubectl("create", "serviceaccount", "plugged", "-n", ns)
    cp.kubectl("create", "clusterrolebinding", f"{ns}-plugged", "--clusterrole=cluster-admin",
               f"--serviceaccount={ns}:plugged")
    token = cp.kubectl("create", "token", "plugged", "-n", ns, "--duration=1h").stdout.strip()
    try:
        yield ns, token
    finally:
        cp.kubectl("delete", "clusterrolebinding", f"{ns}-plugged", check=False)
        cp.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def exec_kubeconfig(cp: ControlPlane, path: Path, args: list[str], env: dict[str, str],
                    namespace: str) -> Path:
    """The admin kubeconfig's cluster, with a user that is only an exec plugin."""
    admin = yaml.safe_load(Path(cp.kubeconfig).read_text())
    doc = {"apiVersion": "v1", "kind": "Config", "current-context": "plugged",
           "clusters": admin["clusters"],
           "users": [{"name": "plugged", "user": {"exec": {
               "apiVersion": "client.authentication.k8s.io/v1", "command": sys.executable,
               "args": args, "env": [{"name": k, "value": v} for k, v in env.items()],
               "interactiveMode": "Never"}}}],
           "contexts": [{"name": "plugged", "context": {
               "cluster": admin["clusters"][0]["name"], "user": "plugged",
               "namespace": namespace}}]}
    path.write_text(yaml.safe_dump(doc))
    return path


async def whoami_and_pods(config: KubeConfig, ns: str) -> tuple[str, list[str]]:
    """The user the apiserver sees (a SelfSubjectReview) and the pods of ``ns``."""
    client = KubeClient(config)
    try:
        review = await client.create("/apis/authentication.k8s.io/v1/selfsubjectreviews", {
            "apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
        pods = await client.get(f"/api/v1/namespaces/{ns}/pods")
    finally:
        await client.close()
    return (review["status"]["userInfo"]["username"],
            [p["metadata"]["name"] for p in pods["items"]])


def runs(path: Path) -> int:
    return int(path.read_text()) if path.exists() else 0


def a_pod(cp: ControlPlane, ns: str, name: str) -> None:
    pod: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod",
                           "metadata": {"name": name, "namespace": ns},
                           "spec": {"containers": [{"name": "c", "image": "x"}]}}
    cp.kubectl("apply", "-f", "-", input=json.dumps(pod))


def test_facade_client_with_an_exec_plugin_token(control_plane: ControlPlane,
                                                 account: tuple[str, str], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    cp, (ns, token) = control_plane, account
    a_pod(cp, ns, "seen")
    (tmp_path / "plugin.py").write_text(TOKEN_PLUGIN)
    (tmp_path / "good").write_text(token)
    (tmp_path / "bogus").write_text("not-a-token")
    identity = f"system:serviceaccount:{ns}:plugged"

    # Expiring within the loader's 5 minutes of skew: renewed in the background while the
    # current token still serves.
    monkeypatch.setattr(kube_config, "_RENEW_INTERVAL", 0.0)
    counter = tmp_path / "runs-expiring"
    config = KubeConfig.from_file(exec_kubeconfig(
        cp, tmp_path / "expiring.kubeconfig", [str(tmp_path / "plugin.py"), str(tmp_path / "good")],
        {"RUNS": str(counter), "EXPIRES": "60"}, ns))
    assert config.server == cp.server and runs(counter) == 1
    user, pods = asyncio.run(whoami_and_pods(config, ns))
    assert (user, pods) == (identity, ["seen"])
    deadline = time.monotonic() + 30
    while runs(counter) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert runs(counter) >= 2, "the expiring token is renewed before it expires"
    assert asyncio.run(whoami_and_pods(config, ns)) == (identity, ["seen"])

    # A token the apiserver refuses: one 401, one re-load, the request again.
    counter = tmp_path / "runs-refused"
    config = KubeConfig.from_file(exec_kubeconfig(
        cp, tmp_path / "refused.kubeconfig",
        [str(tmp_path / "plugin.py"), str(tmp_path / "bogus"), str(tmp_path / "good")],
        {"RUNS": str(counter), "EXPIRES": "3600"}, ns))
    assert config.authorization() == "Bearer not-a-token"
    user, pods = asyncio.run(whoami_and_pods(config, ns))
    assert (user, pods) == (identity, ["seen"])
    assert runs(counter) == 2, "one re-load after the 401, then the token is kept"


def test_facade_client_with_an_exec_plugin_client_certificate(
        control_plane: ControlPlane, account: tuple[str, str], tmp_path: Path) -> None:
    cp, (ns, _) = control_plane, account
    a_pod(cp, ns, "seen")
    user_kc = yaml.safe_load(cp.user_kubeconfig("plugged-cert", groups=("system:masters",))
                             .read_text())["users"][0]["user"]
    (tmp_path / "cert.py").write_text(CERT_PLUGIN)
    config = KubeConfig.from_file(exec_kubeconfig(
        cp, tmp_path / "cert.kubeconfig",
        [str(tmp_path / "cert.py"), user_kc["client-certificate"], user_kc["client-key"]], {},
        ns))
    assert config.cert_file and config.key_file and config.authorization() is None
    user, pods = asyncio.run(whoami_and_pods(config, ns))
    assert (user, pods) == ("plugged-cert", ["seen"])


def test_kubectl_vm_with_an_exec_plugin(control_plane: ControlPlane, account: tuple[str, str],
                                        tmp_path: Path) -> None:
    cp, (ns, token) = control_plane, account
    (tmp_path / "plugin.py").write_text(TOKEN_PLUGIN)
    (tmp_path / "good").write_text(token)
    counter = tmp_path / "runs"
    kubeconfig = exec_kubeconfig(cp, tmp_path / "kubeconfig",
                                 [str(tmp_path / "plugin.py"), str(tmp_path / "good")],
                                 {"RUNS": str(counter), "EXPIRES": "3600"}, ns)
    vm = {"apiVersion": "vmlet.io/v1alpha1", "kind": "VirtualMachine",
          "metadata": {"name": "plugged", "namespace": ns},
          "spec": {"replicas": 1, "provider": "none", "image": "debian-12", "cpu": 1,
                   "memory": "1Gi"}}
    cp.kubectl("apply", "-f", "-", input=json.dumps(vm))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "KUBECONFIG": str(kubeconfig)}

    def kubectl_vm(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "kubectl-vm"), *args], env=env, capture_output=True,
                              text=True, timeout=120, check=False)

    done = kubectl_vm("stop", "plugged")  # the namespace is the context's
    assert done.returncode == 0, done.stderr
    assert done.stdout == "virtualmachine.vmlet.io/plugged stopping (spec.replicas=0)\n"
    replicas = cp.kubectl("get", "virtualmachines.vmlet.io", "plugged", "-n", ns, "-o",
                          "jsonpath={.spec.replicas}").stdout
    assert replicas == "0"
    assert runs(counter) >= 1
    done = kubectl_vm("status", "plugged")
    assert done.returncode == 0, done.stderr
    assert f"Namespace:   {ns}" in done.stdout
    missing = kubectl_vm("status", "nope")
    assert missing.returncode == 1
    assert missing.stderr == f'error: VirtualMachine "nope" not found in namespace "{ns}"\n'

    # A plugin that fails: a one-line error, exit 1, no traceback.
    broken = exec_kubeconfig(cp, tmp_path / "broken", ["-c", "import sys; sys.exit('denied')"],
                             {}, ns)
    done = kubectl_vm("status", "plugged", f"--kubeconfig={broken}")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1 and "denied" in done.stderr
