"""The kubelet API as an ASGI app: FastAPI with the kubelet's routes, errors and metrics.

Errors are plain text with the kubelet's status codes (`access.HttpError`), for HTTP requests
and for WebSocket handshakes alike (a denial response, not a close). Every request is counted
by endpoint and status (101 for a protocol switch). No OpenAPI, docs or lifespan: the kubelet
API has none.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vmlet_facade.kubeletapi import metrics
from vmlet_facade.kubeletapi.access import Access, HttpError
from vmlet_facade.kubeletapi.auth import Authenticator, Authorizer
from vmlet_facade.kubeletapi.directory import Directory
from vmlet_facade.kubeletapi.endpoints import kubelet_router
from vmlet_facade.kubeletapi.guestlogin import SecretReader

__all__ = ["kubelet_app"]


async def _error(conn: HTTPConnection, exc: Exception) -> Response:
    assert isinstance(exc, HttpError)
    response = Response(f"{exc.message}\n".encode(), status_code=exc.status,
                        media_type="text/plain")
    # Repeated headers stay repeated, in the spelling given (client-go reads them either way).
    response.raw_headers.extend((k.encode(), v.encode()) for k, v in exc.headers)
    return response


class _Counted:
    """Counts every request by endpoint (set by the route) and the status it got."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            kind = message["type"]
            if kind in ("http.response.start", "websocket.http.response.start"):
                status = int(message["status"])
            elif kind == "websocket.accept":
                status = 101
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            endpoint = (scope.get("state") or {}).get("endpoint", "unknown")
            metrics.REQUESTS.labels(endpoint, str(status)).inc()


def kubelet_app(directory: Directory, authn: Authenticator, authz: Authorizer,
                secrets: SecretReader | None = None) -> ASGIApp:
    """The kubelet API of ``directory``'s nodes."""
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    app.add_exception_handler(HttpError, _error)
    app.include_router(kubelet_router(directory, Access(directory, authn, authz), secrets))
    return _Counted(app)
