"""Container logs through the kubelet port: plain and followed."""

from __future__ import annotations

import asyncio

from kubeletapi_server.server_env import (
    Env,
    eventually,
    get,
)


async def test_logs(env: Env) -> None:
    status, body = await get(env, "/containerLogs/ns/vm/vm", token="alice-token")
    assert (status, body) == (200, "line 0\nline 1\nline 2\n")
    _, body = await get(env, "/containerLogs/ns/vm/vm?tailLines=1&timestamps=true",
                        token="alice-token")
    assert body == "1970-01-01T00:16:42.000001000Z line 2\n"
    _, body = await get(env, "/containerLogs/ns/vm/vm?limitBytes=9", token="alice-token")
    assert body == "line 0\nli"
    _, body = await get(env, "/containerLogs/ns/vm/vm?limitBytes=14&timestamps=1",
                        token="alice-token")
    assert body == "1970-01-01T00:"
    status, body = await get(env, "/containerLogs/ns/vm/vm?previous=true", token="alice-token")
    assert status == 400
    assert body.strip() == 'previous terminated container "vm" in pod "vm" not found'
    assert (await get(env, "/containerLogs/ns/vm/vm?tailLines=x", token="alice-token"))[0] \
        == 422


async def test_followed_logs_end_when_the_client_leaves(env: Env) -> None:
    tasks_before = len(asyncio.all_tasks())
    reader, writer = await asyncio.open_connection("127.0.0.1", env.port,
                                                   ssl=env.context(env.apiserver),
                                                   server_hostname="127.0.0.1")
    writer.write(b"GET /containerLogs/ns/vm/vm?follow=true HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"line 2" in await reader.readuntil(b"line 2")
    assert env.provider.open == 1
    writer.transport.abort()
    await eventually(lambda: env.provider.open == 0)
    await eventually(lambda: len(asyncio.all_tasks()) <= tasks_before)
