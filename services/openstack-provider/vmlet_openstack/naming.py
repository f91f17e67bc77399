"""Names: compute hosts as node names, pods as server names, identities as tags and metadata.

A server carries what the provider needs to find it again after a restart, in its metadata
(Nova allows 255 characters per key and value):

  vmlet-identity   the VM's identity (VirtualMachine UID or pod UID): the key of everything
  vmlet-namespace, vmlet-pod, vmlet-pod-uid   the pod running it; empty while kept without a pod
  vmlet-node       the node the pod is bound to
  vmlet-container, vmlet-image   the container's name and image as the pod gave them
  vmlet-keep       "true" when a VirtualMachine owns it (DeletePod stops instead of deleting)
  vmlet-exit-code  "137" on a server StopPod powered off, until StartPod (Nova keeps no exit code)

and two tags, because Nova filters server lists by tag but not by metadata: `vmlet` on every
server of the provider, and `vmlet-id-<identity>` (or `vmlet-idh-<sha256 prefix>` for an identity
that is not a valid tag) to look an identity up with one filtered list.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

__all__ = [
    "META_CONTAINER",
    "META_EXIT_CODE",
    "META_IDENTITY",
    "META_IMAGE",
    "META_KEEP",
    "META_NAMESPACE",
    "META_NODE",
    "META_OWNER_NAMESPACE",
    "META_POD",
    "META_POD_UID",
    "POD_KEYS",
    "PROVIDER_TAG",
    "identity_tag",
    "node_name",
    "server_name",
    "truncate",
]

META_IDENTITY: Final = "vmlet-identity"
META_NAMESPACE: Final = "vmlet-namespace"
META_POD: Final = "vmlet-pod"
META_POD_UID: Final = "vmlet-pod-uid"
META_NODE: Final = "vmlet-node"
META_CONTAINER: Final = "vmlet-container"
META_IMAGE: Final = "vmlet-image"
META_KEEP: Final = "vmlet-keep"
#: The exit code of the guest StopPod killed ("137"), until StartPod starts the server again.
META_EXIT_CODE: Final = "vmlet-exit-code"
#: The namespace the server belongs to, kept when a kept server loses its pod: it is never
#: adopted, moved or deleted for another namespace.
META_OWNER_NAMESPACE: Final = "vmlet-owner-namespace"
#: The keys that tie a server to a pod, cleared when a kept server loses its pod.
POD_KEYS: Final = (META_NAMESPACE, META_POD, META_POD_UID, META_NODE, META_CONTAINER, META_IMAGE)
PROVIDER_TAG: Final = "vmlet"

_TAG_OK = re.compile(r"^[A-Za-z0-9_.:=@+-]{1,50}$")
_DNS_BAD = re.compile(r"[^a-z0-9-]+")


def truncate(text: str, limit: int = 255) -> str:
    """`text` cut to Nova's metadata limit."""
    return text if len(text) <= limit else text[:limit]


def identity_tag(identity: str) -> str:
    """The tag that finds the servers of `identity` (at most 60 characters, no / or ,)."""
    if _TAG_OK.match(identity):
        return f"vmlet-id-{identity}"
    digest = hashlib.sha256(identity.encode()).hexdigest()[:40]
    return f"vmlet-idh-{digest}"


def _dns_label(text: str, limit: int) -> str:
    label = _DNS_BAD.sub("-", text.lower()).strip("-")
    if len(label) > limit:
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        label = label[: limit - 9].rstrip("-") + "-" + digest
    return label


def node_name(prefix: str, host: str) -> str:
    """The Kubernetes node name of compute host `host`: PREFIX-<host>, stable and unique. A host
    name that is not already a lower-case DNS label gets one made of it plus a hash suffix, so
    two hosts never share a node."""
    label = _dns_label(host, 63)
    if label != host:
        digest = hashlib.sha256(host.encode()).hexdigest()[:6]
        label = f"{label[:56].rstrip('-')}-{digest}".lstrip("-")
    return f"{prefix}-{label}"


def server_name(namespace: str, pod: str) -> str:
    """The server's name: <namespace>-<pod> as a DNS label (Nova derives the guest's host name
    from it), shortened with a hash suffix past 63 characters."""
    return _dns_label(f"{namespace}-{pod}", 63) or "vmlet-server"
