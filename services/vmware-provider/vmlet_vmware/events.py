"""A VM's vSphere events and tasks as log lines: what `kubectl logs` shows for a VM pod.

A reader opens an EventHistoryCollector and a TaskHistoryCollector filtered to the VM, rewinds
both and reads them page by page. Following a log reads the next pages of the same collectors
every --log-poll-seconds: new events and tasks come out in order, nothing twice. The collectors
belong to the session and are destroyed when the reader closes.

A line reads "<event type>: <vCenter's message>" for an event and
"task <description id> <state>[: <error>]" for a task.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pyVmomi import vim

from .session import Connection, Session

__all__ = ["EventReader", "LogLine"]

_PAGE = 100


@dataclass(frozen=True)
class LogLine:
    """One line of a VM's log."""

    time: datetime
    text: str


def _short(obj: Any) -> str:
    return str(type(obj).__name__).rsplit(".", 1)[-1]


def _event_line(event: Any) -> LogLine:
    message = str(getattr(event, "fullFormattedMessage", "") or "").strip()
    when = getattr(event, "createdTime", None) or datetime.now(UTC)
    return LogLine(when, f"{_short(event)}: {message}" if message else _short(event))


def _task_line(task: Any) -> LogLine:
    when = task.completeTime or task.startTime or task.queueTime or datetime.now(UTC)
    text = f"task {task.descriptionId or task.name or 'unknown'} {task.state}"
    error = task.error
    if error is not None:
        detail = str(getattr(error, "msg", "") or "").strip()
        text += f": {_short(error)}" + (f" ({detail})" if detail else "")
    return LogLine(when, text)


@dataclass
class _Collectors:
    events: Any
    tasks: Any


def _open(conn: Connection, vm: str) -> _Collectors:
    content = conn.content
    target = conn.mo(vim.VirtualMachine, vm)
    event_filter = vim.event.EventFilterSpec(
        entity=vim.event.EventFilterSpec.ByEntity(entity=target, recursion="self")
    )
    task_filter = vim.TaskFilterSpec(
        entity=vim.TaskFilterSpec.ByEntity(entity=target, recursion="self")
    )
    events = content.eventManager.CreateCollectorForEvents(filter=event_filter)
    try:
        tasks = content.taskManager.CreateCollectorForTasks(filter=task_filter)
    except BaseException:
        events.DestroyCollector()
        raise
    events.RewindCollector()
    tasks.RewindCollector()
    return _Collectors(events, tasks)


def _read(collectors: _Collectors) -> list[LogLine]:
    lines: list[LogLine] = []
    while page := collectors.events.ReadNextEvents(maxCount=_PAGE):
        lines.extend(_event_line(e) for e in page)
    while page := collectors.tasks.ReadNextTasks(maxCount=_PAGE):
        lines.extend(_task_line(t) for t in page)
    lines.sort(key=lambda line: line.time)
    return lines


def _close(collectors: _Collectors) -> None:
    for collector in (collectors.events, collectors.tasks):
        try:
            collector.DestroyCollector()
        except Exception:  # the session (and its collectors) may be gone already
            pass


class EventReader:
    """Reads one VM's events and tasks; use as an async context manager."""

    def __init__(self, session: Session, vm: str) -> None:
        self._session = session
        self._vm = vm
        self._collectors: _Collectors | None = None

    async def __aenter__(self) -> EventReader:
        vm = self._vm

        def start(conn: Connection) -> _Collectors:
            return _open(conn, vm)

        self._collectors = await self._session.call(start, doing=f"read the events of VM {vm}")
        return self

    async def read(self) -> list[LogLine]:
        """The lines not read yet, oldest first."""
        collectors = self._collectors
        assert collectors is not None

        def more(conn: Connection) -> list[LogLine]:
            return _read(collectors)

        return await self._session.call(more, doing=f"read the events of VM {self._vm}")

    async def __aexit__(self, *exc: object) -> None:
        collectors, self._collectors = self._collectors, None
        if collectors is None:
            return

        def close(conn: Connection) -> None:
            _close(collectors)

        try:
            await self._session.call(close, doing="close event collectors")
        except Exception:  # best effort: the collectors die with the session anyway
            pass
