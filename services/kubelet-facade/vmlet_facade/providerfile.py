"""The providers file: ``NAME=HOST:PORT`` lines that the running facade keeps re-reading.

Swapping a provider is one address change: edit the line of NAME (a ConfigMap mounted as this
file in Kubernetes, a bind-mounted file under docker compose) and the facade repoints that
provider within ``interval`` seconds, without a restart. Adding or removing a NAME still takes a
restart (nodes and pods are registered per name), which is logged rather than half-done.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

__all__ = ["follow_providers_file", "parse_providers", "read_providers_file"]

log = logging.getLogger(__name__)


def parse_providers(text: str) -> dict[str, str]:
    """``NAME=HOST:PORT`` per line (commas also separate); blank lines and ``#`` comments skip."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        for item in filter(None, (v.strip() for v in line.split("#", 1)[0].split(","))):
            name, sep, address = item.partition("=")
            if not sep or not name.strip() or not address.strip():
                raise ValueError(f"a provider is NAME=HOST:PORT, not {item!r}")
            out[name.strip()] = address.strip()
    return out


def read_providers_file(path: Path) -> dict[str, str]:
    return parse_providers(path.read_text())


async def follow_providers_file(
    path: Path, current: dict[str, str], repoint: Callable[[str, str], Awaitable[None]], *,
    interval: float = 2.0,
) -> None:
    """Re-read ``path`` every ``interval`` seconds; ``repoint(name, address)`` each provider whose
    address changed. ``current`` (name -> address) is kept up to date."""
    last = ""
    while True:
        await asyncio.sleep(interval)
        try:
            text = await asyncio.to_thread(path.read_text)
            if text == last:
                continue
            last = text
            wanted = parse_providers(text)
        except (OSError, ValueError) as err:
            log.warning("providers file %s not read: %s", path, err)
            continue
        for name, address in wanted.items():
            if name in current and current[name] != address:
                log.info("provider %s: %s -> %s", name, current[name], address)
                current[name] = address
                try:
                    await repoint(name, address)
                except Exception:  # a failed repoint must not take the facade down
                    log.exception("provider %s not fully repointed to %s", name, address)
        changed = sorted(set(wanted) ^ set(current))
        if changed:
            log.warning("providers %s added or removed in %s: restart the facade to apply",
                        ", ".join(changed), path)
