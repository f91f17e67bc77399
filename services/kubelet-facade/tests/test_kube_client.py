"""KubeClient: an apiserver that cannot be reached, or hangs up mid-answer, is an ApiError 503
that every controller loop retries (the fault-injection run once saw a facade's node controller
die of a raw connection error while kube-apiserver restarted, and the facade serve no node)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from vmlet_facade.kube import ApiError, KubeClient, KubeConfig
from vmlet_facade.kube.client import UNREACHABLE


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_refused_connection_is_api_error_503() -> None:
    async def go() -> None:
        client = KubeClient(KubeConfig(server=f"http://127.0.0.1:{_closed_port()}"))
        try:
            with pytest.raises(ApiError) as caught:
                await client.get("/api/v1/nodes")
        finally:
            await client.close()
        assert caught.value.status == 503 and caught.value.reason == UNREACHABLE
        assert "GET /api/v1/nodes" in caught.value.message

    asyncio.run(go())


def test_hang_up_mid_answer_is_api_error_503() -> None:
    async def go() -> None:
        async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.close()  # no answer at all: aiohttp's ServerDisconnectedError

        server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = KubeClient(KubeConfig(server=f"http://127.0.0.1:{port}"))
        try:
            with pytest.raises(ApiError) as caught:
                await client.create("/api/v1/namespaces/a/pods", {"kind": "Pod"})
        finally:
            await client.close()
            server.close()
        assert caught.value.status == 503 and caught.value.reason == UNREACHABLE

    asyncio.run(go())
