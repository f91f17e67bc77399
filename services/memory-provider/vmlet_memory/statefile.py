"""Optional persistence of the in-memory state as one JSON file, so tests can restart a provider.

Every change marks the state dirty; one writer task snapshots the state (on the event loop, so the
snapshot is consistent) and writes it from a thread, atomically (temporary file, fsync, rename).
Changes that arrive while a write is under way are batched into the next write, so a burst of
1000 CreatePod calls costs a handful of writes, not 1000. `flush()` returns once everything
changed before the call is on disk; RPCs await it before answering, so an acknowledged change
survives a restart. Without --state-file nothing is written and a killed provider forgets all.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["StateFile", "read_state"]

_log = logging.getLogger(__name__)


def read_state(path: Path) -> dict[str, Any] | None:
    """The state saved at `path`, None when there is no file yet."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a state object")
    return data


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class StateFile:
    """Keeps `path` in step with `snapshot()`."""

    def __init__(self, path: Path, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.path = path
        self._snapshot = snapshot
        self._changed = 0
        self._written = 0
        self._writer: asyncio.Task[None] | None = None
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def mark_dirty(self) -> None:
        """Notes a change and makes sure a write will follow."""
        self._changed += 1
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    async def flush(self) -> None:
        """Returns once every change made before the call is written."""
        if self._written >= self._changed:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((self._changed, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_loop())
        await future

    async def _write_loop(self) -> None:
        while self._written < self._changed:
            target = self._changed
            error: BaseException | None = None
            try:
                text = json.dumps(self._snapshot(), separators=(",", ":"))
                await asyncio.to_thread(_write_atomically, self.path, text)
            except Exception as exc:
                _log.error(
                    "cannot write the state file", exc_info=exc, extra={"path": str(self.path)}
                )
                error = exc
            self._written = target
            still_waiting = []
            for wanted, future in self._waiters:
                if wanted > target:
                    still_waiting.append((wanted, future))
                elif not future.done():
                    if error is None:
                        future.set_result(None)
                    else:
                        future.set_exception(RuntimeError(f"cannot write {self.path}: {error}"))
            self._waiters = still_waiting
