"""The kubelet API's endpoints: which request goes where, after who-and-may-they.

Pod endpoints (/containerLogs, /exec, /attach, /portForward) are routed by the pod: to the
provider behind the node it is bound to, and authorized against that node. Node endpoints
(/stats/summary, /metrics/resource, /pods, /runningpods/) answer for one node: the node whose
own address the connection arrived at (with --node-ip-pool each node advertises its own, so a
caller dialing a node directly, as metrics-server does, reaches it), or the one the apiserver's
node proxy names (X-Forwarded-Uri /api/v1/nodes/<node>/proxy/...); when both name a node and
they differ, the request is refused (421). Where nodes share one address and nothing names one,
pod lists cover every node the caller may see and stats need the only node there is.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from vmlet.provider.v1 import pod_pb2
from vmlet_contract import ProviderError
from vmlet_facade.kube.objects import Obj, Pod
from vmlet_facade.kubeletapi import metrics, portforward, remotecommand
from vmlet_facade.kubeletapi.auth import Authenticator, Authorizer
from vmlet_facade.kubeletapi.auth import bearer_token as _bearer
from vmlet_facade.kubeletapi.directory import Directory
from vmlet_facade.kubeletapi.guestlogin import SecretReader, guest_credentials
from vmlet_facade.kubeletapi.httpserver import HttpConnection, Request
from vmlet_facade.kubeletapi.logs import LogOptions, http_status, stream_logs
from vmlet_facade.kubeletapi.spdy import SpdySession
from vmlet_facade.kubeletapi.stats import resource_metrics, summary
from vmlet_facade.kubeletapi.tls import PeerCertificate
from vmlet_facade.kubeletapi.websocket import (
    ChannelSocket,
    handshake_headers,
    is_websocket,
    negotiate,
)
from vmlet_facade.provider import Provider

__all__ = ["Router"]

log = logging.getLogger(__name__)

_FORWARDED = re.compile(r"^/api/v1/nodes/([^/:]+)(?::\d+)?/proxy(?:/|$)")
_PHASE_RUNNING = pod_pb2.POD_PHASE_RUNNING


class HttpError(Exception):
    def __init__(self, status: int, message: str,
                 headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []


@dataclass(frozen=True)
class _Route:
    endpoint: str
    pod_scoped: bool
    parts: tuple[str, ...] = ()
    node: str | None = None  # of a node endpoint: the node asked for, when one is


def _match(path: str) -> _Route | None:
    parts = tuple(p for p in path.split("/") if p)
    if not parts:
        return None
    head, rest = parts[0], parts[1:]
    if head == "healthz" and not rest:
        return _Route("healthz", False)
    if head == "pods" and not rest:
        return _Route("pods", False)
    if head == "runningpods" and not rest:
        return _Route("runningpods", False)
    if path.rstrip("/") == "/stats/summary":
        return _Route("stats", False)
    if path.rstrip("/") == "/metrics/resource":
        return _Route("metrics", False)
    if head == "containerLogs" and len(rest) == 3:
        return _Route("logs", True, rest)
    if head in ("exec", "attach") and len(rest) in (3, 4):
        # /exec/{ns}/{pod}/{container} or /exec/{ns}/{pod}/{uid}/{container}
        return _Route(head, True, (rest[0], rest[1], rest[-1]))
    if head == "portForward" and len(rest) in (2, 3):
        return _Route("portforward", True, rest[:2])
    return None


def _spdy_protocol(request: Request, supported: tuple[str, ...]) -> str:
    wanted = request.headers.get_all("x-stream-protocol-version")
    if not wanted:
        raise HttpError(400, "unable to upgrade: X-Stream-Protocol-Version is required")
    for protocol in wanted:
        if protocol in supported:
            return protocol
    raise HttpError(403, f"unable to upgrade: unable to negotiate protocol: client supports "
                         f"{wanted}, server accepts {list(supported)}",
                    [("X-Accept-Stream-Protocol-Version", p) for p in supported])


def _pod_list(items: Sequence[Mapping[str, object]]) -> Obj:
    return {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}


class Router:
    """Answers one request on an established connection."""

    def __init__(self, directory: Directory, authn: Authenticator, authz: Authorizer,
                 secrets: SecretReader | None = None) -> None:
        self.directory = directory
        self._authn = authn
        self._authz = authz
        self._secrets = secrets  # where an exec's guest login is read (None: nowhere)

    async def handle(self, http: HttpConnection, request: Request,
                     peer: PeerCertificate | None, local: str | None = None) -> None:
        """Answer ``request``, which arrived on a connection to the local address ``local``."""
        route = _match(request.path)
        endpoint = route.endpoint if route else "unknown"
        code = 500
        try:
            user = await self._authn.authenticate(peer, _bearer(request.headers))
            if user is None:
                raise HttpError(401, "Unauthorized")
            if route is None:
                nodes = self.directory.node_names()[:1]
            elif route.pod_scoped:
                nodes = [self._pod_node(route.parts[0], route.parts[1])]
            else:
                route = replace(route, node=self._named_node(request, local))
                nodes = [route.node] if route.node else self.directory.node_names()
            # No node known yet: authorize against all nodes (an empty name), never skip it.
            decision = await self._authz.authorize(user, request.method, request.path,
                                                   nodes or [""])
            if not decision.allowed:
                raise HttpError(403, f"Forbidden (user={user.name}, verb={decision.verb}, "
                                     f"resource=nodes, subresource(s)="
                                     f"[{' '.join(decision.subresources)}])")
            http.authorized()
            if route is None:
                raise HttpError(404, "404 page not found")
            code = await self._dispatch(http, request, route)
        except HttpError as err:
            code = err.status
            await http.respond(err.status, f"{err.message}\n".encode(), headers=err.headers)
        finally:
            metrics.REQUESTS.labels(endpoint, str(code)).inc()

    # -- which node --------------------------------------------------------------------------

    def _pod_node(self, namespace: str, name: str) -> str:
        pod = self.directory.pod(namespace, name)
        if pod is not None:
            return str(pod["spec"]["nodeName"])
        names = self.directory.node_names()  # an unknown pod: authorize first, 404 after
        return names[0] if names else ""

    def _dialed_node(self, local: str | None) -> str | None:
        """The node whose own address ``local`` is (None where nodes share it)."""
        if not local:
            return None
        owners = [name for name in self.directory.node_names()
                  if any(a.type == "InternalIP" and a.address == local
                         for a in getattr(self.directory.node(name), "addresses", ()))]
        return owners[0] if len(owners) == 1 else None

    def _named_node(self, request: Request, local: str | None) -> str | None:
        found = _FORWARDED.match(request.headers.get("x-forwarded-uri"))
        forwarded = found.group(1) if found and found.group(1) in self.directory.node_names() \
            else None
        dialed = self._dialed_node(local)
        if forwarded and dialed and forwarded != dialed:
            raise HttpError(421, f"this connection arrived at {local}, the address of node "
                                 f"{dialed}, but the request is for node {forwarded}: ask "
                                 f"{forwarded} at its own address")
        return forwarded or dialed

    def _one_node(self, request: Request, route: _Route) -> str:
        if route.node:
            return route.node
        names = self.directory.node_names()
        if len(names) == 1:
            return names[0]
        raise HttpError(400, f"this address serves the kubelet API of nodes {', '.join(names)}; "
                             "ask for one through the apiserver: "
                             "/api/v1/nodes/<node>/proxy" + request.path)

    def _provider(self, node: str) -> Provider:
        provider = self.directory.provider_of(node)
        if provider is None:
            raise HttpError(503, f"no provider serves node {node} right now")
        return provider

    def _pod(self, namespace: str, name: str) -> tuple[Pod, Provider]:
        pod = self.directory.pod(namespace, name)
        if pod is None:
            raise HttpError(404, f"pod does not exist: {namespace}/{name}")
        return pod, self._provider(str(pod["spec"]["nodeName"]))

    @staticmethod
    def _container(pod: Pod, name: str) -> str:
        names = [c.get("name") for c in pod.get("spec", {}).get("containers", [])]
        if name not in names:
            raise HttpError(404, f"container not found ({name!r})")
        return name

    # -- endpoints ---------------------------------------------------------------------------

    async def _dispatch(self, http: HttpConnection, request: Request, route: _Route) -> int:
        handlers: dict[str, Callable[[HttpConnection, Request, _Route], Awaitable[int]]] = {
            "healthz": self._healthz, "pods": self._pods, "runningpods": self._running_pods,
            "stats": self._stats, "metrics": self._metrics, "logs": self._logs,
            "exec": self._exec, "attach": self._exec, "portforward": self._port_forward,
        }
        return await handlers[route.endpoint](http, request, route)

    async def _healthz(self, http: HttpConnection, request: Request, route: _Route) -> int:
        await http.respond(200, b"ok")
        return 200

    def _require_get(self, request: Request) -> None:
        if request.method != "GET":
            raise HttpError(405, "method not allowed")

    async def _pods(self, http: HttpConnection, request: Request, route: _Route) -> int:
        self._require_get(request)
        nodes = [route.node] if route.node else self.directory.node_names()
        await http.respond_json(200, _pod_list(self.directory.pods_on(nodes)))
        return 200

    async def _running_pods(self, http: HttpConnection, request: Request, route: _Route) -> int:
        self._require_get(request)
        nodes = [route.node] if route.node else self.directory.node_names()
        items: list[Obj] = []
        for provider in {id(p): p for p in map(self.directory.provider_of, nodes) if p}.values():
            try:
                running = await provider.get_pods()
            except ProviderError as err:
                raise HttpError(http_status(err), err.message) from None
            for item in running:
                if item.pod.node_name not in nodes or item.status.phase != _PHASE_RUNNING:
                    continue
                items.append({
                    "metadata": {"name": item.pod.ref.name, "namespace": item.pod.ref.namespace,
                                 "uid": item.pod.ref.uid, "creationTimestamp": None},
                    "spec": {"containers": [{"name": c.name, "image": c.image, "resources": {}}
                                            for c in item.pod.containers]},
                    "status": {},
                })
        await http.respond_json(200, _pod_list(items))
        return 200

    async def _stats_of(self, request: Request, route: _Route) -> tuple[str, Any]:
        node = self._one_node(request, route)
        try:
            return node, await self._provider(node).stats_summary(node)
        except ProviderError as err:
            raise HttpError(http_status(err), f"failed to get stats: {err.message}") from None

    async def _stats(self, http: HttpConnection, request: Request, route: _Route) -> int:
        self._require_get(request)
        node, stats = await self._stats_of(request, route)
        await http.respond_json(200, summary(node, stats, self.directory.containers))
        return 200

    async def _metrics(self, http: HttpConnection, request: Request, route: _Route) -> int:
        self._require_get(request)
        node, stats = await self._stats_of(request, route)
        await http.respond(200, resource_metrics(stats, self.directory.containers,
                                                 node=node).encode(),
                           content_type="text/plain; version=0.0.4; charset=utf-8")
        return 200

    async def _logs(self, http: HttpConnection, request: Request, route: _Route) -> int:
        self._require_get(request)
        namespace, name, container = route.parts
        pod, provider = self._pod(namespace, name)
        self._container(pod, container)
        try:
            options = LogOptions.from_request(request)
        except ValueError as err:
            raise HttpError(422, str(err)) from None
        return await stream_logs(http, provider, namespace, name, container, options)

    async def _exec(self, http: HttpConnection, request: Request, route: _Route) -> int:
        namespace, name, container = route.parts
        pod, provider = self._pod(namespace, name)
        self._container(pod, container)
        kind: remotecommand.Kind = "exec" if route.endpoint == "exec" else "attach"
        command = request.params("command")
        if kind == "exec" and not command:
            raise HttpError(400, "you must specify a command")
        options = remotecommand.StreamOptions.from_request(request)
        if not options.any:
            raise HttpError(400, "you must specify at least 1 of stdin, stdout, stderr")
        target = remotecommand.Target(namespace, name, container)
        login = (functools.partial(guest_credentials, self._secrets, pod)
                 if kind == "exec" and self._secrets is not None else None)
        if is_websocket(request):
            protocol = negotiate(request, remotecommand.WEBSOCKET_PROTOCOLS)
            if protocol is None:
                raise HttpError(403, "requested protocol(s) are not supported")
            raw = await http.switch(handshake_headers(request, protocol))
            metrics.UPGRADES.labels(kind, "websocket", protocol or "none").inc()
            socket = ChannelSocket(raw, protocol, 5, readable={
                c for c, wanted in ((remotecommand.STDIN, options.stdin),
                                    (remotecommand.RESIZE, options.tty)) if wanted})
            serving = asyncio.create_task(socket.serve(), name=f"{kind}-websocket")
            try:
                terminal = remotecommand.WebSocketTerminal(socket, options)
                with contextlib.suppress(ConnectionError, OSError):
                    await terminal.opened()
                await remotecommand.relay(kind, provider, target, command, options, terminal,
                                          login)
            finally:
                serving.cancel()
                await asyncio.gather(serving, return_exceptions=True)
            return 101
        if request.upgrade != "spdy/3.1":
            raise HttpError(400, "Upgrade request required")
        protocol = _spdy_protocol(request, remotecommand.SPDY_PROTOCOLS)
        raw = await http.switch([("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1"),
                                 ("X-Stream-Protocol-Version", protocol)])
        metrics.UPGRADES.labels(kind, "spdy", protocol).inc()
        session = SpdySession(raw)
        serving = asyncio.create_task(session.serve(), name=f"{kind}-spdy")
        try:
            spdy = await remotecommand.SpdyTerminal.open(session, protocol, options)
            if spdy is not None:
                await remotecommand.relay(kind, provider, target, command, options, spdy, login)
        finally:
            with contextlib.suppress(ConnectionError, OSError):
                await session.close()
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)
        return 101

    async def _port_forward(self, http: HttpConnection, request: Request, route: _Route) -> int:
        namespace, name = route.parts
        _pod, provider = self._pod(namespace, name)
        if is_websocket(request):
            try:
                ports = portforward.parse_ports(request.params("port"))
            except ValueError as err:
                raise HttpError(400, str(err)) from None
            protocol = negotiate(request, portforward.WEBSOCKET_PROTOCOLS)
            if protocol is None:
                raise HttpError(403, "requested protocol(s) are not supported")
            raw = await http.switch(handshake_headers(request, protocol))
            metrics.UPGRADES.labels("portforward", "websocket", protocol or "none").inc()
            socket = ChannelSocket(raw, protocol, 2 * len(ports),
                                   readable={2 * i for i in range(len(ports))})
            serving = asyncio.create_task(socket.serve(), name="portforward-websocket")
            try:
                await portforward.serve_websocket(socket, provider, namespace, name, ports)
            finally:
                serving.cancel()
                await asyncio.gather(serving, return_exceptions=True)
            return 101
        if request.upgrade != "spdy/3.1":
            raise HttpError(400, "Upgrade request required")
        protocol = _spdy_protocol(request, portforward.SPDY_PROTOCOLS)
        raw = await http.switch([("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1"),
                                 ("X-Stream-Protocol-Version", protocol)])
        metrics.UPGRADES.labels("portforward", "spdy", protocol).inc()
        session = SpdySession(raw, accept=portforward.accept_stream_headers)
        serving = asyncio.create_task(session.serve(), name="portforward-spdy")
        try:
            await portforward.serve_spdy(session, provider, namespace, name)
        finally:
            with contextlib.suppress(ConnectionError, OSError):
                await session.close()
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)
        return 101

