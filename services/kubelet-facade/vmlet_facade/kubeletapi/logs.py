"""containerLogs: a container's log from the provider's GetContainerLogs stream.

The provider honours every option (tailLines, sinceTime, follow, timestamps, limitBytes,
previous), as the contract says; sinceSeconds becomes a since time. The facade writes each line
with its newline and counts limitBytes again the same way (`vmlet_contract.containerlogs`), so
the output is bounded whatever the provider sends. The first answer of the provider is awaited
briefly before the response starts, so a pod the provider does not know, or `previous` of a
container with no previous instance, gets the kubelet's HTTP error (404; 400 with its message)
instead of an empty 200. After that the lines are a `StreamingResponse`, which stops when the
client goes away (Starlette listens for the disconnect) or the log ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp
from starlette.responses import StreamingResponse

from vmlet.provider.v1 import kubelet_endpoint_service_pb2 as kep
from vmlet_contract import ProviderError
from vmlet_contract.containerlogs import LogBudget
from vmlet_facade.kubeletapi import metrics
from vmlet_facade.kubeletapi.access import HttpError
from vmlet_facade.kubeletapi.params import Params
from vmlet_facade.provider import Provider

__all__ = ["LogOptions", "http_status", "stream_logs"]

FIRST_ANSWER_WAIT = 1.0

_HTTP = {"NOT_FOUND": 404, "INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400,
         "UNAVAILABLE": 503, "RESOURCE_EXHAUSTED": 503, "DEADLINE_EXCEEDED": 504,
         "PERMISSION_DENIED": 403, "UNAUTHENTICATED": 401}


def http_status(err: ProviderError) -> int:
    return _HTTP.get(getattr(err.code, "name", str(err.code)), 500)


def _bool(value: str) -> bool:
    return value.lower() in ("1", "true")


def _parse_time(text: str) -> dt.datetime:
    parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class LogOptions:
    """The kubelet's log query parameters."""

    follow: bool = False
    previous: bool = False
    timestamps: bool = False
    tail_lines: int | None = None
    since_time: dt.datetime | None = None
    limit_bytes: int | None = None

    @classmethod
    def from_request(cls, request: Params) -> LogOptions:
        """Raises ValueError with the kubelet's kind of message on bad parameters."""
        def number(name: str, minimum: int) -> int | None:
            text = request.param(name)
            if not text:
                return None
            value = int(text)
            if value < minimum:
                raise ValueError(f"{name} must be at least {minimum}")
            return value

        since_seconds = number("sinceSeconds", 1)
        since_text = request.param("sinceTime")
        if since_seconds is not None and since_text:
            raise ValueError("at most one of sinceTime or sinceSeconds may be specified")
        since = _parse_time(since_text) if since_text else None
        if since_seconds is not None:
            since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=since_seconds)
        return cls(follow=_bool(request.param("follow")),
                   previous=_bool(request.param("previous")),
                   timestamps=_bool(request.param("timestamps")),
                   tail_lines=number("tailLines", 0), since_time=since,
                   limit_bytes=number("limitBytes", 1))

    def request(self, namespace: str, pod: str, container: str) -> kep.GetContainerLogsRequest:
        req = kep.GetContainerLogsRequest(namespace=namespace, pod_name=pod,
                                          container_name=container, follow=self.follow,
                                          previous=self.previous, timestamps=self.timestamps)
        if self.tail_lines is not None:
            req.tail_lines = self.tail_lines
        if self.limit_bytes is not None:
            req.limit_bytes = self.limit_bytes
        if self.since_time is not None:
            stamp = Timestamp()
            stamp.FromDatetime(self.since_time.astimezone(dt.UTC).replace(tzinfo=None))
            req.since_time.CopyFrom(stamp)
        return req


async def stream_logs(provider: Provider, namespace: str, pod: str, container: str,
                      options: LogOptions) -> StreamingResponse:
    """The response to a containerLogs request (raises `HttpError` for the provider's no)."""
    lines = provider.container_logs(options.request(namespace, pod, container))
    first = asyncio.ensure_future(anext(lines, None))
    try:
        await asyncio.wait_for(asyncio.shield(first), FIRST_ANSWER_WAIT)
    except TimeoutError:
        pass
    except ProviderError as err:
        await _close(lines)
        raise HttpError(http_status(err), err.message) from None
    except BaseException:
        first.cancel()
        await _close(lines)
        raise
    return StreamingResponse(_body(first, lines, LogBudget(options.limit_bytes)),
                             media_type="text/plain")


async def _close(lines: AsyncIterator[kep.GetContainerLogsResponse]) -> None:
    with contextlib.suppress(Exception):
        await lines.aclose()  # type: ignore[attr-defined]


async def _body(first: asyncio.Future[kep.GetContainerLogsResponse | None],
                lines: AsyncIterator[kep.GetContainerLogsResponse],
                budget: LogBudget) -> AsyncIterator[bytes]:
    metrics.SESSIONS.labels("logs").inc()
    try:
        try:
            line = await first
        except ProviderError as err:
            yield f"error: {err.message}\n".encode()
            return
        while line is not None:
            chunk = budget.take(bytes(line.line) + b"\n")
            if chunk:
                yield chunk
            if budget.spent:
                return
            try:
                line = await anext(lines, None)
            except ProviderError as err:
                yield f"error: {err.message}\n".encode()
                return
    finally:
        if not first.done():
            first.cancel()
        await _close(lines)
        metrics.SESSIONS.labels("logs").dec()
