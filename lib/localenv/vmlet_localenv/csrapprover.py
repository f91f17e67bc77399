"""The local environment's approver of the facade's kubelet-serving certificates.

The facade asks for its kubelet API's serving certificate with a CertificateSigningRequest
(signer ``kubernetes.io/kubelet-serving``), which the controller-manager does not approve and
the facade may not approve itself. A careful operator approves one only when it is what a
kubelet of those nodes may hold; `decide` is that judgement, as a pure function of the CSR and
the Nodes, and `CsrApprover` applies it in a thread with the admin's credentials:

- signer ``kubernetes.io/kubelet-serving``, requested (spec.username, set by the apiserver) by
  the facade's identity;
- subject exactly ``CN=system:node:<name>, O=system:nodes``, for a node the facade registered
  (a Node carrying its labels), and a valid signature;
- every IP SAN an address such a node advertises, every DNS SAN such a node's name, no other
  kind of SAN;
- usages exactly a kubelet server's: digital signature and server auth (and key encipherment,
  which RSA keys carry).

Anything else stays pending and is logged once, with the reason.
"""

from __future__ import annotations

import base64
import json
import logging
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from vmlet_api.names import PROVIDER_LABEL
from vmlet_localenv.services import FACADE_USER

__all__ = ["SIGNER", "CsrApprover", "Verdict", "decide", "facade_nodes", "pending"]

log = logging.getLogger(__name__)

SIGNER = "kubernetes.io/kubelet-serving"
_CSRS = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
_USAGES = ({"digital signature", "server auth"},
           {"digital signature", "key encipherment", "server auth"})
_IP_TYPES = ("InternalIP", "ExternalIP")

Obj = dict[str, Any]


@dataclass(frozen=True)
class Verdict:
    """Whether to approve a CSR, and why (or why not)."""

    approve: bool
    reason: str


def facade_nodes(nodes: Iterable[Obj]) -> list[Obj]:
    """The Nodes the facade registered: those carrying its labels."""
    return [n for n in nodes
            if (n.get("metadata", {}).get("labels") or {}).get("type") == "virtual-kubelet"
            and (n.get("metadata", {}).get("labels") or {}).get(PROVIDER_LABEL)]


def pending(csr: Obj) -> bool:
    """Whether nobody approved, denied or failed ``csr`` yet."""
    return not (csr.get("status") or {}).get("conditions")


def _refuse(reason: str) -> Verdict:
    return Verdict(False, reason)


def decide(csr: Obj, nodes: Sequence[Obj], *, requester: str = FACADE_USER) -> Verdict:
    """Whether ``csr`` is a serving certificate the facade (``requester``) may hold for the
    facade's nodes among ``nodes`` (every Node of the cluster)."""
    spec = csr.get("spec") or {}
    if spec.get("signerName") != SIGNER:
        return _refuse(f"signer {spec.get('signerName')!r} is not {SIGNER}")
    if spec.get("username") != requester:
        return _refuse(f"requested by {spec.get('username')!r}, not the facade ({requester})")
    usages = spec.get("usages") or []
    if len(usages) != len(set(usages)) or set(usages) not in _USAGES:
        return _refuse(f"usages {usages} are not a kubelet server's")
    try:
        request = x509.load_pem_x509_csr(base64.b64decode(spec.get("request", ""),
                                                          validate=True))
    except ValueError as err:
        return _refuse(f"the request is no PEM certificate request: {err}")
    if not request.is_signature_valid:
        return _refuse("the request's signature is not valid")
    subject = [(a.oid, a.value) for a in request.subject]
    organizations = [v for oid, v in subject if oid == NameOID.ORGANIZATION_NAME]
    names = [v for oid, v in subject if oid == NameOID.COMMON_NAME]
    if len(subject) != 2 or organizations != ["system:nodes"] or len(names) != 1 \
            or not str(names[0]).startswith("system:node:"):
        return _refuse(f"subject {request.subject.rfc4514_string()!r} is not exactly "
                       "CN=system:node:<name>, O=system:nodes")
    node = str(names[0]).removeprefix("system:node:")
    ours = {n["metadata"]["name"]: n for n in facade_nodes(nodes)}
    if node not in ours:
        return _refuse(f"node {node!r} is not one the facade registered")
    try:
        san = request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return _refuse("the request names no address (no subjectAltName)")
    ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    dns = list(san.get_values_for_type(x509.DNSName))
    if len(ips) + len(dns) != len(list(san)):
        return _refuse("the request names something other than IP addresses and DNS names")
    if not ips:
        return _refuse("the request names no IP address")
    advertised = {a.get("address") for n in ours.values()
                  for a in (n.get("status") or {}).get("addresses") or []
                  if a.get("type") in _IP_TYPES}
    foreign_ips = sorted(set(ips) - advertised)
    if foreign_ips:
        return _refuse(f"addresses {', '.join(foreign_ips)} are advertised by no node of the "
                       "facade")
    foreign_dns = sorted(set(dns) - set(ours))
    if foreign_dns:
        return _refuse(f"DNS names {', '.join(foreign_dns)} are no node of the facade")
    return Verdict(True, f"serving certificate of facade node {node} for {', '.join(ips)}")


class CsrApprover:
    """Approves the facade's kubelet-serving CSRs that `decide` accepts, polling every
    ``interval`` seconds as the admin (``server`` with the admin's ``context``)."""

    def __init__(self, server: str, context: ssl.SSLContext, *, requester: str = FACADE_USER,
                 interval: float = 1.0) -> None:
        self._server = server
        self._context = context
        self._requester = requester
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.approved: list[str] = []
        self.refused: dict[str, str] = {}  # CSR name -> why it stays pending

    def _call(self, method: str, path: str, body: Obj | None = None) -> Obj:
        request = urllib.request.Request(
            self._server + path, method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": "application/json", "Accept": "application/json"})
        with urllib.request.urlopen(request, context=self._context, timeout=10) as resp:
            return dict(json.loads(resp.read()))

    def sweep(self) -> None:
        """Judge every pending CSR once; approve the good ones."""
        csrs = [c for c in self._call("GET", _CSRS).get("items") or [] if pending(c)]
        if not csrs:
            return
        nodes = self._call("GET", "/api/v1/nodes").get("items") or []
        for csr in csrs:
            name = csr["metadata"]["name"]
            verdict = decide(csr, nodes, requester=self._requester)
            if not verdict.approve:
                if self.refused.get(name) != verdict.reason:
                    log.warning("CSR %s stays pending: %s", name, verdict.reason)
                self.refused[name] = verdict.reason
                continue
            conditions = list((csr.get("status") or {}).get("conditions") or [])
            conditions.append({"type": "Approved", "status": "True",
                               "reason": "VmletLocalEnvironment",
                               "message": f"approved by the local environment: "
                                          f"{verdict.reason}"})
            csr["status"] = {**(csr.get("status") or {}), "conditions": conditions}
            try:
                self._call("PUT", f"{_CSRS}/{name}/approval", csr)
            except urllib.error.HTTPError as err:
                if err.code != 409:  # changed meanwhile: judged again next time
                    raise
                continue
            self.refused.pop(name, None)
            self.approved.append(name)
            log.info("CSR %s approved: %s", name, verdict.reason)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sweep()
            except (OSError, ValueError) as err:  # the apiserver away for a moment
                log.debug("CSR approver: %s", err)
            self._stop.wait(self._interval)

    def start(self) -> CsrApprover:
        self._thread = threading.Thread(target=self._run, name="csr-approver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
