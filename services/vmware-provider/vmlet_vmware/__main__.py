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

import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from vmlet_contract import ProviderCommand, ProviderServicers, run_provider

from .app import PROVIDER_KIND, build
from .config import OPTIONS, Settings, describe, settings_from_args

__all__ = ["COMMAND", "main"]


@asynccontextmanager
async def _running(settings: Settings) -> AsyncIterator[ProviderServicers]:
    provider = build(settings)
    await provider.start()
    try:
        yield provider.servicers
    finally:
        await provider.stop()


COMMAND = ProviderCommand(
    prog="vmlet-vmware-provider",
    description="The vmlet provider for VMware vSphere: pods become VMs on ESXi hosts.",
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
