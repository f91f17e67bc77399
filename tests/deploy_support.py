"""What the deployment tests share: the RBAC attributes of a request (as the apiserver's
RequestInfo makes them), the manifests of k8s/ as kustomize builds them, and the facade and
memory provider run as processes with the ServiceAccount's token."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml

from vmlet.provider.v1 import pod_lifecycle_service_pb2 as lifecycle
from vmlet.provider.v1 import pod_lifecycle_service_pb2_grpc as lifecycle_grpc
from vmlet.provider.v1 import virtual_machine_service_pb2 as vm_pb
from vmlet.provider.v1 import virtual_machine_service_pb2_grpc as vm_grpc
from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.processes import Process, free_port, wait_for
from vmlet_localenv.providerpki import default_pki
from vmlet_localenv.services import REPO, ProviderProcess
from vmlet_localenv.stack import eventually

NS = "vmlet-system"
SA = "vmlet-facade"
PROVIDER = "deploy"
OVERLAYS = ("memory", "vsphere", "openstack")
Obj = dict[str, Any]
Triple = tuple[str, str, str]  # (API group, resource[/subresource], verb)


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


def kustomize(target: str) -> list[Obj]:
    out = subprocess.run(["kubectl", "kustomize", str(REPO / target)], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def facade_role() -> Obj:
    docs = yaml.safe_load_all((REPO / "k8s/base/facade-rbac.yaml").read_text())
    return next(d for d in docs if d and d["kind"] == "ClusterRole")


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
        "--shard-nodes",  # as the Deployment runs it (VMLET_SHARD_NODES)
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
