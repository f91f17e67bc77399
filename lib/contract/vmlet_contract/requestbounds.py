"""The bounds of every request a provider takes, checked once for all providers.

The `BoundaryInterceptor` runs `check_request` on every request message before the provider's
servicer sees it (each message of a request stream too), so no provider hands an IaaS a size it
cannot hold, keeps a 10 MB identity, or answers a namespace ``a/b``: the caller gets
INVALID_ARGUMENT with what is wrong, and nothing is created, changed or deleted.

Where the bounds come from:

- Names: Kubernetes' own rules (k8s.io/apimachinery/pkg/util/validation): a namespace is an
  RFC 1123 label (63 characters), a pod or node name a DNS subdomain (253), a container or
  volume name a label, a UID at most 128 characters.
- Sizes of one VM: the vSphere 8.0 configuration maximums (configmax.esp.vmware.com), the most
  any supported IaaS runs: 768 virtual CPUs and 24 TB of memory per VM, 62 TB per virtual disk.
- Identity: at most 128 characters of letters, digits and ``.-_:`` (a Kubernetes UID is a
  36-character UUID); it is written into vSphere extraConfig and Nova metadata, whose values take
  at most 255 characters (Nova API: metadata values, 255).
- User data: 64 KiB, the limit of Nova's API (``user_data``, "restricted to 65535 bytes") and of
  other clouds' cloud-init user data (EC2: 16 KiB; Azure custom data: 64 KiB); metadata as much.
- Labels and annotations: 256 KiB each, Kubernetes' limit for a pod's annotations
  (TotalAnnotationSizeLimitB); the pod's JSON 3 MiB, the apiserver's largest request body.
- The whole message: `MAX_MESSAGE_BYTES` (32 MiB), the server's gRPC receive limit.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .errors import InvalidArgument

__all__ = [
    "MAX_CPU_MILLIS",
    "MAX_DISK_BYTES",
    "MAX_GRACE_SECONDS",
    "MAX_IDENTITY_LENGTH",
    "MAX_MEMORY_BYTES",
    "MAX_MESSAGE_BYTES",
    "MAX_USER_DATA_BYTES",
    "check_identity",
    "check_request",
]

TiB = 2**40
#: vSphere 8.0 configuration maximums: virtual CPUs per VM.
MAX_CPU_MILLIS = 768 * 1000
#: vSphere 8.0 configuration maximums: memory per VM (24 TB).
MAX_MEMORY_BYTES = 24 * TiB
#: vSphere 8.0 configuration maximums: virtual disk size (62 TB).
MAX_DISK_BYTES = 62 * TiB
MAX_IDENTITY_LENGTH = 128
#: Nova's user_data limit (65535 bytes); cloud-init user data elsewhere is no larger.
MAX_USER_DATA_BYTES = 64 * 1024
#: Kubernetes' TotalAnnotationSizeLimitB.
MAX_MAP_BYTES = 256 * 1024
#: The gRPC receive limit of every provider server (DEFAULT_SERVER_OPTIONS).
MAX_MESSAGE_BYTES = 32 * 1024 * 1024
MAX_CONTAINERS = 64
MAX_VOLUMES = 256
MAX_NETWORKS = 16
#: The longest a StopPod lets a guest take to shut down (the pod's grace is the facade's).
MAX_GRACE_SECONDS = 3600
MAX_STRING = 1024  # images, handles, snapshot IDs, StorageClass parameters
MAX_TEXT = 64 * 1024  # descriptions, commands, keys, known_hosts

_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_IDENTITY = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._:-]*[A-Za-z0-9])?")
_UID = re.compile(r"[A-Za-z0-9-]*")
# Free text that names an IaaS object: no control characters, no separators of lists or paths.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}... ({len(str(value))} characters)"


def _label(value: str, what: str, *, optional: bool = False) -> None:
    if optional and not value:
        return
    if len(value) > 63 or not _LABEL.fullmatch(value):
        raise InvalidArgument(f"{what} {_shown(value)} is not a valid name: an RFC 1123 label "
                              "of at most 63 lower-case letters, digits and '-'")


def _subdomain(value: str, what: str, *, optional: bool = False) -> None:
    if optional and not value:
        return
    if len(value) > 253 or not _SUBDOMAIN.fullmatch(value):
        raise InvalidArgument(f"{what} {_shown(value)} is not a valid name: a DNS subdomain of "
                              "at most 253 lower-case letters, digits, '-' and '.'")


def check_identity(identity: str, *, required: bool = True) -> None:
    """InvalidArgument unless ``identity`` is at most 128 letters, digits and ``.-_:``."""
    if not identity:
        if required:
            raise InvalidArgument("an identity is required")
        return
    if len(identity) > MAX_IDENTITY_LENGTH or not _IDENTITY.fullmatch(identity):
        raise InvalidArgument(
            f"identity {_shown(identity)} is not valid: at most {MAX_IDENTITY_LENGTH} letters, "
            "digits, '.', '-', '_' and ':' (a Kubernetes UID)")


def _text(value: str, what: str, limit: int = MAX_STRING, *, required: bool = False,
          plain: bool = True) -> None:
    if required and not value:
        raise InvalidArgument(f"{what} is required")
    if len(value) > limit:
        raise InvalidArgument(f"{what} has {len(value)} characters; at most {limit} are taken")
    if plain and _CONTROL.search(value):
        raise InvalidArgument(f"{what} {_shown(value)} has control characters")


def _between(value: int, low: int, high: int, what: str, unit: str = "") -> None:
    if not low <= value <= high:
        raise InvalidArgument(f"{what} {value}{unit} is out of bounds: {low} to {high}{unit}")


def _map_bytes(values: Mapping[str, str], what: str) -> None:
    size = sum(len(k.encode()) + len(v.encode()) for k, v in values.items())
    if size > MAX_MAP_BYTES:
        raise InvalidArgument(f"{what} take {size} bytes; at most {MAX_MAP_BYTES} are taken")


def _strings(values: Iterable[str], what: str, limit: int = MAX_TEXT) -> None:
    size = sum(len(v) for v in values)
    if size > limit:
        raise InvalidArgument(f"{what} take {size} characters; at most {limit} are taken")


def _ref(namespace: str, name: str, what: str) -> None:
    _label(namespace, f"{what}: namespace")
    _subdomain(name, f"{what}: name")


def _pod(pod: Any, *, ref_required: bool = True) -> None:
    ref = pod.ref
    if ref_required or ref.namespace or ref.name:
        _ref(ref.namespace, ref.name, "pod")
    where = f"pod {ref.namespace}/{ref.name}"
    if len(ref.uid) > 128 or not _UID.fullmatch(ref.uid):
        raise InvalidArgument(f"{where}: uid {_shown(ref.uid)} is not a Kubernetes UID")
    _subdomain(pod.node_name, f"{where}: node", optional=True)
    check_identity(pod.identity, required=False)
    _map_bytes(pod.labels, f"{where}: labels")
    _map_bytes(pod.annotations, f"{where}: annotations")
    for data, what in ((pod.user_data, "user data"), (pod.meta_data, "metadata")):
        size = len(data.encode())
        if size > MAX_USER_DATA_BYTES:
            raise InvalidArgument(f"{where}: {what} of {size} bytes; at most "
                                  f"{MAX_USER_DATA_BYTES} are taken (Nova's user_data limit)")
    if len(pod.containers) > MAX_CONTAINERS:
        raise InvalidArgument(f"{where}: {len(pod.containers)} containers; at most "
                              f"{MAX_CONTAINERS}")
    for c in pod.containers:
        _label(c.name, f"{where}: container name")
        _text(c.image, f"{where}: image")
        _strings([*c.command, *c.args], f"{where}: command and args of {c.name}")
        r = c.resources
        for millis, what in ((r.cpu_request_millis, "cpu request"),
                             (r.cpu_limit_millis, "cpu limit")):
            _between(millis, 0, MAX_CPU_MILLIS, f"{where}: {what}", "m")
        for size, what in ((r.memory_request_bytes, "memory request"),
                           (r.memory_limit_bytes, "memory limit")):
            _between(size, 0, MAX_MEMORY_BYTES, f"{where}: {what}", " bytes")
        for port in c.ports:
            _between(port.container_port, 0, 65535, f"{where}: container port")
    if len(pod.volumes) > MAX_VOLUMES:
        raise InvalidArgument(f"{where}: {len(pod.volumes)} volumes; at most {MAX_VOLUMES}")
    for v in pod.volumes:
        _text(v.name, f"{where}: volume name", 63)
        kind = v.WhichOneof("source")
        if kind == "disk":
            _subdomain(v.disk.claim_name, f"{where}: claim", optional=True)
            _text(v.disk.volume_handle, f"{where}: volume handle of {v.name}")
        elif kind == "scratch":
            _between(v.scratch.size_limit_bytes, 0, MAX_DISK_BYTES,
                     f"{where}: scratch size of {v.name}", " bytes")
    if len(pod.networks) > MAX_NETWORKS:
        raise InvalidArgument(f"{where}: {len(pod.networks)} networks; at most {MAX_NETWORKS}")
    for n in pod.networks:
        _text(n.name, f"{where}: network name", 255, required=True)
        if "," in n.name or "/" in n.name:
            raise InvalidArgument(f"{where}: network name {_shown(n.name)} has ',' or '/'")


def _pod_request(request: Any) -> None:
    if not request.HasField("pod"):
        raise InvalidArgument("the request carries no pod")
    _pod(request.pod)


def _stop_pod(request: Any) -> None:
    _pod_request(request)
    _between(request.grace_seconds, 0, MAX_GRACE_SECONDS, "grace period", " seconds")


def _delete_pod(request: Any) -> None:
    # A VirtualMachine's deletion names only the identity: no pod reference to check then.
    _pod(request.pod, ref_required=False)


def _named(request: Any) -> None:
    _ref(request.namespace, request.name, "pod")


def _logs(request: Any) -> None:
    _ref(request.namespace, request.pod_name, "pod")
    _label(request.container_name, "container", optional=True)


def _credentials(creds: Any) -> None:
    _text(creds.username, "guest username", 256)
    _text(creds.password, "guest password", 4096, plain=False)
    if len(creds.private_key) > MAX_TEXT or len(creds.known_hosts) > MAX_TEXT:
        raise InvalidArgument(f"the guest key and known_hosts take at most {MAX_TEXT} bytes each")
    _between(creds.port, 0, 65535, "guest SSH port")


def _stream_start(kind: str) -> Callable[[Any], None]:
    def check(request: Any) -> None:
        if request.WhichOneof("kind") != "start":
            return
        start = request.start
        _ref(start.namespace, start.pod_name, "pod")
        if hasattr(start, "container_name"):
            _label(start.container_name, "container", optional=True)
        if kind == "exec":
            if len(start.command) > 1024:
                raise InvalidArgument("an exec takes at most 1024 command words")
            _strings(start.command, "the exec command")
            if start.HasField("credentials"):
                _credentials(start.credentials)
        if kind == "portforward":
            _between(start.port, 0, 65535, "port")
    return check


def _node(request: Any) -> None:
    _subdomain(request.node_name, "node", optional=True)


def _identity(request: Any) -> None:
    check_identity(request.identity)


def _snapshot(request: Any) -> None:
    check_identity(request.identity)
    if hasattr(request, "name"):
        _text(request.name, "snapshot name", 255)
        _text(request.description, "snapshot description", 4096, plain=False)
    if hasattr(request, "snapshot_id"):
        _text(request.snapshot_id, "snapshot ID", 255, required=True)


def _create_disk(request: Any) -> None:
    _text(request.name, "disk name", 253, required=True)
    if "/" in request.name:
        raise InvalidArgument(f"disk name {_shown(request.name)} has '/'")
    _between(request.size_bytes, 1, MAX_DISK_BYTES, f"disk {request.name}: size", " bytes")
    if len(request.parameters) > 64:
        raise InvalidArgument("a disk takes at most 64 StorageClass parameters")
    for key, value in request.parameters.items():
        _text(key, "StorageClass parameter name", 253)
        _text(value, f"StorageClass parameter {key}")


def _handle(request: Any) -> None:
    _text(request.handle, "disk handle", required=True)
    if hasattr(request, "size_bytes"):
        _between(request.size_bytes, 1, MAX_DISK_BYTES, "disk size", " bytes")


_CHECKS: dict[str, Callable[[Any], None]] = {
    "CreatePodRequest": _pod_request,
    "UpdatePodRequest": _pod_request,
    "DeletePodRequest": _delete_pod,
    "StartPodRequest": _pod_request,
    "StopPodRequest": _stop_pod,
    "GetPodRequest": _named,
    "GetPodStatusRequest": _named,
    "GetContainerLogsRequest": _logs,
    "ExecRequest": _stream_start("exec"),
    "AttachRequest": _stream_start("attach"),
    "PortForwardRequest": _stream_start("portforward"),
    "GetStatsSummaryRequest": _node,
    "GetVirtualMachineRequest": _identity,
    "DeleteVirtualMachineRequest": _identity,
    "ListSnapshotsRequest": _identity,
    "CreateSnapshotRequest": _snapshot,
    "RevertToSnapshotRequest": _snapshot,
    "DeleteSnapshotRequest": _snapshot,
    "CreateDiskRequest": _create_disk,
    "DeleteDiskRequest": _handle,
    "ExpandDiskRequest": _handle,
    "GetDiskRequest": _handle,
}


def check_request(request: Any) -> None:
    """InvalidArgument when ``request`` (any vmlet.provider.v1 request message) is out of
    bounds; messages of other packages (health, reflection) pass untouched."""
    descriptor = getattr(request, "DESCRIPTOR", None)
    if descriptor is None or not descriptor.full_name.startswith("vmlet.provider.v1."):
        return
    check = _CHECKS.get(descriptor.name)
    if check is not None:
        check(request)
    if "namespace" in descriptor.fields_by_name and descriptor.name not in _CHECKS:
        _label(request.namespace, "namespace", optional=True)  # VM calls name their namespace
