"""A VM's log: its console output, or, where Nova has none, its instance actions as lines.

The console output (`os-getConsoleOutput`) has no timestamps: each line gets the time this
provider first read it, kept per server in a `ConsoleJournal`, so a line has the same time on
every call and since_time selects console lines too (within the provider's lifetime). A history
with tail_lines reads only that many lines (Nova's `length`). Following polls the last `_WINDOW`
lines every --log-poll-seconds and sends the lines after the longest overlap between what it sent
and what it reads now, so a console that scrolls past the window loses nothing that was read.

Instance actions (create, start, stop, migrate, resize, ...) are the fallback when the console
cannot be read (a hypervisor without one answers 409 or 501): one line per action, at its start
time, with its request ID; following sends the actions that appear.

Which of these lines a request wants is `vmlet_contract.containerlogs`'s to decide.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from vmlet_contract import ProviderError

from .cloud import Cloud
from .records import parse_time

__all__ = ["ConsoleJournal", "LogLine", "new_lines", "server_log"]

_WINDOW: Final = 1000
_SERVERS: Final = 512
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


class ConsoleJournal:
    """When each console line of a server was first read: the last `_WINDOW` lines of the last
    `_SERVERS` servers read, so a line read again keeps its first time."""

    def __init__(self) -> None:
        self._servers: OrderedDict[str, list[LogLine]] = OrderedDict()

    def stamp(self, server_id: str, texts: Sequence[str], now: datetime) -> list[LogLine]:
        """`texts` (the console's last lines, read now) with the time each was first read."""
        known = self._servers.pop(server_id, [])
        fresh = new_lines([line.text for line in known], texts)
        old = len(texts) - len(fresh)
        times = [line.time for line in known[max(len(known) - old, 0) :]]
        # Lines older than the journal's window are at least as old as its first line.
        times = [known[0].time if known else now] * (old - len(times)) + times
        lines = [LogLine(t, text) for t, text in zip(times, texts[:old], strict=True)]
        lines += [LogLine(now, text) for text in fresh]
        self._servers[server_id] = (known + lines[old:])[-_WINDOW:]
        while len(self._servers) > _SERVERS:
            self._servers.popitem(last=False)
        return lines


class _Source:
    """Reads the log of one server: console first, instance actions when there is none."""

    def __init__(self, cloud: Cloud, journal: ConsoleJournal, server_id: str) -> None:
        self._cloud = cloud
        self._journal = journal
        self._server_id = server_id
        self.console: bool | None = None

    async def console_lines(self, length: int | None) -> list[LogLine] | None:
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
        return self._journal.stamp(self._server_id, text.splitlines(), datetime.now(UTC))

    async def action_lines(self) -> list[LogLine]:
        actions = await self._cloud.call(
            "list instance actions", lambda api: api.instance_actions(self._server_id), read=True
        )
        lines = [line for a in actions if (line := _action_line(a)) is not None]
        return sorted(lines, key=lambda line: line.time)


async def server_log(
    cloud: Cloud,
    journal: ConsoleJournal,
    server_id: str,
    *,
    tail_lines: int | None,
    poll_seconds: float,
    alive: Callable[[], bool],
) -> tuple[list[LogLine], AsyncIterator[LogLine]]:
    """The log of a server, as the module docstring says: its history (at least the last
    `tail_lines` lines when set, all otherwise) and its lines to come, which end once `alive()`
    turns false (the pod went away, or the provider is stopping)."""
    source = _Source(cloud, journal, server_id)
    console = await source.console_lines(tail_lines)
    if console is not None:
        return console, _followed_console(source, console, poll_seconds, alive)
    actions = await source.action_lines()
    return actions, _followed_actions(source, actions, poll_seconds, alive)


async def _followed_console(
    source: _Source, history: list[LogLine], poll_seconds: float, alive: Callable[[], bool]
) -> AsyncIterator[LogLine]:
    sent = [line.text for line in history[-_WINDOW:]]
    while alive():
        await asyncio.sleep(poll_seconds)
        current = await source.console_lines(_WINDOW)
        if current is None:
            return
        texts = [line.text for line in current]
        fresh = new_lines(sent, texts)
        for line in current[len(current) - len(fresh) :] if fresh else []:
            yield line
        sent = texts


async def _followed_actions(
    source: _Source, history: list[LogLine], poll_seconds: float, alive: Callable[[], bool]
) -> AsyncIterator[LogLine]:
    seen = {(line.time, line.text) for line in history}
    while alive():
        await asyncio.sleep(poll_seconds)
        for line in await source.action_lines():
            if (line.time, line.text) not in seen:
                seen.add((line.time, line.text))
                yield line
