"""TLS material for the provider boundary: server credentials, and the matching client side.

A provider serves plain gRPC on loopback and TLS elsewhere. With a client CA it requires client
certificates signed by that CA (mutual TLS), so only the facade can call it. Key material is read
from files when the server starts and never logged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

__all__ = ["TlsConfig", "channel_credentials"]


def _read(path: str | Path) -> bytes:
    return Path(path).read_bytes()


@dataclass(frozen=True)
class TlsConfig:
    """Where a server's certificate chain and key are, and the CA its clients must present.

    `client_ca_file` set means mutual TLS: a client without a certificate signed by it is refused
    during the handshake.
    """

    cert_file: str
    key_file: str
    client_ca_file: str | None = None

    @property
    def mutual(self) -> bool:
        """Whether clients must present a certificate."""
        return self.client_ca_file is not None

    def server_credentials(self) -> grpc.ServerCredentials:
        """Reads the files and builds the gRPC server credentials."""
        ca = _read(self.client_ca_file) if self.client_ca_file is not None else None
        return grpc.ssl_server_credentials(
            [(_read(self.key_file), _read(self.cert_file))],
            root_certificates=ca,
            require_client_auth=ca is not None,
        )


def channel_credentials(
    *,
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
) -> grpc.ChannelCredentials:
    """Client credentials for a provider: trust `ca_file` (the system roots when None) and present
    `cert_file`/`key_file` when given (both or neither)."""
    if (cert_file is None) != (key_file is None):
        raise ValueError("a client certificate needs its key, and a key its certificate")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca_file) if ca_file is not None else None,
        private_key=_read(key_file) if key_file is not None else None,
        certificate_chain=_read(cert_file) if cert_file is not None else None,
    )
