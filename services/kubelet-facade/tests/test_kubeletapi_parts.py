"""Unit tests of the kubelet API's parts: attributes, caches, SPDY framing, channels, shapes."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import struct
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from starlette.requests import HTTPConnection

from vmlet.provider.v1 import kubelet_endpoint_service_pb2 as kep
from vmlet.provider.v1 import node_pb2, pod_pb2
from vmlet_facade.kubeletapi.addressing import advertise
from vmlet_facade.kubeletapi.auth import Authenticator, Authorizer, User, attributes
from vmlet_facade.kubeletapi.certs import FileCertificates, ServingNames, covers
from vmlet_facade.kubeletapi.logs import LogOptions
from vmlet_facade.kubeletapi.params import Query
from vmlet_facade.kubeletapi.remotecommand import StreamOptions, _sizes, status_for_exit
from vmlet_facade.kubeletapi.spdy import DICTIONARY, SpdySession, decode_headers, encode_headers
from vmlet_facade.kubeletapi.stats import resource_metrics, summary
from vmlet_facade.kubeletapi.tls import ServerTls
from vmlet_localenv.pki import CertificateAuthority


def request(target: str, method: str = "GET", **headers: str) -> Query:
    path, _, query = target.partition("?")
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return Query(HTTPConnection({"type": "http", "method": method, "path": path,
                                 "query_string": query.encode(), "headers": raw}))


# -- authorization attributes, as the kubelet maps them -----------------------------------------


@pytest.mark.parametrize(("method", "path", "verb", "subresources"), [
    ("GET", "/stats/summary", "get", ["stats"]),
    ("GET", "/stats", "get", ["stats"]),
    ("GET", "/metrics/resource", "get", ["metrics"]),
    ("GET", "/logs/syslog", "get", ["log"]),
    ("GET", "/containerLogs/ns/pod/c", "get", ["proxy"]),
    ("POST", "/exec/ns/pod/c", "create", ["proxy"]),
    ("GET", "/exec/ns/pod/c", "get", ["proxy"]),
    ("POST", "/portForward/ns/pod", "create", ["proxy"]),
    ("GET", "/pods", "get", ["pods", "proxy"]),
    ("GET", "/healthz", "get", ["healthz", "proxy"]),
    ("PUT", "/statsfoo", "update", ["proxy"]),
    ("DELETE", "/runningpods/", "delete", ["proxy"]),
])
def test_attributes_map_like_the_kubelet(method: str, path: str, verb: str,
                                         subresources: list[str]) -> None:
    assert attributes(method, path) == (verb, subresources)


class CountingReviews:
    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.reviews: list[tuple[str, str, str, str]] = []

    async def token_review(self, token: str) -> User | None:
        self.tokens.append(token)
        return User("alice", groups=("devs",)) if token == "good" else None

    async def access_review(self, user: User, verb: str, node: str,
                            subresource: str) -> tuple[bool, str]:
        self.reviews.append((user.name, verb, node, subresource))
        return subresource == "proxy", ""


async def test_tokens_and_decisions_are_cached() -> None:
    reviews = CountingReviews()
    authn = Authenticator(reviews, None)
    assert await authn.authenticate(None, "good") == User("alice", groups=("devs",))
    assert await authn.authenticate(None, "good") is not None
    assert await authn.authenticate(None, "bad") is None
    assert await authn.authenticate(None, "bad") is None
    assert await authn.authenticate(None, "") is None
    assert reviews.tokens == ["good", "bad"]
    authz = Authorizer(reviews, ttl_allowed=10, ttl_denied=0.05)
    alice = User("alice")
    assert (await authz.authorize(alice, "GET", "/pods", ["n1"])).allowed  # pods, then proxy
    assert (await authz.authorize(alice, "GET", "/pods", ["n1"])).allowed
    denied = await authz.authorize(alice, "GET", "/stats/summary", ["n1"])
    assert not denied.allowed and denied.subresources == ("stats",)
    assert reviews.reviews == [("alice", "get", "n1", "pods"), ("alice", "get", "n1", "proxy"),
                               ("alice", "get", "n1", "stats")]
    await asyncio.sleep(0.1)  # denials expire sooner
    await authz.authorize(alice, "GET", "/stats/summary", ["n1"])
    assert reviews.reviews[-1] == ("alice", "get", "n1", "stats") and len(reviews.reviews) == 4
    both = await authz.authorize(alice, "POST", "/exec/a/b/c", ["n1", "n2"])
    assert both.allowed and ("alice", "create", "n2", "proxy") in reviews.reviews


# -- SPDY ------------------------------------------------------------------------------------


def test_dictionary_is_the_spdy3_one() -> None:
    assert len(DICTIONARY) == 1423
    assert DICTIONARY.startswith(b"\x00\x00\x00\x07options\x00\x00\x00\x04head")
    assert DICTIONARY.endswith(b"charset=iso-8859-1,utf-,*,enq=0.")
    assert b"\x00\x00\x00\x06200 OK\x00\x00\x00\x07version" in DICTIONARY


def test_header_blocks_round_trip() -> None:
    headers = {"streamtype": ["stdout"], "x-multi": ["a", "b"], "port": ["8080"]}
    block = encode_headers(headers)
    assert struct.unpack_from(">I", block)[0] == 3
    assert decode_headers(block) == headers
    with pytest.raises(ValueError):
        decode_headers(b"\x00\x00\x00\x01\x00\x00\x00\xff")


class Pipe:
    """Both ends of an in-memory byte stream."""

    def __init__(self) -> None:
        self.to_server: asyncio.Queue[bytes] = asyncio.Queue()
        self.to_client = bytearray()
        self.written = asyncio.Event()
        self.closed = False

    async def read(self, max_bytes: int = 65536) -> bytes:
        return await self.to_server.get()

    async def write(self, data: bytes) -> None:
        self.to_client += data
        self.written.set()

    async def close(self) -> None:
        self.closed = True


class Client:
    """The client side of SPDY, enough to drive a session in tests."""

    def __init__(self, pipe: Pipe) -> None:
        self.pipe = pipe
        self.deflate = zlib.compressobj(zdict=DICTIONARY)
        self.inflate = zlib.decompressobj(zdict=DICTIONARY)

    def control(self, kind: int, flags: int, payload: bytes) -> None:
        self.pipe.to_server.put_nowait(struct.pack(">HHI", 0x8003, kind, (flags << 24)
                                                   | len(payload)) + payload)

    def syn(self, stream_id: int, headers: dict[str, list[str]], fin: bool = False) -> None:
        block = self.deflate.compress(encode_headers(headers)) \
            + self.deflate.flush(zlib.Z_SYNC_FLUSH)
        self.control(1, 1 if fin else 0, struct.pack(">IIH", stream_id, 0, 0) + block)

    def data(self, stream_id: int, payload: bytes, fin: bool = False) -> None:
        self.pipe.to_server.put_nowait(struct.pack(">II", stream_id, ((1 if fin else 0) << 24)
                                                   | len(payload)) + payload)

    def frames(self) -> list[tuple[str, int, int, bytes]]:
        out = []
        buf = bytes(self.pipe.to_client)
        self.pipe.to_client.clear()
        while len(buf) >= 8:
            word, flags_length = struct.unpack_from(">II", buf)
            length = flags_length & 0xFFFFFF
            payload, buf = buf[8:8 + length], buf[8 + length:]
            if word & 0x80000000:
                kind = word & 0xFFFF
                sid = struct.unpack_from(">I", payload)[0] & 0x7FFFFFFF
                if kind == 2:
                    payload = self.inflate.decompress(payload[4:])
                out.append(({2: "reply", 3: "rst", 6: "ping", 7: "goaway"}.get(kind, str(kind)),
                            sid, flags_length >> 24, payload))
            else:
                out.append(("data", word, flags_length >> 24, payload))
        return out


async def test_spdy_session_streams_data_fin_ping_and_reset() -> None:
    pipe = Pipe()
    session = SpdySession(pipe, accept=lambda h: h.get("streamtype") != ["bogus"])
    serving = asyncio.create_task(session.serve())
    client = Client(pipe)
    client.syn(1, {"streamtype": ["stdin"]})
    client.syn(3, {"streamtype": ["stdout"]})
    client.syn(5, {"streamtype": ["bogus"]})
    stdin = await session.accept_stream()
    stdout = await session.accept_stream()
    assert stdin is not None and stdout is not None
    assert (stdin.id, stdin.header("streamtype"), stdout.id) == (1, "stdin", 3)
    client.data(1, b"hello")
    assert await stdin.read() == b"hello"
    client.data(1, b"", fin=True)
    assert await stdin.read() == b""
    await stdout.write(b"out")
    await stdout.close()
    client.control(6, 0, struct.pack(">I", 7))  # the client's ping
    client.syn(2, {"streamtype": ["even"]})  # clients use odd ids
    await asyncio.sleep(0.05)
    frames = client.frames()
    kinds = [(kind, sid) for kind, sid, _, _ in frames]
    assert kinds == [("reply", 1), ("reply", 3), ("rst", 5), ("data", 3), ("data", 3),
                     ("ping", 7), ("rst", 2)]
    assert frames[2][3][4:] == struct.pack(">I", 3)  # REFUSED_STREAM
    assert frames[3][3] == b"out" and frames[4][2] == 1  # FIN
    assert decode_headers(frames[0][3]) == {}
    await session.goaway()
    assert client.frames()[0][0] == "goaway"
    pipe.to_server.put_nowait(b"")  # the client hangs up
    await serving
    assert session.closed.is_set() and await session.accept_stream() is None


# -- the rest ---------------------------------------------------------------------------------


def test_stream_options_follow_the_kubelet() -> None:
    options = StreamOptions.from_request(request("/exec/a/b/c?input=1&output=1&error=1&tty=1"))
    assert options == StreamOptions(stdin=True, stdout=True, stderr=False, tty=True)
    assert not StreamOptions.from_request(request("/exec/a/b/c?command=ls")).any


def test_resize_messages_are_json_objects_back_to_back() -> None:
    buffer = bytearray(b'{"Width":80,"Height":24}{"Width":100,')
    assert [(s.width, s.height) for s in _sizes(buffer)] == [(80, 24)]
    buffer += b'"Height":40}\n'
    assert [(s.width, s.height) for s in _sizes(buffer)] == [(100, 40)]
    assert buffer == b"" or buffer.strip() == b""


def test_exit_statuses_are_the_kubelets() -> None:
    assert status_for_exit(0, ["true"]) == {"metadata": {}, "status": "Success"}
    failed = status_for_exit(3, ["sh", "-c", "exit 3"])
    assert failed["reason"] == "NonZeroExitCode"
    assert failed["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]


def test_log_options() -> None:
    options = LogOptions.from_request(request(
        "/containerLogs/a/b/c?follow=true&tailLines=5&timestamps=1&limitBytes=10"))
    assert (options.follow, options.tail_lines, options.timestamps, options.limit_bytes) \
        == (True, 5, True, 10)
    req = options.request("a", "b", "c")
    assert req.tail_lines == 5 and req.follow and not req.HasField("since_time")
    since = LogOptions.from_request(request("/containerLogs/a/b/c?sinceSeconds=60"))
    assert since.since_time is not None
    assert abs((dt.datetime.now(dt.UTC) - since.since_time).total_seconds() - 60) < 5
    at = LogOptions.from_request(request("/c?sinceTime=2024-01-02T03:04:05Z"))
    assert at.request("a", "b", "c").since_time.ToJsonString() == "2024-01-02T03:04:05Z"
    with pytest.raises(ValueError):
        LogOptions.from_request(request("/c?sinceSeconds=5&sinceTime=2024-01-02T03:04:05Z"))
    with pytest.raises(ValueError):
        LogOptions.from_request(request("/c?tailLines=-1"))


def _stamp(seconds: int) -> Timestamp:
    return Timestamp(seconds=seconds, nanos=500_000_000)


def _stats() -> kep.GetStatsSummaryResponse:
    return kep.GetStatsSummaryResponse(
        node_cpu=kep.CpuStats(time=_stamp(100), usage_nano_cores=7,
                              usage_core_nano_seconds=3_000_000_000),
        node_memory=kep.MemoryStats(time=_stamp(100), usage_bytes=10, working_set_bytes=8,
                                    available_bytes=90),
        node_start_time=_stamp(1),
        pods=[kep.PodStats(ref=pod_pb2.PodRef(namespace="ns", name="vm", uid="u1"),
                           start_time=_stamp(50),
                           cpu=kep.CpuStats(time=_stamp(100), usage_nano_cores=5,
                                            usage_core_nano_seconds=1_500_000_000),
                           memory=kep.MemoryStats(time=_stamp(100), usage_bytes=6,
                                                  working_set_bytes=858993459,
                                                  available_bytes=4))])


def test_summary_shape() -> None:
    doc: dict[str, Any] = summary("n1", _stats(), lambda ns, name: ["vm"])
    assert doc["node"]["nodeName"] == "n1"
    assert doc["node"]["cpu"] == {"time": "1970-01-01T00:01:40.500Z", "usageNanoCores": 7,
                                  "usageCoreNanoSeconds": 3_000_000_000}
    pod = doc["pods"][0]
    assert pod["podRef"] == {"name": "vm", "namespace": "ns", "uid": "u1"}
    assert pod["containers"][0]["name"] == "vm"
    assert pod["containers"][0]["memory"]["workingSetBytes"] == 858993459
    json.dumps(doc)


def test_resource_metrics_text() -> None:
    text = resource_metrics(_stats(), lambda ns, name: ["vm"])
    lines = text.splitlines()
    assert "node_cpu_usage_seconds_total 3 100500" in lines
    assert "node_memory_working_set_bytes 8 100500" in lines
    assert 'container_memory_working_set_bytes{container="vm",namespace="ns",pod="vm"} ' \
           '858993459 100500' in lines
    assert 'pod_cpu_usage_seconds_total{namespace="ns",pod="vm"} 1.5 100500' in lines
    assert "# TYPE container_cpu_usage_seconds_total counter" in lines


class OneNodeProvider:
    name = "p"

    async def list_nodes(self) -> list[node_pb2.Node]:
        node = node_pb2.Node(name="n1")
        node.addresses.add(type="InternalIP", address="127.0.0.1")
        node.addresses.add(type="Hostname", address="n1")
        return [node]


async def test_advertised_address_replaces_the_internal_ip() -> None:
    provider: Any = advertise(OneNodeProvider(), "198.18.0.2")  # type: ignore[arg-type]
    [node] = await provider.list_nodes()
    assert [(a.type, a.address) for a in node.addresses] == [("InternalIP", "198.18.0.2"),
                                                             ("Hostname", "n1")]
    assert provider.name == "p"


async def test_serving_certificate_files_are_reloaded_when_they_change(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path, "ca")
    first = ca.issue("one", common_name="system:node:n1", ips=("127.0.0.1",), server=True)
    second = ca.issue("two", common_name="system:node:n1", ips=("127.0.0.1", "198.18.0.2"),
                      server=True)
    cert, key = tmp_path / "serving.crt", tmp_path / "serving.key"
    cert.write_bytes(first.cert.read_bytes())
    key.write_bytes(first.key.read_bytes())
    tls = ServerTls()
    task = asyncio.create_task(FileCertificates(cert, key, tls, interval=0.05).run())
    try:
        await asyncio.wait_for(tls.installed.wait(), 5)
        loaded = tls.certificate
        names = ServingNames("n1", (), ("127.0.0.1", "198.18.0.2"))
        assert loaded is not None and not covers(loaded, names)
        await asyncio.sleep(0.05)
        cert.write_bytes(second.cert.read_bytes())
        key.write_bytes(second.key.read_bytes())
        os.utime(cert, (time.time() + 5, time.time() + 5))
        for _ in range(100):
            if tls.certificate != loaded:
                break
            await asyncio.sleep(0.05)
        assert tls.certificate is not None and covers(tls.certificate, names)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
