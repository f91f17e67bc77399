"""`vmlet-openstack-provider`: the OpenStack provider as its own process.

    OS_CLOUD=vmlet OS_CLIENT_CONFIG_FILE=clouds.yaml \\
        python -m vmlet_openstack --listen 127.0.0.1:0 --port-file /tmp/port

See `vmlet_openstack.config` for every OpenStack setting and `vmlet_contract.cli` for the
server's. The process serves even while OpenStack is unreachable (calls answer UNAVAILABLE, nodes
turn Ready=Unknown) and recovers on its own when it answers again. SIGTERM or SIGINT stops it
with exit status 0; a bad configuration exits with status 2 before serving.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from vmlet_contract import (
    add_server_arguments,
    check_server_arguments,
    configure_logging_from_args,
    serve_from_args,
)

from .app import PROVIDER_KIND, build
from .cloud import cloud_region, quiet_sdk_loggers
from .config import ConfigError, Settings, add_openstack_arguments, describe, settings_from_args

__all__ = ["main", "parse_args"]

_log = logging.getLogger("vmlet_openstack")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The provider's flags: the shared server flags plus the OpenStack ones."""
    parser = argparse.ArgumentParser(
        prog="vmlet-openstack-provider",
        description="The vmlet provider for OpenStack: pods become Nova servers on compute hosts.",
    )
    add_server_arguments(parser)
    add_openstack_arguments(parser)
    args = parser.parse_args(argv)
    check_server_arguments(parser, args)
    return args


async def _serve(args: argparse.Namespace, settings: Settings) -> None:
    provider = build(settings)
    await provider.start()
    try:
        await serve_from_args(args, provider.servicers, provider=PROVIDER_KIND)
    finally:
        await provider.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the provider until SIGTERM/SIGINT; returns the exit status."""
    args = parse_args(argv)
    configure_logging_from_args(args)
    quiet_sdk_loggers()
    try:
        settings = settings_from_args(args)
        cloud_region(settings)
    except ConfigError as exc:
        _log.error("bad configuration", extra={"error": str(exc)})
        return 2
    _log.info("starting", extra=describe(settings))
    try:
        asyncio.run(_serve(args, settings))
    except KeyboardInterrupt:
        return 130
    except (OSError, ValueError, RuntimeError) as exc:
        _log.error("cannot serve", extra={"error": str(exc)})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
