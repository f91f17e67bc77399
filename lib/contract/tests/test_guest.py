"""The guest streams against asyncssh's own SSH server and plain TCP servers on loopback.

The SSH server plays a guest with a handful of commands (echo, err, exit, cat, tty, sleep,
kill) and records who logged in and what it was asked to run, so the tests see both ends. The
real OpenSSH server is exercised end to end in tests/test_guest_access.py.
"""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncssh
import grpc
import pytest

from vmlet.provider.v1 import kubelet_endpoint_service_pb2 as pb
from vmlet_contract import ProviderError, guest

pytestmark = pytest.mark.timeout(60)


# -- a pretend guest ------------------------------------------------------------------------------


@dataclass
class Guest:
    """What the pretend guest saw."""

    port: int
    host_key: asyncssh.SSHKey
    user_key: asyncssh.SSHKey
    logins: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    hung_up: asyncio.Event = field(default_factory=asyncio.Event)


class _Server(asyncssh.SSHServer):
    def __init__(self, seen: Guest) -> None:
        self._seen = seen

    def begin_auth(self, username: str) -> bool:
        self._seen.logins.append(username)
        return True

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        return (username, password) == ("guest", "s3cret")


async def _handle(seen: Guest, process: asyncssh.SSHServerProcess[bytes]) -> None:
    command = process.command or ""
    seen.commands.append(command)
    argv = shlex.split(command)
    name, args = argv[0], argv[1:]
    if name == "echo":
        process.stdout.write(" ".join(args).encode() + b"\n")
        process.exit(0)
    elif name == "err":
        process.stdout.write(b"out\n")
        process.stderr.write(" ".join(args).encode() + b"\n")
        process.exit(1)
    elif name == "exit":
        process.exit(int(args[0]))
    elif name == "cat":
        while data := await process.stdin.read(4096):
            process.stdout.write(data)
        process.exit(0)
    elif name == "tty":
        width, height = process.get_terminal_size()[:2]
        process.stdout.write(f"{process.get_terminal_type()} {width}x{height}\n".encode())
        while True:
            try:
                if not await process.stdin.read(4096):
                    break
            except asyncssh.TerminalSizeChanged as change:
                process.stdout.write(f"resized {change.width}x{change.height}\n".encode())
        process.exit(0)
    elif name == "sleep":  # until the client hangs up (stdin is never closed otherwise)
        try:
            await process.stdin.read()
        finally:
            seen.hung_up.set()
    elif name == "kill":
        process.exit_with_signal("TERM")
    else:
        process.stderr.write(f"{name}: command not found\n".encode())
        process.exit(127)


@pytest.fixture
async def ssh_guest() -> AsyncIterator[Guest]:
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    user_key = asyncssh.generate_private_key("ssh-ed25519")
    seen = Guest(port=0, host_key=host_key, user_key=user_key)

    async def handle(process: asyncssh.SSHServerProcess[bytes]) -> None:
        await _handle(seen, process)

    server = await asyncssh.create_server(
        lambda: _Server(seen), "127.0.0.1", 0, server_host_keys=[host_key],
        authorized_client_keys=asyncssh.import_authorized_keys(
            user_key.export_public_key().decode()),
        process_factory=handle, encoding=None, line_editor=False)
    seen.port = server.sockets[0].getsockname()[1]
    try:
        yield seen
    finally:
        server.close()
        await server.wait_closed()


def login(g: Guest, **overrides: Any) -> pb.GuestCredentials:
    fields: dict[str, Any] = {"username": "", "port": g.port,
                              "private_key": g.user_key.export_private_key()}
    fields.update(overrides)
    return pb.GuestCredentials(**fields)


class Client:
    """The facade's side of one Exec stream: messages to send, responses received."""

    def __init__(self, start: pb.ExecStart) -> None:
        self.start = start
        self.queue: asyncio.Queue[pb.ExecRequest | None] = asyncio.Queue()

    async def requests(self) -> AsyncIterator[pb.ExecRequest]:
        while (item := await self.queue.get()) is not None:
            yield item

    def send(self, **kind: Any) -> None:
        self.queue.put_nowait(pb.ExecRequest(**kind))

    def stream(self) -> AsyncIterator[pb.ExecResponse]:
        return guest.exec_over_ssh(self.start, self.requests(), "127.0.0.1")


def exec_start(g: Guest, command: list[str], **fields: Any) -> pb.ExecStart:
    fields.setdefault("credentials", login(g))
    fields.setdefault("stdout", True)
    fields.setdefault("stderr", True)
    return pb.ExecStart(namespace="ns", pod_name="vm", container_name="vm", command=command,
                        **fields)


@dataclass
class Result:
    stdout: bytes
    stderr: bytes
    exit: pb.StreamExit


async def run(g: Guest, command: list[str], stdin: list[bytes] | None = None,
              **fields: Any) -> Result:
    client = Client(exec_start(g, command, stdin=stdin is not None, **fields))
    for chunk in stdin or []:
        client.send(stdin=chunk)
    if stdin is not None:
        client.send(close_stdin=True)
    out, err = b"", b""
    exits = []
    async for response in client.stream():
        kind = response.WhichOneof("kind")
        if kind == "stdout":
            out += response.stdout
        elif kind == "stderr":
            err += response.stderr
        else:
            exits.append(response.exit)
    client.queue.put_nowait(None)
    assert len(exits) == 1, "one exit, last"
    return Result(out, err, exits[0])


# -- exec ----------------------------------------------------------------------------------------


async def test_runs_the_command_with_its_words_quoted(ssh_guest: Guest) -> None:
    result = await run(ssh_guest, ["echo", "hello world", "it's"])
    assert (result.stdout, result.exit.exit_code, result.exit.message) \
        == (b"hello world it's\n", 0, "")
    assert shlex.split(ssh_guest.commands[-1]) == ["echo", "hello world", "it's"]
    assert ssh_guest.logins == [guest.DEFAULT_USERNAME]


async def test_exit_code_and_separate_stderr(ssh_guest: Guest) -> None:
    assert (await run(ssh_guest, ["exit", "3"])).exit.exit_code == 3
    result = await run(ssh_guest, ["err", "broken"])
    assert (result.stdout, result.stderr, result.exit.exit_code) == (b"out\n", b"broken\n", 1)
    quiet = await run(ssh_guest, ["err", "dropped"], stderr=False)
    assert (quiet.stdout, quiet.stderr) == (b"out\n", b"")
    missing = await run(ssh_guest, ["nosuchcommand"])
    assert missing.exit.exit_code == 127 and b"not found" in missing.stderr


async def test_stdin_is_relayed_and_closed(ssh_guest: Guest) -> None:
    result = await run(ssh_guest, ["cat"], stdin=[b"line one\n", b"line two\n"])
    assert (result.stdout, result.exit.exit_code) == (b"line one\nline two\n", 0)
    big = bytes(range(256)) * 2048  # 512 KiB: more than one SSH window
    assert (await run(ssh_guest, ["cat"], stdin=[big[:300_000], big[300_000:]])).stdout == big


async def test_stdin_not_attached_reads_as_closed(ssh_guest: Guest) -> None:
    result = await asyncio.wait_for(run(ssh_guest, ["cat"]), 10)
    assert (result.stdout, result.exit.exit_code) == (b"", 0)


async def test_terminal_of_the_start_size_and_resized(ssh_guest: Guest) -> None:
    client = Client(exec_start(ssh_guest, ["tty"], tty=True, stdin=True, stderr=False,
                               terminal_size=pb.TerminalSize(width=100, height=40)))
    stream = client.stream()
    first = await anext(stream)
    assert first.stdout.replace(b"\r", b"") == b"xterm 100x40\n"
    client.send(resize=pb.TerminalSize(width=132, height=50))
    assert (await anext(stream)).stdout.replace(b"\r", b"") == b"resized 132x50\n"
    client.send(close_stdin=True)
    rest = [r async for r in stream]
    assert rest[-1].exit.exit_code == 0


async def test_signal_becomes_128_plus_its_number(ssh_guest: Guest) -> None:
    result = await run(ssh_guest, ["kill"])
    assert (result.exit.exit_code, result.exit.message) == (143, "killed by signal TERM")


async def test_password_login_as_the_named_user(ssh_guest: Guest) -> None:
    creds = pb.GuestCredentials(username="guest", password="s3cret", port=ssh_guest.port)
    result = await run(ssh_guest, ["echo", "in"], credentials=creds)
    assert result.stdout == b"in\n" and ssh_guest.logins == ["guest"]


async def test_known_hosts_are_checked_when_given(ssh_guest: Guest) -> None:
    line = f"[127.0.0.1]:{ssh_guest.port} ".encode() + ssh_guest.host_key.export_public_key()
    result = await run(ssh_guest, ["echo", "trusted"],
                       credentials=login(ssh_guest, known_hosts=line))
    assert result.stdout == b"trusted\n"
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key()
    with pytest.raises(ProviderError) as err:
        await run(ssh_guest, ["echo"], credentials=login(
            ssh_guest, known_hosts=f"[127.0.0.1]:{ssh_guest.port} ".encode() + other))
    assert err.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert "host key" in err.value.message


async def test_refused_login_is_a_failed_precondition_without_the_secret(
        ssh_guest: Guest) -> None:
    stranger = asyncssh.generate_private_key("ssh-ed25519")
    with pytest.raises(ProviderError) as err:
        await run(ssh_guest, ["echo"], credentials=login(
            ssh_guest, username="vmlet", private_key=stranger.export_private_key()))
    assert err.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert "refused the login as 'vmlet'" in err.value.message
    with pytest.raises(ProviderError) as err:
        await run(ssh_guest, ["echo"], credentials=pb.GuestCredentials(
            username="guest", password="wrong-password", port=ssh_guest.port))
    assert err.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert "wrong-password" not in err.value.message


async def test_missing_or_unreadable_credentials(ssh_guest: Guest) -> None:
    with pytest.raises(ProviderError) as err:
        await run(ssh_guest, ["echo"], credentials=pb.GuestCredentials())
    assert err.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert "sshSecretName" in err.value.message
    with pytest.raises(ProviderError) as err:
        await run(ssh_guest, ["echo"], credentials=login(ssh_guest, private_key=b"not a key"))
    assert err.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "not a key" not in err.value.message


async def test_unreachable_guest_is_unavailable(ssh_guest: Guest) -> None:
    with socket_bound() as port:  # bound, not listening: connection refused
        with pytest.raises(ProviderError) as err:
            await run(ssh_guest, ["echo"], credentials=login(ssh_guest, port=port))
    assert err.value.code is grpc.StatusCode.UNAVAILABLE
    assert f"127.0.0.1:{port}: connection refused" in err.value.message


async def test_client_going_away_hangs_the_command_up(ssh_guest: Guest) -> None:
    client = Client(exec_start(ssh_guest, ["sleep"], stdin=True))
    stream = client.stream()

    async def first() -> pb.ExecResponse:
        return await anext(stream)

    task = asyncio.create_task(first())
    await asyncio.sleep(0.5)
    assert not task.done() and ssh_guest.commands == ["sleep"]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await asyncio.wait_for(ssh_guest.hung_up.wait(), 10)


async def test_first_messages_are_checked() -> None:
    async def messages(*items: Any) -> AsyncIterator[Any]:
        for item in items:
            yield item

    with pytest.raises(ProviderError) as err:
        await guest.exec_start(messages(pb.ExecRequest(stdin=b"x")))
    assert err.value.code is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(ProviderError):
        await guest.exec_start(messages(pb.ExecRequest(start=pb.ExecStart())))
    start = pb.ExecStart(command=["true"])
    assert await guest.exec_start(messages(pb.ExecRequest(start=start))) == start
    with pytest.raises(ProviderError):
        await guest.port_forward_start(messages(
            pb.PortForwardRequest(start=pb.PortForwardStart(port=70000))))
    assert (await guest.port_forward_start(messages(pb.PortForwardRequest(
        start=pb.PortForwardStart(port=22))))).port == 22


# -- port-forward ---------------------------------------------------------------------------------


class socket_bound:
    """A loopback port that is bound but not listening (connecting to it is refused)."""

    def __enter__(self) -> int:
        import socket

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        port: int = self._sock.getsockname()[1]
        return port

    def __exit__(self, *exc: object) -> None:
        self._sock.close()


@pytest.fixture
async def counting_server() -> AsyncIterator[int]:
    """Greets, reads until the client half-closes, answers with the byte count, hangs up."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello\n")
        got = len(await reader.read())
        writer.write(f"got {got}\n".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def pf_requests(*chunks: bytes) -> Iterator[pb.PortForwardRequest]:
    for chunk in chunks:
        yield pb.PortForwardRequest(data=chunk)
    yield pb.PortForwardRequest(close=True)


async def test_forward_relays_both_ways_and_half_closes(counting_server: int) -> None:
    gate = asyncio.Event()

    async def requests() -> AsyncIterator[pb.PortForwardRequest]:
        await gate.wait()  # the guest speaks first
        for message in pf_requests(b"x" * 100_000, b"y" * 1000):
            yield message
        await asyncio.sleep(3600)  # the client keeps its stream open after closing its side

    received = b""
    errors = []
    async for response in guest.forward_tcp(requests(), "127.0.0.1", counting_server):
        if response.WhichOneof("kind") == "error":
            errors.append(response.error)
        received += response.data
        gate.set()
    assert (received, errors) == (b"hello\ngot 101000\n", [])


async def test_forward_to_a_closed_port_reports_the_error() -> None:
    async def requests() -> AsyncIterator[pb.PortForwardRequest]:
        await asyncio.sleep(3600)
        yield pb.PortForwardRequest()

    with socket_bound() as port:
        responses = [r async for r in guest.forward_tcp(requests(), "127.0.0.1", port)]
    assert len(responses) == 1 and f"127.0.0.1:{port}" in responses[0].error
    assert "refused" in responses[0].error.lower()


async def test_a_second_start_is_refused(ssh_guest: Guest) -> None:
    client = Client(exec_start(ssh_guest, ["cat"], stdin=True))
    client.send(start=pb.ExecStart(command=["echo"]))
    with pytest.raises(ProviderError) as err:
        async for _ in client.stream():
            pass
    assert err.value.code is grpc.StatusCode.INVALID_ARGUMENT
