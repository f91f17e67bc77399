"""The kubelet API server in process for its tests: a fake provider that counts its open streams,
fake pods, nodes and reviews, and small HTTP helpers."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Collection
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from vmlet.provider.v1 import kubelet_endpoint_service_pb2 as kep
from vmlet.provider.v1 import node_pb2
from vmlet.provider.v1 import pod_pb2 as pb
from vmlet_contract import containerlogs
from vmlet_facade.kubeletapi import KubeletApi
from vmlet_facade.kubeletapi.auth import User
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
    """A PodDirectory (the pod controller's side of the kubelet API) over fixed pods."""

    pods: dict[str, Any] = field(default_factory=dict)
    routes: dict[str, Route] = field(default_factory=dict)

    def pods_named(self, namespace: str, name: str) -> list[Any]:
        return [p for p in self.pods.values()
                if (p["metadata"]["namespace"], p["metadata"]["name"]) == (namespace, name)]

    def pods_on(self, nodes: Collection[str]) -> list[Any]:
        return [p for p in self.pods.values() if p["spec"]["nodeName"] in nodes]

    def provider_of(self, node: str) -> Any:
        route = self.routes.get(node)
        return route.provider if route is not None else None


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
