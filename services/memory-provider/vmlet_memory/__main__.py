"""`vmlet-memory-provider`: the in-memory reference provider as its own process.

    python -m vmlet_memory --listen 127.0.0.1:0 --port-file /tmp/port --nodes 2

It loses everything when it exits unless --state-file is given, in which case the state is
written (atomically) after every change and read back at start. SIGTERM or SIGINT stops it
gracefully with exit status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from vmlet_contract import (
    ProviderError,
    add_server_arguments,
    check_server_arguments,
    configure_logging_from_args,
    serve_from_args,
)

from .app import PROVIDER_KIND, build
from .cloud import CloudOptions

__all__ = ["main", "parse_args"]

_log = logging.getLogger("vmlet_memory")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The provider's flags: the shared server flags plus the shape of the pretend IaaS."""
    parser = argparse.ArgumentParser(
        prog="vmlet-memory-provider",
        description="The vmlet in-memory reference provider: VMs that exist only in memory.",
    )
    add_server_arguments(parser)
    cloud = parser.add_argument_group("cloud")
    cloud.add_argument("--nodes", type=int, default=2, help="how many hosts (nodes) to serve")
    cloud.add_argument("--node-prefix", default="vmlet-memory", help="node names are PREFIX-<i>")
    cloud.add_argument("--cpu", default="64", help="CPU of each node, as a quantity")
    cloud.add_argument("--memory", default="256Gi", help="memory of each node, as a quantity")
    cloud.add_argument("--pods", type=int, default=250, help="pods each node admits")
    cloud.add_argument(
        "--start-delay-seconds",
        type=float,
        default=0.0,
        help="how long a pod stays Pending before it runs",
    )
    cloud.add_argument(
        "--ip-base", default="10.88.0.0/16", help="the network pod addresses come from"
    )
    cloud.add_argument(
        "--images",
        default="",
        help="the images the IaaS has, comma-separated (default: every well-formed name)",
    )
    cloud.add_argument(
        "--state-file",
        type=Path,
        default=None,
        help="keep the state in this JSON file across restarts",
    )
    args = parser.parse_args(argv)
    check_server_arguments(parser, args)
    return args


async def _serve(args: argparse.Namespace) -> None:
    options = CloudOptions(
        nodes=args.nodes,
        node_prefix=args.node_prefix,
        cpu=args.cpu,
        memory=args.memory,
        pods=args.pods,
        start_delay_seconds=args.start_delay_seconds,
        ip_base=args.ip_base,
        images=tuple(name.strip() for name in args.images.split(",") if name.strip()),
    )
    provider = build(options, state_file=args.state_file)
    await serve_from_args(args, provider.servicers, provider=PROVIDER_KIND)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the provider until SIGTERM/SIGINT; returns the exit status."""
    args = parse_args(argv)
    configure_logging_from_args(args)
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:
        return 130
    except (OSError, ValueError, RuntimeError, ProviderError) as exc:
        _log.error("cannot serve", extra={"error": str(exc)})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
