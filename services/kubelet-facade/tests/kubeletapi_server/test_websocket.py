"""exec, attach and port-forward over WebSocket (v4 and v5 channel protocols, base64)."""

from __future__ import annotations

import asyncio
import base64
import json
import struct

import aiohttp
import pytest

from kubeletapi_server.server_env import (
    Env,
    eventually,
)


async def ws_messages(ws: aiohttp.ClientWebSocketResponse, until_closed: bool = True
                      ) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    async for message in ws:
        if message.type == aiohttp.WSMsgType.BINARY:
            out[message.data[0]] = out.get(message.data[0], b"") + message.data[1:]
    return out


@pytest.mark.parametrize("protocol", ["v5.channel.k8s.io", "v4.channel.k8s.io",
                                      "channel.k8s.io"])
async def test_exec_over_websocket(env: Env, protocol: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(
                env.url("/exec/ns/vm/vm?command=exit&command=7&output=1&error=1"),
                ssl=env.context(env.apiserver), protocols=[protocol]) as ws:
            assert ws.protocol == protocol
            got = await ws_messages(ws)
    assert got[2] == b"leaving\n"
    if protocol == "channel.k8s.io":
        assert b"non-zero exit code" in got[3]
    else:
        status = json.loads(got[3])
        assert status["reason"] == "NonZeroExitCode"
        assert status["details"]["causes"] == [{"reason": "ExitCode", "message": "7"}]
    assert env.provider.open == 0


async def test_exec_stdin_close_and_resize_over_websocket_v5(env: Env) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(
                env.url("/exec/ns/vm/vm?command=cat&input=1&output=1&tty=1"),
                ssl=env.context(env.apiserver), protocols=["v5.channel.k8s.io"]) as ws:
            opened = await ws.receive_bytes()
            assert opened == b"\x01"  # the empty message on stdout: the session is up
            await ws.send_bytes(b"\x04" + b'{"Width":120,"Height":40}')
            await ws.send_bytes(b"\x00typed")
            assert await ws.receive_bytes() == b"\x01typed"
            await ws.send_str("\x00as text")  # raw channel data in a text frame
            assert await ws.receive_bytes() == b"\x01as text"
            await ws.send_bytes(bytes([255, 0]))  # v5 CLOSE of stdin
            got = await ws_messages(ws)
    assert json.loads(got[3])["status"] == "Success"
    assert env.provider.resizes == [(120, 40)]
    assert env.provider.starts[-1].tty and env.provider.starts[-1].stdin


async def test_base64_channels(env: Env) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(
                env.url("/exec/ns/vm/vm?command=echo&command=hi&output=1"),
                ssl=env.context(env.apiserver), protocols=["base64.channel.k8s.io"]) as ws:
            texts = [m.data async for m in ws if m.type == aiohttp.WSMsgType.TEXT]
    assert "1" + base64.b64encode(b"hi\n").decode() in texts


async def test_exec_cut_off_midway_leaves_nothing_behind(env: Env) -> None:
    tasks_before = len(asyncio.all_tasks())
    session = aiohttp.ClientSession()
    ws = await session.ws_connect(env.url("/exec/ns/vm/vm?command=cat&input=1&output=1"),
                                  ssl=env.context(env.apiserver),
                                  protocols=["v4.channel.k8s.io"])
    await ws.receive_bytes()
    await ws.send_bytes(b"\x00ping")
    assert await ws.receive_bytes() == b"\x01ping"
    assert env.provider.open == 1
    assert ws._response.connection is not None
    ws._response.connection.transport.abort()  # type: ignore[union-attr]
    await session.close()
    await eventually(lambda: env.provider.open == 0)
    await eventually(lambda: len(asyncio.all_tasks()) <= tasks_before)


async def test_attach_over_websocket(env: Env) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(env.url("/attach/ns/vm/vm?input=1&output=1"),
                                      ssl=env.context(env.apiserver),
                                      protocols=["v5.channel.k8s.io"]) as ws:
            await ws.receive_bytes()
            await ws.send_bytes(b"\x00console")
            assert await ws.receive_bytes() == b"\x01console"
            await ws.send_bytes(bytes([255, 0]))
            got = await ws_messages(ws)
    assert json.loads(got[3])["status"] == "Success"


async def test_port_forward_over_websocket(env: Env) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(env.url("/portForward/ns/vm?port=8080&port=1"),
                                      ssl=env.context(env.apiserver),
                                      protocols=["v4.channel.k8s.io"]) as ws:
            opening = {(await ws.receive_bytes()) for _ in range(4)}
            assert opening == {b"\x00" + struct.pack("<H", 8080), b"\x01" + struct.pack("<H", 8080),
                               b"\x02" + struct.pack("<H", 1), b"\x03" + struct.pack("<H", 1)}
            assert b"connection refused" in await ws.receive_bytes()
            await ws.send_bytes(b"\x00echo me")
            assert await ws.receive_bytes() == b"\x00echo me"
    await eventually(lambda: env.provider.open == 0)
