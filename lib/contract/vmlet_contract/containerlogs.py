"""GetContainerLogs as the kubelet answers containerLogs, for every provider.

A provider knows where a VM's log lines come from (events, a console, ...); everything the
request asks of them is here, read once, so no provider reads an optional field on its own:

- `LogOptions.from_request` reads the request, optional fields with HasField (an unset
  tail_lines is "all", not 0) and refuses what the apiserver refuses (negative tail, limit < 1).
- `serve_log` turns a provider's history and followed lines into responses: tail_lines, then
  since_time on the history; since_time on followed lines; the timestamps prefix; limit_bytes
  counted over each line with its prefix and newline, ending the stream once reached.
- `no_previous` is the error for `previous`: a VM pod has one instance, and the kubelet answers
  a container with no previous instance with this message (pkg/kubelet/kubelet_pods.go).

The facade counts limit_bytes again the same way (`LogBudget`), so its output is the kubelet's
even before a provider cuts its stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, TypeVar

from vmlet.provider.v1 import kubelet_endpoint_service_pb2 as pb

from . import podstatus
from .errors import FailedPrecondition, InvalidArgument

__all__ = [
    "LogBudget",
    "LogLine",
    "LogOptions",
    "format_time",
    "no_previous",
    "serve_log",
]


class LogLine(Protocol):
    """One line of a log: when it was written and its text (no trailing newline)."""

    @property
    def time(self) -> datetime: ...

    @property
    def text(self) -> str: ...


def format_time(when: datetime, nanos: int | None = None) -> str:
    """`when` as the kubelet writes a timestamps prefix: RFC 3339, nine fractional digits, UTC
    (Go's RFC3339NanoFixed). `nanos` overrides the fraction (a protobuf Timestamp has them)."""
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    fraction = when.microsecond * 1000 if nanos is None else nanos
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{fraction:09d}Z"


def no_previous(container: str, pod: str) -> FailedPrecondition:
    """The answer to `previous` for a container with no previous instance, in the kubelet's
    words (pod is the pod's name, without namespace)."""
    return FailedPrecondition(
        f'previous terminated container "{container}" in pod "{pod}" not found'
    )


L = TypeVar("L", bound=LogLine)


@dataclass(frozen=True)
class LogOptions:
    """What a GetContainerLogs request asks for; None means no limit."""

    follow: bool = False
    previous: bool = False
    timestamps: bool = False
    tail_lines: int | None = None
    since: datetime | None = None
    limit_bytes: int | None = None

    @classmethod
    def from_request(cls, request: pb.GetContainerLogsRequest) -> LogOptions:
        """Reads the request; INVALID_ARGUMENT for a negative tail_lines or limit_bytes < 1."""
        tail = request.tail_lines if request.HasField("tail_lines") else None
        limit = request.limit_bytes if request.HasField("limit_bytes") else None
        if tail is not None and tail < 0:
            raise InvalidArgument(f"tail_lines must be at least 0, not {tail}")
        if limit is not None and limit < 1:
            raise InvalidArgument(f"limit_bytes must be at least 1, not {limit}")
        since = (
            request.since_time.ToDatetime(tzinfo=UTC) if request.HasField("since_time") else None
        )
        return cls(
            follow=request.follow,
            previous=request.previous,
            timestamps=request.timestamps,
            tail_lines=tail,
            since=since,
            limit_bytes=limit,
        )

    def admits(self, line: LogLine) -> bool:
        """Whether since_time lets `line` through (lines at or after it)."""
        return self.since is None or _aware(line.time) >= self.since

    def select(self, history: Iterable[L]) -> list[L]:
        """The lines of `history` (oldest first) the request wants: the last tail_lines, then
        those since_time admits (the kubelet's order: it seeks the tail, then skips older lines)."""
        lines = list(history)
        if self.tail_lines is not None:
            lines = lines[len(lines) - self.tail_lines :] if self.tail_lines else []
        return [line for line in lines if self.admits(line)]


def _aware(when: datetime) -> datetime:
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


class LogBudget:
    """limit_bytes: the output of each line (its text and newline) cut to what is left."""

    def __init__(self, limit: int | None) -> None:
        self.left = limit

    @property
    def spent(self) -> bool:
        return self.left is not None and self.left <= 0

    def take(self, data: bytes) -> bytes:
        """The part of `data` that fits, and counts it."""
        if self.left is None:
            return data
        data = data[: max(self.left, 0)]
        self.left -= len(data)
        return data


def _response(line: LogLine, options: LogOptions, budget: LogBudget) -> pb.GetContainerLogsResponse:
    stamp = podstatus.timestamp(line.time)
    text = line.text.encode()
    if options.timestamps:
        text = format_time(line.time, stamp.nanos).encode() + b" " + text
    return pb.GetContainerLogsResponse(
        time=stamp, line=budget.take(text + b"\n").removesuffix(b"\n")
    )


async def serve_log(
    options: LogOptions,
    history: Sequence[LogLine],
    followed: AsyncIterator[LogLine] | None = None,
) -> AsyncIterator[pb.GetContainerLogsResponse]:
    """The responses to a logs request: the selected `history`, then, when following, the lines
    of `followed` (new lines as they come; its end ends the stream). `followed` is closed
    however the stream ends. `previous` is the caller's to answer (`no_previous`) first."""
    budget = LogBudget(options.limit_bytes)
    try:
        for line in options.select(history):
            yield _response(line, options, budget)
            if budget.spent:
                return
        if not options.follow or followed is None:
            return
        async for line in followed:
            if options.admits(line):
                yield _response(line, options, budget)
                if budget.spent:
                    return
    finally:
        if followed is not None:
            aclose = getattr(followed, "aclose", None)
            if aclose is not None:
                await aclose()
