"""The contract's request bounds: hostile requests refused with a clear, short message."""

from __future__ import annotations

import pytest

from vmlet.provider.v1 import (
    kubelet_endpoint_service_pb2 as kep,
)
from vmlet.provider.v1 import (
    pod_lifecycle_service_pb2 as pl,
)
from vmlet.provider.v1 import (
    pod_pb2,
)
from vmlet.provider.v1 import (
    virtual_machine_service_pb2 as vmpb,
)
from vmlet_contract import InvalidArgument
from vmlet_contract.hostile import hostile_requests
from vmlet_contract.requestbounds import (
    MAX_CPU_MILLIS,
    MAX_DISK_BYTES,
    MAX_MEMORY_BYTES,
    check_identity,
    check_request,
)

CASES = hostile_requests("node-0", "debian-12")


@pytest.mark.parametrize("case", CASES, ids=[c.what for c in CASES])
def test_every_hostile_request_is_invalid_with_a_short_message(case: object) -> None:
    with pytest.raises(InvalidArgument) as err:
        check_request(case.request)  # type: ignore[attr-defined]
    assert len(err.value.message) < 300, err.value.message


def _pod(**changes: object) -> pod_pb2.Pod:
    fields: dict[str, object] = {
        "ref": pod_pb2.PodRef(namespace="team-a", name="vm-0.x", uid="0b4a3e8e-6d0f-4a7c-9d0e"),
        "node_name": "vsphere-dc0-c0-h0", "identity": "0b4a3e8e-6d0f-4a7c-9d0e-1f2a3b4c5d6e",
        "user_data": "#cloud-config\n" + "x" * 60_000,
        "containers": [pod_pb2.Container(
            name="vm", image="vsphere:template/debian-12", resources=pod_pb2.Resources(
                cpu_limit_millis=MAX_CPU_MILLIS, memory_limit_bytes=MAX_MEMORY_BYTES))],
        "networks": [pod_pb2.NetworkAttachment(name="VM Network")], **changes}
    return pod_pb2.Pod(**fields)  # type: ignore[arg-type]


def test_a_large_but_possible_pod_passes() -> None:
    check_request(pl.CreatePodRequest(pod=_pod()))
    check_request(pl.DeletePodRequest(pod=_pod()))
    check_request(vmpb.CreateDiskRequest(name="pvc-1", size_bytes=MAX_DISK_BYTES))
    check_request(vmpb.RevertToSnapshotRequest(identity="vm-1", snapshot_id="snapshot-7"))
    check_request(kep.ExecRequest(start=kep.ExecStart(namespace="ns", pod_name="p",
                                                      command=["ls"])))
    check_request(kep.ExecRequest(stdin=b"x" * 1_000_000))  # data is not bounded here


@pytest.mark.parametrize("change", [
    {"user_data": "x" * (64 * 1024 + 1)}, {"node_name": "Node_1"},
    {"networks": [pod_pb2.NetworkAttachment(name="a,b")]},
    {"annotations": {"a": "x" * 300_000}}, {"identity": "a" * 129}, {"identity": "a b"},
])
def test_just_out_of_bounds_is_invalid(change: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument):
        check_request(pl.CreatePodRequest(pod=_pod(**change)))


@pytest.mark.parametrize("request_", [
    kep.ExecRequest(start=kep.ExecStart(namespace="a/b", pod_name="p", command=["ls"])),
    kep.PortForwardRequest(start=kep.PortForwardStart(namespace="ns", pod_name="p",
                                                      port=70000)),
    kep.GetContainerLogsRequest(namespace="ns", pod_name="../p"),
    kep.GetStatsSummaryRequest(node_name="../n"),
    vmpb.ExpandDiskRequest(handle="", size_bytes=1),
    vmpb.CreateSnapshotRequest(identity="vm-1", name="s" * 300),
    pl.GetPodStatusRequest(namespace="ns", name="A"),
    pl.CreatePodRequest(),
], ids=lambda r: type(r).__name__)
def test_other_rpcs_are_bounded_too(request_: object) -> None:
    with pytest.raises(InvalidArgument):
        check_request(request_)


def test_identity_rules() -> None:
    check_identity("0b4a3e8e-6d0f-4a7c-9d0e-1f2a3b4c5d6e")
    check_identity("", required=False)
    for bad in ("", "../x", "a/b", "é", "a" * 129, "x\n"):
        with pytest.raises(InvalidArgument):
            check_identity(bad)
