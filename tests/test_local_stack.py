"""The local environment as `make up` starts it (``Environment``, IAAS=memory), with no manual
step: each vmlet node advertises an address of its own, the environment approves the facade's
kubelet-serving certificate (and nothing it should not), and the apiserver's node proxy answers
for every node, as does each node's own address dialed directly, as metrics-server dials it.
`stop` (``make down``) leaves no namespace or route behind."""

from __future__ import annotations

import base64
import ipaddress
import json
import socket
import ssl
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from vmlet_localenv.environment import Environment
from vmlet_localenv.netns import Netns
from vmlet_localenv.services import FACADE_USER
from vmlet_localenv.stack import KUBELET_PORT, eventually

pytestmark = pytest.mark.controlplane


@pytest.fixture(scope="module")
def environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Environment]:
    env = Environment(directory=tmp_path_factory.mktemp("localenv"), iaas="memory").start()
    try:
        yield env
    finally:
        env.stop()


def kubectl_json(env: Environment, *args: str) -> Any:
    assert env.control_plane is not None
    return json.loads(env.control_plane.kubectl(*args, "-o", "json").stdout)


def node_addresses(env: Environment) -> dict[str, str]:
    nodes = kubectl_json(env, "get", "nodes", "-l", "vmlet.io/provider=memory")["items"]
    return {n["metadata"]["name"]: next(a["address"] for a in n["status"]["addresses"]
                                        if a["type"] == "InternalIP") for n in nodes}


def pooled(env: Environment) -> dict[str, str]:
    """The nodes' addresses once both advertise one of the pool's."""
    assert env.kubelet_host is not None and env.kubelet_host.pool is not None
    pool = ipaddress.ip_network(env.kubelet_host.pool)
    addresses = node_addresses(env)
    if len(addresses) == 2 and all(ipaddress.ip_address(ip) in pool
                                   for ip in addresses.values()):
        return addresses
    return {}


def raw(env: Environment, path: str) -> Any:
    assert env.control_plane is not None
    return json.loads(env.control_plane.kubectl("get", "--raw", path).stdout)


def test_each_node_advertises_an_address_of_its_own(environment: Environment) -> None:
    addresses = eventually(lambda: pooled(environment), what="both nodes on pool addresses")
    assert len(set(addresses.values())) == 2, addresses
    assert environment.kubelet_host is not None
    assert environment.kubelet_host.ip not in addresses.values()


def test_the_environment_approves_the_facades_serving_certificate(
        environment: Environment) -> None:
    addresses = eventually(lambda: pooled(environment), what="both nodes on pool addresses")
    assert environment.control_plane is not None
    context = ssl.create_default_context(cafile=str(environment.control_plane.pki.ca.cert))

    def serving(ip: str) -> bool:
        with socket.create_connection((ip, KUBELET_PORT), timeout=3) as conn, \
                context.wrap_socket(conn, server_hostname=ip):
            return True

    for ip in addresses.values():  # one certificate, valid at every node's address
        eventually(lambda ip=ip: serving(ip), timeout=90,
                   what=f"the kubelet API serving at {ip} with an approved certificate")
    approved = [c for c in kubectl_json(environment, "get", "csr")["items"]
                if any(cond["type"] == "Approved" and cond.get("reason") ==
                       "VmletLocalEnvironment" for cond in c["status"].get("conditions", []))]
    assert approved and all(c["spec"]["username"] == FACADE_USER for c in approved)
    assert environment.approver is not None
    assert {c["metadata"]["name"] for c in approved} <= set(environment.approver.approved)


def test_the_node_proxy_answers_for_every_node(environment: Environment) -> None:
    addresses = eventually(lambda: pooled(environment), what="both nodes on pool addresses")
    for name in addresses:
        summary = eventually(lambda n=name: raw(
            environment, f"/api/v1/nodes/{n}/proxy/stats/summary"), timeout=90,
            what=f"stats/summary of {name} through the apiserver")
        assert summary["node"]["nodeName"] == name
        pods = raw(environment, f"/api/v1/nodes/{name}/proxy/pods")
        assert pods["kind"] == "PodList"
        assert environment.control_plane is not None
        metrics = environment.control_plane.kubectl(
            "get", "--raw", f"/api/v1/nodes/{name}/proxy/metrics/resource").stdout
        assert "node_cpu_usage_seconds_total" in metrics


def test_each_address_dialed_directly_answers_for_its_node(environment: Environment) -> None:
    addresses = eventually(lambda: pooled(environment), what="both nodes on pool addresses")
    cp = environment.control_plane
    assert cp is not None
    context = cp.ssl_context()  # the admin's client certificate, checking the cluster CA
    for name, ip in addresses.items():
        def summary(ip: str = ip) -> Any:
            with urllib.request.urlopen(f"https://{ip}:{KUBELET_PORT}/stats/summary",
                                        context=context, timeout=5) as resp:
                return json.loads(resp.read())

        assert eventually(summary, timeout=90, what=f"{ip} answering")["node"]["nodeName"] \
            == name


def _request(cn: str, ips: tuple[str, ...]) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    request = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([
                   x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
                   x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
               .add_extension(x509.SubjectAlternativeName(
                   [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]), critical=False)
               .sign(key, hashes.SHA256()))
    return base64.b64encode(request.public_bytes(serialization.Encoding.PEM)).decode()


def test_a_request_for_a_foreign_address_stays_pending(environment: Environment) -> None:
    addresses = eventually(lambda: pooled(environment), what="both nodes on pool addresses")
    cp = environment.control_plane
    assert cp is not None and environment.approver is not None
    node = sorted(addresses)[0]
    # Made by the facade's own identity, for its node, but naming the apiserver's address too.
    hostile = {"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
               "metadata": {"name": "vmlet-hostile-serving"},
               "spec": {"request": _request(f"system:node:{node}",
                                            (addresses[node], "127.0.0.1")),
                        "signerName": "kubernetes.io/kubelet-serving",
                        "usages": ["digital signature", "server auth"]}}
    cp.kubectl("apply", "-f", "-", input=json.dumps(hostile),
               kubeconfig=cp.dir / f"{FACADE_USER}.kubeconfig")
    reason = eventually(lambda: environment.approver.refused.get(
        "vmlet-hostile-serving"), what="the hostile CSR judged")
    assert "127.0.0.1" in reason and "advertised by no node" in reason
    csr = kubectl_json(environment, "get", "csr", "vmlet-hostile-serving")
    assert not csr["status"].get("conditions")
    assert "vmlet-hostile-serving" not in environment.approver.approved


def test_addresses_stay_across_a_facade_restart(environment: Environment) -> None:
    before = eventually(lambda: pooled(environment), what="both nodes on pool addresses")
    assert environment.facade is not None
    environment.facade.stop()
    environment.facade.start()
    name = sorted(before)[0]
    summary = eventually(lambda: raw(environment, f"/api/v1/nodes/{name}/proxy/stats/summary"),
                         timeout=90, what="the restarted facade's kubelet API")
    assert summary["node"]["nodeName"] == name
    assert node_addresses(environment) == before


def test_stopping_leaves_no_namespace_or_route(environment: Environment) -> None:
    host = environment.kubelet_host
    assert host is not None and host.pool is not None
    environment.stop()
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                check=True).stdout
    assert host.name not in namespaces
    routes = subprocess.run(["ip", "route"], capture_output=True, text=True, check=True).stdout
    assert host.pool not in routes and host.link not in routes
    assert not (environment.directory / "kubelet-netns.json").exists()


def test_a_killed_runs_namespace_is_removed_by_the_next(tmp_path: Path) -> None:
    left = Netns.make("vmlet-kubelet", pool_prefix=28)
    record = tmp_path / "kubelet-netns.json"
    left.record(record)
    Netns.remove_recorded(record)
    assert left.name not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                           text=True, check=True).stdout
    assert str(left.pool) not in subprocess.run(["ip", "route"], capture_output=True,
                                                text=True, check=True).stdout
    assert not record.exists()
    Netns.remove_recorded(record)  # nothing recorded: nothing to do
