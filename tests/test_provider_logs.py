"""GetContainerLogs, every option set and unset, against every provider over its gRPC contract.

The first piece of the provider conformance suite: the tests take a `LogSubject` (a channel to a
provider as the facade would call it, and a VM pod of that provider that has logged some lines)
and check what `kubectl logs` relies on, as a kubelet answers it: unset tail is the whole
history and tail 0 none; since_time keeps lines at or after it; timestamps prefix each line with
its time (RFC 3339, nine fractional digits); limit_bytes bounds the bytes (the last line cut);
follow sends lines written after the call started; previous is FAILED_PRECONDITION with the
kubelet's message; what the apiserver refuses is INVALID_ARGUMENT.

The subjects, one pod each, module-scoped:
- memory: `python -m vmlet_memory`; its log is the machine's events, and UpdatePod logs a line.
- vsphere: `python -m vmlet_vmware` on vcsim; its log is the VM's events and tasks, and a
  reconfiguration (made with pyvmomi, behind the provider's back) logs one.
- openstack: `python -m vmlet_openstack` on Nova with the fake driver; its log is the console,
  which the fake driver fixes at three lines: nothing can write a new one, so its follow check is
  that history comes, the stream stays open and nothing is sent twice.
A provider author points the suite at another provider by adding a subject fixture.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from pyVmomi import vim

from tests.providers import (
    eventually,
    first_node,
    memory_argv,
    openstack_facts,
    openstack_provider,
    provider_process,
    vsphere_provider,
)
from vmlet.provider.v1 import kubelet_endpoint_service_pb2 as kpb
from vmlet.provider.v1 import kubelet_endpoint_service_pb2_grpc as kpb_grpc
from vmlet.provider.v1 import pod_lifecycle_service_pb2 as lpb
from vmlet.provider.v1 import pod_lifecycle_service_pb2_grpc as lpb_grpc
from vmlet.provider.v1 import pod_pb2
from vmlet.provider.v1 import virtual_machine_service_pb2 as vpb
from vmlet.provider.v1 import virtual_machine_service_pb2_grpc as vpb_grpc
from vmlet_localenv.stack import vms_with_identity
from vmlet_localenv.vcsim import VcSim, _wait_task

NAMESPACE = "logs"
POLL = 0.5  # every provider's --log-poll-seconds here
STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z) (.*)$", re.DOTALL)


@dataclass
class LogSubject:
    """A provider's channel and one of its VM pods with a log of at least two lines.

    `write_line` makes the provider log a new line (None where nothing can: Nova's fake
    console)."""

    channel: grpc.Channel
    pod: pod_pb2.Pod
    write_line: Callable[[], None] | None

    def request(self, **fields: Any) -> kpb.GetContainerLogsRequest:
        base = {"namespace": self.pod.ref.namespace, "pod_name": self.pod.ref.name,
                "container_name": self.pod.containers[0].name}
        return kpb.GetContainerLogsRequest(**{**base, **fields})

    def logs(self, **fields: Any) -> list[kpb.GetContainerLogsResponse]:
        stub = kpb_grpc.KubeletEndpointServiceStub(self.channel)
        return list(stub.GetContainerLogs(self.request(**fields), timeout=60))

    def texts(self, **fields: Any) -> list[str]:
        return [r.line.decode() for r in self.logs(**fields)]

    def follow(self, **fields: Any) -> Follower:
        stub = kpb_grpc.KubeletEndpointServiceStub(self.channel)
        return Follower(stub.GetContainerLogs(self.request(follow=True, **fields), timeout=120))


class Follower:
    """A followed log read on a thread."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.lines: queue.Queue[str] = queue.Queue()
        self.ended = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        with contextlib.suppress(grpc.RpcError):
            for response in self.call:
                self.lines.put(response.line.decode())
        self.ended.set()

    def take(self, count: int, timeout: float = 30) -> list[str]:
        return [self.lines.get(timeout=timeout) for _ in range(count)]

    def quiet_for(self, seconds: float) -> list[str]:
        """What arrives within `seconds`."""
        time.sleep(seconds)
        got = []
        while not self.lines.empty():
            got.append(self.lines.get_nowait())
        return got

    def close(self) -> None:
        self.call.cancel()
        self.thread.join(10)


def stamp(when: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(when)
    return ts


def when(response: kpb.GetContainerLogsResponse) -> datetime:
    return response.time.ToDatetime(tzinfo=UTC)


# -- the providers -----------------------------------------------------------------------------


def vm_pod(node: str, image: str) -> pod_pb2.Pod:
    uid = str(uuid.uuid4())
    return pod_pb2.Pod(
        ref=pod_pb2.PodRef(namespace=NAMESPACE, name=f"logs-{uid[:8]}", uid=uid),
        node_name=node, identity=uid,
        containers=[pod_pb2.Container(
            name="vm", image=image,
            resources=pod_pb2.Resources(cpu_request_millis=500,
                                        memory_request_bytes=256 * 2**20))],
    )  # fmt: skip


@contextlib.contextmanager
def running_pod(channel: grpc.Channel, pod: pod_pb2.Pod, lines: int) -> Iterator[None]:
    """Creates `pod`, waits until its log has `lines` lines, and destroys its VM afterwards."""
    pods = lpb_grpc.PodLifecycleServiceStub(channel)
    pods.CreatePod(lpb.CreatePodRequest(pod=pod), timeout=300)
    stub = kpb_grpc.KubeletEndpointServiceStub(channel)
    request = kpb.GetContainerLogsRequest(namespace=NAMESPACE, pod_name=pod.ref.name)
    try:
        eventually(lambda: len(list(stub.GetContainerLogs(request, timeout=60))) >= lines,
                   timeout=300, what=f"{lines} log lines")
        yield
    finally:
        with contextlib.suppress(grpc.RpcError):
            pods.DeletePod(lpb.DeletePodRequest(pod=pod), timeout=300)
        with contextlib.suppress(grpc.RpcError):
            vpb_grpc.VirtualMachineServiceStub(channel).DeleteVirtualMachine(
                vpb.DeleteVirtualMachineRequest(identity=pod.identity), timeout=300)


@pytest.fixture(scope="module")
def memory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LogSubject]:
    workdir = tmp_path_factory.mktemp("memory-logs")
    with provider_process("memory-provider", memory_argv(workdir), workdir, dict(os.environ)
                          ) as channel:
        pod = vm_pod(first_node(channel), "memory:debian-12")
        pods = lpb_grpc.PodLifecycleServiceStub(channel)
        serial = iter(range(1, 1000))

        def write_line() -> None:  # the memory provider logs "updated" on every UpdatePod
            pod.annotations["logs.vmlet.io/serial"] = str(next(serial))
            pods.UpdatePod(lpb.UpdatePodRequest(pod=pod), timeout=60)

        with running_pod(channel, pod, lines=2):
            yield LogSubject(channel, pod, write_line)


@pytest.fixture(scope="module")
def vsphere(vcsim: VcSim, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LogSubject]:
    workdir = tmp_path_factory.mktemp("vsphere-logs")
    with vsphere_provider(vcsim, workdir, "--log-poll-seconds", str(POLL)) as channel:
        pod = vm_pod(first_node(channel), "vsphere:template/debian-12")
        serial = iter(range(1, 1000))

        def write_line() -> None:  # a reconfiguration is a VmReconfiguredEvent
            with vcsim.connect() as si:
                (vm,) = vms_with_identity(si, pod.identity)
                spec = vim.vm.ConfigSpec(annotation=f"logs {next(serial)}")
                _wait_task(vm.ReconfigVM_Task(spec=spec))

        with running_pod(channel, pod, lines=2):
            yield LogSubject(channel, pod, write_line)


@pytest.fixture(scope="module")
def openstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LogSubject]:
    """The OpenStack of VMLET_OPENSTACK_FACTS (see tests/test_openstack_provider.py), or one
    started for this module."""
    with openstack_facts(tmp_path_factory) as facts, openstack_provider(
            facts, tmp_path_factory.mktemp("openstack-logs"), "--log-poll-seconds", str(POLL)
    ) as channel:
        pod = vm_pod(first_node(channel), f"openstack:image/{facts['image']['name']}")
        with running_pod(channel, pod, lines=3):
            yield LogSubject(channel, pod, None)


@pytest.fixture(params=[
    "memory",
    pytest.param("vsphere", marks=pytest.mark.vcsim),
    pytest.param("openstack", marks=pytest.mark.openstack),
])
def subject(request: pytest.FixtureRequest) -> LogSubject:
    found: LogSubject = request.getfixturevalue(request.param)
    return found


# -- the suite ---------------------------------------------------------------------------------


def test_unset_options_send_the_whole_history(subject: LogSubject) -> None:
    history = subject.logs()
    assert len(history) >= 2
    assert all(r.HasField("time") and r.line for r in history)
    assert [r.line for r in subject.logs(follow=False, previous=False, timestamps=False)] \
        == [r.line for r in history]


def test_tail_lines(subject: LogSubject) -> None:
    history = subject.texts()
    assert subject.texts(tail_lines=1) == history[-1:]
    assert subject.texts(tail_lines=2) == history[-2:]
    assert subject.texts(tail_lines=len(history)) == history
    assert subject.texts(tail_lines=len(history) + 100) == history
    assert subject.texts(tail_lines=0) == []  # as the kubelet: --tail=0 prints nothing


def test_since_time(subject: LogSubject) -> None:
    history = subject.logs()
    first, last = min(map(when, history)), max(map(when, history))
    texts = [r.line.decode() for r in history]
    assert subject.texts(since_time=stamp(first - timedelta(hours=1))) == texts
    assert subject.texts(since_time=stamp(first)) == texts  # at or after
    assert subject.texts(since_time=stamp(last + timedelta(microseconds=1))) == []
    assert subject.texts(since_time=stamp(datetime.now(UTC) + timedelta(hours=1))) == []
    assert subject.texts(since_time=stamp(last)) \
        == [r.line.decode() for r in history if when(r) >= last]
    # tail, then since (the kubelet's order): the last line alone passes a since of its time.
    assert subject.texts(tail_lines=1, since_time=stamp(first)) == texts[-1:]


def test_timestamps(subject: LogSubject) -> None:
    plain = subject.logs()
    stamped = subject.logs(timestamps=True)
    assert len(stamped) == len(plain)
    for bare, response in zip(plain, stamped, strict=True):
        match = STAMP.match(response.line.decode())
        assert match, response.line
        text_time, text = match.groups()
        assert text == bare.line.decode()
        parsed = datetime.fromisoformat(text_time[:26] + "+00:00")  # RFC 3339, to microseconds
        assert parsed == when(response).replace(microsecond=parsed.microsecond)
        assert int(text_time[20:29]) == response.time.nanos
    assert all(not STAMP.match(r.line.decode()) for r in plain)  # unset: no prefix


def test_limit_bytes(subject: LogSubject) -> None:
    history = subject.texts()
    output = "".join(f"{text}\n" for text in history).encode()
    for limit in (1, len(history[0]), len(history[0]) + 1, len(history[0]) + 4, len(output),
                  len(output) + 50):
        got = subject.logs(limit_bytes=limit)
        # What the facade writes: each line and its newline, cut at the limit.
        written = b"".join(r.line + b"\n" for r in got)[:limit]
        assert written == output[:limit], limit
        assert sum(len(r.line) for r in got) <= limit
    stamped = subject.texts(timestamps=True, tail_lines=1, limit_bytes=10)
    assert stamped == [subject.texts(timestamps=True, tail_lines=1)[0][:10]]


def test_follow_sends_new_lines(subject: LogSubject) -> None:
    history = subject.texts()
    follower = subject.follow()
    try:
        assert follower.take(len(history)) == history  # the history first, unset tail: all
        if subject.write_line is None:
            assert follower.quiet_for(4 * POLL) == []  # polled again: nothing sent twice
            assert not follower.ended.is_set()
            return
        subject.write_line()
        assert follower.take(1)[0]
    finally:
        follower.close()
    newest = subject.texts(tail_lines=1)
    tail0 = subject.follow(tail_lines=0, timestamps=True)
    try:
        assert tail0.quiet_for(2 * POLL) == []  # tail 0: no history, only lines to come
        subject.write_line()
        line = tail0.take(1)[0]
        assert STAMP.match(line) and line != newest[0]
    finally:
        tail0.close()


def test_follow_ends_at_limit_bytes(subject: LogSubject) -> None:
    follower = subject.follow(limit_bytes=3)
    assert follower.ended.wait(30)  # the limit ends even a followed stream
    assert "".join(follower.quiet_for(0)) == subject.texts()[0][:3]


def test_previous_is_the_kubelets_error(subject: LogSubject) -> None:
    with pytest.raises(grpc.RpcError) as info:
        subject.logs(previous=True)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert info.value.details() == (
        f'previous terminated container "vm" in pod "{subject.pod.ref.name}" not found')


@pytest.mark.parametrize("fields", [{"tail_lines": -1}, {"limit_bytes": 0}, {"limit_bytes": -1},
                                    {"container_name": "nope"}])
def test_what_the_apiserver_refuses_is_invalid(subject: LogSubject, fields: dict[str, Any]
                                               ) -> None:
    with pytest.raises(grpc.RpcError) as info:
        subject.logs(**fields)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_an_unknown_pod_is_not_found(subject: LogSubject) -> None:
    stub = kpb_grpc.KubeletEndpointServiceStub(subject.channel)
    request = kpb.GetContainerLogsRequest(namespace=NAMESPACE, pod_name="no-such-pod")
    with pytest.raises(grpc.RpcError) as info:
        list(stub.GetContainerLogs(request, timeout=60))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
