"""The command-line pieces every provider's `__main__` shares: server flags, logging, serving.

Each flag has an environment variable, so a Deployment can configure a provider without args:

  --listen          VMLET_LISTEN          gRPC address (default 127.0.0.1:50051; port 0 = any)
  --metrics-listen  VMLET_METRICS_LISTEN  Prometheus endpoint address (off when unset)
  --tls-cert        VMLET_TLS_CERT        server certificate chain (PEM)
  --tls-key         VMLET_TLS_KEY         server private key (PEM)
  --tls-client-ca   VMLET_TLS_CLIENT_CA   CA of the client certificates (mutual TLS)
  --tls-client-identity VMLET_TLS_CLIENT_IDENTITY  the one client served (default vmlet-facade)
  --insecure-plaintext  (no variable)     serve plaintext, to anyone: warns at start
  --health-listen   VMLET_HEALTH_LISTEN   plaintext grpc.health.v1 only, for kubelet probes
  --port-file       VMLET_PORT_FILE       write the bound gRPC port here once serving
  --grace-seconds   VMLET_GRACE_SECONDS   time in-flight calls get on SIGTERM (default 5)
  --log-level       VMLET_LOG_LEVEL       debug, info, warning, error (default info)
  --log-format      VMLET_LOG_FORMAT      json or text (default json)

A provider serves mutual TLS: the certificate, its key, the client CA and the client identity
are all needed, or else the explicit `--insecure-plaintext` (a flag only, never an environment
variable, so nobody turns it on by accident).

These server flags are the same in every vmlet process, so their variables carry no provider
name. A provider's own settings follow `vmlet_contract.settings` (flag > VMLET_<PROVIDER>_* >
TOML file > default), and its `__main__` is `run_provider(COMMAND, argv)`: parse, configure
logging, load the settings (a bad one: one log line, exit status 2), build, serve until
SIGTERM/SIGINT (exit 0; 1 when it cannot serve).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .errors import ProviderError
from .logs import configure_logging, redact
from .server import ProviderServicers, serve
from .settings import Options
from .tls import TlsConfig

__all__ = [
    "DEFAULT_CLIENT_IDENTITY",
    "DEFAULT_LISTEN",
    "SERVER_ENVIRONMENT",
    "ProviderCommand",
    "add_server_arguments",
    "check_server_arguments",
    "configure_logging_from_args",
    "run_provider",
    "serve_from_args",
    "tls_from_args",
]

DEFAULT_LISTEN = "127.0.0.1:50051"
#: The environment variables of the server flags (the module docstring's table).
SERVER_ENVIRONMENT = (
    "VMLET_LISTEN",
    "VMLET_METRICS_LISTEN",
    "VMLET_TLS_CERT",
    "VMLET_TLS_KEY",
    "VMLET_TLS_CLIENT_CA",
    "VMLET_TLS_CLIENT_IDENTITY",
    "VMLET_HEALTH_LISTEN",
    "VMLET_PORT_FILE",
    "VMLET_GRACE_SECONDS",
    "VMLET_LOG_LEVEL",
    "VMLET_LOG_FORMAT",
)
#: The name the facade's client certificate carries; what a provider serves by default.
DEFAULT_CLIENT_IDENTITY = "vmlet-facade"

_log = logging.getLogger(__name__)


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
        "--tls-client-identity",
        default=_env("VMLET_TLS_CLIENT_IDENTITY", DEFAULT_CLIENT_IDENTITY),
        metavar="NAME",
        help="serve only clients whose certificate names NAME (a DNS SAN, or the CN without "
        "SANs); env VMLET_TLS_CLIENT_IDENTITY, default %(default)s",
    )
    group.add_argument(
        "--insecure-plaintext",
        action="store_true",
        help="serve plaintext gRPC, without authenticating clients (tests and debugging "
        "only: anyone who reaches the port can read and destroy VMs); warns at start",
    )
    group.add_argument(
        "--health-listen",
        default=_env("VMLET_HEALTH_LISTEN"),
        metavar="HOST:PORT",
        help="serve grpc.health.v1 alone in plaintext here, for Kubernetes' gRPC probes "
        "(env VMLET_HEALTH_LISTEN; off when unset)",
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
    """The mutual TLS settings the flags ask for; None only with --insecure-plaintext. Raises
    ValueError when they are incomplete (no certificate, key, client CA or client identity) or
    contradict --insecure-plaintext."""
    given = [
        flag
        for flag, value in (
            ("--tls-cert", args.tls_cert),
            ("--tls-key", args.tls_key),
            ("--tls-client-ca", args.tls_client_ca),
        )
        if value
    ]
    if args.insecure_plaintext:
        if given:
            raise ValueError(f"--insecure-plaintext contradicts {', '.join(given)}")
        return None
    if len(given) < 3:
        missing = [f for f in ("--tls-cert", "--tls-key", "--tls-client-ca") if f not in given]
        raise ValueError(
            f"a provider serves mutual TLS: {', '.join(missing)} missing (or, for tests "
            "only, --insecure-plaintext)"
        )
    if not args.tls_client_identity:
        raise ValueError("--tls-client-identity must name the client to serve")
    return TlsConfig(
        cert_file=args.tls_cert,
        key_file=args.tls_key,
        client_ca_file=args.tls_client_ca,
        client_identity=args.tls_client_identity,
    )


def check_server_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Fails the command line (usage and exit status 2) when the TLS flags are incomplete."""
    try:
        tls_from_args(args)
    except ValueError as err:
        parser.error(str(err))


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
    tls = tls_from_args(args)
    if tls is None:
        _log.warning(
            "serving PLAINTEXT gRPC without client authentication (--insecure-plaintext): "
            "anyone who reaches this port can read pods and destroy VMs",
            extra={"address": args.listen},
        )
    await serve(
        servicers,
        address=args.listen,
        provider=provider,
        metrics_address=args.metrics_listen,
        tls=tls,
        health_address=args.health_listen,
        grace_seconds=args.grace_seconds,
        ready=ready,
        port_file=args.port_file,
    )


S = TypeVar("S")


@dataclass(frozen=True)
class ProviderCommand(Generic[S]):
    """What a provider's `__main__` hands `run_provider`: its name, settings and wiring."""

    prog: str
    description: str
    kind: str  # the provider kind the server reports (metrics, health)
    options: Options
    #: Settings from the parsed flags and the environment; raises ConfigError (a ValueError).
    load: Callable[[argparse.Namespace, Mapping[str, str]], S]
    #: Builds and starts the provider, yields its servicers, stops it on exit.
    running: Callable[[S], AbstractAsyncContextManager[ProviderServicers]]
    #: The settings as log fields for the "starting" line (credential-like keys are redacted).
    describe: Callable[[S], Mapping[str, Any]]


def run_provider(
    command: ProviderCommand[S],
    argv: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> int:
    """A provider's whole `main`: returns 0 after SIGTERM/SIGINT, 2 on a bad configuration
    (one log line, no traceback), 1 when it cannot serve, 130 on KeyboardInterrupt."""
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(prog=command.prog, description=command.description)
    add_server_arguments(parser)
    command.options.add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a flag argparse itself refuses (usage on stderr)
        return exc.code if isinstance(exc.code, int) else 2
    configure_logging_from_args(args)
    try:
        tls_from_args(args)
        settings = command.load(args, env)
    except ValueError as exc:
        _log.error(f"configuration error: {exc}")
        return 2
    _log.info("starting", extra=redact(dict(command.describe(settings))))
    try:
        asyncio.run(_serve(command, args, settings))
    except KeyboardInterrupt:
        return 130
    except (OSError, ValueError, RuntimeError, ProviderError) as exc:
        _log.error("cannot serve", extra={"error": str(exc)})
        return 1
    return 0


async def _serve(command: ProviderCommand[S], args: argparse.Namespace, settings: S) -> None:
    async with command.running(settings) as servicers:
        await serve_from_args(args, servicers, provider=command.kind)
