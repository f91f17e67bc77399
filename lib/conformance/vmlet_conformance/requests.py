"""Requests at the edges: every optional field of a pod set and unset is accepted; malformed
requests (empty, empty identity, oversized or unicode names, negative or absurd sizes, bodies that
are not protobuf, malformed images) are INVALID_ARGUMENT (or the documented code), never INTERNAL
or UNKNOWN, never a crash, never a VM; an image naming nothing is FAILED_PRECONDITION."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from vmlet.provider.v1 import pod_lifecycle_service_pb2 as lpb
from vmlet.provider.v1 import pod_pb2
from vmlet.provider.v1 import virtual_machine_service_pb2 as vpb
from vmlet_contract.hostile import hostile_requests

from .registry import check
from .subject import Subject, code_of

INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
NOT_FOUND = grpc.StatusCode.NOT_FOUND
OK = grpc.StatusCode.OK


@check
def optional_pod_fields_set(subject: Subject) -> None:
    """A pod with every optional field set (labels, unicode annotations, user and meta data,
    creation time, command, args, env, ports, limits) runs, and GetPod names it."""
    now = Timestamp()
    now.GetCurrentTime()
    pod = subject.pod(labels={"app": "conformance"},
                      annotations={"conformance.vmlet.io/note": "naïve ☃ 雪"},
                      user_data="#cloud-config\nhostname: conformance\n",
                      meta_data="instance-id: conformance\n", creation_time=now)
    container = pod.containers[0]
    container.command.extend(["/bin/sh", "-c"])
    container.args.append("echo ☃")
    container.env.add(name="GREETING", value="grüß dich")
    container.ports.add(name="ssh", container_port=22, protocol="TCP")
    container.resources.cpu_limit_millis = 2 * subject.cpu_millis
    container.resources.memory_limit_bytes = 2 * subject.memory_bytes
    with subject.cleanup(pod.identity):
        subject.create(pod)
        subject.wait_running(pod)
        got = subject.pods.GetPod(lpb.GetPodRequest(namespace=pod.ref.namespace,
                                                     name=pod.ref.name), timeout=60).pod
        assert (got.ref.name, got.identity) == (pod.ref.name, pod.identity)


@check
def optional_pod_fields_unset(subject: Subject) -> None:
    """A pod with every optional field unset (no UID, no resources: the provider's defaults, no
    labels, annotations beyond the subject's, user data or creation time) runs."""
    pod = subject.pod()
    pod.ref.uid = ""
    pod.containers[0].ClearField("resources")
    with subject.cleanup(pod.identity):
        subject.create(pod)
        subject.wait_running(pod)
        assert len(subject.listed_named(pod.ref.name)) == 1


def _malformed(subject: Subject, prefix: str) -> list[tuple[str, str, str, Any, set[Any]]]:
    """(what, stub, method, request, codes allowed)."""
    node = subject.node_names()[0]

    def pod(suffix: str, **changes: Any) -> pod_pb2.Pod:
        return subject.pod(name=f"{prefix}-{suffix}", **{"node": node, **changes})

    def create(what: str, made: pod_pb2.Pod, codes: set[Any] = {INVALID}  # noqa: B006
               ) -> tuple[str, str, str, Any, set[Any]]:
        return (what, "pods", "CreatePod", lpb.CreatePodRequest(pod=made), codes)

    no_identity, no_containers = pod("noid"), pod("noctr")
    no_identity.identity = ""
    del no_containers.containers[:]
    negative_cpu, unknown_node = pod("negcpu"), pod("nonode", node="no-such-node")
    negative_cpu.containers[0].resources.cpu_request_millis = -500
    return [
        ("empty CreatePod", "pods", "CreatePod", lpb.CreatePodRequest(), {INVALID}),
        ("empty UpdatePod", "pods", "UpdatePod", lpb.UpdatePodRequest(), {INVALID}),
        # Deleting a pod the provider does not know succeeds: an empty one too, or refused.
        ("empty DeletePod", "pods", "DeletePod", lpb.DeletePodRequest(), {INVALID, OK}),
        ("empty GetPod", "pods", "GetPod", lpb.GetPodRequest(), {INVALID, NOT_FOUND}),
        ("empty GetPodStatus", "pods", "GetPodStatus", lpb.GetPodStatusRequest(),
         {INVALID, NOT_FOUND}),
        create("empty identity", no_identity),
        create("no container", no_containers),
        create("negative cpu", negative_cpu),
        create("unknown node", unknown_node, {INVALID, PRECONDITION}),
        create("name of 300 characters", subject.pod(name=f"{prefix}-{'n' * 300}", node=node)),
        create("unicode name", subject.pod(name=f"{prefix}-pöd-☃", node=node)),
        create("unicode namespace", pod("uns", namespace="nämespace")),
        create("empty namespace", pod("nons", namespace="-")),
        ("empty GetVirtualMachine", "vms", "GetVirtualMachine", vpb.GetVirtualMachineRequest(),
         {INVALID}),
        ("empty DeleteVirtualMachine", "vms", "DeleteVirtualMachine",
         vpb.DeleteVirtualMachineRequest(), {INVALID}),
        ("empty CreateSnapshot", "vms", "CreateSnapshot", vpb.CreateSnapshotRequest(), {INVALID}),
        ("empty CreateDisk", "disks", "CreateDisk", vpb.CreateDiskRequest(), {INVALID}),
        ("disk without a name", "disks", "CreateDisk", vpb.CreateDiskRequest(size_bytes=2**30),
         {INVALID}),
        ("disk of 0 bytes", "disks", "CreateDisk", vpb.CreateDiskRequest(
            name=f"{prefix}-zero", size_bytes=0), {INVALID}),
        ("empty GetDisk", "disks", "GetDisk", vpb.GetDiskRequest(), {INVALID, NOT_FOUND}),
        ("negative ExpandDisk", "disks", "ExpandDisk", vpb.ExpandDiskRequest(
            handle="any-disk", size_bytes=-1), {INVALID}),
    ]


@check
def malformed_requests_are_invalid_argument(subject: Subject) -> None:
    """Empty requests, empty identities, oversized and unicode names, negative and absurd sizes
    (with `vmlet_contract.hostile`'s cases): INVALID_ARGUMENT or the documented code, never
    INTERNAL or UNKNOWN; the provider answers Ping after each; none of them leaves a pod or a
    VM."""
    prefix = f"malformed-{uuid.uuid4().hex[:6]}"
    node = subject.node_names()[0]
    stubs = {"pods": subject.pods, "vms": subject.vms, "disks": subject.disks}
    cases = _malformed(subject, prefix) + [
        (case.what, case.stub, case.method, case.request, {INVALID})
        for case in hostile_requests(node, subject.image, prefix)]
    wrong: dict[str, str] = {}
    for what, stub, method, request, codes in cases:
        try:
            getattr(stubs[stub], method)(request, timeout=60)
            code, details = grpc.StatusCode.OK, ""
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""
        if code not in codes:
            wrong[what] = f"{code.name}: {details[:200]}"
        subject.ping()
    identities = {getattr(getattr(r, "pod", None), "identity", "") for *_, r, _ in cases}
    try:
        assert not wrong, wrong
        assert not [p.pod.ref.name for p in subject.listed() if p.pod.ref.name.startswith(prefix)]
        leaked = [i for i in identities if i and len(i) < 1000 and subject.has_vm(i)]
        assert not leaked, leaked
    finally:
        for identity in identities:
            if identity and len(identity) < 1000:
                code_of(lambda i=identity: subject.destroy(i))  # type: ignore[misc]


@check
def unknown_fields_are_ignored(subject: Subject) -> None:
    """A request carrying a field this contract does not have (a newer facade) is answered as
    without it, as proto3 wants."""
    request = lpb.GetPodsRequest()
    call = subject.channel.unary_unary(
        "/vmlet.provider.v1.PodLifecycleService/GetPods",
        request_serializer=lambda r: r.SerializeToString() + b"\xf8\x06\x2a",  # field 111 = 42
        response_deserializer=lpb.GetPodsResponse.FromString)
    assert isinstance(call(request, timeout=60), lpb.GetPodsResponse)


#: Bodies no request message parses from: a length past the end, a truncated field.
_CORRUPT = {"overlong length": b"\x0a\xff\xff\xff\xff\x0f", "truncated field": b"\x0a\x05ab"}
#: A string field (field 1 of GetPodRequest and GetVirtualMachineRequest) that is not UTF-8.
_NOT_UTF8 = {"string not UTF-8": b"\x0a\x02\xff\xfe"}
_CORRUPT_CALLS = (("PodLifecycleService", "CreatePod", "CreatePodRequest", False, _CORRUPT),
                  ("PodLifecycleService", "GetPod", "GetPodRequest", False,
                   {**_CORRUPT, **_NOT_UTF8}),
                  ("VirtualMachineService", "GetVirtualMachine", "GetVirtualMachineRequest", False,
                   {**_CORRUPT, **_NOT_UTF8}),
                  ("PodNotifierService", "NotifyPods", "NotifyPodsRequest", True, _CORRUPT))


def _raw_call(subject: Subject, service: str, method: str, body: bytes, streaming: bool
              ) -> tuple[grpc.StatusCode, str]:
    """Sends ``body`` as the request of ``service/method`` and returns the code and details."""
    path = f"/vmlet.provider.v1.{service}/{method}"
    identity: Callable[[bytes], bytes] = lambda b: b  # noqa: E731
    try:
        if streaming:
            for _ in subject.channel.unary_stream(path, request_serializer=identity,
                                                  response_deserializer=identity)(body, timeout=30):
                pass
        else:
            subject.channel.unary_unary(path, request_serializer=identity,
                                        response_deserializer=identity)(body, timeout=30)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return OK, ""


@check
def corrupt_request_bodies_are_invalid_argument(subject: Subject) -> None:
    """A request body that is no protobuf message of the method's request type (a length past
    the end, a truncated field, a string that is not UTF-8), to a unary and a streaming method:
    INVALID_ARGUMENT whose message names the request type, never UNKNOWN or INTERNAL; the
    provider answers Ping after each."""
    wrong: dict[str, str] = {}
    for service, method, message, streaming, bodies in _CORRUPT_CALLS:
        for what, body in bodies.items():
            code, details = _raw_call(subject, service, method, body, streaming)
            if code != INVALID or message not in details or "Traceback" in details:
                wrong[f"{method}, {what}"] = f"{code.name}: {details[:200]}"
            subject.ping()
    assert not wrong, wrong


def _scheme(image: str) -> str:
    """The part of ``image`` before its name (``vsphere:template/`` of
    ``vsphere:template/debian-12``), empty when it has none."""
    cut = max(image.rfind(":"), image.rfind("/"))
    return image[:cut + 1] if cut > 0 else ""


def _refused(subject: Subject, images: dict[str, str], codes: set[grpc.StatusCode],
             *, named: bool) -> None:
    """CreatePod of a pod with each image ends with one of ``codes`` and a message (naming the
    image's name when ``named``), and leaves no pod and no VM."""
    wrong: dict[str, str] = {}
    pods = {what: subject.pod() for what in images}
    with subject.cleanup(*(p.identity for p in pods.values())):
        for what, pod in pods.items():
            pod.containers[0].image = images[what]
            try:
                subject.create(pod)
                code, details = OK, ""
            except grpc.RpcError as exc:
                code, details = exc.code(), exc.details() or ""
            name = images[what][len(_scheme(images[what])):]
            if code not in codes or not details or (named and name not in details):
                wrong[f"{what} {images[what]!r}"] = f"{code.name}: {details[:200]}"
        assert not wrong, wrong
        _left_nothing(subject, pods.values())


def _left_nothing(subject: Subject, pods: Iterable[pod_pb2.Pod]) -> None:
    """GetPods lists none of ``pods`` and no VM has their identities."""
    pods = list(pods)
    names = {p.ref.name for p in pods}
    assert not [p.pod.ref.name for p in subject.listed() if p.pod.ref.name in names]
    leaked = [p.identity for p in pods if subject.has_vm(p.identity)]
    assert not leaked, leaked


@check
def malformed_images_are_invalid_argument(subject: Subject) -> None:
    """An image reference not of the provider's form (empty, blank, the subject image's scheme
    with no name, a container image from a registry) is INVALID_ARGUMENT with a message, and
    makes no pod and no VM."""
    images = {"empty": "", "blank": "   ", "container image": "docker.io/library/nginx:1.27"}
    if _scheme(subject.image):
        images["scheme without a name"] = _scheme(subject.image)
    _refused(subject, images, {INVALID}, named=False)


@check
def missing_image_is_failed_precondition(subject: Subject) -> None:
    """A well-formed image reference that names nothing the IaaS has (`Subject.missing_image`,
    by default the subject's image with a random suffix) is FAILED_PRECONDITION with a message
    naming it, and makes no pod and no VM."""
    _refused(subject, {"missing": subject.missing()}, {PRECONDITION}, named=True)


@check
def unknown_network_is_failed_precondition(subject: Subject) -> None:
    """A pod joining a network the IaaS does not have (a well-formed name, alone and after
    another) is FAILED_PRECONDITION with a message naming it, and makes no pod and no VM."""
    missing = f"no-such-network-{uuid.uuid4().hex[:8]}"
    pods = [subject.pod(networks=[pod_pb2.NetworkAttachment(name=missing)])]
    if subject.network:
        pods.append(subject.pod(networks=[pod_pb2.NetworkAttachment(name=subject.network),
                                          pod_pb2.NetworkAttachment(name=missing)]))
    with subject.cleanup(*(p.identity for p in pods)):
        for pod in pods:
            try:
                subject.create(pod)
                raise AssertionError(f"CreatePod joined {missing!r}, a network nobody made")
            except grpc.RpcError as exc:
                assert exc.code() == PRECONDITION, (exc.code(), exc.details())
                assert missing in (exc.details() or ""), exc.details()
        _left_nothing(subject, pods)
