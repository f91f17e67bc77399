"""Certificates made for one run of the local control plane.

A CA signs everything: the apiserver's serving cert, the client cert the apiserver presents to
kubelets, and client certs for the admin, the scheduler and the controller-manager. The
service-account signing key is a separate RSA pair, as in a kubeadm cluster. A second CA, the
front proxy's, signs only the client cert the apiserver presents to aggregated API servers
(metrics-server), which trust the user it names in X-Remote-* headers; kubeadm keeps it apart
the same way, so no cluster client cert can pass for the proxy.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vmlet_localenv.private import private_dir, write_private

__all__ = ["FRONT_PROXY_CLIENT", "CertPair", "CertificateAuthority", "ClusterPki"]

_VALIDITY = dt.timedelta(days=30)
FRONT_PROXY_CLIENT = "front-proxy-client"


@dataclass(frozen=True)
class CertPair:
    """A certificate and its private key, as PEM files."""

    cert: Path
    key: Path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    write_private(path, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))


class CertificateAuthority:
    """A self-signed CA that issues server and client certificates into a directory."""

    def __init__(self, directory: Path, name: str = "vmlet-local-ca") -> None:
        self.directory = private_dir(directory)
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True,
                    content_commitment=False, key_encipherment=False, data_encipherment=False,
                    key_agreement=False, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )
        self.pair = CertPair(directory / f"{name}.crt", directory / f"{name}.key")
        self.pair.cert.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))
        _write_key(self.pair.key, self._key)

    @property
    def cert_path(self) -> Path:
        return self.pair.cert

    def issue(
        self, name: str, *, common_name: str, organizations: tuple[str, ...] = (),
        dns_names: tuple[str, ...] = (), ips: tuple[str, ...] = (), server: bool = False,
        client: bool = False,
    ) -> CertPair:
        """Issue a certificate for ``common_name``, written as ``<name>.crt``/``<name>.key``."""
        key = ec.generate_private_key(ec.SECP256R1())
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        attrs += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
        usages = []
        if server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        if client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attrs)).issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        )
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        pair = CertPair(self.directory / f"{name}.crt", self.directory / f"{name}.key")
        pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(pair.key, key)
        return pair


@dataclass(frozen=True)
class ClusterPki:
    """Every certificate and key the local control plane needs."""

    ca: CertPair
    apiserver: CertPair
    kubelet_client: CertPair
    admin: CertPair
    scheduler: CertPair
    controller_manager: CertPair
    service_account_key: Path
    service_account_pub: Path
    authority: CertificateAuthority
    front_proxy_ca: CertPair
    front_proxy_client: CertPair

    @classmethod
    def create(cls, directory: Path, service_ip: str = "10.0.0.1") -> ClusterPki:
        ca = CertificateAuthority(directory, "ca")
        apiserver = ca.issue(
            "apiserver", common_name="kube-apiserver", server=True,
            dns_names=("localhost", "kubernetes", "kubernetes.default",
                       "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"),
            ips=("127.0.0.1", service_ip),
        )
        front_proxy = CertificateAuthority(directory, "front-proxy-ca")
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write_key(directory / "sa.key", sa_key)
        (directory / "sa.pub").write_bytes(sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo,
        ))
        return cls(
            ca=ca.pair,
            apiserver=apiserver,
            kubelet_client=ca.issue(
                "apiserver-kubelet-client", common_name="kube-apiserver-kubelet-client",
                client=True,
            ),
            admin=ca.issue("admin", common_name="vmlet-admin",
                           organizations=("system:masters",), client=True),
            scheduler=ca.issue("scheduler", common_name="system:kube-scheduler", client=True),
            controller_manager=ca.issue(
                "controller-manager", common_name="system:kube-controller-manager", client=True,
            ),
            service_account_key=directory / "sa.key",
            service_account_pub=directory / "sa.pub",
            authority=ca,
            front_proxy_ca=front_proxy.pair,
            front_proxy_client=front_proxy.issue(
                "front-proxy-client", common_name=FRONT_PROXY_CLIENT, client=True,
            ),
        )
