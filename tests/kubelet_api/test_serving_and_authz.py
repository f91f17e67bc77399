"""The facade's serving certificate (from an approved CSR) and who may call the kubelet port,
straight at it: client certificates, tokens, RBAC."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import socket
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.kubelet_api.support import PROVIDER, server_context
from vmlet_localenv.controlplane import ControlPlane
from vmlet_localenv.netns import Netns
from vmlet_localenv.stack import KUBELET_PORT, Stack, eventually

pytestmark = pytest.mark.controlplane


def test_serving_certificate_comes_from_an_approved_csr(stack: Stack, control_plane: ControlPlane,
                                                         test_host: Netns) -> None:
    with socket.create_connection((test_host.ip, KUBELET_PORT), timeout=5) as raw, \
            server_context(control_plane).wrap_socket(raw, server_hostname=test_host.ip) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    cert = x509.load_der_x509_certificate(der)
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value \
        == "system:nodes"
    assert str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value) \
        .startswith("system:node:")
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert test_host.ip in {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    assert {f"{PROVIDER}-0", f"{PROVIDER}-1"} <= set(san.get_values_for_type(x509.DNSName))
    for node in stack.nodes(PROVIDER):
        assert {"type": "InternalIP", "address": test_host.ip} in node["status"]["addresses"]
        assert node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"] == KUBELET_PORT


def _issue_client_cert(directory: Path, name: str, ca: tuple[Any, Any] | None) -> tuple[Path, Path]:
    """A client certificate for ``name`` signed by ``ca`` (a fresh CA of its own when None)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    if ca is None:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "someone-elses-ca")])
    else:
        ca_key, ca_name = ca
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def _get(cp: ControlPlane, host: Netns, path: str, *, token: str = "",
         cert: tuple[Path, Path] | None = None) -> tuple[int, str]:
    ctx = server_context(cp)
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    conn = http.client.HTTPSConnection(host.ip, KUBELET_PORT, context=ctx, timeout=10)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def test_authn_and_authz_matrix(stack: Stack, control_plane: ControlPlane, test_host: Netns,
                                ns: str, vm: dict[str, Any], tmp_path: Path) -> None:
    cp = control_plane
    # Nobody: 401.
    assert _get(cp, test_host, "/pods")[0] == 401
    assert _get(cp, test_host, "/healthz")[0] == 401
    # A client certificate from another CA: 401, not a failed handshake.
    foreign = _issue_client_cert(tmp_path, "mallory", None)
    assert _get(cp, test_host, "/pods", cert=foreign)[0] == 401
    # The apiserver's own kubelet-client certificate: in.
    apiserver = (cp.pki.kubelet_client.cert, cp.pki.kubelet_client.key)
    status, body = _get(cp, test_host, "/pods", cert=apiserver)
    assert status == 200 and json.loads(body)["kind"] == "PodList"
    # A ServiceAccount token without rights: 403.
    cp.kubectl("create", "serviceaccount", "nobody", "-n", ns)
    nobody = cp.kubectl("create", "token", "nobody", "-n", ns).stdout.strip()
    status, body = _get(cp, test_host, "/pods", token=nobody)
    assert status == 403 and f"system:serviceaccount:{ns}:nobody" in body
    # A garbage token: 401.
    assert _get(cp, test_host, "/pods", token="not-a-token")[0] == 401
    # A token with nodes/proxy rights: 200 on proxy paths, still 403 on nodes/stats.
    cp.kubectl("create", "serviceaccount", "viewer", "-n", ns)
    role = f"kapi-proxy-{ns}"
    cp.kubectl("create", "clusterrole", role, "--verb=get", "--resource=nodes/proxy")
    cp.kubectl("create", "clusterrolebinding", role, f"--clusterrole={role}",
               f"--serviceaccount={ns}:viewer")
    viewer = cp.kubectl("create", "token", "viewer", "-n", ns).stdout.strip()

    def allowed() -> tuple[int, str] | None:
        answer = _get(cp, test_host, "/pods", token=viewer)
        return answer if answer[0] == 200 else None

    got = eventually(allowed, timeout=30, what="RBAC in effect")
    assert got is not None
    status, body = got
    assert (ns, "vm") in {(p["metadata"]["namespace"], p["metadata"]["name"])
                          for p in json.loads(body)["items"]}
    status, body = _get(cp, test_host, f"/containerLogs/{ns}/vm/vm", token=viewer)
    assert status == 200 and "powered on" in body
    status, body = _get(cp, test_host, "/stats/summary", token=viewer)
    assert status == 403 and "subresource(s)=[stats]" in body
    # Unknown pods and paths, once authorized.
    assert _get(cp, test_host, f"/containerLogs/{ns}/nope/vm", token=viewer)[0] == 404
    assert _get(cp, test_host, "/no/such/path", token=viewer)[0] == 404
