"""Each node's own address from a pool (--node-ip-pool): kept across restarts, never shared,
a clear fallback when the pool runs out; and the kubelet API telling the node of a node
endpoint by the local address a connection arrived at."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubeletapi_server.server_env import Pods, Route

from vmlet.provider.v1 import kubelet_endpoint_service_pb2 as kep
from vmlet.provider.v1 import node_pb2, node_provider_service_pb2
from vmlet_facade.kubeletapi import KubeletApi, KubeletApiConfig
from vmlet_facade.kubeletapi.addressing import AddressPool, advertise, local_address
from vmlet_facade.kubeletapi.auth import User
from vmlet_localenv.pki import CertificateAuthority


class Cluster:
    """The InternalIP of every Node, as the apiserver would list them; counts the lists."""

    def __init__(self, nodes: dict[str, str] | None = None) -> None:
        self.nodes = dict(nodes or {})
        self.lists = 0

    async def existing(self) -> dict[str, str]:
        self.lists += 1
        return dict(self.nodes)

    def record(self, pool: AddressPool) -> None:
        """Write what the pool handed out into the Nodes, as the node controller does."""
        self.nodes.update(pool.assigned)


class Hosts:
    """A provider of nodes h0..h<n-1>, all reporting 127.0.0.1; a watch that adds ``later``."""

    name = "p"

    def __init__(self, count: int, later: tuple[str, ...] = ()) -> None:
        self.names = [f"h{i}" for i in range(count)]
        self.later = later

    @staticmethod
    def node(name: str) -> node_pb2.Node:
        node = node_pb2.Node(name=name)
        node.addresses.add(type="InternalIP", address="127.0.0.1")
        node.addresses.add(type="Hostname", address=name)
        return node

    async def list_nodes(self) -> list[node_pb2.Node]:
        return [self.node(n) for n in self.names]

    async def watch_nodes(
        self,
    ) -> AsyncIterator[node_provider_service_pb2.NotifyNodeStatusResponse]:
        for name in self.later:
            yield node_provider_service_pb2.NotifyNodeStatusResponse(node=self.node(name))


def internal(node: node_pb2.Node) -> str:
    return next(a.address for a in node.addresses if a.type == "InternalIP")


async def test_each_node_gets_the_lowest_free_address_of_its_own() -> None:
    cluster = Cluster({"someone-else": "198.18.0.1"})
    pool = AddressPool("198.18.0.0/29", cluster.existing)
    provider: Any = advertise(Hosts(3, later=("h3",)), None, pool)
    listed = await provider.list_nodes()
    assert [internal(n) for n in listed] == ["198.18.0.2", "198.18.0.3", "198.18.0.4"]
    assert [(a.type, a.address) for a in listed[0].addresses][1:] == [("Hostname", "h0")]
    [message] = [m async for m in provider.watch_nodes()]
    assert internal(message.node) == "198.18.0.5"
    again = await provider.list_nodes()  # known nodes keep theirs, without asking again
    lists = cluster.lists
    assert [internal(n) for n in again] == ["198.18.0.2", "198.18.0.3", "198.18.0.4"]
    assert cluster.lists == lists


async def test_addresses_are_kept_across_a_restart() -> None:
    cluster = Cluster()
    first = AddressPool("198.18.0.0/28", cluster.existing)
    before = {n: await first.address(n, "127.0.0.1") for n in ("a", "b", "c")}
    cluster.record(first)
    # A restarted facade meets the nodes in another order, and b is gone for now.
    second = AddressPool("198.18.0.0/28", cluster.existing)
    assert await second.address("c") == before["c"]
    assert await second.address("a") == before["a"]
    assert await second.address("d") not in before.values()  # b's stays b's
    assert await second.address("b") == before["b"]


async def test_an_address_outside_the_pool_or_taken_is_replaced() -> None:
    cluster = Cluster({"a": "127.0.0.1", "b": "198.18.0.2", "c": "198.18.0.2",
                       "d": "198.18.0.0", "e": "198.18.0.15"})
    pool = AddressPool("198.18.0.0/28", cluster.existing)
    assert await pool.address("a") == "198.18.0.1"  # was outside the pool
    assert await pool.address("b") == "198.18.0.2"
    assert await pool.address("c") == "198.18.0.3"  # b has it already
    assert await pool.address("d") == "198.18.0.4"  # the network address is no host's
    assert await pool.address("e") == "198.18.0.5"  # nor the broadcast address
    assert len(set(pool.assigned.values())) == len(pool.assigned) == 5


async def test_no_two_nodes_ever_share_an_address_when_asked_at_once() -> None:
    cluster = Cluster()
    pool = AddressPool("198.18.0.0/26", cluster.existing)
    got = await asyncio.gather(*(pool.address(f"n{i}") for i in range(40)))
    assert len(set(got)) == 40


async def test_an_exhausted_pool_falls_back_and_says_so(caplog: pytest.LogCaptureFixture
                                                        ) -> None:
    cluster = Cluster({"other": "198.18.0.1"})
    told: list[tuple[str, str]] = []

    async def exhausted(node: str, message: str) -> None:
        told.append((node, message))

    pool = AddressPool("198.18.0.0/30", cluster.existing, fallback="198.18.1.1",
                       on_exhausted=exhausted)
    assert await pool.address("a") == "198.18.0.2"
    assert await pool.address("b", "127.0.0.1") == "198.18.1.1"
    assert await pool.address("b", "127.0.0.1") == "198.18.1.1"  # said once, not per call
    assert [node for node, _ in told] == ["b"]
    assert "198.18.0.0/30 is exhausted" in told[0][1]
    assert "exhausted" in caplog.text
    # Without --node-ip, the provider's address; nothing raised either way.
    bare = AddressPool("198.18.0.0/32", Cluster({"x": "198.18.0.0"}).existing)
    assert await bare.address("y", "10.1.2.3") == "10.1.2.3"


def test_local_addresses_read_as_the_nodes_advertise_them() -> None:
    assert local_address("::ffff:198.18.0.5") == "198.18.0.5"
    assert local_address("198.18.0.5") == "198.18.0.5"
    assert local_address("fd00::1") == "fd00::1"


# -- the kubelet API knows the node by the address it was dialed at -------------------------


class StatsProvider:
    name = "p"

    async def stats_summary(self, node: str) -> kep.GetStatsSummaryResponse:
        return kep.GetStatsSummaryResponse(node_cpu=kep.CpuStats(usage_nano_cores=1))


@dataclass
class Nodes:
    provider: Any
    nodes: dict[str, node_pb2.Node] = field(default_factory=dict)


class Reviews:
    async def token_review(self, token: str) -> User | None:
        return User("alice") if token == "alice-token" else None

    async def access_review(self, user: User, verb: str, node: str,
                            subresource: str) -> tuple[bool, str]:
        return True, ""


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[int, ssl.SSLContext]]:
    """n1 at 127.0.0.2 (where the API listens) and n2 at 127.0.0.3, each with a pod."""
    ca = CertificateAuthority(tmp_path, "ca")
    serving = ca.issue("serving", common_name="system:node:n1",
                       ips=("127.0.0.2", "127.0.0.3"), server=True)
    provider = StatsProvider()
    nodes = {}
    for name, ip in (("n1", "127.0.0.2"), ("n2", "127.0.0.3")):
        nodes[name] = node_pb2.Node(name=name)
        nodes[name].addresses.add(type="InternalIP", address=ip)
    pods = Pods(pods={f"u{i}": {"metadata": {"namespace": "ns", "name": f"vm{i}", "uid": f"u{i}"},
                                "spec": {"nodeName": f"n{i}", "containers": [{"name": "vm"}]}}
                      for i in (1, 2)},
                routes={"n1": Route(provider), "n2": Route(provider)})
    api = KubeletApi(KubeletApiConfig(port=0, address="127.0.0.2", cert_file=serving.cert,
                                      key_file=serving.key, node_ip_pool="127.0.0.0/29"),
                     None, pods, [Nodes(provider, nodes)],
                     reviews=Reviews())
    task = asyncio.create_task(api.run())
    await asyncio.wait_for(api.listening.wait(), 10)
    try:
        yield api.port, ssl.create_default_context(cafile=str(ca.cert_path))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _get(served: tuple[int, ssl.SSLContext], path: str,
               forwarded: str | None = None) -> tuple[int, str]:
    port, context = served
    headers = {"Authorization": "Bearer alice-token"}
    if forwarded:
        headers["X-Forwarded-Uri"] = forwarded
    async with aiohttp.ClientSession() as session, session.get(
            f"https://127.0.0.2:{port}{path}", ssl=context, headers=headers) as resp:
        return resp.status, await resp.text()


async def test_a_node_endpoint_answers_for_the_node_dialed(
        served: tuple[int, ssl.SSLContext]) -> None:
    status, body = await _get(served, "/stats/summary")  # as metrics-server asks: no header
    assert status == 200 and json.loads(body)["node"]["nodeName"] == "n1"
    status, body = await _get(served, "/pods")
    assert status == 200
    assert [p["metadata"]["name"] for p in json.loads(body)["items"]] == ["vm1"]
    status, body = await _get(served, "/stats/summary", "/api/v1/nodes/n1/proxy/stats/summary")
    assert status == 200 and json.loads(body)["node"]["nodeName"] == "n1"


async def test_a_request_for_another_node_than_the_one_dialed_is_refused(
        served: tuple[int, ssl.SSLContext]) -> None:
    status, body = await _get(served, "/stats/summary", "/api/v1/nodes/n2/proxy/stats/summary")
    assert status == 421
    assert "127.0.0.2, the address of node n1, but the request is for node n2" in body
    status, _ = await _get(served, "/pods", "/api/v1/nodes/n2/proxy/pods")
    assert status == 421
