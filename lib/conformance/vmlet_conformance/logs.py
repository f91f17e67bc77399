"""GetContainerLogs, every option set and unset, as `kubectl logs` relies on them and a kubelet
answers them: unset tail is the whole history and tail 0 none; since_time keeps lines at or after
it (after the tail, the kubelet's order); timestamps prefix each line with its time (RFC 3339,
nine fractional digits); limit_bytes bounds the bytes (the last line cut) and ends even a
followed stream; follow sends the history, then lines written after the call started, never one
twice; previous is FAILED_PRECONDITION with the kubelet's message; what the apiserver refuses is
INVALID_ARGUMENT.

Each check runs on a pod of its own whose VM has logged two lines or more (a provider's log is
whatever it serves: the machine's events, the IaaS's events and tasks, the console).
`Subject.write_log_line` makes one more; where nothing can (Nova's fake console), follow is checked
for its history, an open stream and no repeats."""

from __future__ import annotations

import contextlib
import functools
import queue
import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from vmlet.provider.v1 import kubelet_endpoint_service_pb2 as kpb
from vmlet.provider.v1 import pod_pb2

from .registry import check
from .subject import Subject, code_of, eventually

STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z) (.*)$", re.DOTALL)
#: Lines a pod's log has before a check reads it.
MIN_LINES = 2


class _Log:
    """The log of one running pod, read over GetContainerLogs."""

    def __init__(self, subject: Subject, pod: pod_pb2.Pod) -> None:
        self.subject = subject
        self.pod = pod

    def request(self, **fields: Any) -> kpb.GetContainerLogsRequest:
        base = {"namespace": self.pod.ref.namespace, "pod_name": self.pod.ref.name,
                "container_name": self.pod.containers[0].name}
        return kpb.GetContainerLogsRequest(**{**base, **fields})

    def responses(self, **fields: Any) -> list[kpb.GetContainerLogsResponse]:
        return list(self.subject.endpoints.GetContainerLogs(self.request(**fields), timeout=60))

    def texts(self, **fields: Any) -> list[str]:
        return [r.line.decode() for r in self.responses(**fields)]

    def follow(self, **fields: Any) -> _Follower:
        call = self.subject.endpoints.GetContainerLogs(self.request(follow=True, **fields),
                                                       timeout=120)
        return _Follower(call)


class _Follower:
    """A followed log, read on a thread."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.lines: queue.Queue[str] = queue.Queue()
        self.ended = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with contextlib.suppress(grpc.RpcError):
            for response in self.call:
                self.lines.put(response.line.decode())
        self.ended.set()

    def take(self, count: int, timeout: float = 30) -> list[str]:
        return [self.lines.get(timeout=timeout) for _ in range(count)]

    def quiet_for(self, seconds: float) -> list[str]:
        """What arrives within ``seconds``."""
        time.sleep(seconds)
        got = []
        while not self.lines.empty():
            got.append(self.lines.get_nowait())
        return got

    def close(self) -> None:
        self.call.cancel()
        self._thread.join(10)


@contextlib.contextmanager
def _logged_pod(subject: Subject) -> Iterator[_Log]:
    """A running pod of its own whose log has `MIN_LINES` lines or more."""
    pod = subject.pod()
    with subject.cleanup(pod.identity):
        subject.create(pod)
        subject.wait_running(pod)
        log = _Log(subject, pod)
        eventually(lambda: len(log.responses()) >= MIN_LINES, timeout=subject.timeout,
                   what=f"{MIN_LINES} log lines")
        yield log


def _stamp(when: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(when)
    return ts


def _when(response: kpb.GetContainerLogsResponse) -> datetime:
    return response.time.ToDatetime(tzinfo=UTC)


@check
def logs_history_tail_and_since(subject: Subject) -> None:
    """Unset options send the whole history, each line with its time; tail_lines keeps the last
    lines (0: none, more than there are: all); since_time keeps the lines at or after it, and
    applies after the tail."""
    with _logged_pod(subject) as log:
        history = log.responses()
        assert all(r.HasField("time") and r.line for r in history)
        assert [r.line for r in log.responses(follow=False, previous=False, timestamps=False)] \
            == [r.line for r in history]
        texts = [r.line.decode() for r in history]
        assert log.texts(tail_lines=1) == texts[-1:]
        assert log.texts(tail_lines=2) == texts[-2:]
        assert log.texts(tail_lines=len(texts)) == texts
        assert log.texts(tail_lines=len(texts) + 100) == texts
        assert log.texts(tail_lines=0) == []  # as the kubelet: --tail=0 prints nothing
        first, last = min(map(_when, history)), max(map(_when, history))
        assert log.texts(since_time=_stamp(first - timedelta(hours=1))) == texts
        assert log.texts(since_time=_stamp(first)) == texts  # at or after
        assert log.texts(since_time=_stamp(last + timedelta(microseconds=1))) == []
        assert log.texts(since_time=_stamp(datetime.now(UTC) + timedelta(hours=1))) == []
        assert log.texts(since_time=_stamp(last)) \
            == [r.line.decode() for r in history if _when(r) >= last]
        # tail, then since: the last line alone passes a since of the first line's time.
        assert log.texts(tail_lines=1, since_time=_stamp(first)) == texts[-1:]


@check
def logs_timestamps_and_limit_bytes(subject: Subject) -> None:
    """timestamps prefixes each line with its time (RFC 3339 with nanoseconds, the line's own
    time), unset it prefixes nothing; limit_bytes bounds what is sent, cutting the last line, with
    timestamps too."""
    with _logged_pod(subject) as log:
        plain = log.responses()
        stamped = log.responses(timestamps=True)
        assert len(stamped) == len(plain)
        for bare, response in zip(plain, stamped, strict=True):
            match = STAMP.match(response.line.decode())
            assert match, response.line
            text_time, text = match.groups()
            assert text == bare.line.decode()
            parsed = datetime.fromisoformat(text_time[:26] + "+00:00")  # to microseconds
            assert parsed == _when(response).replace(microsecond=parsed.microsecond)
            assert int(text_time[20:29]) == response.time.nanos
        assert all(not STAMP.match(r.line.decode()) for r in plain)
        history = [r.line.decode() for r in plain]
        output = "".join(f"{text}\n" for text in history).encode()
        for limit in (1, len(history[0]), len(history[0]) + 1, len(history[0]) + 4, len(output),
                      len(output) + 50):
            got = log.responses(limit_bytes=limit)
            # What the facade writes: each line and its newline, cut at the limit.
            written = b"".join(r.line + b"\n" for r in got)[:limit]
            assert written == output[:limit], limit
            assert sum(len(r.line) for r in got) <= limit
        assert log.texts(timestamps=True, tail_lines=1, limit_bytes=10) \
            == [log.texts(timestamps=True, tail_lines=1)[0][:10]]


@check
def logs_follow(subject: Subject) -> None:
    """follow sends the whole history first, then each line written after, never one twice (a
    provider nothing can make log: the stream stays open with nothing more); with tail_lines 0
    only lines to come; limit_bytes ends even a followed stream."""
    quiet = 4 * subject.log_poll_seconds
    write = subject.write_log_line
    with _logged_pod(subject) as log:
        history = log.texts()
        follower = log.follow()
        try:
            assert follower.take(len(history)) == history
            if write is None:
                assert follower.quiet_for(quiet) == []  # polled again: nothing sent twice
                assert not follower.ended.is_set()
            else:
                write(log.pod)
                assert follower.take(1)[0]
        finally:
            follower.close()
        if write is not None:
            newest = log.texts(tail_lines=1)
            tail0 = log.follow(tail_lines=0, timestamps=True)
            try:
                assert tail0.quiet_for(quiet / 2) == []  # no history, only lines to come
                write(log.pod)
                line = tail0.take(1)[0]
                assert STAMP.match(line) and line != newest[0]
            finally:
                tail0.close()
        limited = log.follow(limit_bytes=3)
        try:
            assert limited.ended.wait(30), "a followed stream went on past limit_bytes"
            assert "".join(limited.quiet_for(0)) == log.texts()[0][:3]
        finally:
            limited.close()


@check
def logs_previous_and_refused_options(subject: Subject) -> None:
    """previous is FAILED_PRECONDITION with the kubelet's message (a VM has no previous
    instance); a negative tail, a limit below 1 and an unknown container are INVALID_ARGUMENT."""
    with _logged_pod(subject) as log:
        try:
            log.responses(previous=True)
            raise AssertionError("previous answered; a VM has no previous instance")
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc
            assert exc.details() == (f'previous terminated container "{log.pod.containers[0].name}"'
                                     f' in pod "{log.pod.ref.name}" not found')
        for fields in ({"tail_lines": -1}, {"limit_bytes": 0}, {"limit_bytes": -1},
                       {"container_name": "nope"}):
            code = code_of(functools.partial(log.responses, **fields))
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (fields, code)
