"""The provider under test, as the checks see it: a gRPC channel and how to make a valid pod.

A check knows nothing of the IaaS behind the address: it calls the contract's RPCs and reads
their answers. What it cannot guess the caller says in a `Subject`: the image a VM boots from,
the nodes to use (all of ListNodes when unset), extra annotations a valid pod needs, and the
namespace the suite's pods live in. Every pod and VM a check makes is named after that
namespace and a random suffix, and destroyed by the check that made it.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import pytest

from vmlet.provider.v1 import (
    disk_service_pb2_grpc,
    kubelet_endpoint_service_pb2_grpc,
    node_provider_service_pb2,
    node_provider_service_pb2_grpc,
    pod_lifecycle_service_pb2,
    pod_lifecycle_service_pb2_grpc,
    pod_notifier_service_pb2,
    pod_notifier_service_pb2_grpc,
    pod_pb2,
    virtual_machine_service_pb2,
    virtual_machine_service_pb2_grpc,
)

__all__ = ["SUBJECT_KEY", "PodFailed", "PodStream", "Subject", "code_of", "eventually", "ready",
           "running"]

T = TypeVar("T")
#: Where `python -m vmlet_conformance` leaves its `Subject` for the suite, in pytest's config.
SUBJECT_KEY = pytest.StashKey["Subject"]()
_lpb = pod_lifecycle_service_pb2
_vpb = virtual_machine_service_pb2


@dataclass
class Subject:
    """A provider to check: ``channel`` reaches it as the facade would (TLS and client
    certificate included); ``image`` is what a valid VM pod boots from."""

    channel: grpc.Channel
    image: str
    #: Nodes the checks place pods on; empty means every node of ListNodes.
    nodes: tuple[str, ...] = ()
    #: The namespace of the suite's pods; a second one, ``<namespace>-other``, plays the tenant
    #: that must not touch the first one's VMs.
    namespace: str = "conformance"
    #: Annotations every pod of the suite carries (what a provider may need to accept a pod).
    annotations: dict[str, str] = field(default_factory=dict)
    #: CPU and memory a valid pod asks for.
    cpu_millis: int = 500
    memory_bytes: int = 256 * 2**20
    #: How long a create, delete or a pod reaching Running may take.
    timeout: float = 300.0
    #: An image of the provider's form that names nothing the IaaS has; empty means ``image``
    #: with a random suffix.
    missing_image: str = ""
    #: A network the IaaS has, which a pod may join (the networks check joins it before one
    #: that does not exist); empty: the check names only the missing one.
    network: str = ""
    #: Called with a new snapshot's ID by the checks that revert to it: what a test rig does
    #: when its IaaS simulator never finishes a snapshot (Nova's fake driver uploads no image).
    #: A real IaaS finishes its own; the default does nothing.
    finish_snapshot: Callable[[str], None] = field(default=lambda _snapshot_id: None)
    #: Makes the VM of a running pod log one more line (an IaaS-side change the provider's log
    #: shows), for the follow check; None where nothing can (follow is then checked for its
    #: history, an open stream and no repeats).
    write_log_line: Callable[[pod_pb2.Pod], None] | None = None
    #: Stops the VM of a running pod behind the provider's back, as its guest shutting down
    #: would, for the StartPod check; None where nothing can (that check then proves StartPod
    #: on running and unknown pods only).
    stop_vm: Callable[[pod_pb2.Pod], None] | None = None
    #: How often the provider reads its IaaS's log for a follow (its --log-poll-seconds): the
    #: follow check waits a few of these to see that nothing is sent twice.
    log_poll_seconds: float = 2.0

    def __post_init__(self) -> None:
        self.pods = pod_lifecycle_service_pb2_grpc.PodLifecycleServiceStub(self.channel)
        self.notifier = pod_notifier_service_pb2_grpc.PodNotifierServiceStub(self.channel)
        self.node_provider = node_provider_service_pb2_grpc.NodeProviderServiceStub(self.channel)
        self.vms = virtual_machine_service_pb2_grpc.VirtualMachineServiceStub(self.channel)
        self.disks = disk_service_pb2_grpc.DiskServiceStub(self.channel)
        self.endpoints = kubelet_endpoint_service_pb2_grpc.KubeletEndpointServiceStub(
            self.channel)
        self._nodes: tuple[str, ...] = tuple(self.nodes)

    # -- what a check needs to know ------------------------------------------------------------

    def node_names(self) -> tuple[str, ...]:
        """The nodes to use, sorted: the configured ones, else every node the provider lists."""
        if not self._nodes:
            listed = self.node_provider.ListNodes(node_provider_service_pb2.ListNodesRequest(),
                                                  timeout=60).nodes
            self._nodes = tuple(sorted(n.name for n in listed))
        return self._nodes

    def pod(self, *, name: str = "", node: str = "", identity: str = "", keep: bool = False,
            namespace: str = "", **changes: Any) -> pod_pb2.Pod:
        """A valid VM pod (a new identity unless given); ``changes`` are more Pod fields."""
        uid = str(uuid.uuid4())
        pod = pod_pb2.Pod(
            ref=pod_pb2.PodRef(namespace=namespace or self.namespace,
                               name=name or f"conf-{uid[:8]}", uid=uid),
            node_name=node or self.node_names()[0],
            identity=identity or uid,
            keep_on_delete=keep,
            containers=[pod_pb2.Container(name="vm", image=self.image, resources=pod_pb2.Resources(
                cpu_request_millis=self.cpu_millis, memory_request_bytes=self.memory_bytes))],
            **changes,
        )
        for key, value in self.annotations.items():
            pod.annotations.setdefault(key, value)
        return pod

    def missing(self) -> str:
        """An image reference of the provider's form that names nothing."""
        return self.missing_image or f"{self.image}-absent-{uuid.uuid4().hex[:8]}"

    # -- calls ---------------------------------------------------------------------------------

    def create(self, pod: pod_pb2.Pod) -> pod_pb2.PodStatus:
        status: pod_pb2.PodStatus = self.pods.CreatePod(_lpb.CreatePodRequest(pod=pod),
                                                        timeout=self.timeout).status
        return status

    def delete(self, pod: pod_pb2.Pod) -> None:
        self.pods.DeletePod(_lpb.DeletePodRequest(pod=pod), timeout=self.timeout)

    def status(self, pod: pod_pb2.Pod) -> pod_pb2.PodStatus:
        request = _lpb.GetPodStatusRequest(namespace=pod.ref.namespace, name=pod.ref.name)
        status: pod_pb2.PodStatus = self.pods.GetPodStatus(request, timeout=60).status
        return status

    def listed(self) -> list[pod_pb2.PodWithStatus]:
        """Every pod of GetPods."""
        return list(self.pods.GetPods(_lpb.GetPodsRequest(), timeout=60).pods)

    def listed_named(self, name: str) -> list[pod_pb2.PodWithStatus]:
        return [p for p in self.listed() if p.pod.ref.name == name]

    def vm(self, identity: str, namespace: str = "") -> virtual_machine_service_pb2.VirtualMachine:
        """The VM of ``identity`` (raises NOT_FOUND when there is none)."""
        request = _vpb.GetVirtualMachineRequest(identity=identity, namespace=namespace)
        found: virtual_machine_service_pb2.VirtualMachine = self.vms.GetVirtualMachine(
            request, timeout=60).virtual_machine
        return found

    def has_vm(self, identity: str) -> bool:
        """Whether GetVirtualMachine finds a VM (an identity it refuses to read has none)."""
        found: bool = code_of(lambda: self.vm(identity)) == grpc.StatusCode.OK
        return found

    def destroy(self, identity: str) -> None:
        request = _vpb.DeleteVirtualMachineRequest(identity=identity)
        self.vms.DeleteVirtualMachine(request, timeout=self.timeout)

    def ping(self) -> None:
        self.node_provider.Ping(node_provider_service_pb2.PingRequest(), timeout=30)

    def wait_running(self, pod: pod_pb2.Pod) -> pod_pb2.PodStatus:
        """Waits until ``pod`` is Running with its VM's container running (Ready may wait for
        the guest, which a simulator may never start); fails at once when it fails."""

        def check() -> pod_pb2.PodStatus | None:
            status = self.status(pod)
            if status.phase == pod_pb2.POD_PHASE_FAILED:
                raise PodFailed(f"pod {pod.ref.name}: {status.reason}: {status.message}")
            return status if running(status) else None

        return eventually(check, timeout=self.timeout, what=f"pod {pod.ref.name} running")

    @contextlib.contextmanager
    def cleanup(self, *identities: str) -> Iterator[None]:
        """Destroys the VMs of ``identities`` afterwards, whatever happened."""
        try:
            yield
        finally:
            for identity in identities:
                with contextlib.suppress(grpc.RpcError):
                    self.destroy(identity)

    def stream(self) -> PodStream:
        """A NotifyPods stream read on a thread."""
        call = self.notifier.NotifyPods(pod_notifier_service_pb2.NotifyPodsRequest(),
                                        timeout=self.timeout + 300)
        return PodStream(call)


class PodFailed(Exception):
    """A pod waited for failed: no use waiting longer."""


class PodStream:
    """What a NotifyPods stream sent, in order, read on a thread."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.received: list[pod_notifier_service_pb2.NotifyPodsResponse] = []
        self.error: grpc.RpcError | None = None
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for update in self.call:
                with self._changed:
                    self.received.append(update)
                    self._changed.notify_all()
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                self.error = exc

    def of(self, name: str) -> list[pod_pb2.PodStatus]:
        """The statuses sent for the pod ``name``, in order."""
        with self._changed:
            return [u.status for u in self.received if u.ref.name == name]

    def wait(self, name: str, predicate: Callable[[pod_pb2.PodStatus], bool], *,
             timeout: float) -> pod_pb2.PodStatus:
        """Waits for a status of ``name`` that satisfies ``predicate`` and returns it."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for status in (u.status for u in self.received if u.ref.name == name):
                    if predicate(status):
                        return status
                left = deadline - time.monotonic()
                assert left > 0, f"no matching status of {name} in {timeout:.0f}s: {self.of(name)}"
                assert self.error is None, f"the stream failed: {self.error!r}"
                self._changed.wait(min(left, 1.0))

    def close(self) -> None:
        self.call.cancel()
        self._thread.join(10)


def running(status: pod_pb2.PodStatus) -> bool:
    """Running, with every container running."""
    return status.phase == pod_pb2.POD_PHASE_RUNNING and bool(status.container_statuses) and all(
        c.HasField("running") for c in status.container_statuses)


def ready(status: pod_pb2.PodStatus) -> bool:
    """Running and ready (`ready`; for a provider older than that field, a true Ready
    condition)."""
    if status.phase != pod_pb2.POD_PHASE_RUNNING:
        return False
    if status.HasField("ready"):
        return status.ready
    return any(c.type == "Ready" and c.status == pod_pb2.CONDITION_STATUS_TRUE
               for c in status.conditions)


def code_of(call: Callable[[], Any]) -> grpc.StatusCode:
    """The status code ``call`` ends with (OK when it returns)."""
    try:
        call()
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()
        return code
    return grpc.StatusCode.OK


def eventually(check: Callable[[], T | None], *, timeout: float, what: str) -> T:
    """Calls ``check`` until it returns something true without raising an RpcError or an
    AssertionError; returns that."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (grpc.RpcError, AssertionError) as exc:
            last = exc
        time.sleep(0.5)
    raise AssertionError(f"{what} did not happen in {timeout:.0f}s (last: {last!r})")
