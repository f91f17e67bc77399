"""port-forward: TCP connections a client tunnels to a pod, relayed to the provider.

Over SPDY (protocol portforward.k8s.io, what the apiserver speaks to a kubelet, also for
kubectl's WebSocket tunnel) every forwarded connection is a pair of streams the client opens
with the same requestID: "data" carries the bytes, "error" carries a message if forwarding
fails. Over WebSocket (v4.channel.k8s.io, ports from the ``port`` query parameter) port n has
channel 2n for data and 2n+1 for errors, each opened with the port as two little-endian bytes.
Each connection is one PortForward stream of the provider.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from vmlet.provider.v1 import kubelet_endpoint_service_pb2 as kep
from vmlet_contract import ProviderError
from vmlet_facade.kubeletapi import metrics
from vmlet_facade.kubeletapi.channels import ChannelSocket
from vmlet_facade.kubeletapi.spdy import SpdySession, SpdyStream
from vmlet_facade.provider import Provider

__all__ = ["SPDY_PROTOCOLS", "WEBSOCKET_PROTOCOLS", "accept_stream_headers", "parse_ports",
           "serve_spdy", "serve_websocket"]

log = logging.getLogger(__name__)

SPDY_PROTOCOLS = ("portforward.k8s.io",)
WEBSOCKET_PROTOCOLS = ("v4.channel.k8s.io", "v4.base64.channel.k8s.io", "")
PAIR_TIMEOUT = 30.0


def _port(text: str) -> int | None:
    try:
        port = int(text)
    except ValueError:
        return None
    return port if 0 < port < 65536 else None


def parse_ports(values: list[str]) -> list[int]:
    """The ports of a WebSocket port-forward (``port`` repeated or comma-separated)."""
    out = []
    for value in values:
        for part in value.split(","):
            port = _port(part.strip())
            if port is None:
                raise ValueError(f"unable to parse {part!r} as a port")
            out.append(port)
    if not out:
        raise ValueError('query parameter "port" is required')
    return out


def accept_stream_headers(headers: dict[str, list[str]]) -> bool:
    """Whether a new SPDY stream is a valid half of a port-forward pair."""
    port = (headers.get("port") or [""])[0]
    kind = (headers.get("streamtype") or [""])[0]
    return _port(port) is not None and kind in ("data", "error")


async def _requests(first: Any, queue: asyncio.Queue[Any]) -> AsyncIterator[Any]:
    yield first
    while (item := await queue.get()) is not None:
        yield item


async def forward(provider: Provider, namespace: str, pod: str, port: int,
                  read: Callable[[], Awaitable[bytes]], write: Callable[[bytes], Awaitable[None]],
                  report: Callable[[str], Awaitable[None]]) -> None:
    """Relay one connection until either side ends it."""
    queue: asyncio.Queue[Any] = asyncio.Queue(32)
    first = kep.PortForwardRequest(start=kep.PortForwardStart(namespace=namespace,
                                                               pod_name=pod, port=port))

    async def pump() -> None:
        while data := await read():
            await queue.put(kep.PortForwardRequest(data=data))
        await queue.put(kep.PortForwardRequest(close=True))

    pumping = asyncio.create_task(pump(), name=f"portforward-in:{port}")
    metrics.SESSIONS.labels("portforward").inc()
    end = "closed"
    try:
        responses = provider.port_forward(_requests(first, queue))
        async with contextlib.aclosing(responses):
            async for message in responses:
                if message.WhichOneof("kind") == "error":
                    end = "error"
                    await report(f"error forwarding port {port} to pod {pod}: {message.error}")
                    break
                await write(message.data)
    except ProviderError as err:
        end = "error"
        with contextlib.suppress(ConnectionError, OSError):
            await report(f"error forwarding port {port} to pod {pod}: {err.message}")
    except (ConnectionError, OSError):
        end = "gone"
    finally:
        pumping.cancel()
        await asyncio.gather(pumping, return_exceptions=True)
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait(None)
        metrics.SESSIONS.labels("portforward").dec()
        metrics.SESSION_ENDS.labels("portforward", end).inc()


async def _spdy_pair(provider: Provider, namespace: str, pod: str, data: SpdyStream,
                     error: SpdyStream) -> None:
    async def report(message: str) -> None:
        await error.write(message.encode())

    try:
        await forward(provider, namespace, pod, int(data.header("port")), data.read,
                      data.write, report)
    finally:
        for stream in (data, error):
            with contextlib.suppress(ConnectionError, OSError):
                await stream.close()


async def serve_spdy(session: SpdySession, provider: Provider, namespace: str,
                     pod: str) -> None:
    """Forward every stream pair the client opens until it closes the connection."""
    pairs: dict[str, dict[str, SpdyStream]] = {}
    tasks: set[asyncio.Task[None]] = set()

    async def expire(request_id: str) -> None:
        await asyncio.sleep(PAIR_TIMEOUT)
        pair = pairs.pop(request_id, {})
        if "error" in pair:
            with contextlib.suppress(ConnectionError, OSError):
                await pair["error"].write(
                    f"timed out waiting for streams of request {request_id}".encode())
        for stream in pair.values():
            with contextlib.suppress(ConnectionError, OSError):
                await stream.reset()

    def spawn(coro: Any, name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return task

    timers: dict[str, asyncio.Task[None]] = {}
    try:
        while (stream := await session.accept_stream()) is not None:
            kind = stream.header("streamtype")
            request_id = stream.header("requestid")
            if not request_id:  # old clients: pair by stream id, as the kubelet does
                request_id = str(stream.id if kind == "error" else stream.id - 2)
            pair = pairs.setdefault(request_id, {})
            if kind in pair:
                await stream.reset()
                continue
            pair[kind] = stream
            if len(pair) == 1:
                timers[request_id] = spawn(expire(request_id), f"portforward-pair:{request_id}")
                continue
            timers.pop(request_id).cancel()
            del pairs[request_id]
            spawn(_spdy_pair(provider, namespace, pod, pair["data"], pair["error"]),
                  f"portforward:{request_id}")
    finally:
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def serve_websocket(socket: ChannelSocket, provider: Provider, namespace: str, pod: str,
                          ports: list[int]) -> None:
    """Forward one connection per port of ``ports`` over ``socket``."""
    async def one(index: int, port: int) -> None:
        data_channel, error_channel = 2 * index, 2 * index + 1
        opening = port.to_bytes(2, "little")
        await socket.send(data_channel, opening)
        await socket.send(error_channel, opening)

        async def write(data: bytes) -> None:
            await socket.send(data_channel, data)

        async def report(message: str) -> None:
            await socket.send(error_channel, message.encode())

        await forward(provider, namespace, pod, port, lambda: socket.read(data_channel),
                      write, report)

    async def all_ports() -> None:
        await asyncio.gather(*(one(i, port) for i, port in enumerate(ports)),
                             return_exceptions=True)

    runs: set[asyncio.Task[Any]] = {asyncio.create_task(all_ports(), name="portforward-ws"),
                                   asyncio.create_task(socket.closed.wait())}
    try:
        await asyncio.wait(runs, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in runs:
            task.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
        await socket.close()
