"""KubeClient: an apiserver that cannot be reached, or hangs up mid-answer, is an ApiError 503
that every controller loop retries (the fault-injection run once saw a facade's node controller
die of a raw connection error while kube-apiserver restarted, and the facade serve no node)."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest

from vmlet_facade.kube import ApiError, KubeClient, KubeConfig
from vmlet_facade.kube.client import UNREACHABLE
from vmlet_facade.kube.requestlog import REQUEST_LOG_ENV, RequestLog


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


def test_the_request_log_records_each_request_sent(tmp_path: Path) -> None:
    """The debug request log (VMLET_KUBE_REQUEST_LOG): a JSON line per request, with its answer's
    status; a request refused before it is sent (an invalid path) is not there."""
    async def go() -> None:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            status = b"404 Not Found" if b"/missing" in head else b"200 OK"
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 2\r\nConnection: close\r\n\r\n{}")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = KubeClient(KubeConfig(server=f"http://127.0.0.1:{port}"),
                            request_log=RequestLog(str(tmp_path / "requests.jsonl")))
        try:
            await client.get("/api/v1/nodes")
            with pytest.raises(ApiError):
                await client.get("/api/v1/namespaces/a/pods/missing")
            with pytest.raises(ApiError):
                await client.get("/api/v1/namespaces/a/pods/../../b/secrets")
        finally:
            await client.close()
            server.close()

    asyncio.run(go())
    lines = [json.loads(line) for line in (tmp_path / "requests.jsonl").read_text().splitlines()]
    assert lines == [
        {"method": "GET", "path": "/api/v1/nodes", "watch": False, "status": 200},
        {"method": "GET", "path": "/api/v1/namespaces/a/pods/missing", "watch": False,
         "status": 404}]


def test_the_request_log_is_off_unless_asked_and_a_bad_file_turns_it_off(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REQUEST_LOG_ENV, raising=False)
    assert RequestLog.from_env().path == ""
    monkeypatch.setenv(REQUEST_LOG_ENV, str(tmp_path / "r.jsonl"))
    assert RequestLog.from_env().path == str(tmp_path / "r.jsonl")
    unwritable = RequestLog(str(tmp_path / "no-such-dir" / "r.jsonl"))
    unwritable.record("GET", "/api/v1/nodes", False, 200)  # warned, not raised
    assert unwritable.path == ""
    unwritable.record("GET", "/api/v1/nodes", False, 200)
    assert not (tmp_path / "no-such-dir").exists()


def test_open_watches_leave_the_requests_their_connections() -> None:
    """More watches than the requests' pool holds connections (a replica serving more nodes
    than max_connections): a request still goes through at once."""
    async def go() -> None:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            if b"watch=true" in head:  # a watch that sends nothing and stays open
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n")
                await writer.drain()
                await reader.read()
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 2\r\n\r\n{}")
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = KubeClient(KubeConfig(server=f"http://127.0.0.1:{port}"), max_connections=2)

        async def watch(node: str) -> None:
            async for _ in client.stream_watch("/api/v1/pods",
                                               {"fieldSelector": f"spec.nodeName={node}"}):
                pass

        watches = [asyncio.create_task(watch(f"node-{i}")) for i in range(5)]
        try:
            await asyncio.sleep(0.3)
            assert not any(w.done() for w in watches)
            assert await asyncio.wait_for(client.get("/api/v1/nodes"), 5) == {}
        finally:
            for w in watches:
                w.cancel()
            await asyncio.gather(*watches, return_exceptions=True)
            await client.close()
            server.close()

    asyncio.run(go())
