"""Into the guest: an Exec stream run over SSH, a PortForward stream relayed over TCP.

Every provider reaches a VM's guest the same way once it knows the guest's address, so the
streams are served here and a provider only says where the guest is:

    requests = aiter(request_iterator)
    start = await guest.exec_start(requests)          # the first message, checked
    host = <the VM's guest IP, or FailedPrecondition>
    async for response in guest.exec_over_ssh(start, requests, host):
        yield response

Exec logs in with the `GuestCredentials` the facade resolved from the VM's Secret (a key, a
password or both; host keys checked against their known_hosts when given) and runs the command
as an SSH "exec" request. SSH carries one command line, not an argv, so the command's words are
quoted for a POSIX shell (the guest user's login shell runs it, as `ssh host -- cmd` does). With
tty a terminal of the start's size is requested and resized with each resize message; stdout and
stderr then merge, as on a kubelet. Stdin not attached is closed at once. The exit status ends
the stream (a signal as 128+n, like a shell; a session that ends without a status as 255, like
ssh). What keeps the command from running at all is a status of the call: FAILED_PRECONDITION
without credentials, with a refused login or an unknown host key, UNAVAILABLE when the guest's
SSH server cannot be reached, INVALID_ARGUMENT for a key that cannot be read.

PortForward connects to host:port over TCP and relays bytes both ways until the guest closes
its side; the client's close half-closes the connection towards the guest (as the kubelet does).
A connection that cannot be made or breaks ends the stream with its error message.

Nothing here logs, stores or returns credentials: error messages name the user and the address,
never a key or password. asyncssh's per-connection INFO chatter is turned down to WARNING.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import signal
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncssh

from vmlet.provider.v1 import kubelet_endpoint_service_pb2 as pb

from .errors import FailedPrecondition, InvalidArgument, ProviderError, Unavailable

__all__ = [
    "DEFAULT_SSH_PORT",
    "DEFAULT_USERNAME",
    "Timeouts",
    "exec_over_ssh",
    "exec_start",
    "forward_tcp",
    "port_forward_start",
]

_log = logging.getLogger(__name__)
logging.getLogger("asyncssh").setLevel(logging.WARNING)

#: The SSH port when the credentials name none.
DEFAULT_SSH_PORT = 22
#: The user when the credentials name none (the facade fills it in from the Secret, with this
#: same default).
DEFAULT_USERNAME = "root"
_CHUNK = 64 * 1024
_TERM = "xterm"


@dataclass(frozen=True)
class Timeouts:
    """How long a guest may take: to accept TCP, to finish the SSH login, and how often a
    silent session is probed (three unanswered probes end it)."""

    connect: float = 15.0
    login: float = 30.0
    keepalive: float = 30.0


# -- the first message --------------------------------------------------------------------------


async def exec_start(requests: AsyncIterator[pb.ExecRequest]) -> pb.ExecStart:
    """The start of an Exec stream (its first message); INVALID_ARGUMENT when it is not one or
    names no command."""
    first = await anext(requests, None)
    if first is None or first.WhichOneof("kind") != "start":
        raise InvalidArgument("the first Exec message must carry start")
    if not first.start.command:
        raise InvalidArgument("exec needs a command")
    return first.start


async def port_forward_start(
    requests: AsyncIterator[pb.PortForwardRequest],
) -> pb.PortForwardStart:
    """The start of a PortForward stream; INVALID_ARGUMENT when it is not one or its port is not
    a TCP port."""
    first = await anext(requests, None)
    if first is None or first.WhichOneof("kind") != "start":
        raise InvalidArgument("the first PortForward message must carry start")
    if not 0 < first.start.port < 65536:
        raise InvalidArgument(f"port {first.start.port} is not a TCP port")
    return first.start


# -- exec -----------------------------------------------------------------------------------------


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _reason(err: OSError) -> str:
    """"Connection refused" rather than asyncio's "Connect call failed ('10.0.0.5', 22)"."""
    return os.strerror(err.errno).lower() if err.errno else str(err)


def _login_options(credentials: pb.GuestCredentials) -> dict[str, Any]:
    """asyncssh options that use these credentials and nothing of the provider's own: no
    ~/.ssh/config, default keys, agent, known_hosts or GSSAPI."""
    key = bytes(credentials.private_key)
    if not key.strip() and not credentials.password:
        raise FailedPrecondition(
            "exec in this VM needs an SSH login: name a Secret with ssh-privatekey (or password) "
            "in the VirtualMachine's spec.access.sshSecretName (annotation vmlet.io/ssh-secret "
            "on a bare pod)"
        )
    options: dict[str, Any] = {
        "username": credentials.username or DEFAULT_USERNAME,
        "config": [],
        "agent_path": None,
        "gss_host": None,
        "host_based_auth": False,
        "x509_trusted_certs": None,
        "client_keys": None,
        "password": credentials.password or None,
        "known_hosts": None,
    }
    if key.strip():
        try:
            options["client_keys"] = [asyncssh.import_private_key(key)]
        except (asyncssh.KeyImportError, ValueError) as err:
            raise InvalidArgument(f"the SSH private key cannot be read: {err}") from None
    known = bytes(credentials.known_hosts).decode(errors="replace")
    if known.strip():
        try:
            options["known_hosts"] = asyncssh.import_known_hosts(known)
        except (ValueError, asyncssh.KeyImportError) as err:
            raise InvalidArgument(f"the known_hosts lines cannot be read: {err}") from None
    return options


async def _connect(
    host: str, port: int, options: dict[str, Any], timeouts: Timeouts
) -> asyncssh.SSHClientConnection:
    where = _address(host, port)
    user = options["username"]
    try:
        return await asyncssh.connect(
            host,
            port,
            connect_timeout=timeouts.connect,
            login_timeout=timeouts.login,
            keepalive_interval=timeouts.keepalive,
            keepalive_count_max=3,
            **options,
        )
    except asyncssh.PermissionDenied:
        raise FailedPrecondition(
            f"the guest's SSH server at {where} refused the login as {user!r}: check the key or "
            "password (and username) in the VM's SSH Secret"
        ) from None
    except asyncssh.HostKeyNotVerifiable as err:
        raise FailedPrecondition(
            f"the guest's SSH host key at {where} is not trusted by the known_hosts of the VM's "
            f"SSH Secret: {err.reason}"
        ) from None
    except asyncssh.DisconnectError as err:
        raise Unavailable(f"the guest's SSH server at {where} hung up: {err.reason}") from None
    except TimeoutError:
        raise Unavailable(
            f"the guest's SSH server at {where} did not answer within "
            f"{timeouts.connect:.0f}s (connect) / {timeouts.login:.0f}s (login)"
        ) from None
    except OSError as err:
        raise Unavailable(
            f"cannot reach the guest's SSH server at {where}: {_reason(err)}"
        ) from None


def _exit(process: asyncssh.SSHClientProcess[bytes]) -> pb.StreamExit:
    if process.exit_signal is not None:
        name = process.exit_signal[0]
        try:
            number = int(signal.Signals[f"SIG{name}"])
        except KeyError:
            number = 0
        return pb.StreamExit(exit_code=128 + number, message=f"killed by signal {name}")
    status = process.exit_status
    if status is None:
        return pb.StreamExit(exit_code=255, message="the guest ended the session without an "
                                                    "exit status")
    return pb.StreamExit(exit_code=status)


class _Feed:
    """Moves the client's messages into the remote process: stdin, its close, resizes."""

    def __init__(self, process: asyncssh.SSHClientProcess[bytes], start: pb.ExecStart) -> None:
        self._process = process
        self._start = start
        self._eof = False
        self.error: ProviderError | None = None

    def close_stdin(self) -> None:
        if not self._eof:
            self._eof = True
            with contextlib.suppress(OSError, asyncssh.Error):
                self._process.stdin.write_eof()

    async def run(self, requests: AsyncIterator[pb.ExecRequest]) -> None:
        if not self._start.stdin:
            self.close_stdin()
        try:
            async for message in requests:
                kind = message.WhichOneof("kind")
                if kind == "stdin":
                    if self._start.stdin and not self._eof:
                        self._process.stdin.write(message.stdin)
                        await self._process.stdin.drain()
                elif kind == "close_stdin":
                    self.close_stdin()
                elif kind == "resize":
                    if self._start.tty and message.resize.width and message.resize.height:
                        self._process.change_terminal_size(message.resize.width,
                                                           message.resize.height)
                elif kind == "start":
                    self.error = InvalidArgument("start may only be the first Exec message")
                    self._process.close()
                    return
        except (OSError, asyncssh.Error):
            return  # the session is going away; the readers see it end
        self.close_stdin()  # the client will send nothing more


async def exec_over_ssh(
    start: pb.ExecStart,
    requests: AsyncIterator[pb.ExecRequest],
    host: str,
    *,
    timeouts: Timeouts = Timeouts(),
) -> AsyncGenerator[pb.ExecResponse, None]:
    """Run ``start.command`` in the guest at ``host`` over SSH; the responses end with its exit.

    ``requests`` is the rest of the Exec stream (after ``start``). Closing the generator (the
    client went away) closes the SSH session, which hangs the command up.
    """
    if not start.command:
        raise InvalidArgument("exec needs a command")
    options = _login_options(start.credentials)
    port = start.credentials.port or DEFAULT_SSH_PORT
    if not 0 < port < 65536:
        raise InvalidArgument(f"SSH port {port} is not a TCP port")
    conn = await _connect(host, port, options, timeouts)
    tasks: list[asyncio.Task[None]] = []
    try:
        size = start.terminal_size
        try:
            process: asyncssh.SSHClientProcess[bytes] = await conn.create_process(
                shlex.join(start.command),
                encoding=None,
                term_type=_TERM if start.tty else None,
                term_size=(size.width, size.height) if start.tty and size.width else None,
                request_pty="force" if start.tty else False,
            )
        except asyncssh.ChannelOpenError as err:
            raise Unavailable(
                f"the guest's SSH server at {_address(host, port)} refused a session: "
                f"{err.reason}"
            ) from None
        queue: asyncio.Queue[pb.ExecResponse | None] = asyncio.Queue(16)
        lost: list[str] = []

        async def read(stream: asyncssh.SSHReader[bytes], kind: str, wanted: bool) -> None:
            # None marks the stream's end; a cancelled reader marks nothing (nobody waits).
            try:
                while chunk := await stream.read(_CHUNK):
                    if wanted:
                        await queue.put(pb.ExecResponse(stdout=chunk) if kind == "stdout"
                                        else pb.ExecResponse(stderr=chunk))
            except (OSError, asyncssh.Error) as err:
                lost.append(str(getattr(err, "reason", "") or err))
            await queue.put(None)

        feed = _Feed(process, start)
        readers = [read(process.stdout, "stdout", start.stdout or start.tty)]
        if not start.tty:
            readers.append(read(process.stderr, "stderr", start.stderr))
        tasks = [asyncio.create_task(r, name="guest-exec-read") for r in readers]
        tasks.append(asyncio.create_task(feed.run(requests), name="guest-exec-feed"))
        open_streams = len(readers)
        while open_streams:
            item = await queue.get()
            if item is None:
                open_streams -= 1
            else:
                yield item
        if feed.error is not None:
            raise feed.error
        if lost:
            yield pb.ExecResponse(exit=pb.StreamExit(
                exit_code=255, message=f"the SSH session with the guest broke: {lost[0]}"))
            return
        with contextlib.suppress(OSError, asyncssh.Error):
            await process.wait_closed()
        yield pb.ExecResponse(exit=_exit(process))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        conn.close()
        with contextlib.suppress(OSError, asyncssh.Error, TimeoutError):
            await asyncio.wait_for(conn.wait_closed(), 5.0)


# -- port-forward -------------------------------------------------------------------------------


async def forward_tcp(
    requests: AsyncIterator[pb.PortForwardRequest],
    host: str,
    port: int,
    *,
    connect_timeout: float = 15.0,
) -> AsyncGenerator[pb.PortForwardResponse, None]:
    """Relay the rest of a PortForward stream to ``host``:``port`` over TCP until the guest
    closes the connection; an error message ends the stream when it cannot be made or breaks."""
    where = _address(host, port)
    try:
        async with asyncio.timeout(connect_timeout):
            reader, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        yield pb.PortForwardResponse(
            error=f"connecting to {where} in the guest timed out after {connect_timeout:.0f}s")
        return
    except OSError as err:
        yield pb.PortForwardResponse(
            error=f"cannot connect to {where} in the guest: {_reason(err)}")
        return

    def half_close() -> None:
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof() and not writer.is_closing():
                writer.write_eof()

    async def feed() -> None:
        try:
            async for message in requests:
                kind = message.WhichOneof("kind")
                if kind == "data":
                    writer.write(message.data)
                    await writer.drain()
                elif kind == "close":
                    break
        except (OSError, RuntimeError):
            return  # the connection broke; the reader reports it
        half_close()

    feeding = asyncio.create_task(feed(), name="guest-portforward-feed")
    try:
        while True:
            try:
                chunk = await reader.read(_CHUNK)
            except OSError as err:
                yield pb.PortForwardResponse(
                    error=f"the connection to {where} in the guest broke: {_reason(err)}")
                return
            if not chunk:
                return
            yield pb.PortForwardResponse(data=chunk)
    finally:
        feeding.cancel()
        await asyncio.gather(feeding, return_exceptions=True)
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), 5.0)
