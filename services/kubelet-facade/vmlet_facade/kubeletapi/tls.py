"""TLS for the kubelet listener, with client certificates checked by us rather than by OpenSSL.

A kubelet asks every client for a certificate but lets the handshake succeed whatever comes
(Go's ``tls.RequestClientCert``); the authenticator then verifies the chain against the client
CA and answers 401 when it does not hold. The standard library cannot request a certificate
without verifying it during the handshake (a foreign CA would fail the handshake instead of
getting a 401), so connections go through pyOpenSSL with memory BIOs: OpenSSL is told to accept
any certificate, and `ClientCertVerifier` does the verification afterwards.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL, crypto

__all__ = ["ClientCertVerifier", "PeerCertificate", "ServerTls", "TlsStream"]

log = logging.getLogger(__name__)

_CHUNK = 65536

#: TLS 1.2 suites: forward-secret ECDHE with AEAD ciphers only, as Kubernetes' secure default
#: (crypto/tls's preference, no CBC, no SHA-1 MAC, no RSA key exchange). TLS 1.3 suites are all
#: AEAD; OpenSSL's default list of them stays.
TLS12_CIPHERS = b":".join([
    b"ECDHE-ECDSA-AES128-GCM-SHA256", b"ECDHE-RSA-AES128-GCM-SHA256",
    b"ECDHE-ECDSA-AES256-GCM-SHA384", b"ECDHE-RSA-AES256-GCM-SHA384",
    b"ECDHE-ECDSA-CHACHA20-POLY1305", b"ECDHE-RSA-CHACHA20-POLY1305",
])


@dataclass(frozen=True)
class PeerCertificate:
    """What a client presented: its leaf certificate and any intermediates."""

    leaf: x509.Certificate
    intermediates: tuple[x509.Certificate, ...] = ()


def _accept_any(conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int,
                ok: int) -> bool:
    return True  # verified after the handshake by ClientCertVerifier


class ServerTls:
    """The serving certificate of the listener; replaced in place when it is renewed."""

    def __init__(self) -> None:
        self._context: SSL.Context | None = None
        self.certificate: x509.Certificate | None = None
        self.not_after: dt.datetime | None = None
        self.installed = asyncio.Event()

    @property
    def ready(self) -> bool:
        return self._context is not None

    def install(self, cert_pem: bytes, key_pem: bytes) -> None:
        """Serve ``cert_pem`` (leaf first, then its chain) with ``key_pem`` from now on."""
        certs = x509.load_pem_x509_certificates(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_cipher_list(TLS12_CIPHERS)
        ctx.set_options(SSL.OP_CIPHER_SERVER_PREFERENCE | SSL.OP_NO_COMPRESSION
                        | SSL.OP_NO_RENEGOTIATION)
        ctx.use_certificate(certs[0])
        ctx.use_privatekey(key)  # type: ignore[arg-type]
        ctx.check_privatekey()
        for extra in certs[1:]:
            ctx.add_extra_chain_cert(crypto.X509.from_cryptography(extra))
        ctx.set_verify(SSL.VERIFY_PEER, _accept_any)
        ctx.set_session_id(b"vmlet-kubelet")
        # Idle connections give their record buffers back (about half of what one holds).
        ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
        self._context = ctx
        self.certificate = certs[0]
        self.not_after = certs[0].not_valid_after_utc
        self.installed.set()

    def wrap(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> TlsStream:
        if self._context is None:
            raise RuntimeError("no serving certificate yet")
        return TlsStream(self._context, reader, writer)


class TlsStream:
    """One server-side TLS connection over an asyncio stream pair (a `ByteStream`)."""

    def __init__(self, context: SSL.Context, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self._ssl = SSL.Connection(context, None)
        self._ssl.set_accept_state()
        self._reader = reader
        self._writer = writer
        self._out = asyncio.Lock()
        self._eof = False
        self._closed = False

    async def _fill(self) -> bool:
        data = await self._reader.read(_CHUNK) if not self._eof else b""
        if not data:
            if not self._eof:
                self._eof = True
                self._ssl.bio_shutdown()
            return False
        self._ssl.bio_write(data)
        return True

    def _take_output(self) -> bytes:
        chunks = []
        while True:
            try:
                chunk = self._ssl.bio_read(_CHUNK)
            except SSL.WantReadError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    async def _flush(self) -> None:
        async with self._out:
            out = self._take_output()
            if out and not self._writer.is_closing():
                self._writer.write(out)
                await self._writer.drain()

    async def _flush_idle(self) -> None:
        """Send what reading produced (alerts, key updates), unless a write is under way: it
        takes everything pending, and a read must not wait behind a slow client's drain."""
        if not self._out.locked():
            await self._flush()

    async def handshake(self) -> None:
        while True:
            try:
                self._ssl.do_handshake()
                break
            except SSL.WantReadError:
                await self._flush()
                if not await self._fill():
                    raise ConnectionError("peer went away during the TLS handshake") from None
            except SSL.Error as err:
                await self._flush()  # the alert, if any
                raise ConnectionError(f"TLS handshake failed: {err}") from None
        await self._flush()

    def peer_certificate(self) -> PeerCertificate | None:
        leaf = self._ssl.get_peer_certificate(as_cryptography=True)
        if leaf is None:
            return None
        # On a server OpenSSL's peer chain leaves out the leaf; keep what is not the leaf.
        chain = self._ssl.get_peer_cert_chain(as_cryptography=True) or []
        return PeerCertificate(leaf, tuple(c for c in chain if c != leaf))

    async def read(self, max_bytes: int = _CHUNK) -> bytes:
        while True:
            try:
                data: bytes | None = self._ssl.recv(max_bytes)
            except SSL.WantReadError:
                # Waiting outside the except block: its traceback would hold recv's buffer
                # (max_bytes) for as long as the peer stays idle.
                data = None
            except (SSL.ZeroReturnError, SSL.SysCallError):
                return b""
            except SSL.Error as err:
                raise ConnectionError(f"TLS error: {err}") from None
            await self._flush_idle()
            if data is not None:
                return data
            if self._eof:
                return b""
            await self._fill()

    def _encrypt(self, data: bytes) -> None:
        if self._closed:
            raise ConnectionError("TLS stream is closed")
        try:
            self._ssl.sendall(data)
        except SSL.Error as err:
            raise ConnectionError(f"TLS error: {err}") from None

    async def write(self, data: bytes) -> None:
        self._encrypt(data)
        await self._flush()

    def write_nowait(self, data: bytes) -> int:
        """Encrypt ``data`` and hand it to the socket without waiting for it to drain; the
        bytes the socket still has to send (wait with `drain`)."""
        self._encrypt(data)
        out = self._take_output()
        if out and not self._writer.is_closing():
            self._writer.write(out)
        return self._writer.transport.get_write_buffer_size()

    async def drain(self) -> None:
        """Wait until the socket has sent what `write_nowait` gave it (mostly)."""
        await self._writer.drain()

    def abort(self) -> None:
        """Drop the connection at once (no close_notify)."""
        self._closed = True
        self._writer.transport.abort()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._ssl.shutdown()
            await asyncio.wait_for(self._flush(), 5.0)
        except (SSL.Error, ConnectionError, OSError, TimeoutError):
            pass
        self._writer.close()
        try:
            await asyncio.wait_for(self._writer.wait_closed(), 5.0)
        except TimeoutError:
            self._writer.transport.abort()  # a peer that reads nothing more
        except (ConnectionError, OSError):
            pass


class ClientCertVerifier:
    """Checks a presented client certificate as the kubelet's x509 authenticator does:
    a chain to the client CA, valid now, usable for client authentication."""

    def __init__(self, ca_file: Path) -> None:
        self._store = crypto.X509Store()
        for ca in x509.load_pem_x509_certificates(ca_file.read_bytes()):
            self._store.add_cert(crypto.X509.from_cryptography(ca))

    def verify(self, peer: PeerCertificate) -> tuple[str, list[str]] | None:
        """The user name and groups the certificate proves, or None when it proves nothing."""
        try:
            crypto.X509StoreContext(
                self._store, crypto.X509.from_cryptography(peer.leaf),
                [crypto.X509.from_cryptography(c) for c in peer.intermediates],
            ).verify_certificate()
        except crypto.X509StoreContextError as err:
            log.info("client certificate rejected: %s", err)
            return None
        try:
            usages = peer.leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            usages = None
        if usages is not None and ExtendedKeyUsageOID.CLIENT_AUTH not in usages \
                and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in usages:
            log.info("client certificate rejected: not for client authentication")
            return None
        names = peer.leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if not names:
            return None
        groups = [str(a.value) for a in
                  peer.leaf.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
        return str(names[0].value), groups
