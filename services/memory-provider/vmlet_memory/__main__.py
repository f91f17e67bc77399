"""`vmlet-memory-provider`: the in-memory reference provider as its own process.

    python -m vmlet_memory --listen 127.0.0.1:0 --port-file /tmp/port --nodes 2

It loses everything when it exits unless --state-file is given, in which case the state is
written (atomically) after every change and read back at start. See `vmlet_memory.config` for
its settings and `vmlet_contract.cli` for the server's. SIGTERM or SIGINT stops it gracefully
with exit status 0; a bad configuration exits with status 2 before serving.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from vmlet_contract import ProviderCommand, ProviderServicers, run_provider

from .app import PROVIDER_KIND, build
from .config import OPTIONS, Settings, describe, settings_from_args

__all__ = ["COMMAND", "main"]


@asynccontextmanager
async def _running(settings: Settings) -> AsyncIterator[ProviderServicers]:
    yield build(settings.cloud, state_file=settings.state_file).servicers


COMMAND = ProviderCommand(
    prog="vmlet-memory-provider",
    description="The vmlet in-memory reference provider: VMs that exist only in memory.",
    kind=PROVIDER_KIND,
    options=OPTIONS,
    load=settings_from_args,
    running=_running,
    describe=describe,
)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the provider until SIGTERM/SIGINT; returns the exit status."""
    return run_provider(COMMAND, argv)


if __name__ == "__main__":
    sys.exit(main())
