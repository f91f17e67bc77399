"""The vmlet provider contract: generated gRPC code and the scaffold every provider serves on.

The generated messages and stubs live in `vmlet.provider.v1`; this package holds what providers
share around them: the error taxonomy of the boundary (`errors`), the server with health,
reflection, TLS, metrics and error mapping (`server`), the flags, logging and `main` of a
provider's command line (`cli`, `logs`), its settings convention (`settings`), what a provider
knows of its IaaS for the readiness probe (`readiness`), builders of pod statuses (`podstatus`),
per-identity locks (`locks`), the checks of a CreateDisk request (`diskrequests`), the options
of a logs request (`containerlogs`), the user data a cloud-init guest boots with, first-boot
commands included (`userdata`), and the servicers of the contract over a provider's backends
(`kit`).

A provider imports all of it; the facade needs only the errors, the progress vocabulary and a
few checks. So everything but the errors and TLS helpers is imported on first use (PEP 562): a
facade never loads the kit's SSH client, the provider server or its metrics, which cost it ~40 MB
of resident memory per replica.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ProviderError,
    ResourceExhausted,
    Unavailable,
    check_namespace,
    error_from_rpc,
    is_retryable,
    reason_for,
)
from .tls import PeerIdentityInterceptor, TlsConfig, channel_credentials, files_fingerprint

if TYPE_CHECKING:
    from . import containerlogs, kit, podstatus, userdata
    from .cli import (
        DEFAULT_CLIENT_IDENTITY,
        DEFAULT_LISTEN,
        ProviderCommand,
        add_server_arguments,
        check_server_arguments,
        configure_logging_from_args,
        run_provider,
        serve_from_args,
        tls_from_args,
    )
    from .hub import Hub, Mailbox
    from .interceptor import BoundaryInterceptor
    from .logs import configure_logging, redact
    from .metrics import RpcMetrics
    from .readiness import READINESS_SERVICE, Readiness
    from .server import (
        DEFAULT_SERVER_OPTIONS,
        ProviderServer,
        ProviderServicers,
        ShutdownHook,
        serve,
        write_port_file,
    )

_LAZY: dict[str, str] = {
    "BoundaryInterceptor": ".interceptor",
    "DEFAULT_CLIENT_IDENTITY": ".cli",
    "DEFAULT_LISTEN": ".cli",
    "DEFAULT_SERVER_OPTIONS": ".server",
    "Hub": ".hub",
    "Mailbox": ".hub",
    "ProviderCommand": ".cli",
    "ProviderServer": ".server",
    "ProviderServicers": ".server",
    "READINESS_SERVICE": ".readiness",
    "Readiness": ".readiness",
    "RpcMetrics": ".metrics",
    "ShutdownHook": ".server",
    "add_server_arguments": ".cli",
    "check_server_arguments": ".cli",
    "configure_logging": ".logs",
    "configure_logging_from_args": ".cli",
    "containerlogs": ".containerlogs",
    "kit": ".kit",
    "podstatus": ".podstatus",
    "redact": ".logs",
    "run_provider": ".cli",
    "serve": ".server",
    "serve_from_args": ".cli",
    "tls_from_args": ".cli",
    "userdata": ".userdata",
    "write_port_file": ".server",
}


def __getattr__(name: str) -> Any:
    """Imports what ``name`` lives in the first time it is asked for."""
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(where, __name__)
    value = module if where == f".{name}" else getattr(module, name)
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT_CLIENT_IDENTITY",
    "DEFAULT_LISTEN",
    "DEFAULT_SERVER_OPTIONS",
    "READINESS_SERVICE",
    "AlreadyExists",
    "BoundaryInterceptor",
    "FailedPrecondition",
    "Hub",
    "InvalidArgument",
    "Mailbox",
    "NotFound",
    "PeerIdentityInterceptor",
    "PermissionDenied",
    "ProviderCommand",
    "ProviderError",
    "ProviderServer",
    "ProviderServicers",
    "Readiness",
    "ResourceExhausted",
    "RpcMetrics",
    "ShutdownHook",
    "TlsConfig",
    "Unavailable",
    "add_server_arguments",
    "channel_credentials",
    "check_namespace",
    "check_server_arguments",
    "configure_logging",
    "configure_logging_from_args",
    "containerlogs",
    "error_from_rpc",
    "files_fingerprint",
    "is_retryable",
    "kit",
    "podstatus",
    "reason_for",
    "redact",
    "run_provider",
    "serve",
    "serve_from_args",
    "tls_from_args",
    "userdata",
    "write_port_file",
]
