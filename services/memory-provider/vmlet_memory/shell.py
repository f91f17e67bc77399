"""The tiny built-in shell that Exec runs in a pretend guest, so tests can prove the streams.

Commands: `echo [-n] ARGS`, `cat` (stdin to stdout until stdin closes), `exit [N]`, `hostname`,
`true`, `false`, `env`/`printenv [NAME]`, `sleep SECONDS`, `poweroff [N]` (the guest shuts
itself down, leaving exit code N for its pod's container), and `sh -c 'CMD'` (one command, no
pipes). Anything else writes "CMD: command not found" to stderr and exits 127, as a shell does.

A command is an async generator of `Output` chunks ending with an `Exit`.
"""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Literal

__all__ = ["Exit", "Guest", "Output", "Stdin", "run"]


@dataclass(frozen=True)
class Output:
    """Bytes a command wrote to stdout or stderr."""

    stream: Literal["stdout", "stderr"]
    data: bytes


@dataclass(frozen=True)
class Exit:
    """The command ended with `code`; `message` says why when it never ran."""

    code: int
    message: str = ""


@dataclass(frozen=True)
class Guest:
    """What a command can see of its guest."""

    hostname: str
    env: Mapping[str, str]
    #: Shuts the guest down with an exit code (after the command's session ends).
    poweroff: Callable[[int], None] = lambda code: None


#: Reads the next chunk of stdin; None once stdin is closed.
Stdin = Callable[[], Awaitable[bytes | None]]

Event = Output | Exit
_Command = Callable[[list[str], Stdin, Guest], AsyncIterator[Event]]


def _out(text: str) -> Output:
    return Output("stdout", text.encode())


def _err(text: str) -> Output:
    return Output("stderr", text.encode())


async def _echo(args: list[str], stdin: Stdin, guest: Guest) -> AsyncIterator[Event]:
    newline = True
    if args[:1] == ["-n"]:
        newline, args = False, args[1:]
    yield _out(" ".join(args) + ("\n" if newline else ""))
    yield Exit(0)


async def _cat(args: list[str], stdin: Stdin, guest: Guest) -> AsyncIterator[Event]:
    if args:
        yield _err(f"cat: {args[0]}: No such file or directory\n")
        yield Exit(1)
        return
    while (chunk := await stdin()) is not None:
        if chunk:
            yield Output("stdout", chunk)
    yield Exit(0)


async def _exit(args: list[str], stdin: Stdin, guest: Guest) -> AsyncIterator[Event]:
    try:
        code = int(args[0]) if args else 0
    except ValueError:
        yield _err(f"exit: {args[0]}: numeric argument required\n")
        code = 2
    yield Exit(code & 0xFF)


async def _hostname(args: list[str], stdin: Stdin, guest: Guest) -> AsyncIterator[Event]:
    yield _out(guest.hostname + "\n")
    yield Exit(0)


async def _true(args: list[str], stdin: Stdin, guest: Guest) -> AsyncIterator[Event]:
    yield Exit(0)


async def _false(args: list[str], stdin: Stdin, guest: Guest) -> AsyncIterator[Event]:
    yield Exit(1)


async def _env(args: list[str], stdin: Stdin, guest: Guest) -> AsyncIterator[Event]:
    if args:
        value = guest.env.get(args[0])
        if value is None:
            yield Exit(1)
            return
        yield _out(value + "\n")
    else:
        yield _out("".join(f"{k}={v}\n" for k, v in guest.env.items()))
    yield Exit(0)


async def _sleep(args: list[str], stdin: Stdin, guest: Guest) -> AsyncIterator[Event]:
    try:
        seconds = float(args[0]) if args else 0.0
    except ValueError:
        yield _err(f"sleep: invalid time interval '{args[0]}'\n")
        yield Exit(1)
        return
    await asyncio.sleep(seconds)
    yield Exit(0)


async def _poweroff(args: list[str], stdin: Stdin, guest: Guest) -> AsyncIterator[Event]:
    try:
        code = int(args[0]) if args else 0
    except ValueError:
        yield _err(f"poweroff: {args[0]}: not an exit code\n")
        yield Exit(2)
        return
    if not 0 <= code <= 255:
        yield _err(f"poweroff: {code}: an exit code is 0-255\n")
        yield Exit(2)
        return
    # The session ends first, as an SSH session to a guest that halts.
    asyncio.get_running_loop().call_later(0.2, guest.poweroff, code)
    yield _out("powering off\n")
    yield Exit(0)


async def _sh(args: list[str], stdin: Stdin, guest: Guest) -> AsyncIterator[Event]:
    if len(args) < 2 or args[0] != "-c":
        yield _err("sh: only 'sh -c COMMAND' is supported here\n")
        yield Exit(2)
        return
    try:
        argv = shlex.split(args[1])
    except ValueError as exc:
        yield _err(f"sh: {exc}\n")
        yield Exit(2)
        return
    async for event in run(argv, stdin, guest):
        yield event


_COMMANDS: dict[str, _Command] = {
    "echo": _echo,
    "cat": _cat,
    "exit": _exit,
    "hostname": _hostname,
    "true": _true,
    "false": _false,
    "env": _env,
    "printenv": _env,
    "sleep": _sleep,
    "poweroff": _poweroff,
    "sh": _sh,
    "bash": _sh,
    "/bin/sh": _sh,
    "/bin/bash": _sh,
}


async def run(argv: list[str], stdin: Stdin, guest: Guest) -> AsyncIterator[Event]:
    """Runs `argv`; the last event is always an `Exit`."""
    if not argv:
        yield Exit(0)
        return
    command = _COMMANDS.get(argv[0])
    if command is None:
        yield _err(f"{argv[0]}: command not found\n")
        yield Exit(127, f"{argv[0]}: command not found")
        return
    async for event in command(argv[1:], stdin, guest):
        yield event
