"""A TCP front for a server: forwards every connection on ``--listen`` to ``--target``.

The fault-injection suite puts one in front of vcsim and kills it to play a vCenter whose service
goes away and comes back: clients see connections reset and refused, as they would, while the
inventory (vcsim's memory) stays, as a real vCenter's database does. vcsim itself cannot be
restarted with its inventory: it keeps it in memory only.

    python -m vmlet_localenv.faults.tcpfront --listen 127.0.0.1:PORT --target 127.0.0.1:PORT
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def _serve(listen: tuple[str, int], target: tuple[str, int]) -> None:
    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    server = await asyncio.start_server(forward, *listen, reuse_address=True)
    print(f"forwarding {listen[0]}:{listen[1]} to {target[0]}:{target[1]}", flush=True)
    async with server:
        await server.serve_forever()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=_address, required=True)
    parser.add_argument("--target", type=_address, required=True)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.listen, args.target))


if __name__ == "__main__":
    main()
