"""The local environment's judgement of kubelet-serving CSRs: the facade's own for its nodes'
addresses are approved; anything else (other signers, requesters, subjects, nodes, addresses,
names, usages, forged or broken requests) stays pending, with a reason."""

from __future__ import annotations

import base64
import copy
import ipaddress
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from vmlet_localenv.csrapprover import decide, facade_nodes, pending

FACADE = "vmlet-facade"
LABELS = {"type": "virtual-kubelet", "vmlet.io/provider": "memory"}


def node(name: str, ip: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": LABELS if labels is None else labels},
            "status": {"addresses": [{"type": "InternalIP", "address": ip},
                                     {"type": "Hostname", "address": name}]}}


NODES = [node("memory-0", "198.18.4.1"), node("memory-1", "198.18.4.2"),
         node("worker", "198.18.9.9", labels={"kubernetes.io/os": "linux"})]


def csr(*, cn: str = "system:node:memory-0", orgs: tuple[str, ...] = ("system:nodes",),
        ips: tuple[str, ...] = ("198.18.4.1", "198.18.4.2"),
        dns: tuple[str, ...] = ("memory-0", "memory-1"), extra: list[x509.GeneralName] | None
        = None, usages: list[str] | None = None, signer: str = "kubernetes.io/kubelet-serving",
        username: str = FACADE) -> dict[str, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    sans += extra or []
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attrs))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    pem = builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    return {"metadata": {"name": "csr-1"},
            "spec": {"request": base64.b64encode(pem).decode(), "signerName": signer,
                     "username": username,
                     "usages": usages or ["digital signature", "server auth"]}}


def test_the_facades_own_request_is_approved() -> None:
    verdict = decide(csr(), NODES, requester=FACADE)
    assert verdict.approve, verdict.reason
    assert "memory-0" in verdict.reason and "198.18.4.1" in verdict.reason
    rsa_usages = csr(usages=["digital signature", "key encipherment", "server auth"])
    assert decide(rsa_usages, NODES, requester=FACADE).approve
    assert decide(csr(dns=(), ips=("198.18.4.2",), cn="system:node:memory-1"), NODES,
                  requester=FACADE).approve


@pytest.mark.parametrize(("request_", "reason"), [
    (csr(signer="kubernetes.io/kube-apiserver-client"), "signer"),
    (csr(signer="kubernetes.io/kube-apiserver-client-kubelet"), "signer"),
    (csr(username="alice"), "requested by 'alice'"),
    (csr(username="system:node:memory-0"), "not the facade"),
    (csr(usages=["digital signature", "server auth", "client auth"]), "usages"),
    (csr(usages=["digital signature"]), "usages"),
    (csr(usages=["digital signature", "server auth", "server auth"]), "usages"),
    (csr(cn="system:node:worker"), "not one the facade registered"),  # not vmlet's node
    (csr(cn="system:node:elsewhere"), "not one the facade registered"),
    (csr(cn="system:admin"), "subject"),
    (csr(orgs=("system:masters",)), "subject"),
    (csr(orgs=("system:nodes", "system:masters")), "subject"),
    (csr(orgs=()), "subject"),
    (csr(ips=("198.18.4.1", "127.0.0.1")), "127.0.0.1 are advertised by no node"),
    (csr(ips=("198.18.9.9",)), "198.18.9.9 are advertised by no node"),  # not vmlet's node
    (csr(ips=("10.0.0.1",)), "advertised by no node"),  # the apiserver's service address
    (csr(ips=()), "no IP address"),
    (csr(ips=(), dns=()), "no address"),
    (csr(dns=("memory-0", "kubernetes.default.svc")), "kubernetes.default.svc are no node"),
    (csr(dns=("worker",)), "are no node"),
    (csr(extra=[x509.UniformResourceIdentifier("spiffe://cluster/admin")]), "something other"),
    (csr(extra=[x509.RFC822Name("admin@example.com")]), "something other"),
])
def test_anything_else_stays_pending(request_: dict[str, Any], reason: str) -> None:
    verdict = decide(request_, NODES, requester=FACADE)
    assert not verdict.approve
    assert reason in verdict.reason


def test_broken_or_forged_requests_stay_pending() -> None:
    garbage = csr()
    garbage["spec"]["request"] = base64.b64encode(b"not a request").decode()
    assert "no PEM" in decide(garbage, NODES, requester=FACADE).reason
    not_base64 = csr()
    not_base64["spec"]["request"] = "%%%"
    assert not decide(not_base64, NODES, requester=FACADE).approve
    # A valid request whose signed part was changed after signing (its subject now names
    # another node, same length): the signature fails.
    good = csr()
    good_bytes = x509.load_pem_x509_csr(base64.b64decode(good["spec"]["request"])).public_bytes(
        serialization.Encoding.DER)
    forged_bytes = good_bytes.replace(b"system:node:memory-0", b"system:node:memory-1", 1)
    assert forged_bytes != good_bytes
    forged = copy.deepcopy(good)
    forged["spec"]["request"] = base64.b64encode(x509.load_der_x509_csr(forged_bytes)
                                                 .public_bytes(serialization.Encoding.PEM)
                                                 ).decode()
    assert "signature" in decide(forged, NODES, requester=FACADE).reason
    nameless = csr()
    nameless["spec"].pop("signerName")
    assert not decide(nameless, NODES, requester=FACADE).approve


def test_no_nodes_no_approval() -> None:
    assert not decide(csr(), [], requester=FACADE).approve
    assert not decide(csr(), [node("memory-0", "198.18.4.1", labels={})],
                      requester=FACADE).approve


def test_facade_nodes_and_pending() -> None:
    assert [n["metadata"]["name"] for n in facade_nodes(NODES)] == ["memory-0", "memory-1"]
    assert pending(csr())
    assert not pending({"status": {"conditions": [{"type": "Denied", "status": "True"}]}})
