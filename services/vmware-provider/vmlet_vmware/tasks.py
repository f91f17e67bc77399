"""Waiting for vSphere tasks, and the base of every class that runs them.

A task is started in a worker thread and waited for from the loop: its state is read at once,
then after a pause that starts at 10 ms and doubles up to 1 s (power and reconfigure tasks often
end within milliseconds, and the second look should not come long after; a task of minutes costs
one read a second), so a long task holds no thread. The state is read through the
PropertyCollector (info.state, info.result, info.error), not as the whole TaskInfo: the TaskInfo
of a first-class-disk task names the VStorageObjectManager as its entity, which pyVmomi refuses
to read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
from pyVmomi import vim

from vmlet_contract import NotFound, ProviderError, Unavailable

from . import faults
from .props import retrieve_one
from .session import Connection, Session

__all__ = ["FIRST_PAUSE_SECONDS", "TaskFailed", "TaskRunner"]

#: The pause before a task's state is read again after it was first read (at once); it then
#: doubles up to 1 s.
FIRST_PAUSE_SECONDS = 0.01


class TaskFailed(Exception):
    """A vSphere task ended in error; `fault` is vCenter's fault, `error` its boundary error."""

    def __init__(self, fault: Any, error: ProviderError) -> None:
        super().__init__(error.message)
        self.fault = fault
        self.error = error


_TASK_PATHS = ("info.state", "info.result", "info.error")


def _task_state(
    conn: Connection, task: str, convert: Callable[[Any], Any] | None
) -> tuple[str, Any, Any]:
    found = retrieve_one(conn.si, conn.mo(vim.Task, task), _TASK_PATHS)
    if found is None:
        raise vim.fault.NotFound(msg=f"task {task} no longer exists")
    state = str(found.get("info.state") or "queued")
    result = found.get("info.result")
    if state == "success" and convert is not None:
        result = convert(result)
    return state, result, found.get("info.error")


class TaskRunner:
    """Runs functions in the session's worker threads and waits for the tasks they start."""

    def __init__(self, session: Session) -> None:
        self._session = session

    async def _call(self, fn: Any, *args: Any, doing: str) -> Any:
        def run(conn: Connection) -> Any:
            return fn(conn, *args)

        return await self._session.call(run, doing=doing)

    # Tasks.

    async def wait_task(
        self, task: str, doing: str, convert: Callable[[Any], Any] | None = None
    ) -> Any:
        """Waits for `task`; returns its result (a managed object as its ID; other results
        through `convert`, called in the worker thread), raises TaskFailed when it fails."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._session.settings.task_timeout_seconds
        delay = FIRST_PAUSE_SECONDS
        while True:
            try:
                state, result, fault = await self._call(_task_state, task, convert, doing=doing)
            except NotFound:
                raise Unavailable(f"{doing}: vCenter lost track of task {task}; retry") from None
            if state == "success":
                return result
            if state == "error":
                raise TaskFailed(fault, faults.to_provider_error(fault, doing))
            if loop.time() > deadline:
                raise ProviderError(
                    f"{doing}: task {task} is still {state} after "
                    f"{self._session.settings.task_timeout_seconds:.0f}s",
                    code=grpc.StatusCode.DEADLINE_EXCEEDED,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def run_task(
        self, fn: Any, *args: Any, doing: str, convert: Callable[[Any], Any] | None = None
    ) -> Any:
        """Starts a task with `fn(connection, *args)` (which returns the task's ID) and waits
        for it; a failed task raises its boundary error."""
        task = await self._call(fn, *args, doing=doing)
        try:
            return await self.wait_task(task, doing, convert)
        except TaskFailed as failed:
            raise failed.error from None
