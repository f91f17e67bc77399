"""The certificates of the facade-provider boundary in the local environment: mutual TLS.

A CA of the boundary's own (not the cluster's) signs the providers' serving certificate (for
``localhost`` and ``127.0.0.1``, where the local environment runs them) and the facade's client
certificate, which names ``vmlet-facade``: the one identity a provider serves. Keys are 0600 in
a 0700 directory. `rotate` re-issues them in place (each file replaced atomically); providers
and the facade re-read changed files, so a rotation needs no restart.

Tests get this for free: `ProviderProcess`, `FacadeProcess` and `Stack` use `default_pki()`,
one PKI per test process, unless told otherwise; `make up` makes one under its run directory.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import grpc

from vmlet_localenv.pki import CertificateAuthority, CertPair

__all__ = ["FACADE_IDENTITY", "ProviderPki", "default_pki"]

#: The identity in the facade's client certificate, and what providers serve (their default).
FACADE_IDENTITY = "vmlet-facade"
_CA_NAME = "provider-ca"


class ProviderPki:
    """The boundary's CA, the providers' serving pair and the facade's client pair, as files
    under ``directory`` (made by `create`)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ca = directory / f"{_CA_NAME}.crt"
        self.provider = CertPair(directory / "provider.crt", directory / "provider.key")
        self.facade = CertPair(directory / "facade.crt", directory / "facade.key")
        self._authority: CertificateAuthority | None = None

    @classmethod
    def create(cls, directory: Path) -> ProviderPki:
        """A new CA and both pairs in ``directory``."""
        pki = cls(directory)
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
        pki.rotate(new_ca=True)
        return pki

    def rotate(self, *, new_ca: bool = False) -> None:
        """Issue new serving and client pairs (and, with ``new_ca``, a new CA that alone is
        trusted from then on), each file replaced atomically."""
        staging = Path(tempfile.mkdtemp(prefix=".rotate-", dir=self.dir))
        try:
            if new_ca or self._authority is None:
                self._authority = CertificateAuthority(staging, _CA_NAME)
            else:
                shutil.copy(self.ca, staging / self.ca.name)
            self._authority.directory = staging
            self._authority.issue("provider", common_name="vmlet-provider", server=True,
                                  dns_names=("localhost", "vmlet-provider"), ips=("127.0.0.1",))
            self._authority.issue("facade", common_name=FACADE_IDENTITY,
                                  dns_names=(FACADE_IDENTITY,), client=True)
            # Keys first: a reader between two renames may see a new key with an old cert
            # (and retries), never an old key it could keep.
            for name in ("provider.key", "facade.key", "provider.crt", "facade.crt",
                         self.ca.name):
                os.replace(staging / name, self.dir / name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def issue_client(self, name: str, identity: str) -> CertPair:
        """Another client pair of this CA, naming ``identity`` (for tests of who is refused)."""
        assert self._authority is not None, "a ProviderPki loaded from files cannot issue"
        self._authority.directory = self.dir
        return self._authority.issue(name, common_name=identity, dns_names=(identity,),
                                     client=True)

    def provider_args(self, identity: str = FACADE_IDENTITY) -> list[str]:
        """A provider's flags to serve mutual TLS to ``identity`` only."""
        return ["--tls-cert", str(self.provider.cert), "--tls-key", str(self.provider.key),
                "--tls-client-ca", str(self.ca), "--tls-client-identity", identity]

    def facade_args(self) -> list[str]:
        """The facade's flags to call providers over mutual TLS as ``vmlet-facade``."""
        return [f"--provider-ca={self.ca}", f"--provider-cert={self.facade.cert}",
                f"--provider-key={self.facade.key}"]

    def env(self) -> dict[str, str]:
        """The facade's variables for the same files (hack/grpcurl.sh reads them too)."""
        return {"VMLET_PROVIDER_CA": str(self.ca), "VMLET_PROVIDER_CERT": str(self.facade.cert),
                "VMLET_PROVIDER_KEY": str(self.facade.key)}

    def credentials(self, client: CertPair | None = None) -> grpc.ChannelCredentials:
        """Channel credentials that trust the CA and present ``client`` (the facade's pair by
        default): what a test uses to call a provider as the facade does."""
        pair = client or self.facade
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(), private_key=pair.key.read_bytes(),
            certificate_chain=pair.cert.read_bytes())

    def channel(self, address: str) -> grpc.Channel:
        """A channel to the provider at ``address``, as the facade."""
        return grpc.secure_channel(address, self.credentials())

    def aio_channel(self, address: str) -> grpc.aio.Channel:
        """An asyncio channel to the provider at ``address``, as the facade."""
        return grpc.aio.secure_channel(address, self.credentials())


_default: ProviderPki | None = None


def default_pki() -> ProviderPki:
    """This process's boundary PKI, made on first use in a private temporary directory that
    goes away when the process exits."""
    global _default
    if _default is None:
        directory = Path(tempfile.mkdtemp(prefix="vmlet-provider-pki-"))
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
        _default = ProviderPki.create(directory)
    return _default
