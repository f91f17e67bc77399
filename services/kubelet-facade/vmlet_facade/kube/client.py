"""The apiserver over HTTPS with aiohttp: requests, errors, and raw watch streams."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp

from vmlet_facade.kube.config import KubeConfig
from vmlet_facade.kube.objects import Obj
from vmlet_facade.kube.paths import InvalidPath, check_path
from vmlet_facade.kube.requestlog import RequestLog

__all__ = ["PATCH_JSON", "PATCH_MERGE", "PATCH_STRATEGIC", "UNREACHABLE", "ApiError", "KubeClient"]

PATCH_MERGE = "application/merge-patch+json"
PATCH_STRATEGIC = "application/strategic-merge-patch+json"
PATCH_JSON = "application/json-patch+json"
PATCH_APPLY = "application/apply-patch+yaml"


UNREACHABLE = "Unreachable"  # the reason of an ApiError for an apiserver not reached


class ApiError(Exception):
    """A non-2xx answer from the apiserver, with its Status reason and message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def gone(self) -> bool:
        return self.status == 410


def _checked(path: str) -> str:
    """``path`` as it may be sent; an ApiError 400 (nothing sent) when a segment is no name."""
    try:
        return check_path(path)
    except InvalidPath as err:
        raise ApiError(400, "InvalidPath", str(err)) from None


class KubeClient:
    """A thin asyncio client: paths in, JSON dicts out. ``request_log`` records every request
    sent (a debug feature; by default as ``VMLET_KUBE_REQUEST_LOG`` asks)."""

    def __init__(self, config: KubeConfig, *, max_connections: int = 64,
                 request_log: RequestLog | None = None) -> None:
        self.config = config
        self.request_log = request_log if request_log is not None else RequestLog.from_env()
        self._ssl = config.ssl_context()
        self._max = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._watch_session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        """Requests share ``max_connections`` keep-alive connections."""
        if self._session is None or self._session.closed:
            self._session = self._new_session(self._max)
        return self._session

    def _watch_client(self) -> aiohttp.ClientSession:
        """Watches have connections of their own, as many as are open: each holds one for as
        long as it runs, so in the requests' pool 64 node watches would leave no connection to
        any request (found at 100 nodes: nothing but watches went through)."""
        if self._watch_session is None or self._watch_session.closed:
            self._watch_session = self._new_session(0)
        return self._watch_session

    def _new_session(self, limit: int) -> aiohttp.ClientSession:
        """A session over the apiserver's TLS, with at most ``limit`` connections (0: no limit)."""
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self._ssl, limit=limit),
                                     json_serialize=json.dumps)

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "vmlet-facade/0.1"}
        authorization = self.config.authorization()
        if authorization:
            headers["Authorization"] = authorization
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    async def _reload_credentials(self) -> bool:
        """Re-load the credentials (in a thread: an exec plugin may run); True if re-loaded."""
        return await asyncio.to_thread(self.config.reload)

    async def close(self) -> None:
        for session in (self._session, self._watch_session):
            if session is not None:
                await session.close()
        self.request_log.close()

    async def request(
        self, method: str, path: str, *, params: Mapping[str, str] | None = None,
        body: Any = None, content_type: str = "application/json", request_timeout: float = 30.0,
    ) -> Obj:
        """Send one request; return the decoded answer or raise ApiError. An apiserver that
        cannot be reached, or drops the connection, is ApiError 503 (`UNREACHABLE`): every
        caller retries it as any answer it cannot use, and no controller loop dies of it."""
        data = None if body is None else json.dumps(body)
        url = self.config.server + _checked(path)
        for attempt in (1, 2):  # a 401 re-loads the credentials (an exec plugin) and retries once
            try:
                async with self._client().request(
                    method, url, params=params, data=data,
                    headers=self._headers(content_type if data is not None else None),
                    timeout=aiohttp.ClientTimeout(total=request_timeout),
                ) as resp:
                    self.request_log.record(method, path, False, resp.status)
                    raw = await resp.read()
            except (aiohttp.ClientError, TimeoutError) as err:
                raise ApiError(503, UNREACHABLE, f"{method} {path}: the apiserver could not be "
                               f"reached: {type(err).__name__}: {err}") from err
            if resp.status != 401 or attempt == 2 or not await self._reload_credentials():
                break
        if resp.status >= 300:
            raise _api_error(resp.status, raw)
        return json.loads(raw) if raw else {}

    async def get(self, path: str, **params: str) -> Obj:
        return await self.request("GET", path, params=params or None)

    async def create(self, path: str, body: Obj) -> Obj:
        return await self.request("POST", path, body=body)

    async def replace(self, path: str, body: Obj) -> Obj:
        return await self.request("PUT", path, body=body)

    async def patch(self, path: str, body: Any, patch_type: str = PATCH_MERGE) -> Obj:
        return await self.request("PATCH", path, body=body, content_type=patch_type)

    async def apply(self, path: str, body: Obj, field_manager: str = "vmlet") -> Obj:
        """Server-side apply of ``body`` at ``path`` as ``field_manager`` (conflicts forced)."""
        return await self.request("PATCH", path, body=body, content_type=PATCH_APPLY,
                                  params={"fieldManager": field_manager, "force": "true"})

    async def delete(self, path: str, body: Obj | None = None) -> Obj:
        return await self.request("DELETE", path, body=body)

    async def stream_watch(
        self, path: str, params: Mapping[str, str], timeout_seconds: int = 300,
    ) -> AsyncIterator[Obj]:
        """Yield the raw watch events of one watch request until the server ends it."""
        query = {**params, "watch": "true", "allowWatchBookmarks": "true",
                 "timeoutSeconds": str(timeout_seconds)}
        async with self._watch_client().get(
            self.config.server + _checked(path), params=query, headers=self._headers(),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10,
                                          sock_read=timeout_seconds + 30),
        ) as resp:
            self.request_log.record("GET", path, True, resp.status)
            if resp.status >= 300:
                if resp.status == 401:  # the caller's retry watches with fresh credentials
                    await self._reload_credentials()
                raise _api_error(resp.status, await resp.read())
            buffer = b""
            async for chunk in resp.content.iter_any():
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)


def _api_error(status: int, raw: bytes) -> ApiError:
    try:
        doc = json.loads(raw)
        return ApiError(status, str(doc.get("reason", "")), str(doc.get("message", raw[:200])))
    except (ValueError, AttributeError):
        return ApiError(status, "", raw[:200].decode(errors="replace"))


async def sleep_backoff(attempt: int, base: float = 0.5, cap: float = 30.0) -> None:
    """Sleep for an exponential backoff step."""
    await asyncio.sleep(min(cap, base * (2 ** min(attempt, 10))))
