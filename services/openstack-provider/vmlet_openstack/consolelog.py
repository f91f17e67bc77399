"""A VM's log: its console output, or, where Nova has none, its instance actions as lines.

The console output (`os-getConsoleOutput`) has no timestamps: each line gets the time it was
first read, and since_time cannot select console lines (all are sent). tail_lines is handed to
Nova as `length`. Following polls the last `_WINDOW` lines every --log-poll-seconds and sends the
lines after the longest overlap between what it sent and what it reads now, so a console that
scrolls past the window loses nothing that was read.

Instance actions (create, start, stop, migrate, resize, ...) are the fallback when the console
cannot be read (a hypervisor without one answers 409 or 501): one line per action, at its start
time, with its request ID; since_time and tail_lines select among them, and following sends the
actions that appear.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from vmlet_contract import ProviderError

from .cloud import Cloud
from .records import parse_time

__all__ = ["LogLine", "new_lines", "server_log"]

_WINDOW: Final = 1000
_NO_CONSOLE: Final = frozenset({"FAILED_PRECONDITION", "UNIMPLEMENTED", "NOT_FOUND"})


@dataclass(frozen=True)
class LogLine:
    """One line of a VM's log."""

    time: datetime
    text: str


def new_lines(sent: Sequence[str], now: Sequence[str]) -> list[str]:
    """The lines of `now` (the console's last lines, read again) that come after what was sent
    (`sent`, the lines read last time): after the latest place where all of `sent` appears in
    `now`, or, when the console scrolled past the start of `sent`, after the longest prefix of
    `now` that ends `sent`; all of `now` when they have nothing in common."""
    size = len(sent)
    if not size:
        return list(now)
    tail = list(sent)
    for end in range(len(now), size - 1, -1):
        if now[end - 1] == tail[-1] and list(now[end - size : end]) == tail:
            return list(now[end:])
    for end in range(min(len(now), size - 1), 0, -1):
        if now[end - 1] == tail[-1] and list(now[:end]) == tail[size - end :]:
            return list(now[end:])
    return list(now)


def _action_line(action: dict[str, Any]) -> LogLine | None:
    when = parse_time(action.get("start_time"))
    if when is None:
        return None
    parts = [str(action.get("action") or "action")]
    if action.get("message"):
        parts.append(f"({action['message']})")
    if action.get("request_id"):
        parts.append(f"request {action['request_id']}")
    return LogLine(time=when, text=" ".join(parts))


class _Source:
    """Reads the log of one server: console first, instance actions when there is none."""

    def __init__(self, cloud: Cloud, server_id: str) -> None:
        self._cloud = cloud
        self._server_id = server_id
        self.console: bool | None = None

    async def console_lines(self, length: int | None) -> list[str] | None:
        if self.console is False:
            return None
        try:
            text = await self._cloud.call(
                "read the console",
                lambda api: api.console_output(self._server_id, length),
                read=True,
            )
        except ProviderError as error:
            if error.code.name in _NO_CONSOLE:
                self.console = False
                return None
            raise
        self.console = True
        return text.splitlines()

    async def action_lines(self) -> list[LogLine]:
        actions = await self._cloud.call(
            "list instance actions", lambda api: api.instance_actions(self._server_id), read=True
        )
        lines = [line for a in actions if (line := _action_line(a)) is not None]
        return sorted(lines, key=lambda line: line.time)


async def server_log(
    cloud: Cloud,
    server_id: str,
    *,
    tail_lines: int | None,
    since: datetime | None,
    follow: bool,
    poll_seconds: float,
    alive: Callable[[], bool],
) -> AsyncIterator[LogLine]:
    """The log of a server, as the module docstring says; a followed log ends once `alive()`
    turns false (the pod went away, or the provider is stopping)."""
    source = _Source(cloud, server_id)
    length = tail_lines if tail_lines is not None and tail_lines >= 0 else None
    console = await source.console_lines(length)
    if console is not None:
        now = datetime.now(UTC)
        first = console if length is None else console[len(console) - length :] if length else []
        for text in first:
            yield LogLine(time=now, text=text)
        sent = console[-_WINDOW:]
        while follow and alive():
            await asyncio.sleep(poll_seconds)
            current = await source.console_lines(_WINDOW)
            if current is None:
                return
            now = datetime.now(UTC)
            for text in new_lines(sent, current):
                yield LogLine(time=now, text=text)
            sent = current[-_WINDOW:]
        return
    lines = await source.action_lines()
    if since is not None:
        lines = [line for line in lines if line.time >= since]
    if length is not None:
        lines = lines[len(lines) - length :] if length else []
    for line in lines:
        yield line
    seen = {(line.time, line.text) for line in await source.action_lines()}
    while follow and alive():
        await asyncio.sleep(poll_seconds)
        for line in await source.action_lines():
            if (line.time, line.text) not in seen:
                seen.add((line.time, line.text))
                yield line
