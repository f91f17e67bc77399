"""exec and attach: a client's stream channels relayed to the provider's Exec/Attach stream.

The client side comes in two shapes with the same five channels (stdin, stdout, stderr, error,
resize): SPDY, one stream per channel (what the apiserver opens towards a kubelet, also when it
translates kubectl's WebSocket), and WebSocket, one byte of channel number per message (what
clients connecting straight to the kubelet, or through the apiserver with v4, use). Both are a
`Terminal` here, and `relay` moves bytes between a Terminal and the provider until the command
exits or the client goes away. The end is reported on the error channel as the kubelet does: a
v1 Status (Success, or Failure with reason NonZeroExitCode and the ExitCode cause) from v4 on,
the error text alone before.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from vmlet.provider.v1 import kubelet_endpoint_service_pb2 as kep
from vmlet_contract import ProviderError
from vmlet_facade.kube.objects import Obj
from vmlet_facade.kubeletapi import metrics
from vmlet_facade.kubeletapi.channels import ChannelSocket
from vmlet_facade.kubeletapi.guestlogin import GuestLoginError
from vmlet_facade.kubeletapi.params import Params
from vmlet_facade.kubeletapi.spdy import SpdySession, SpdyStream
from vmlet_facade.provider import Provider

__all__ = [
    "SPDY_PROTOCOLS",
    "WEBSOCKET_PROTOCOLS",
    "Login",
    "SpdyTerminal",
    "StreamOptions",
    "Target",
    "Terminal",
    "WebSocketTerminal",
    "relay",
    "status_for_error",
    "status_for_exit",
    "status_for_login",
]

log = logging.getLogger(__name__)


#: What a kubelet accepts in X-Stream-Protocol-Version, best first.
SPDY_PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io", "v3.channel.k8s.io",
                  "v2.channel.k8s.io", "channel.k8s.io")
#: What a kubelet accepts in Sec-WebSocket-Protocol ("" is a client that names none).
WEBSOCKET_PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io", "v4.base64.channel.k8s.io",
                       "channel.k8s.io", "base64.channel.k8s.io", "")
STDIN, STDOUT, STDERR, ERROR, RESIZE = 0, 1, 2, 3, 4
STREAM_CREATION_TIMEOUT = 30.0

@dataclass(frozen=True)
class StreamOptions:
    """Which channels the client asked for (kubelet query parameters input/output/error/tty)."""

    stdin: bool
    stdout: bool
    stderr: bool
    tty: bool

    @classmethod
    def from_request(cls, request: Params) -> StreamOptions:
        def flag(name: str) -> bool:
            return request.param(name) in ("1", "true", "True")
        tty = flag("tty")
        return cls(stdin=flag("input"), stdout=flag("output"),
                   stderr=flag("error") and not tty, tty=tty)

    @property
    def any(self) -> bool:
        return self.stdin or self.stdout or self.stderr

@dataclass(frozen=True)
class Target:
    """The container a session runs in."""

    namespace: str
    pod: str
    container: str

def status_for_exit(code: int, command: list[str], message: str = "") -> Obj:
    """The Status a kubelet writes when the command ended with ``code``."""
    if code == 0:
        return {"metadata": {}, "status": "Success"}
    what = f"command '{' '.join(command)}' exited with {code}" if command else f"exit {code}"
    if message:
        what += f": {message}"
    return {"metadata": {}, "status": "Failure",
            "message": f"command terminated with non-zero exit code: {what}",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}

def status_for_login(message: str) -> Obj:
    """The Status when the guest login the pod names cannot be used (the user must fix it)."""
    return {"metadata": {}, "status": "Failure", "message": message, "reason": "BadRequest",
            "details": {"causes": [{"message": message}]}, "code": 400}

def status_for_error(message: str) -> Obj:
    """The Status a kubelet writes when the command could not be run."""
    return {"metadata": {}, "status": "Failure", "message": f"Internal error occurred: {message}",
            "reason": "InternalError", "details": {"causes": [{"message": message}]},
            "code": 500}

class Terminal:
    """The client's side of a session, whatever carries it."""

    protocol: str
    gone: asyncio.Event

    async def read_stdin(self) -> bytes:  # b"" once stdin is closed
        raise NotImplementedError

    async def read_resize(self) -> bytes:  # b"" once the resize channel is closed
        raise NotImplementedError

    async def write(self, channel: int, data: bytes) -> None:
        raise NotImplementedError

    async def finish(self, status: Obj | None) -> None:
        """Report ``status`` (None: the client is gone, nobody to tell) and hang up."""
        raise NotImplementedError

    def _status_bytes(self, status: Obj) -> bytes:
        if self.protocol.startswith(("v4.", "v5.")):
            return json.dumps(status).encode()
        if status.get("status") == "Success":
            return b""
        return str(status.get("message", "")).encode()

class SpdyTerminal(Terminal):
    """The channels as SPDY streams the client opened (streamtype header)."""

    def __init__(self, session: SpdySession, protocol: str,
                 streams: dict[str, SpdyStream]) -> None:
        self.protocol = protocol
        self.gone = session.closed
        self._session = session
        self._streams = streams

    @classmethod
    async def open(cls, session: SpdySession, protocol: str,
                   options: StreamOptions) -> SpdyTerminal | None:
        """Wait for the streams a client of ``protocol`` opens for ``options``."""
        expected = {"error"}
        for name, wanted in (("stdin", options.stdin), ("stdout", options.stdout),
                             ("stderr", options.stderr)):
            if wanted:
                expected.add(name)
        if options.tty and protocol not in ("v2.channel.k8s.io", "channel.k8s.io"):
            expected.add("resize")
        streams: dict[str, SpdyStream] = {}
        try:
            async with asyncio.timeout(STREAM_CREATION_TIMEOUT):
                while not expected <= streams.keys():
                    stream = await session.accept_stream()
                    if stream is None:
                        return None
                    kind = stream.header("streamtype")
                    if kind in streams or kind not in ("error", "stdin", "stdout", "stderr",
                                                       "resize"):
                        log.info("unexpected SPDY stream %r refused", kind)
                        await stream.reset()
                        continue
                    streams[kind] = stream
        except TimeoutError:
            log.info("client did not open its streams in time")
            return None
        session.refuse_new_streams()
        return cls(session, protocol, streams)

    async def read_stdin(self) -> bytes:
        stream = self._streams.get("stdin")
        return await stream.read() if stream else b""

    async def read_resize(self) -> bytes:
        stream = self._streams.get("resize")
        return await stream.read() if stream else b""

    async def write(self, channel: int, data: bytes) -> None:
        stream = self._streams.get({STDOUT: "stdout", STDERR: "stderr", ERROR: "error"}[channel])
        if stream is not None and data:
            await stream.write(data)

    async def finish(self, status: Obj | None) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            if status is not None:
                error = self._streams["error"]
                body = self._status_bytes(status)
                if body:
                    await error.write(body)
                for name in ("stdout", "stderr", "error", "stdin", "resize"):
                    stream = self._streams.get(name)
                    if stream is not None:
                        await stream.close()
            await self._session.goaway()
        # Let the client read to the end and hang up first; then close regardless.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._session.closed.wait(), 5.0)
        with contextlib.suppress(ConnectionError, OSError):
            await self._session.close()

class WebSocketTerminal(Terminal):
    """The channels as one-byte prefixes of WebSocket messages."""

    def __init__(self, socket: ChannelSocket, options: StreamOptions) -> None:
        self.protocol = socket.protocol
        self.gone = socket.closed
        self._socket = socket
        self._options = options

    async def opened(self) -> None:
        """Tell the client the session is up: an empty message on the lowest writable
        channel, as the kubelet does."""
        first = STDOUT if self._options.stdout else STDERR if self._options.stderr else ERROR
        await self._socket.send(first, b"")

    async def read_stdin(self) -> bytes:
        return await self._socket.read(STDIN) if self._options.stdin else b""

    async def read_resize(self) -> bytes:
        return await self._socket.read(RESIZE) if self._options.tty else b""

    async def write(self, channel: int, data: bytes) -> None:
        if data:
            await self._socket.send(channel, data)

    async def finish(self, status: Obj | None) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            if status is not None:
                body = self._status_bytes(status)
                if body:
                    await self._socket.send(ERROR, body)
        await self._socket.close()

def _sizes(buffer: bytearray) -> list[kep.TerminalSize]:
    """Complete {"Width":..,"Height":..} objects at the start of ``buffer`` (consumed)."""
    decoder = json.JSONDecoder()
    out = []
    text = buffer.decode(errors="replace")
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            break
        try:
            doc, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            break
        if isinstance(doc, dict):
            out.append(kep.TerminalSize(width=int(doc.get("Width", 0)),
                                        height=int(doc.get("Height", 0))))
    del buffer[:len(text[:pos].encode())]
    return out

Kind = Literal["exec", "attach"]
#: Resolves the guest login of an exec (`guestlogin.guest_credentials` bound to its pod).
Login = Callable[[], Awaitable[kep.GuestCredentials | None]]

async def _drain(responses: AsyncIterator[Any]) -> None:
    async for _ in responses:
        pass


async def _requests(first: Any, queue: asyncio.Queue[Any]) -> AsyncIterator[Any]:
    yield first
    while (item := await queue.get()) is not None:
        yield item

async def relay(kind: Kind, provider: Provider, target: Target, command: list[str],
                options: StreamOptions, terminal: Terminal, login: Login | None = None) -> None:
    """Run one exec or attach session to its end. An exec carries the guest login ``login``
    resolves; when that fails, the session ends with its message before the provider is asked."""
    request_type: Callable[..., Any] = kep.ExecRequest if kind == "exec" else kep.AttachRequest
    first: kep.ExecRequest | kep.AttachRequest
    if kind == "exec":
        try:
            credentials = await login() if login is not None else None
        except GuestLoginError as err:
            metrics.SESSION_ENDS.labels(kind, "BadRequest").inc()
            await terminal.finish(status_for_login(str(err)))
            return
        first = kep.ExecRequest(start=kep.ExecStart(
            namespace=target.namespace, pod_name=target.pod, container_name=target.container,
            command=command, tty=options.tty, stdin=options.stdin, stdout=options.stdout,
            stderr=options.stderr, credentials=credentials))
    else:
        first = kep.AttachRequest(start=kep.AttachStart(
            namespace=target.namespace, pod_name=target.pod, container_name=target.container,
            tty=options.tty, stdin=options.stdin, stdout=options.stdout, stderr=options.stderr))
    queue: asyncio.Queue[Any] = asyncio.Queue(32)

    async def pump_stdin() -> None:
        while data := await terminal.read_stdin():
            await queue.put(request_type(stdin=data))
        await queue.put(request_type(close_stdin=True))

    async def pump_resize() -> None:
        buffer = bytearray()
        while data := await terminal.read_resize():
            buffer += data
            for size in _sizes(buffer):
                await queue.put(request_type(resize=size))

    async def consume() -> Obj:
        stream_of: Callable[[AsyncIterator[Any]], AsyncGenerator[Any, None]] = (
            provider.exec if kind == "exec" else provider.attach)
        responses = stream_of(_requests(first, queue))
        async with contextlib.aclosing(responses):
            async for message in responses:
                which = message.WhichOneof("kind")
                if which == "stdout":
                    await terminal.write(STDOUT, message.stdout)
                elif which == "stderr":
                    await terminal.write(STDERR if options.stderr else STDOUT, message.stderr)
                elif which == "exit":
                    status = status_for_exit(message.exit.exit_code, command,
                                             message.exit.message if message.exit.exit_code
                                             else "")
                    # The exit is the last message: let the call end by itself (status OK at
                    # the provider) rather than cancel it, unless it lingers.
                    with contextlib.suppress(TimeoutError, ProviderError):
                        await asyncio.wait_for(_drain(responses), 2.0)
                    return status
        return status_for_error("the provider ended the stream without an exit status")

    pumps = []
    if options.stdin:
        pumps.append(asyncio.create_task(pump_stdin(), name=f"{kind}-stdin"))
    if options.tty:
        pumps.append(asyncio.create_task(pump_resize(), name=f"{kind}-resize"))
    session = asyncio.create_task(consume(), name=f"{kind}-relay")
    gone = asyncio.create_task(terminal.gone.wait(), name=f"{kind}-gone")
    status: Obj | None = None
    metrics.SESSIONS.labels(kind).inc()
    try:
        await asyncio.wait({session, gone}, return_when=asyncio.FIRST_COMPLETED)
        if session.done():
            try:
                status = session.result()
            except ProviderError as err:
                status = status_for_error(err.message)
            except (ConnectionError, OSError):
                status = None  # the client went away while we wrote to it
    finally:
        for task in (session, gone, *pumps):
            task.cancel()
        await asyncio.gather(session, gone, *pumps, return_exceptions=True)
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait(None)  # ends the request stream if the provider still reads it
        metrics.SESSIONS.labels(kind).dec()
    metrics.SESSION_ENDS.labels(kind, "gone" if status is None else
                                str(status.get("reason") or status["status"])).inc()
    await terminal.finish(status)
