"""exec and port-forward over SPDY/3.1, as client-go speaks it."""

from __future__ import annotations

import asyncio
import json
import struct
import zlib
from typing import Any

from kubeletapi_server.server_env import (
    Env,
    eventually,
)
from vmlet_facade.kubeletapi.spdy import DICTIONARY, decode_headers, encode_headers


async def request_upgrade(env: Env, path: str, protocols: list[str], content_length: int = 0,
                          ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """Send a SPDY/3.1 upgrade request as the apiserver; the connection and the answer's head."""
    reader, writer = await asyncio.open_connection("127.0.0.1", env.port,
                                                   ssl=env.context(env.apiserver),
                                                   server_hostname="127.0.0.1")
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n" \
           f"Upgrade: SPDY/3.1\r\nContent-Length: {content_length}\r\n"
    head += "".join(f"X-Stream-Protocol-Version: {p}\r\n" for p in protocols)
    writer.write((head + "\r\n").encode())
    answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    return reader, writer, answer


class SpdyClient:
    """Enough of a SPDY/3.1 client (what client-go does) to drive the server."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.deflate = zlib.compressobj(zdict=DICTIONARY)
        self.inflate = zlib.decompressobj(zdict=DICTIONARY)
        self.next_id = 1
        self.data: dict[int, bytes] = {}
        self.finished: set[int] = set()
        self.replied: set[int] = set()

    @classmethod
    async def upgrade(cls, env: Env, path: str, protocols: list[str]) -> tuple[SpdyClient, str]:
        reader, writer, head = await request_upgrade(env, path, protocols)
        answer = head.decode()
        assert answer.startswith("HTTP/1.1 101"), answer
        chosen = [line.split(":", 1)[1].strip() for line in answer.split("\r\n")
                  if line.lower().startswith("x-stream-protocol-version")]
        return cls(reader, writer), chosen[0]

    def open(self, headers: dict[str, list[str]]) -> int:
        stream_id, self.next_id = self.next_id, self.next_id + 2
        block = self.deflate.compress(encode_headers(headers)) \
            + self.deflate.flush(zlib.Z_SYNC_FLUSH)
        payload = struct.pack(">IIH", stream_id, 0, 0) + block
        self.writer.write(struct.pack(">HHI", 0x8003, 1, len(payload)) + payload)
        return stream_id

    def send(self, stream_id: int, data: bytes, fin: bool = False) -> None:
        self.writer.write(struct.pack(">II", stream_id, ((1 if fin else 0) << 24) | len(data))
                          + data)

    async def pump(self, until: Any, within: float = 5.0) -> None:
        async with asyncio.timeout(within):
            while not until():
                word, flags_length = struct.unpack(">II", await self.reader.readexactly(8))
                payload = await self.reader.readexactly(flags_length & 0xFFFFFF)
                fin = flags_length >> 24 & 1
                if word & 0x80000000:
                    kind = word & 0xFFFF
                    stream_id = struct.unpack_from(">I", payload)[0] & 0x7FFFFFFF
                    if kind == 2:
                        assert decode_headers(self.inflate.decompress(payload[4:])) == {}
                        self.replied.add(stream_id)
                    elif kind == 7:
                        self.finished.add(-1)  # GOAWAY
                else:
                    self.data[word] = self.data.get(word, b"") + payload
                    if fin:
                        self.finished.add(word)


async def test_exec_over_spdy(env: Env) -> None:
    client, protocol = await SpdyClient.upgrade(
        env, "/exec/ns/vm/vm?command=cat&input=1&output=1&error=1",
        ["v5.channel.k8s.io", "v4.channel.k8s.io", "channel.k8s.io"])
    assert protocol == "v5.channel.k8s.io"
    error = client.open({"streamtype": ["error"]})
    stdin = client.open({"streamtype": ["stdin"]})
    stdout = client.open({"streamtype": ["stdout"]})
    stderr = client.open({"streamtype": ["stderr"]})
    await client.pump(lambda: client.replied == {error, stdin, stdout, stderr})
    client.send(stdin, b"over spdy")
    await client.pump(lambda: client.data.get(stdout) == b"over spdy")
    client.send(stdin, b"", fin=True)
    await client.pump(lambda: {error, stdout, stderr} <= client.finished and -1 in client.finished)
    assert json.loads(client.data[error]) == {"metadata": {}, "status": "Success"}
    client.writer.close()
    await eventually(lambda: env.provider.open == 0)


async def test_exec_over_spdy_v4_nonzero_exit(env: Env) -> None:
    client, _ = await SpdyClient.upgrade(
        env, "/exec/ns/vm/vm?command=exit&command=9&output=1&error=1", ["v4.channel.k8s.io"])
    error = client.open({"streamtype": ["error"]})
    stdout = client.open({"streamtype": ["stdout"]})
    stderr = client.open({"streamtype": ["stderr"]})
    await client.pump(lambda: {error, stdout, stderr} <= client.finished)
    assert client.data[stderr] == b"leaving\n"
    assert json.loads(client.data[error])["details"]["causes"][0]["message"] == "9"
    client.writer.close()


async def test_port_forward_over_spdy(env: Env) -> None:
    client, protocol = await SpdyClient.upgrade(env, "/portForward/ns/vm",
                                                ["portforward.k8s.io"])
    assert protocol == "portforward.k8s.io"
    error = client.open({"streamtype": ["error"], "port": ["80"], "requestid": ["0"]})
    data = client.open({"streamtype": ["data"], "port": ["80"], "requestid": ["0"]})
    bad = client.open({"streamtype": ["data"]})  # no port: refused
    await client.pump(lambda: {error, data} <= client.replied)
    client.send(data, b"x" * 100_000)
    await client.pump(lambda: len(client.data.get(data, b"")) == 100_000)
    client.send(data, b"", fin=True)
    await client.pump(lambda: {error, data} <= client.finished)
    assert bad not in client.replied
    failing_error = client.open({"streamtype": ["error"], "port": ["1"], "requestid": ["1"]})
    failing_data = client.open({"streamtype": ["data"], "port": ["1"], "requestid": ["1"]})
    await client.pump(lambda: failing_error in client.finished)
    assert b"connection refused" in client.data[failing_error]
    assert failing_data in client.replied
    client.writer.close()
    await eventually(lambda: env.provider.open == 0)


async def test_spdy_needs_a_protocol_we_speak(env: Env) -> None:
    _, writer, answer = await request_upgrade(env, "/exec/ns/vm/vm?command=cat&output=1",
                                              ["v9.channel.k8s.io"])
    assert answer.startswith(b"HTTP/1.1 403")
    assert b"X-Accept-Stream-Protocol-Version: v5.channel.k8s.io" in answer
    writer.close()


async def test_spdy_upgrade_with_a_body_to_come_is_refused(env: Env) -> None:
    # An upgrade request carries no body: one that declares a body not yet sent is answered
    # 400 (h11 cannot switch before the request's end), not 500 or a hang.
    reader, writer, answer = await request_upgrade(
        env, "/exec/ns/vm/vm?command=cat&output=1", ["v5.channel.k8s.io"], content_length=10)
    assert answer.startswith(b"HTTP/1.1 400"), answer
    length = int(answer.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    assert b"carries no body" in await reader.readexactly(length)
    writer.close()
    assert env.provider.open == 0
