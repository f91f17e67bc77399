"""`vmlet-openstack-provider`: the OpenStack provider as its own process.

    OS_CLIENT_CONFIG_FILE=clouds.yaml python -m vmlet_openstack --cloud vmlet \\
        --listen 127.0.0.1:0 --port-file /tmp/port

See `vmlet_openstack.config` for every OpenStack setting and `vmlet_contract.cli` for the
server's. The process serves even while OpenStack is unreachable (calls answer UNAVAILABLE, nodes
turn Ready=Unknown) and recovers on its own when it answers again. SIGTERM or SIGINT stops it
with exit status 0; a bad configuration exits with status 2 before serving.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager

from vmlet_contract import ProviderCommand, ProviderServicers, run_provider

from .app import PROVIDER_KIND, build
from .cloud import cloud_region, quiet_sdk_loggers
from .config import OPTIONS, Settings, describe, settings_from_args

__all__ = ["COMMAND", "main"]


def _load(args: argparse.Namespace, env: Mapping[str, str]) -> Settings:
    quiet_sdk_loggers()
    settings = settings_from_args(args, env)
    cloud_region(settings)  # the cloud must exist in clouds.yaml; contacts nothing
    return settings


@asynccontextmanager
async def _running(settings: Settings) -> AsyncIterator[ProviderServicers]:
    provider = build(settings)
    await provider.start()
    try:
        yield provider.servicers
    finally:
        await provider.stop()


COMMAND = ProviderCommand(
    prog="vmlet-openstack-provider",
    description="The vmlet provider for OpenStack: pods become Nova servers on compute hosts.",
    kind=PROVIDER_KIND,
    options=OPTIONS,
    load=_load,
    running=_running,
    describe=describe,
)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the provider until SIGTERM/SIGINT; returns the exit status."""
    return run_provider(COMMAND, argv)


if __name__ == "__main__":
    sys.exit(main())
