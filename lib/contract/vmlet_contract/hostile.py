"""Requests out of the contract's bounds that every provider must answer INVALID_ARGUMENT.

The provider conformance cases for `requestbounds`, as csi-sanity gives every CSI driver the same
cases: each provider's tests send these to its real server (memory in-process, vSphere on vcsim,
OpenStack on Nova) and check the answer and that nothing was created, moved or destroyed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vmlet.provider.v1 import (
    pod_lifecycle_service_pb2,
    pod_pb2,
    virtual_machine_service_pb2,
)

__all__ = ["HostileRequest", "hostile_requests"]


@dataclass(frozen=True)
class HostileRequest:
    """One request to send: ``stub`` is ``pods`` (PodLifecycleService) or ``vms``
    (VirtualMachineService), ``method`` the RPC, ``what`` what is wrong with it."""

    what: str
    stub: str
    method: str
    request: Any


def _pod(node: str, image: str, name: str, **changes: Any) -> pod_pb2.Pod:
    resources = changes.pop("resources", {})
    pod = pod_pb2.Pod(
        ref=pod_pb2.PodRef(namespace=changes.pop("namespace", "tests"), name=name,
                           uid=f"uid-{name}"),
        node_name=node,
        identity=changes.pop("identity", f"uid-{name}"),
        containers=[pod_pb2.Container(name="vm", image=image,
                                      resources=pod_pb2.Resources(**resources))],
        **changes,
    )
    return pod


def hostile_requests(node: str, image: str, prefix: str = "hostile") -> list[HostileRequest]:
    """The cases, for pods on ``node`` booting ``image``; pod and disk names start with
    ``prefix``, so a test can prove none of them was created."""
    pl, vm = pod_lifecycle_service_pb2, virtual_machine_service_pb2
    create = "CreatePod"

    def pod(suffix: str, **changes: Any) -> Any:
        return pl.CreatePodRequest(pod=_pod(node, image, f"{prefix}-{suffix}", **changes))

    return [
        HostileRequest("cpu 2^62", "pods", create, pod("cpu", resources={
            "cpu_request_millis": 2**62, "cpu_limit_millis": 2**62})),
        HostileRequest("cpu 300 000 vCPUs", "pods", create, pod("cpus", resources={
            "cpu_limit_millis": 300_000_000})),
        HostileRequest("negative memory", "pods", create, pod("negmem", resources={
            "memory_limit_bytes": -1})),
        HostileRequest("memory 2^62", "pods", create, pod("mem", resources={
            "memory_request_bytes": 2**62, "memory_limit_bytes": 2**62})),
        HostileRequest("10 MB identity", "pods", create, pod("id", identity="i" * 10_000_000)),
        HostileRequest("identity ../x", "pods", create, pod("idpath", identity="../x")),
        HostileRequest("20 MB user data", "pods", create, pod("ud", user_data="u" * 20_000_000)),
        HostileRequest("namespace a/b", "pods", create, pod("ns", namespace="a/b")),
        HostileRequest("name c/d", "pods", create, pl.CreatePodRequest(
            pod=_pod(node, image, "c/d"))),
        HostileRequest("delete namespace a/b name c/d", "pods", "DeletePod",
                       pl.DeletePodRequest(pod=_pod(node, image, "c/d", namespace="a/b"))),
        HostileRequest("start namespace a/b name c/d", "pods", "StartPod",
                       pl.StartPodRequest(pod=_pod(node, image, "c/d", namespace="a/b"))),
        HostileRequest("stop with a grace of -1 s", "pods", "StopPod",
                       pl.StopPodRequest(pod=_pod(node, image, "stop"), grace_seconds=-1)),
        HostileRequest("stop with a grace of 2^62 s", "pods", "StopPod",
                       pl.StopPodRequest(pod=_pod(node, image, "stop"), grace_seconds=2**62)),
        HostileRequest("get namespace ../x", "pods", "GetPod",
                       pl.GetPodRequest(namespace="../x", name="y")),
        HostileRequest("4 EiB disk", "vms", "CreateDisk", vm.CreateDiskRequest(
            name=f"{prefix}-disk", size_bytes=4 * 2**60)),
        HostileRequest("negative disk", "vms", "CreateDisk", vm.CreateDiskRequest(
            name=f"{prefix}-disk", size_bytes=-(2**40))),
        HostileRequest("grow a disk to 4 EiB", "vms", "ExpandDisk", vm.ExpandDiskRequest(
            handle="any-disk", size_bytes=4 * 2**60)),
        HostileRequest("10 MB identity of a VM", "vms", "DeleteVirtualMachine",
                       vm.DeleteVirtualMachineRequest(identity="i" * 10_000_000)),
    ]
