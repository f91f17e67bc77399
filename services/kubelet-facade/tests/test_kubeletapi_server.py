"""The kubelet API server in process: real TLS, HTTP, SPDY and WebSocket clients; a fake
provider that counts its open streams; fake reviews (the real ones are proven against the
apiserver in tests/test_kubelet_api.py). The serving certificate comes from files here."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import ssl
import struct
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from vmlet.provider.v1 import kubelet_endpoint_service_pb2 as kep
from vmlet.provider.v1 import node_pb2
from vmlet.provider.v1 import pod_pb2 as pb
from vmlet_contract import containerlogs
from vmlet_facade.kubeletapi import KubeletApi, KubeletApiConfig
from vmlet_facade.kubeletapi.auth import User
from vmlet_facade.kubeletapi.spdy import DICTIONARY, decode_headers, encode_headers
from vmlet_localenv.pki import CertificateAuthority, CertPair


@dataclass(frozen=True)
class LogLine:
    time: dt.datetime
    text: str


class FakeProvider:
    """Exec runs echo/exit/cat/err; attach echoes; port-forward echoes; logs are 3 lines, served
    by the providers' own `containerlogs`."""

    name = "fake"

    def __init__(self) -> None:
        self.open = 0
        self.resizes: list[tuple[int, int]] = []
        self.starts: list[Any] = []

    async def _counted(self, body: AsyncIterator[Any]) -> AsyncGenerator[Any, None]:
        self.open += 1
        try:
            async for item in body:
                yield item
        finally:
            self.open -= 1

    def container_logs(self, request: kep.GetContainerLogsRequest
                       ) -> AsyncGenerator[kep.GetContainerLogsResponse, None]:
        async def forever() -> AsyncIterator[LogLine]:
            await asyncio.Event().wait()
            yield LogLine(dt.datetime.now(dt.UTC), "never")

        async def body() -> AsyncIterator[kep.GetContainerLogsResponse]:
            options = containerlogs.LogOptions.from_request(request)
            if options.previous:
                raise containerlogs.no_previous(request.container_name, request.pod_name)
            start = dt.datetime.fromtimestamp(1000, dt.UTC)
            history = [LogLine(start + dt.timedelta(seconds=i, microseconds=1), f"line {i}")
                       for i in range(3)]
            async for response in containerlogs.serve_log(options, history, forever()):
                yield response
        return self._counted(body())

    def exec(self, requests: AsyncIterator[kep.ExecRequest]
             ) -> AsyncGenerator[kep.ExecResponse, None]:
        async def body() -> AsyncIterator[kep.ExecResponse]:
            first = await anext(aiter(requests))
            self.starts.append(first.start)
            command = list(first.start.command)
            if command[0] == "echo":
                yield kep.ExecResponse(stdout=(" ".join(command[1:]) + "\n").encode())
                yield kep.ExecResponse(exit=kep.StreamExit(exit_code=0))
            elif command[0] == "exit":
                yield kep.ExecResponse(stderr=b"leaving\n")
                yield kep.ExecResponse(exit=kep.StreamExit(exit_code=int(command[1])))
            elif command[0] == "cat":
                async for request in requests:
                    kind = request.WhichOneof("kind")
                    if kind == "stdin":
                        yield kep.ExecResponse(stdout=request.stdin)
                    elif kind == "resize":
                        self.resizes.append((request.resize.width, request.resize.height))
                    elif kind == "close_stdin":
                        break
                yield kep.ExecResponse(exit=kep.StreamExit(exit_code=0))
        return self._counted(body())

    def attach(self, requests: AsyncIterator[kep.AttachRequest]
               ) -> AsyncGenerator[kep.AttachResponse, None]:
        async def body() -> AsyncIterator[kep.AttachResponse]:
            stream = aiter(requests)
            await anext(stream)
            async for request in stream:
                if request.WhichOneof("kind") == "stdin":
                    yield kep.AttachResponse(stdout=request.stdin)
                elif request.WhichOneof("kind") == "close_stdin":
                    break
            yield kep.AttachResponse(exit=kep.StreamExit(exit_code=0))
        return self._counted(body())

    def port_forward(self, requests: AsyncIterator[kep.PortForwardRequest]
                     ) -> AsyncGenerator[kep.PortForwardResponse, None]:
        async def body() -> AsyncIterator[kep.PortForwardResponse]:
            stream = aiter(requests)
            first = await anext(stream)
            if first.start.port == 1:
                yield kep.PortForwardResponse(error="connection refused")
                return
            async for request in stream:
                if request.WhichOneof("kind") == "data":
                    yield kep.PortForwardResponse(data=request.data)
                else:
                    return
        return self._counted(body())

    async def stats_summary(self, node: str) -> kep.GetStatsSummaryResponse:
        return kep.GetStatsSummaryResponse(node_cpu=kep.CpuStats(usage_nano_cores=1))

    async def get_pods(self) -> list[pb.PodWithStatus]:
        item = pb.PodWithStatus(pod=pb.Pod(ref=pb.PodRef(namespace="ns", name="vm", uid="u"),
                                           node_name="n1"),
                                status=pb.PodStatus(phase=pb.POD_PHASE_RUNNING))
        item.pod.containers.add(name="vm", image="debian")
        return [item]


@dataclass
class Route:
    provider: Any


@dataclass
class Pods:
    pods: dict[str, Any] = field(default_factory=dict)
    routes: dict[str, Route] = field(default_factory=dict)


@dataclass
class Nodes:
    provider: Any
    nodes: dict[str, node_pb2.Node] = field(default_factory=dict)


class Reviews:
    """alice may do anything; bob nothing; the apiserver (by certificate) anything."""

    async def token_review(self, token: str) -> User | None:
        return {"alice-token": User("alice"), "bob-token": User("bob")}.get(token)

    async def access_review(self, user: User, verb: str, node: str,
                            subresource: str) -> tuple[bool, str]:
        return user.name in ("alice", "kube-apiserver-kubelet-client"), ""


@dataclass
class Env:
    api: KubeletApi
    provider: FakeProvider
    port: int
    ca: CertificateAuthority
    apiserver: CertPair

    def context(self, client: CertPair | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca.cert_path))
        if client is not None:
            ctx.load_cert_chain(str(client.cert), str(client.key))
        return ctx

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CertificateAuthority, Path]]:
    directory = tmp_path_factory.mktemp("pki")
    yield CertificateAuthority(directory, "ca"), directory


@pytest.fixture
async def env(pki: tuple[CertificateAuthority, Path]) -> AsyncIterator[Env]:
    ca, _ = pki
    serving = ca.issue("serving", common_name="system:node:n1", ips=("127.0.0.1",),
                       server=True)
    apiserver = ca.issue("apiserver-client", common_name="kube-apiserver-kubelet-client",
                         client=True)
    provider = FakeProvider()
    node = node_pb2.Node(name="n1")
    node.addresses.add(type="InternalIP", address="127.0.0.1")
    pods = Pods(pods={"u": {"metadata": {"namespace": "ns", "name": "vm", "uid": "u"},
                            "spec": {"nodeName": "n1", "containers": [{"name": "vm"}]}}},
                routes={"n1": Route(provider)})
    api = KubeletApi(KubeletApiConfig(port=0, address="127.0.0.1", cert_file=serving.cert,
                                      key_file=serving.key, client_ca_file=ca.cert_path),
                     None, pods, [Nodes(provider, {"n1": node})],  # type: ignore[arg-type]
                     reviews=Reviews())
    task = asyncio.create_task(api.run())
    await asyncio.wait_for(api.listening.wait(), 10)
    try:
        yield Env(api, provider, api.port, ca, apiserver)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def get(env: Env, path: str, *, token: str = "",
              client: CertPair | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session, session.get(
            env.url(path), ssl=env.context(client), headers=headers) as resp:
        return resp.status, await resp.text()


async def eventually(check: Any, within: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


# -- authentication and authorization --------------------------------------------------------


async def test_who_may_call(env: Env, pki: tuple[CertificateAuthority, Path]) -> None:
    assert (await get(env, "/pods"))[0] == 401
    foreign = CertificateAuthority(pki[1] / "foreign", "foreign-ca")
    stranger = foreign.issue("stranger", common_name="kube-apiserver-kubelet-client",
                             client=True)
    assert (await get(env, "/pods", client=stranger))[0] == 401  # a 401, not a TLS failure
    server_only = env.ca.issue("server-only", common_name="kube-apiserver-kubelet-client",
                               server=True)
    assert (await get(env, "/pods", client=server_only))[0] == 401  # not for client auth
    status, body = await get(env, "/pods", client=env.apiserver)
    assert status == 200 and json.loads(body)["items"][0]["metadata"]["name"] == "vm"
    assert (await get(env, "/pods", token="nonsense"))[0] == 401
    status, body = await get(env, "/pods", token="bob-token")
    assert status == 403
    assert body == "Forbidden (user=bob, verb=get, resource=nodes, subresource(s)=[pods proxy])\n"
    assert (await get(env, "/healthz", token="alice-token")) == (200, "ok")
    assert (await get(env, "/nowhere", token="alice-token"))[0] == 404
    assert (await get(env, "/containerLogs/ns/other/vm", token="alice-token"))[0] == 404
    assert (await get(env, "/containerLogs/ns/vm/nope", token="alice-token"))[0] == 404


async def test_node_endpoints(env: Env) -> None:
    status, body = await get(env, "/stats/summary", token="alice-token")
    assert status == 200 and json.loads(body)["node"]["nodeName"] == "n1"
    status, body = await get(env, "/metrics/resource", token="alice-token")
    assert status == 200 and "resource_scrape_error 0" in body
    status, body = await get(env, "/runningpods/", token="alice-token")
    assert json.loads(body)["items"][0]["spec"]["containers"][0]["image"] == "debian"


# -- logs --------------------------------------------------------------------------------------


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


# -- exec and attach over WebSocket ---------------------------------------------------------


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


# -- SPDY -----------------------------------------------------------------------------------


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
        reader, writer = await asyncio.open_connection("127.0.0.1", env.port,
                                                       ssl=env.context(env.apiserver),
                                                       server_hostname="127.0.0.1")
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n" \
               f"Upgrade: SPDY/3.1\r\nContent-Length: 0\r\n"
        head += "".join(f"X-Stream-Protocol-Version: {p}\r\n" for p in protocols)
        writer.write((head + "\r\n").encode())
        answer = (await reader.readuntil(b"\r\n\r\n")).decode()
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
    reader, writer = await asyncio.open_connection("127.0.0.1", env.port,
                                                   ssl=env.context(env.apiserver),
                                                   server_hostname="127.0.0.1")
    writer.write(b"POST /exec/ns/vm/vm?command=cat&output=1 HTTP/1.1\r\nHost: x\r\n"
                 b"Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
                 b"X-Stream-Protocol-Version: v9.channel.k8s.io\r\nContent-Length: 0\r\n\r\n")
    answer = await reader.readuntil(b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 403")
    assert b"X-Accept-Stream-Protocol-Version: v5.channel.k8s.io" in answer
    writer.close()


async def _handshake(env: Env, ctx: ssl.SSLContext) -> str | None:
    """The cipher the kubelet port agreed to with ``ctx``; None when it refused the handshake."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(
            "127.0.0.1", env.port, ssl=ctx, server_hostname="127.0.0.1"), 10)
    except (ssl.SSLError, ConnectionError):
        return None
    cipher = writer.get_extra_info("cipher")
    writer.close()
    return str(cipher[0]) if cipher else ""


async def test_tls_is_1_3_or_1_2_with_aead_suites_only(env: Env) -> None:
    cbc = env.context()
    cbc.set_ciphers("ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES128-SHA:"
                    "AES128-SHA:AES256-SHA:@SECLEVEL=0")  # CBC with SHA-1 MACs, nothing else
    cbc.minimum_version = cbc.maximum_version = ssl.TLSVersion.TLSv1_2
    assert await _handshake(env, cbc) is None
    non_pfs = env.context()
    non_pfs.set_ciphers("AES128-GCM-SHA256:AES256-GCM-SHA384")  # AEAD without ECDHE
    non_pfs.maximum_version = ssl.TLSVersion.TLSv1_2
    assert await _handshake(env, non_pfs) is None
    aead = env.context()
    aead.maximum_version = ssl.TLSVersion.TLSv1_2
    assert await _handshake(env, aead) in ("ECDHE-ECDSA-AES128-GCM-SHA256",
                                           "ECDHE-ECDSA-AES256-GCM-SHA384",
                                           "ECDHE-ECDSA-CHACHA20-POLY1305")
    modern = env.context()
    modern.minimum_version = ssl.TLSVersion.TLSv1_3
    assert await _handshake(env, modern) in ("TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256",
                                             "TLS_CHACHA20_POLY1305_SHA256")
    old = env.context()
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("ALL:@SECLEVEL=0")
    assert await _handshake(env, old) is None


# -- limits ------------------------------------------------------------------------------------


async def test_a_request_head_over_the_limit_is_answered_431(env: Env) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", env.port, ssl=env.context(),
                                                   server_hostname="127.0.0.1")
    try:
        writer.write(b"GET /pods HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (70 * 1024)
                     + b"\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)  # then the server closes
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), answer[:80]
