"""`python -m vmlet_facade.providercerts`: issues and renews the certificates of the
facade-provider boundary (mutual TLS), for deployments that have no other issuer.

A CA of the boundary's own signs two pairs: the providers' serving certificate (the Services'
DNS names, ``localhost`` and ``127.0.0.1``) and the facade's client certificate, which names
``vmlet-facade``, the one identity providers serve. Each run is idempotent: it makes what is
missing and re-issues a pair that is due (less than a third of its life left), that another CA
signed, or whose names changed; anything else is left as it is. Run it once at install and then
periodically (a Kubernetes CronJob, ``docker compose run pki``); the facade and the providers
re-read changed files, so a renewal needs no restart.

Two stores, same content:
  files DIR           DIR/ca/{ca.crt,ca.key}, DIR/provider/{tls.crt,tls.key,ca.crt},
                      DIR/facade/{tls.crt,tls.key,ca.crt}; keys 0640: the owner and the
                      issuer's group, which the services run as (docker compose volumes)
  secrets NAMESPACE   Secrets vmlet-provider-ca, vmlet-provider-tls, vmlet-facade-provider-tls
                      with the same keys (Kubernetes; in-cluster credentials or --kubeconfig)
Only the issuer reads the CA key: providers get the provider pair, the facade its own pair.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import ipaddress
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["FACADE_IDENTITY", "SECRETS", "Wanted", "main", "renew"]

log = logging.getLogger(__name__)

FACADE_IDENTITY = "vmlet-facade"
CA_VALIDITY = dt.timedelta(days=5 * 365)
LEAF_VALIDITY = dt.timedelta(days=90)
#: Store name -> Kubernetes Secret name.
SECRETS = {"ca": "vmlet-provider-ca", "provider": "vmlet-provider-tls",
           "facade": "vmlet-facade-provider-tls"}

Store = dict[str, dict[str, bytes]]  # "ca" | "provider" | "facade" -> file name -> content


@dataclass(frozen=True)
class Wanted:
    """The names the serving certificate must carry."""

    services: tuple[str, ...] = ()
    namespace: str | None = None

    def dns_names(self) -> list[str]:
        names = ["localhost"]
        for service in self.services:
            names.append(service)
            if self.namespace:
                names += [f"{service}.{self.namespace}", f"{service}.{self.namespace}.svc",
                          f"{service}.{self.namespace}.svc.cluster.local"]
        return names


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _builder(subject: str, issuer: x509.Name | None, key: ec.EllipticCurvePrivateKey,
             validity: dt.timedelta, now: dt.datetime) -> x509.CertificateBuilder:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    return (x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + validity))


def new_ca(now: dt.datetime) -> dict[str, bytes]:
    """A self-signed CA: ``ca.crt`` and ``ca.key``."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (_builder("vmlet-provider-ca", None, key, CA_VALIDITY, now)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return {"ca.crt": cert.public_bytes(serialization.Encoding.PEM), "ca.key": _pem_key(key)}


def issue(ca: dict[str, bytes], *, common_name: str, dns: Sequence[str], ips: Sequence[str] = (),
          server: bool, now: dt.datetime) -> dict[str, bytes]:
    """A pair signed by ``ca``: ``tls.crt``, ``tls.key`` and the CA as ``ca.crt``."""
    ca_cert = x509.load_pem_x509_certificate(ca["ca.crt"])
    ca_key = serialization.load_pem_private_key(ca["ca.key"], None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    cert = (_builder(common_name, ca_cert.subject, key, LEAF_VALIDITY, now)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return {"tls.crt": cert.public_bytes(serialization.Encoding.PEM), "tls.key": _pem_key(key),
            "ca.crt": ca["ca.crt"]}


def _names(cert: x509.Certificate) -> set[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {*san.get_values_for_type(x509.DNSName),
            *(str(i) for i in san.get_values_for_type(x509.IPAddress))}


def _due(pair: dict[str, bytes] | None, ca: dict[str, bytes], names: set[str],
         now: dt.datetime) -> str | None:
    """Why ``pair`` must be re-issued, or None when it is good."""
    if not pair or not pair.get("tls.crt") or not pair.get("tls.key"):
        return "missing"
    if pair.get("ca.crt") != ca["ca.crt"]:
        return "signed by another CA"
    try:
        cert = x509.load_pem_x509_certificate(pair["tls.crt"])
    except ValueError:
        return "unreadable"
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    if cert.not_valid_after_utc - now < life / 3:
        return "due"
    if _names(cert) != names:
        return "names changed"
    return None


def renew(store: Store, wanted: Wanted, now: dt.datetime | None = None) -> list[str]:
    """Brings ``store`` up to date in place; returns the entries that changed."""
    now = now or dt.datetime.now(dt.UTC)
    changed = []
    ca = store.get("ca") or {}
    if not ca.get("ca.crt") or not ca.get("ca.key"):
        ca = store["ca"] = new_ca(now)
        changed.append("ca")
        log.info("made a new CA for the provider boundary")
    server_dns, server_ips = wanted.dns_names(), ["127.0.0.1"]
    leaves = {
        "provider": (("vmlet-provider", server_dns, server_ips, True),
                     {*server_dns, *server_ips}),
        "facade": ((FACADE_IDENTITY, [FACADE_IDENTITY], [], False), {FACADE_IDENTITY}),
    }
    for entry, ((cn, dns, ips, server), names) in leaves.items():
        why = _due(store.get(entry), ca, names, now)
        if why is not None:
            store[entry] = issue(ca, common_name=cn, dns=dns, ips=ips, server=server, now=now)
            changed.append(entry)
            log.info("issued the %s pair (%s)", entry, why)
    return changed


# -- stores ---------------------------------------------------------------------------------------

def read_files(directory: Path) -> Store:
    store: Store = {}
    for entry in SECRETS:
        d = directory / entry
        if d.is_dir():
            store[entry] = {p.name: p.read_bytes() for p in d.iterdir()
                            if p.is_file() and not p.name.startswith(".")}
    return store


def write_files(directory: Path, store: Store, entries: Sequence[str]) -> None:
    """Writes ``entries`` of ``store``, each file replaced atomically, keys 0640."""
    for entry in entries:
        d = directory / entry
        d.mkdir(parents=True, exist_ok=True)
        # Keys before certificates: a reader between two renames retries, never keeps a stale key.
        for name in sorted(store[entry], key=lambda n: not n.endswith(".key")):
            tmp = d / f".{name}.tmp"
            mode = 0o640 if name.endswith(".key") else 0o644
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode & 0o600)
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), mode)  # not the umask's: the group must read keys
                f.write(store[entry][name])
            os.replace(tmp, d / name)


async def sync_secrets(namespace: str, kubeconfig: str | None, wanted: Wanted) -> list[str]:
    """`renew` on the Secrets of `SECRETS` in ``namespace``."""
    import base64

    from vmlet_facade.kube import KubeClient, KubeConfig
    from vmlet_facade.kube.client import ApiError

    client = KubeClient(KubeConfig.load(kubeconfig))
    try:
        base = f"/api/v1/namespaces/{namespace}/secrets"
        store: Store = {}
        found: dict[str, dict[str, object]] = {}
        for entry, name in SECRETS.items():
            try:
                secret = await client.get(f"{base}/{name}")
            except ApiError as err:
                if not err.not_found:
                    raise
                continue
            found[entry] = secret
            store[entry] = {k: base64.b64decode(v)
                            for k, v in (secret.get("data") or {}).items()}
        changed = renew(store, wanted)
        for entry in changed:
            body: dict[str, object] = {
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": SECRETS[entry], "namespace": namespace,
                             "labels": {"app.kubernetes.io/name": "vmlet",
                                        "app.kubernetes.io/component": "provider-pki"}},
                "type": "Opaque",
                "data": {k: base64.b64encode(v).decode() for k, v in store[entry].items()},
            }
            if entry in found:
                meta = found[entry]["metadata"]
                assert isinstance(meta, dict)
                body["metadata"]["resourceVersion"] = meta["resourceVersion"]  # type: ignore[index]
                await client.replace(f"{base}/{SECRETS[entry]}", body)
            else:
                await client.create(base, body)
        return changed
    finally:
        await client.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Issues or renews; exit status 0 whether or not anything changed."""
    p = argparse.ArgumentParser(prog="python -m vmlet_facade.providercerts",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--service", action="append", default=[],
                   help="a DNS name the providers are reached at (repeat); with `secrets`, "
                        "also NAME.NAMESPACE[.svc[.cluster.local]]")
    sub = p.add_subparsers(dest="store", required=True)
    files = sub.add_parser("files", help="keep the certificates as files under DIR")
    files.add_argument("directory", type=Path)
    secrets = sub.add_parser("secrets", help="keep the certificates in Secrets of NAMESPACE")
    secrets.add_argument("namespace")
    secrets.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format='{"time":"%(asctime)s","level":"%(levelname)s",'
                               '"logger":"%(name)s","msg":"%(message)s"}')
    try:
        if args.store == "files":
            store = read_files(args.directory)
            changed = renew(store, Wanted(tuple(args.service)))
            write_files(args.directory, store, changed)
        else:
            changed = asyncio.run(sync_secrets(args.namespace, args.kubeconfig,
                                               Wanted(tuple(args.service), args.namespace)))
    except Exception as err:  # one line, never a stack trace, for a Job's status
        log.error("provider certificates not issued: %s", err)
        return 1
    log.info("provider certificates up to date%s",
             f" (renewed: {', '.join(changed)})" if changed else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
