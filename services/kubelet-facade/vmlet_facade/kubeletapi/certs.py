"""The listener's serving certificate: from files, or from a CertificateSigningRequest.

From files (--kubelet-cert/--kubelet-key) the pair is read at start and again whenever the files
change, so a rotating tool (cert-manager, a kubelet-style rotator) can replace them in place.

Otherwise the facade asks the cluster, as a kubelet with serverTLSBootstrap does: a CSR with
signer kubernetes.io/kubelet-serving, subject ``system:node:<node>`` in group
``system:nodes``, and every node's name and address as SANs (the apiserver dials a node by
address and checks the certificate against --kubelet-certificate-authority; with an address
pool, one certificate covers every node's own address). The controller-manager's approver does
not approve kubelet-serving CSRs and the facade may not approve its own (that right would let it
approve any node's serving certificate), so an operator or an approver approves it: ``kubectl
certificate approve <name>`` (the local environment runs one, vmlet_localenv.csrapprover). The
certificate is renewed with a new CSR at 80% of its life, or within seconds of a node
advertising an address it does not cover (a new node took a new pool address). Without
``cert_dir`` the key lives in memory only and a restarted facade asks again.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import ipaddress
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from vmlet_facade.kube import ApiError, KubeClient
from vmlet_facade.kubeletapi.tls import ServerTls

__all__ = ["CsrCertificates", "FileCertificates", "ServingNames", "covers"]

log = logging.getLogger(__name__)

SIGNER = "kubernetes.io/kubelet-serving"
_CSRS = "/apis/certificates.k8s.io/v1/certificatesigningrequests"


@dataclass(frozen=True)
class ServingNames:
    """What the serving certificate must be valid for."""

    node: str  # the subject: system:node:<node>
    dns_names: tuple[str, ...]
    ips: tuple[str, ...]


def covers(cert: x509.Certificate, names: ServingNames) -> bool:
    """Whether ``cert`` names every address and DNS name in ``names``."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    dns = set(san.get_values_for_type(x509.DNSName))
    return set(names.ips) <= ips and set(names.dns_names) <= dns


class FileCertificates:
    """A certificate and key from files, reloaded when they change."""

    def __init__(self, cert_file: Path, key_file: Path, tls: ServerTls, *,
                 interval: float = 30.0) -> None:
        self._cert, self._key = cert_file, key_file
        self._tls = tls
        self._interval = interval

    def _stamp(self) -> tuple[float, float]:
        return self._cert.stat().st_mtime, self._key.stat().st_mtime

    def load(self) -> None:
        self._tls.install(self._cert.read_bytes(), self._key.read_bytes())
        log.info("serving certificate loaded from %s", self._cert)

    async def run(self) -> None:
        self.load()
        seen = self._stamp()
        while True:
            await asyncio.sleep(self._interval)
            try:
                stamp = self._stamp()
                if stamp != seen:
                    self.load()
                    seen = stamp
            except (OSError, ValueError) as err:
                log.warning("serving certificate not reloaded: %s", err)


class CsrCertificates:
    """A serving certificate issued through a kubelet-serving CSR, and renewed."""

    def __init__(self, client: KubeClient, tls: ServerTls,
                 names: Callable[[], ServingNames | None], *, cert_dir: Path | None = None,
                 poll: float = 2.0, renew_at: float = 0.8, expiration_seconds: int | None = None,
                 ) -> None:
        self._client = client
        self._tls = tls
        self._names = names
        self._dir = cert_dir
        self._poll = poll
        self._renew_at = renew_at
        self._expiration = expiration_seconds
        self.current: x509.Certificate | None = None
        self.csr_name = ""

    # -- state on disk -----------------------------------------------------------------------

    def _paths(self) -> tuple[Path, Path] | None:
        if self._dir is None:
            return None
        return self._dir / "kubelet-server.crt", self._dir / "kubelet-server.key"

    def _load_saved(self) -> None:
        paths = self._paths()
        if paths is None or not all(p.exists() for p in paths):
            return
        try:
            cert_pem, key_pem = paths[0].read_bytes(), paths[1].read_bytes()
            cert = x509.load_pem_x509_certificate(cert_pem)
            if cert.not_valid_after_utc > dt.datetime.now(dt.UTC):
                self._install(cert_pem, key_pem)
                log.info("serving certificate reused from %s", paths[0])
        except (OSError, ValueError) as err:
            log.warning("saved serving certificate not usable: %s", err)

    def _save(self, cert_pem: bytes, key_pem: bytes) -> None:
        paths = self._paths()
        if paths is None:
            return
        paths[0].parent.mkdir(parents=True, exist_ok=True)
        for path, data, mode in ((paths[1], key_pem, 0o600), (paths[0], cert_pem, 0o644)):
            tmp = path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            tmp.replace(path)

    def _install(self, cert_pem: bytes, key_pem: bytes) -> None:
        self._tls.install(cert_pem, key_pem)
        self.current = x509.load_pem_x509_certificate(cert_pem)

    # -- asking for one ----------------------------------------------------------------------

    def _due(self, names: ServingNames) -> bool:
        cert = self.current
        if cert is None or not covers(cert, names):
            return True
        start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
        return dt.datetime.now(dt.UTC) >= start + (end - start) * self._renew_at

    async def run(self) -> None:
        self._load_saved()
        attempt = 0
        while True:
            names = self._names()
            if names is None or not self._due(names):
                await asyncio.sleep(1.0 if names is None else 5.0)
                continue
            try:
                await self.issue(names)
                attempt = 0
            except (ApiError, aiohttp.ClientError, OSError, ValueError, TimeoutError) as err:
                attempt += 1
                wait = min(300.0, 5.0 * 2 ** min(attempt, 6))
                log.warning("serving certificate not issued (%s); again in %.0fs", err, wait)
                await asyncio.sleep(wait)

    async def issue(self, names: ServingNames) -> None:
        """Send a CSR for ``names``, wait until it is approved and signed, then serve it."""
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in names.dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in names.ips]
        request = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{names.node}"),
            ]))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(key, hashes.SHA256())
        )
        spec: dict[str, object] = {
            "request": base64.b64encode(request.public_bytes(serialization.Encoding.PEM))
            .decode(),
            "signerName": SIGNER,
            "usages": ["digital signature", "server auth"],
        }
        if self._expiration:
            spec["expirationSeconds"] = self._expiration
        created = await self._client.create(_CSRS, {
            "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
            "metadata": {"generateName": "vmlet-kubelet-serving-",
                         "labels": {"app.kubernetes.io/name": "vmlet",
                                    "app.kubernetes.io/component": "facade"}},
            "spec": spec,
        })
        name = created["metadata"]["name"]
        self.csr_name = name
        log.info("kubelet serving certificate requested for %s (%s): approve it with "
                 "`kubectl certificate approve %s`", ", ".join(names.ips + names.dns_names),
                 SIGNER, name)
        cert_pem = await self._wait_issued(name)
        key_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        self._install(cert_pem, key_pem)
        self._save(cert_pem, key_pem)
        assert self.current is not None
        log.info("kubelet serving certificate %s issued, valid until %s", name,
                 self.current.not_valid_after_utc.isoformat())

    async def _wait_issued(self, name: str) -> bytes:
        waited = 0.0
        while True:
            csr = await self._client.get(f"{_CSRS}/{name}")
            status = csr.get("status") or {}
            for condition in status.get("conditions") or []:
                if condition.get("type") in ("Denied", "Failed") \
                        and condition.get("status", "True") == "True":
                    raise ValueError(f"CSR {name} {condition['type'].lower()}: "
                                     f"{condition.get('message', '')}")
            if status.get("certificate"):
                return base64.b64decode(status["certificate"])
            await asyncio.sleep(self._poll)
            waited += self._poll
            if waited % 60 < self._poll:
                log.info("CSR %s still waits for approval", name)
