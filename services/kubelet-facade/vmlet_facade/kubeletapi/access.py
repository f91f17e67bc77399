"""Who is calling and may they, as a FastAPI dependency of every kubelet API route.

The same decisions as the hand-written router made, in the same order: authenticate (the
client certificate of the TLS connection, else a bearer token through a TokenReview; 401),
find the node the request is about (a pod's node; the node the connection dialed or the
apiserver's node proxy names, 421 when they differ; the first node for unknown paths), then a
SubjectAccessReview per node (403). Only then does routing answer, so a stranger learns
nothing of which paths exist. `HttpError` is how every route answers an error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from starlette.requests import HTTPConnection

from vmlet_facade.kubeletapi.auth import Authenticator, Authorizer, User, bearer_token
from vmlet_facade.kubeletapi.directory import Directory
from vmlet_facade.kubeletapi.h11protocol import Connection

__all__ = ["Access", "Caller", "HttpError", "connection_of", "scope_of"]

_FORWARDED = re.compile(r"^/api/v1/nodes/([^/:]+)(?::\d+)?/proxy(?:/|$)")


def scope_of(path: str) -> str | None:
    """"pod" or "node" for the kubelet's endpoints, None for any other path."""
    parts = [p for p in path.split("/") if p]
    if not parts:
        return None
    head, rest = parts[0], parts[1:]
    if (head in ("healthz", "pods", "runningpods") and not rest) \
            or path.rstrip("/") in ("/stats/summary", "/metrics/resource"):
        return "node"
    if (head == "containerLogs" and len(rest) == 3) \
            or (head in ("exec", "attach") and len(rest) in (3, 4)) \
            or (head == "portForward" and len(rest) in (2, 3)):
        return "pod"
    return None


class HttpError(Exception):
    """An answer other than success: status, message, extra headers."""

    def __init__(self, status: int, message: str,
                 headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []


@dataclass(frozen=True)
class Caller:
    """An authorized request: who, and the node it is about (None: every node there)."""

    user: User
    node: str | None


def connection_of(conn: HTTPConnection) -> Connection | None:
    """The TLS connection a request arrived on (None in an app served some other way)."""
    found = conn.scope.get("state", {}).get("kubelet")
    return found if isinstance(found, Connection) else None


class Access:
    """The dependency: ``Depends(access)`` in every route."""

    def __init__(self, directory: Directory, authn: Authenticator, authz: Authorizer) -> None:
        self.directory = directory
        self._authn = authn
        self._authz = authz

    async def __call__(self, conn: HTTPConnection) -> Caller:
        connection = connection_of(conn)
        peer = connection.peer if connection else None
        local = connection.local if connection else None
        method = conn.scope.get("method", "GET")
        path = conn.url.path
        user = await self._authn.authenticate(peer, bearer_token(conn.headers))
        if user is None:
            raise HttpError(401, "Unauthorized")
        parts = [p for p in path.split("/") if p]
        scope = scope_of(path)
        node: str | None = None
        if scope == "pod":
            nodes = [self._pod_node(parts[1], parts[2])]
        elif scope == "node":
            node = self._named_node(conn, local)
            nodes = [node] if node else self.directory.node_names()
        else:
            nodes = self.directory.node_names()[:1]
        # No node known yet: authorize against all nodes (an empty name), never skip it.
        decision = await self._authz.authorize(user, method, path, nodes or [""])
        if not decision.allowed:
            raise HttpError(403, f"Forbidden (user={user.name}, verb={decision.verb}, "
                                 f"resource=nodes, subresource(s)="
                                 f"[{' '.join(decision.subresources)}])")
        if connection is not None:
            connection.authorize()
        return Caller(user, node)

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

    def _named_node(self, conn: HTTPConnection, local: str | None) -> str | None:
        found = _FORWARDED.match(conn.headers.get("x-forwarded-uri", ""))
        forwarded = found.group(1) if found and found.group(1) in self.directory.node_names() \
            else None
        dialed = self._dialed_node(local)
        if forwarded and dialed and forwarded != dialed:
            raise HttpError(421, f"this connection arrived at {local}, the address of node "
                                 f"{dialed}, but the request is for node {forwarded}: ask "
                                 f"{forwarded} at its own address")
        return forwarded or dialed
