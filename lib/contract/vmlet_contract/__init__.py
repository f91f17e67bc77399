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
"""

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
from .tls import PeerIdentityInterceptor, TlsConfig, channel_credentials, files_fingerprint

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
