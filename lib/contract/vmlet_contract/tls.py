"""TLS material for the provider boundary: mutual TLS on the server, the matching client side.

A deployed provider serves mutual TLS: it presents its certificate, requires a client certificate
signed by the configured CA, and serves only calls whose client certificate names the configured
identity (`client_identity`, e.g. ``vmlet-facade``). gRPC's own rule says what a certificate
names: its DNS/URI subject alternative names, or its common name when it has none. A client
without a certificate, or with one of another CA, fails the handshake (UNAVAILABLE on its side);
a certificate of the same CA naming someone else gets PERMISSION_DENIED before any servicer runs.

The files are re-read when they change (checked at every new TLS handshake), so certificates
rotated in place (a Secret volume, a compose volume, `ProviderPki.rotate` in tests) take effect
for new connections without a restart; connections already open keep their session. Key material
is never logged.
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

__all__ = [
    "PeerIdentityInterceptor",
    "TlsConfig",
    "channel_credentials",
    "files_fingerprint",
]

_log = logging.getLogger(__name__)

_KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")


def _read(path: str | os.PathLike[str]) -> bytes:
    return Path(path).read_bytes()


def files_fingerprint(*paths: str | os.PathLike[str] | None) -> tuple[Any, ...]:
    """What changes when any of `paths` is rewritten or swapped (inode, size, mtime); a missing
    file counts as a value of its own, so it is noticed when it comes back."""
    out: list[Any] = []
    for path in paths:
        if path is None:
            out.append(None)
            continue
        try:
            st = os.stat(path)  # follows symlinks: a Secret volume swaps its ..data link
        except OSError:
            out.append("missing")
            continue
        out.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


@dataclass(frozen=True)
class TlsConfig:
    """Where a server's certificate chain and key are, the CA its clients must present a
    certificate of, and the identity that certificate must name.

    `client_ca_file` set means mutual TLS: a client without a certificate signed by it is refused
    during the handshake. `client_identity` set (with a client CA) means only a certificate that
    names it is served.
    """

    cert_file: str
    key_file: str
    client_ca_file: str | None = None
    client_identity: str | None = None

    @property
    def mutual(self) -> bool:
        """Whether clients must present a certificate."""
        return self.client_ca_file is not None

    def _configuration(self) -> Any:
        ca = _read(self.client_ca_file) if self.client_ca_file is not None else None
        return grpc.ssl_server_certificate_configuration(
            [(_read(self.key_file), _read(self.cert_file))], root_certificates=ca
        )

    def server_credentials(self) -> grpc.ServerCredentials:
        """Reads the files and builds gRPC server credentials that re-read them when they
        change (a failed re-read keeps the previous ones and logs why)."""
        if self.client_identity is not None and self.client_ca_file is None:
            raise ValueError("a client identity needs a client CA (mutual TLS)")
        lock = threading.Lock()
        seen = [self._fingerprint()]
        initial = self._configuration()

        def fetch() -> Any:
            # Called by gRPC before each new handshake: None keeps the current configuration.
            with lock:
                now = self._fingerprint()
                if now == seen[0]:
                    return None
                try:
                    config = self._configuration()
                except OSError as err:
                    _log.warning("provider certificates not reloaded", extra={"error": str(err)})
                    return None
                seen[0] = now
                _log.info("provider certificates reloaded", extra={"cert": self.cert_file})
                return config

        return grpc.dynamic_ssl_server_credentials(
            initial, fetch, require_client_authentication=self.mutual
        )

    def _fingerprint(self) -> tuple[Any, ...]:
        return files_fingerprint(self.cert_file, self.key_file, self.client_ca_file)


def channel_credentials(
    *,
    ca_file: str | os.PathLike[str] | None = None,
    cert_file: str | os.PathLike[str] | None = None,
    key_file: str | os.PathLike[str] | None = None,
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


def _names(context: Any) -> list[str]:
    return [n.decode(errors="replace") for n in (context.peer_identities() or ())]


class PeerIdentityInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Serves a call only when the client certificate names `identity`; any other peer gets
    PERMISSION_DENIED before the servicer (or reflection, or health) runs.

    grpc.aio interceptors see the handler, not the call, so the check wraps the handler's
    behaviour in a function of the same shape (see `interceptor.py`)."""

    def __init__(self, identity: str) -> None:
        self.identity = identity
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    async def _check(self, context: Any, method: str) -> None:
        names = _names(context)
        if self.identity in names:
            return
        _log.warning(
            "refused a client of another identity",
            extra={"rpc": method, "peer": context.peer(), "names": ",".join(names) or "none"},
        )
        await context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            f"this provider serves only {self.identity}; the client certificate names "
            f"{', '.join(names) or 'nothing'}",
        )

    def _wrap(
        self, behaviour: Callable[..., Any], method: str, *, streaming: bool
    ) -> Callable[..., Any]:
        check = self._check
        if inspect.isasyncgenfunction(behaviour):
            generator: Callable[[Any, Any], AsyncIterator[Any]] = behaviour

            async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
                await check(context, method)
                async for response in generator(request, context):
                    yield response

            return stream
        if inspect.iscoroutinefunction(behaviour):
            coroutine: Callable[[Any, Any], Awaitable[Any]] = behaviour

            async def unary(request: Any, context: Any) -> Any:
                await check(context, method)
                return await coroutine(request, context)

            return unary

        # A synchronous behaviour (a generated UNIMPLEMENTED stub outside BoundaryInterceptor).
        if streaming:

            async def sync_stream(request: Any, context: Any) -> AsyncIterator[Any]:
                await check(context, method)
                for response in behaviour(request, context):
                    yield response

            return sync_stream

        async def sync(request: Any, context: Any) -> Any:
            await check(context, method)
            return behaviour(request, context)

        return sync

    async def intercept_service(
        self,
        continuation: Callable[[Any], Awaitable[Any]],
        handler_call_details: Any,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        changes = {
            kind: self._wrap(
                getattr(handler, kind), method, streaming=handler.response_streaming
            )
            for kind in _KINDS
            if getattr(handler, kind) is not None
        }
        wrapped = handler._replace(**changes)
        self._wrapped[method] = (handler, wrapped)
        return wrapped
