"""`vmlet-vmware-provider`: the vSphere provider as its own process.

    VMLET_VSPHERE_PASSWORD=... python -m vmlet_vmware --listen 127.0.0.1:0 \\
        --port-file /tmp/port --url https://vcenter/sdk --username vmlet \\
        --ca-file ca.pem --template-folder templates --network "VM Network"

See `vmlet_vmware.config` for every vSphere setting and `vmlet_contract.cli` for the server's.
The process serves even while vCenter is unreachable (calls answer UNAVAILABLE, nodes turn
Ready=Unknown) and reconnects on its own. SIGTERM or SIGINT stops it with exit status 0; a bad
configuration exits with status 2 before serving.
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
from .config import ConfigError, Settings, add_vsphere_arguments, describe, settings_from_args

__all__ = ["main", "parse_args"]

_log = logging.getLogger("vmlet_vmware")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The provider's flags: the shared server flags plus the vSphere ones."""
    parser = argparse.ArgumentParser(
        prog="vmlet-vmware-provider",
        description="The vmlet provider for VMware vSphere: pods become VMs on ESXi hosts.",
    )
    add_server_arguments(parser)
    add_vsphere_arguments(parser)
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
    try:
        settings = settings_from_args(args)
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
