"""containerlogs: the options of a logs request read once, applied as the kubelet applies them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from vmlet.provider.v1 import kubelet_endpoint_service_pb2 as pb
from vmlet_contract import InvalidArgument, containerlogs
from vmlet_contract.containerlogs import LogBudget, LogOptions, format_time, serve_log

T0 = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


@dataclass(frozen=True)
class Line:
    time: datetime
    text: str


HISTORY = [Line(T0 + timedelta(seconds=i), f"line {i}") for i in range(5)]


def request(**kw: object) -> pb.GetContainerLogsRequest:
    return pb.GetContainerLogsRequest(namespace="ns", pod_name="p", **kw)  # type: ignore[arg-type]


def stamp(when: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(when)
    return ts


async def served(req: pb.GetContainerLogsRequest, followed: list[Line] | None = None) -> list[str]:
    async def follow() -> AsyncIterator[Line]:
        for line in followed or []:
            yield line

    options = LogOptions.from_request(req)
    return [r.line.decode() async for r in serve_log(options, HISTORY, follow())]


def test_unset_fields_mean_no_limit() -> None:
    options = LogOptions.from_request(request())
    assert options == LogOptions()
    assert options.select(HISTORY) == HISTORY  # an unset tail is all, never 0


def test_set_fields_are_read() -> None:
    options = LogOptions.from_request(
        request(tail_lines=0, limit_bytes=1, follow=True, previous=True, timestamps=True,
                since_time=stamp(T0))
    )
    assert (options.tail_lines, options.limit_bytes, options.since) == (0, 1, T0)
    assert options.follow and options.previous and options.timestamps
    assert options.select(HISTORY) == []


@pytest.mark.parametrize("fields", [{"tail_lines": -1}, {"limit_bytes": 0}, {"limit_bytes": -5}])
def test_what_the_apiserver_refuses_is_invalid(fields: dict[str, int]) -> None:
    with pytest.raises(InvalidArgument):
        LogOptions.from_request(request(**fields))


def test_tail_then_since() -> None:
    options = LogOptions(tail_lines=3, since=HISTORY[3].time)
    assert [line.text for line in options.select(HISTORY)] == ["line 3", "line 4"]
    assert LogOptions(since=HISTORY[4].time + timedelta(microseconds=1)).select(HISTORY) == []


def test_format_time_is_rfc3339_with_nine_digits() -> None:
    assert format_time(T0) == "2026-01-02T03:04:05.123456000Z"
    assert format_time(T0, 7) == "2026-01-02T03:04:05.000000007Z"
    assert format_time(datetime(2026, 1, 2)) == "2026-01-02T00:00:00.000000000Z"


def test_budget_cuts_the_last_line() -> None:
    budget = LogBudget(9)
    assert budget.take(b"line 0\n") == b"line 0\n"
    assert budget.take(b"line 1\n") == b"li"
    assert budget.spent
    assert LogBudget(None).take(b"x" * 100) == b"x" * 100


async def test_serve_log_applies_every_option() -> None:
    assert await served(request()) == [line.text for line in HISTORY]
    assert await served(request(tail_lines=2)) == ["line 3", "line 4"]
    assert await served(request(tail_lines=0)) == []
    assert await served(request(since_time=stamp(HISTORY[3].time))) == ["line 3", "line 4"]
    stamped = await served(request(tail_lines=1, timestamps=True))
    assert stamped == ["2026-01-02T03:04:09.123456000Z line 4"]
    # 7 bytes per line with its newline: two whole lines, then "li" without a newline.
    assert await served(request(limit_bytes=16)) == ["line 0", "line 1", "li"]
    new = [Line(T0 + timedelta(hours=1), "new")]
    assert await served(request(follow=True, tail_lines=0), new) == ["new"]
    assert await served(request(tail_lines=0), new) == []  # not following: history only
    old = [Line(T0 - timedelta(hours=1), "old")]
    assert await served(request(follow=True, tail_lines=0, since_time=stamp(T0)), old) == []


async def test_a_spent_budget_ends_a_followed_stream_and_closes_the_source() -> None:
    closed = []

    async def endless() -> AsyncIterator[Line]:
        try:
            while True:
                yield Line(T0, "again")
        finally:
            closed.append(True)

    options = LogOptions(follow=True, tail_lines=0, limit_bytes=10)
    lines = [r.line async for r in serve_log(options, HISTORY, endless())]
    assert lines == [b"again", b"agai"]
    assert closed == [True]


def test_no_previous_is_the_kubelets_answer() -> None:
    error = containerlogs.no_previous("vm", "web-0")
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION
    assert error.message == 'previous terminated container "vm" in pod "web-0" not found'
