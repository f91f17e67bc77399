"""KubeletEndpointService, as far as a provider's answers do not depend on a guest: stats of a
node and of a running pod, and the codes for unknown pods and nodes and for a stream that does
not start with its start message. (GetContainerLogs' options: `logs`.)"""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from vmlet.provider.v1 import kubelet_endpoint_service_pb2 as kpb

from .registry import check
from .subject import Subject, code_of

INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
NOT_FOUND = grpc.StatusCode.NOT_FOUND


@check
def stats_of_a_node_and_its_pod(subject: Subject) -> None:
    """GetStatsSummary of a node answers, listing a pod running there once. The contract names
    no code for an unknown node: any but INTERNAL or UNKNOWN, or an answer without pods."""
    pod = subject.pod()
    with subject.cleanup(pod.identity):
        subject.create(pod)
        subject.wait_running(pod)
        summary = subject.endpoints.GetStatsSummary(
            kpb.GetStatsSummaryRequest(node_name=pod.node_name), timeout=60)
        assert [p.ref.name for p in summary.pods].count(pod.ref.name) == 1
    unknown = kpb.GetStatsSummaryRequest(node_name="no-such-node")
    code = code_of(lambda: subject.endpoints.GetStatsSummary(unknown, timeout=60))
    assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), code
    if code == grpc.StatusCode.OK:
        assert not subject.endpoints.GetStatsSummary(unknown, timeout=60).pods


@check
def streams_of_unknown_pods_and_without_start(subject: Subject) -> None:
    """Logs of an unknown pod are NOT_FOUND; Exec, Attach and PortForward of an unknown pod are
    NOT_FOUND, and without their start message INVALID_ARGUMENT (or FAILED_PRECONDITION).
    Attach and PortForward may be UNIMPLEMENTED where the IaaS has no console or no path to
    the guest (Exec is always served)."""
    name, ns = "no-such-pod", subject.namespace
    logs = kpb.GetContainerLogsRequest(namespace=ns, pod_name=name)
    assert code_of(lambda: list(subject.endpoints.GetContainerLogs(logs, timeout=60))) \
        == NOT_FOUND

    def one(message: object) -> Iterator[object]:
        yield message

    ep = subject.endpoints
    unknown = {
        "Exec": lambda: list(ep.Exec(one(kpb.ExecRequest(start=kpb.ExecStart(
            namespace=ns, pod_name=name, container_name="vm", command=["true"], stdout=True))),
            timeout=60)),
        "Attach": lambda: list(ep.Attach(one(kpb.AttachRequest(start=kpb.AttachStart(
            namespace=ns, pod_name=name, container_name="vm", stdout=True))), timeout=60)),
        "PortForward": lambda: list(ep.PortForward(one(kpb.PortForwardRequest(
            start=kpb.PortForwardStart(namespace=ns, pod_name=name, port=22))), timeout=60)),
    }
    no_start = {
        "Exec": lambda: list(ep.Exec(one(kpb.ExecRequest(stdin=b"x")), timeout=60)),
        "Attach": lambda: list(ep.Attach(one(kpb.AttachRequest(stdin=b"x")), timeout=60)),
        "PortForward": lambda: list(ep.PortForward(one(kpb.PortForwardRequest(data=b"x")),
                                                   timeout=60)),
    }
    codes = {f"{k} unknown pod": code_of(call) for k, call in unknown.items()}
    codes |= {f"{k} without start": code_of(call) for k, call in no_start.items()}
    unserved = {grpc.StatusCode.UNIMPLEMENTED}

    def allowed(what: str) -> set[grpc.StatusCode]:
        expected = {NOT_FOUND} if "unknown" in what else {INVALID, PRECONDITION}
        return expected if what.startswith("Exec") else expected | unserved

    wrong = {what: code.name for what, code in codes.items() if code not in allowed(what)}
    assert not wrong, wrong
    subject.ping()
