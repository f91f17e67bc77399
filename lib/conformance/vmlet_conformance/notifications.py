"""The streams: NotifyPods (a change is sent, in order per pod; a new stream starts with the
current status of every pod, so nothing is lost while none was open; every status of a pod not
running and ready says its Progress, and every status whether its pod is ready) and
NodeProviderService (ListNodes, Ping, NotifyNodeStatus starting with every node)."""

from __future__ import annotations

import queue
import threading

import grpc

from vmlet.provider.v1 import node_provider_service_pb2 as npb
from vmlet.provider.v1 import pod_pb2
from vmlet_contract import progress

from .registry import check
from .subject import Subject, ready, running

#: How far along each phase is: a pod's statuses, in the order sent, never go back.
_RANK = {
    pod_pb2.POD_PHASE_PENDING: 1,
    pod_pb2.POD_PHASE_RUNNING: 2,
    pod_pb2.POD_PHASE_SUCCEEDED: 3,
    pod_pb2.POD_PHASE_FAILED: 3,
}
INITIAL_TIMEOUT = 60.0


def _in_order(statuses: list[pod_pb2.PodStatus]) -> None:
    ranks = [_RANK.get(s.phase, 0) for s in statuses]
    assert 0 not in ranks, f"a status without a phase: {statuses}"
    assert ranks == sorted(ranks), f"the phases went back: {[s.phase for s in statuses]}"


@check
def notify_pods_sends_changes_in_order(subject: Subject) -> None:
    """A NotifyPods stream opened before a create sends the pod's statuses up to Running, its
    phases never going back."""
    pod = subject.pod()
    stream = subject.stream()
    try:
        with subject.cleanup(pod.identity):
            subject.create(pod)
            subject.wait_running(pod)
            pushed = stream.wait(pod.ref.name, running, timeout=subject.timeout)
            assert pushed.provider_id == subject.status(pod).provider_id
            _in_order(stream.of(pod.ref.name))
            assert stream.error is None
    finally:
        stream.close()


@check
def every_status_says_its_progress_readiness_and_size(subject: Subject) -> None:
    """Every status of a pod that is not Running and ready, answered or streamed from its create
    to its delete, carries a Progress value of the contract (not UNSPECIFIED); every status says
    whether the pod is ready (`ready`, true only while Running with every container ready), and
    a Running pod not ready whose containers run says why (`not_ready_reason`); a running one
    carries the size its VM has."""
    pod = subject.pod()
    stream = subject.stream()
    try:
        with subject.cleanup(pod.identity):
            seen = [subject.create(pod)]
            seen.append(subject.wait_running(pod))
            size = seen[-1].resources
            assert size.cpu_millis > 0 and size.memory_bytes > 0, f"no VM size: {seen[-1]}"
            stream.wait(pod.ref.name, running, timeout=subject.timeout)
            subject.delete(pod)
            seen += stream.of(pod.ref.name)
        unsaid = [s for s in seen if not ready(s) and not progress.name(s.progress)]
        assert not unsaid, f"statuses without a known progress: {unsaid}"
        for status in seen:
            _says_its_readiness(status)
    finally:
        stream.close()


def _says_its_readiness(status: pod_pb2.PodStatus) -> None:
    """``status`` says whether its pod is ready, consistently, and why not when nothing else
    does."""
    assert status.HasField("ready"), f"a status that does not say whether it is ready: {status}"
    if status.ready:
        assert status.phase == pod_pb2.POD_PHASE_RUNNING, f"ready but not Running: {status}"
        assert all(c.ready for c in status.container_statuses), f"ready, containers not: {status}"
    elif status.phase == pod_pb2.POD_PHASE_RUNNING and all(
            c.HasField("running") for c in status.container_statuses):
        assert status.not_ready_reason, f"Running, not ready, and no reason why: {status}"


@check
def notify_pods_starts_with_every_pod(subject: Subject) -> None:
    """A stream opened after the fact first sends the current status of every pod GetPods lists,
    including one made while no stream was open; two streams at once both get a change."""
    pod = subject.pod()
    with subject.cleanup(pod.identity):
        subject.create(pod)
        subject.wait_running(pod)
        names = {p.pod.ref.name for p in subject.listed()}
        assert pod.ref.name in names
        first, second = subject.stream(), subject.stream()
        try:
            for stream in (first, second):
                for name in names:
                    stream.wait(name, lambda _: True, timeout=INITIAL_TIMEOUT)
                assert running(stream.of(pod.ref.name)[-1])
            other = subject.pod()
            with subject.cleanup(other.identity):
                subject.create(other)
                subject.wait_running(other)
                for stream in (first, second):
                    stream.wait(other.ref.name, running, timeout=subject.timeout)
                    _in_order(stream.of(other.ref.name))
        finally:
            first.close()
            second.close()


@check
def nodes_listed_pinged_and_streamed(subject: Subject) -> None:
    """ListNodes lists named nodes with a Ready condition, capacity and allocatable; Ping names
    the provider; NotifyNodeStatus starts with every node."""
    nodes = list(subject.node_provider.ListNodes(npb.ListNodesRequest(), timeout=60).nodes)
    names = [n.name for n in nodes]
    assert names and len(set(names)) == len(names) and all(names), names
    for node in nodes:
        assert any(c.type == "Ready" for c in node.conditions), node.name
        assert node.capacity.get("cpu") and node.capacity.get("memory"), node.name
        assert node.allocatable.get("cpu") and node.allocatable.get("memory"), node.name
    pong = subject.node_provider.Ping(npb.PingRequest(), timeout=30)
    assert pong.provider
    call = subject.node_provider.NotifyNodeStatus(npb.NotifyNodeStatusRequest(), timeout=120)
    seen: queue.Queue[str] = queue.Queue()

    def read() -> None:
        try:
            for update in call:
                seen.put(update.node.name)
        except grpc.RpcError:
            pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        got: set[str] = set()
        while not set(names) <= got:
            got.add(seen.get(timeout=INITIAL_TIMEOUT))
    finally:
        call.cancel()
        reader.join(10)
