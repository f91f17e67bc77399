"""The kubelet API's endpoints as a FastAPI router.

Pod endpoints (/containerLogs, /exec, /attach, /portForward) are routed by the pod, to the
provider behind the node it is bound to; node endpoints (/stats/summary, /metrics/resource,
/pods, /runningpods/) answer for the node `access.Access` found (the dialed node or the one the
apiserver's node proxy names) or, where nothing names one, every node (pod lists) or the only
one (stats). Every route takes every method and checks it itself, so that authorization comes
first, as a kubelet's does. exec, attach and port-forward come as WebSocket (the v4/v5 channel
protocols, ASGI) or as SPDY/3.1 (the apiserver's; the connection is switched under the app and
handed to `spdy.SpdySession`).
"""


import asyncio
import contextlib
import functools
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response, WebSocket
from starlette.requests import HTTPConnection

from vmlet.provider.v1 import pod_pb2
from vmlet_contract import ProviderError
from vmlet_facade.kube.objects import Obj, Pod
from vmlet_facade.kubeletapi import metrics, portforward, remotecommand
from vmlet_facade.kubeletapi.access import Access, Caller, HttpError, connection_of
from vmlet_facade.kubeletapi.channels import ChannelSocket, negotiate
from vmlet_facade.kubeletapi.directory import Directory
from vmlet_facade.kubeletapi.guestlogin import SecretReader, guest_credentials
from vmlet_facade.kubeletapi.h11protocol import UpgradeRefused
from vmlet_facade.kubeletapi.logs import LogOptions, http_status, stream_logs
from vmlet_facade.kubeletapi.params import Query
from vmlet_facade.kubeletapi.spdy import SpdySession
from vmlet_facade.kubeletapi.stats import resource_metrics, summary
from vmlet_facade.provider import Provider

__all__ = ["kubelet_router"]

_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
_PHASE_RUNNING = pod_pb2.POD_PHASE_RUNNING


def _json(doc: Any) -> Response:
    return Response(json.dumps(doc).encode(), media_type="application/json")


def _pod_list(items: Sequence[Mapping[str, object]]) -> Obj:
    return {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}


def _require_get(request: Request) -> None:
    if request.method != "GET":
        raise HttpError(405, "method not allowed")


def _spdy_protocol(request: Request, supported: tuple[str, ...]) -> str:
    wanted = [p.strip() for v in request.headers.getlist("x-stream-protocol-version")
              for p in v.split(",") if p.strip()]
    if not wanted:
        raise HttpError(400, "unable to upgrade: X-Stream-Protocol-Version is required")
    for protocol in wanted:
        if protocol in supported:
            return protocol
    raise HttpError(403, f"unable to upgrade: unable to negotiate protocol: client supports "
                         f"{wanted}, server accepts {list(supported)}",
                    [("X-Accept-Stream-Protocol-Version", p) for p in supported])


def _is_spdy(request: Request) -> bool:
    connection = [t.strip().lower() for t in request.headers.get("connection", "").split(",")]
    return "upgrade" in connection \
        and request.headers.get("upgrade", "").strip().lower() == "spdy/3.1"


class _Pods:
    """Finding pods, containers, nodes and providers, with the kubelet's errors."""

    def __init__(self, directory: Directory) -> None:
        self.directory = directory

    def provider(self, node: str) -> Provider:
        provider = self.directory.provider_of(node)
        if provider is None:
            raise HttpError(503, f"no provider serves node {node} right now")
        return provider

    def pod(self, namespace: str, name: str) -> tuple[Pod, Provider]:
        pod = self.directory.pod(namespace, name)
        if pod is None:
            raise HttpError(404, f"pod does not exist: {namespace}/{name}")
        return pod, self.provider(str(pod["spec"]["nodeName"]))

    @staticmethod
    def container(pod: Pod, name: str) -> str:
        names = [c.get("name") for c in pod.get("spec", {}).get("containers", [])]
        if name not in names:
            raise HttpError(404, f"container not found ({name!r})")
        return name

    def one_node(self, request: Request, caller: Caller) -> str:
        if caller.node:
            return caller.node
        names = self.directory.node_names()
        if len(names) == 1:
            return names[0]
        raise HttpError(400, f"this address serves the kubelet API of nodes {', '.join(names)}; "
                             "ask for one through the apiserver: "
                             "/api/v1/nodes/<node>/proxy" + request.url.path)

    def nodes(self, caller: Caller) -> list[str]:
        return [caller.node] if caller.node else self.directory.node_names()


async def _run_spdy(request: Request, protocol: str, kind: str,
                    accept: Any = None) -> tuple[SpdySession, asyncio.Task[None]]:
    connection = connection_of(request)
    if connection is None:
        raise HttpError(400, "SPDY needs the kubelet API's own connections")
    try:
        raw = await connection.switch([("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1"),
                                       ("X-Stream-Protocol-Version", protocol)])
    except UpgradeRefused as err:
        raise HttpError(400, str(err)) from None
    session = SpdySession(raw, accept=accept) if accept else SpdySession(raw)
    return session, asyncio.create_task(session.serve(), name=f"{kind}-spdy")


async def _end_spdy(session: SpdySession, serving: asyncio.Task[None]) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        await session.close()
    serving.cancel()
    await asyncio.gather(serving, return_exceptions=True)


def kubelet_router(directory: Directory, access: Access,
                   secrets: SecretReader | None = None) -> APIRouter:
    """The kubelet API's routes over ``directory``, each behind ``access``."""
    router = APIRouter()
    pods = _Pods(directory)
    Authorized = Annotated[Caller, Depends(access)]

    def endpoint(conn: HTTPConnection, name: str) -> None:
        conn.scope.setdefault("state", {})["endpoint"] = name

    @router.api_route("/healthz", methods=_METHODS)
    async def healthz(request: Request, caller: Authorized) -> Response:
        endpoint(request, "healthz")
        return Response(b"ok", media_type="text/plain")

    @router.api_route("/pods", methods=_METHODS)
    @router.api_route("/pods/", methods=_METHODS, include_in_schema=False)
    async def pod_list(request: Request, caller: Authorized) -> Response:
        endpoint(request, "pods")
        _require_get(request)
        return _json(_pod_list(directory.pods_on(pods.nodes(caller))))

    @router.api_route("/runningpods", methods=_METHODS)
    @router.api_route("/runningpods/", methods=_METHODS, include_in_schema=False)
    async def running_pods(request: Request, caller: Authorized) -> Response:
        endpoint(request, "runningpods")
        _require_get(request)
        nodes = pods.nodes(caller)
        items: list[Obj] = []
        for provider in {id(p): p for p in map(directory.provider_of, nodes) if p}.values():
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
        return _json(_pod_list(items))

    async def stats_of(request: Request, caller: Caller) -> tuple[str, Any]:
        _require_get(request)
        node = pods.one_node(request, caller)
        try:
            return node, await pods.provider(node).stats_summary(node)
        except ProviderError as err:
            raise HttpError(http_status(err), f"failed to get stats: {err.message}") from None

    @router.api_route("/stats/summary", methods=_METHODS)
    @router.api_route("/stats/summary/", methods=_METHODS, include_in_schema=False)
    async def stats_summary(request: Request, caller: Authorized) -> Response:
        endpoint(request, "stats")
        node, stats = await stats_of(request, caller)
        return _json(summary(node, stats, directory.containers))

    @router.api_route("/metrics/resource", methods=_METHODS)
    @router.api_route("/metrics/resource/", methods=_METHODS, include_in_schema=False)
    async def metrics_resource(request: Request, caller: Authorized) -> Response:
        endpoint(request, "metrics")
        node, stats = await stats_of(request, caller)
        return Response(resource_metrics(stats, directory.containers, node=node).encode(),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    @router.api_route("/containerLogs/{namespace}/{pod}/{container}", methods=_METHODS)
    async def container_logs(request: Request, caller: Authorized, namespace: str, pod: str,
                             container: str) -> Response:
        endpoint(request, "logs")
        _require_get(request)
        found, provider = pods.pod(namespace, pod)
        pods.container(found, container)
        try:
            options = LogOptions.from_request(Query(request))
        except ValueError as err:
            raise HttpError(422, str(err)) from None
        return await stream_logs(provider, namespace, pod, container, options)

    def session_of(conn: HTTPConnection, kind: str, namespace: str, pod: str,
                   container: str) -> tuple[Provider, list[str], remotecommand.StreamOptions,
                                            remotecommand.Target, Any]:
        found, provider = pods.pod(namespace, pod)
        pods.container(found, container)
        query = Query(conn)
        command = query.params("command")
        if kind == "exec" and not command:
            raise HttpError(400, "you must specify a command")
        options = remotecommand.StreamOptions.from_request(query)
        if not options.any:
            raise HttpError(400, "you must specify at least 1 of stdin, stdout, stderr")
        login = (functools.partial(guest_credentials, secrets, found)
                 if kind == "exec" and secrets is not None else None)
        return provider, command, options, remotecommand.Target(namespace, pod, container), login

    async def remote_command(request: Request, kind: remotecommand.Kind, namespace: str,
                             pod: str, container: str) -> Response:
        endpoint(request, kind)
        provider, command, options, target, login = session_of(request, kind, namespace, pod,
                                                               container)
        if not _is_spdy(request):
            raise HttpError(400, "Upgrade request required")
        protocol = _spdy_protocol(request, remotecommand.SPDY_PROTOCOLS)
        session, serving = await _run_spdy(request, protocol, kind)
        metrics.UPGRADES.labels(kind, "spdy", protocol).inc()
        try:
            spdy = await remotecommand.SpdyTerminal.open(session, protocol, options)
            if spdy is not None:
                await remotecommand.relay(kind, provider, target, command, options, spdy, login)
        finally:
            await _end_spdy(session, serving)
        return Response(status_code=101)

    async def remote_command_ws(websocket: WebSocket, kind: remotecommand.Kind, namespace: str,
                                pod: str, container: str) -> None:
        endpoint(websocket, kind)
        provider, command, options, target, login = session_of(websocket, kind, namespace, pod,
                                                               container)
        protocol = negotiate(websocket, remotecommand.WEBSOCKET_PROTOCOLS)
        if protocol is None:
            raise HttpError(403, "requested protocol(s) are not supported")
        await websocket.accept(subprotocol=protocol or None)
        metrics.UPGRADES.labels(kind, "websocket", protocol or "none").inc()
        socket = ChannelSocket(websocket, protocol, 5, readable={
            c for c, wanted in ((remotecommand.STDIN, options.stdin),
                                (remotecommand.RESIZE, options.tty)) if wanted})
        serving = asyncio.create_task(socket.serve(), name=f"{kind}-websocket")
        try:
            terminal = remotecommand.WebSocketTerminal(socket, options)
            with contextlib.suppress(ConnectionError, OSError):
                await terminal.opened()
            await remotecommand.relay(kind, provider, target, command, options, terminal, login)
        finally:
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)

    for kind in ("exec", "attach"):
        for path in (f"/{kind}/{{namespace}}/{{pod}}/{{container}}",
                     f"/{kind}/{{namespace}}/{{pod}}/{{uid}}/{{container}}"):
            router.add_api_route(path, _http_session(remote_command, kind, Authorized),
                                 methods=_METHODS, name=f"{kind}:{path.count('/')}")
            router.add_api_websocket_route(path, _ws_session(remote_command_ws, kind,
                                                             Authorized))

    async def port_forward(request: Request, caller: Authorized, namespace: str,
                           pod: str) -> Response:
        endpoint(request, "portforward")
        _found, provider = pods.pod(namespace, pod)
        if not _is_spdy(request):
            raise HttpError(400, "Upgrade request required")
        protocol = _spdy_protocol(request, portforward.SPDY_PROTOCOLS)
        session, serving = await _run_spdy(request, protocol, "portforward",
                                           portforward.accept_stream_headers)
        metrics.UPGRADES.labels("portforward", "spdy", protocol).inc()
        try:
            await portforward.serve_spdy(session, provider, namespace, pod)
        finally:
            await _end_spdy(session, serving)
        return Response(status_code=101)

    async def port_forward_ws(websocket: WebSocket, caller: Authorized, namespace: str,
                              pod: str) -> None:
        endpoint(websocket, "portforward")
        _found, provider = pods.pod(namespace, pod)
        try:
            ports = portforward.parse_ports(Query(websocket).params("port"))
        except ValueError as err:
            raise HttpError(400, str(err)) from None
        protocol = negotiate(websocket, portforward.WEBSOCKET_PROTOCOLS)
        if protocol is None:
            raise HttpError(403, "requested protocol(s) are not supported")
        await websocket.accept(subprotocol=protocol or None)
        metrics.UPGRADES.labels("portforward", "websocket", protocol or "none").inc()
        socket = ChannelSocket(websocket, protocol, 2 * len(ports),
                               readable={2 * i for i in range(len(ports))})
        serving = asyncio.create_task(socket.serve(), name="portforward-websocket")
        try:
            await portforward.serve_websocket(socket, provider, namespace, pod, ports)
        finally:
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)

    for path in ("/portForward/{namespace}/{pod}", "/portForward/{namespace}/{pod}/{uid}"):
        router.add_api_route(path, port_forward, methods=_METHODS)
        router.add_api_websocket_route(path, port_forward_ws)

    @router.api_route("/{rest:path}", methods=_METHODS, include_in_schema=False)
    async def not_found(request: Request, caller: Authorized) -> Response:
        endpoint(request, "unknown")
        raise HttpError(404, "404 page not found")

    return router


def _http_session(handler: Callable[..., Awaitable[Response]], kind: str,
                  authorized: Any) -> Callable[..., Awaitable[Response]]:
    """The HTTP (SPDY) route of ``kind``: ``handler`` behind the access dependency."""
    async def route(request: Request, caller: authorized, namespace: str,
                    pod: str, container: str) -> Response:
        return await handler(request, kind, namespace, pod, container)
    return route


def _ws_session(handler: Callable[..., Awaitable[None]], kind: str,
                authorized: Any) -> Callable[..., Awaitable[None]]:
    """The WebSocket route of ``kind``: ``handler`` behind the access dependency."""
    async def route(websocket: WebSocket, caller: authorized, namespace: str,
                    pod: str, container: str) -> None:
        await handler(websocket, kind, namespace, pod, container)
    return route
