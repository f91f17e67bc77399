"""The command-line pieces every provider's `__main__` shares: server flags, logging, serving.

Each flag has an environment variable, so a Deployment can configure a provider without args:

  --listen          VMLET_LISTEN          gRPC address (default 127.0.0.1:50051; port 0 = any)
  --metrics-listen  VMLET_METRICS_LISTEN  Prometheus endpoint address (off when unset)
  --tls-cert        VMLET_TLS_CERT        server certificate chain (PEM)
  --tls-key         VMLET_TLS_KEY         server private key (PEM)
  --tls-client-ca   VMLET_TLS_CLIENT_CA   CA of client certificates: mutual TLS when set
  --port-file       VMLET_PORT_FILE       write the bound gRPC port here once serving
  --grace-seconds   VMLET_GRACE_SECONDS   time in-flight calls get on SIGTERM (default 5)
  --log-level       VMLET_LOG_LEVEL       debug, info, warning, error (default info)
  --log-format      VMLET_LOG_FORMAT      json or text (default json)
"""

from __future__ import annotations

import argparse
import asyncio
import os

from .logs import configure_logging
from .server import ProviderServicers, serve
from .tls import TlsConfig

__all__ = [
    "DEFAULT_LISTEN",
    "add_server_arguments",
    "configure_logging_from_args",
    "serve_from_args",
    "tls_from_args",
]

DEFAULT_LISTEN = "127.0.0.1:50051"


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value else default


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the flags of the module docstring to `parser`, in a group of their own."""
    group = parser.add_argument_group("server")
    group.add_argument(
        "--listen",
        default=_env("VMLET_LISTEN", DEFAULT_LISTEN),
        metavar="HOST:PORT",
        help="gRPC address to listen on; port 0 picks a free one (env VMLET_LISTEN)",
    )
    group.add_argument(
        "--metrics-listen",
        default=_env("VMLET_METRICS_LISTEN"),
        metavar="HOST:PORT",
        help="serve Prometheus metrics over HTTP here (env VMLET_METRICS_LISTEN; off when unset)",
    )
    group.add_argument(
        "--tls-cert",
        default=_env("VMLET_TLS_CERT"),
        metavar="PEM",
        help="server certificate chain; TLS when set (env VMLET_TLS_CERT)",
    )
    group.add_argument(
        "--tls-key",
        default=_env("VMLET_TLS_KEY"),
        metavar="PEM",
        help="server private key (env VMLET_TLS_KEY)",
    )
    group.add_argument(
        "--tls-client-ca",
        default=_env("VMLET_TLS_CLIENT_CA"),
        metavar="PEM",
        help="require client certificates signed by this CA (env VMLET_TLS_CLIENT_CA)",
    )
    group.add_argument(
        "--port-file",
        default=_env("VMLET_PORT_FILE"),
        metavar="PATH",
        help="write the bound gRPC port to this file once serving (env VMLET_PORT_FILE)",
    )
    group.add_argument(
        "--grace-seconds",
        type=float,
        default=float(_env("VMLET_GRACE_SECONDS", "5") or 5),
        metavar="S",
        help="how long in-flight calls may finish on SIGTERM (env VMLET_GRACE_SECONDS)",
    )
    group.add_argument(
        "--log-level",
        default=_env("VMLET_LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
        help="env VMLET_LOG_LEVEL",
    )
    group.add_argument(
        "--log-format",
        default=_env("VMLET_LOG_FORMAT", "json"),
        choices=["json", "text"],
        help="JSON lines or key=value lines on stderr (env VMLET_LOG_FORMAT)",
    )


def tls_from_args(args: argparse.Namespace) -> TlsConfig | None:
    """The TLS settings the flags ask for; None for plaintext. Raises ValueError on a half-given
    pair (a certificate without its key, or a client CA without a server certificate)."""
    if args.tls_cert is None and args.tls_key is None:
        if args.tls_client_ca is not None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if args.tls_cert is None or args.tls_key is None:
        raise ValueError("--tls-cert and --tls-key go together")
    return TlsConfig(
        cert_file=args.tls_cert, key_file=args.tls_key, client_ca_file=args.tls_client_ca
    )


def configure_logging_from_args(args: argparse.Namespace) -> None:
    """Sets up structured logging on stderr as --log-level and --log-format ask."""
    configure_logging(args.log_level, fmt=args.log_format)


async def serve_from_args(
    args: argparse.Namespace,
    servicers: ProviderServicers,
    *,
    provider: str,
    ready: asyncio.Event | None = None,
) -> None:
    """Serves `servicers` as the flags say until SIGTERM/SIGINT; see `serve`."""
    await serve(
        servicers,
        address=args.listen,
        provider=provider,
        metrics_address=args.metrics_listen,
        tls=tls_from_args(args),
        grace_seconds=args.grace_seconds,
        ready=ready,
        port_file=args.port_file,
    )
