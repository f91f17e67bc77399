"""How big a pod's VM is, what template it comes from, and Kubernetes quantities.

Image: `vsphere:template/<name>` names the template `<name>` (looked up in the template folder,
or anywhere in the datacenter); a bare `<name>` (no ":" and no "/") means the same. Anything
else (e.g. a container image such as docker.io/nginx:1.27) is INVALID_ARGUMENT.

CPU: the container's CPU limit, else its request, in whole vCPUs rounded up:
ceil(millicores / 1000), at least 1. 1500m gives 2 vCPUs, 100m gives 1.

Memory: the memory limit, else the request, in MiB rounded up (ceil(bytes / MiB)), then up to the
next multiple of 4 MiB (vSphere wants memory in multiples of 4 MiB), at least 128 MiB. 1Gi gives
1024 MiB, 1G (10^9 bytes) gives 956 MiB, 100Mi gives 128 MiB.

A resource the container leaves unset keeps the template's value on create and the VM's current
value on update.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Final

from vmlet.provider.v1 import pod_pb2
from vmlet_contract import InvalidArgument

__all__ = [
    "MIB",
    "VmSize",
    "cpu_millis",
    "memory_bytes",
    "template_of",
    "vm_size",
]

MIB: Final = 1024 * 1024
MIN_MEMORY_MB: Final = 128
MEMORY_STEP_MB: Final = 4
TEMPLATE_SCHEME: Final = "vsphere:template/"

_BARE = re.compile(r"^[^:/\s][^:/]*$")


@dataclass(frozen=True)
class VmSize:
    """vCPUs and MiB a pod asks for; None where the container leaves it unset."""

    cpus: int | None
    memory_mb: int | None

    def describe(self) -> str:
        """E.g. "2 vCPU, 2048 MiB"."""
        parts = []
        if self.cpus is not None:
            parts.append(f"{self.cpus} vCPU")
        if self.memory_mb is not None:
            parts.append(f"{self.memory_mb} MiB")
        return ", ".join(parts) or "the template's size"


def vm_size(resources: pod_pb2.Resources) -> VmSize:
    """The VM size for a container's resources; see the module docstring."""
    millis = resources.cpu_limit_millis or resources.cpu_request_millis
    size_bytes = resources.memory_limit_bytes or resources.memory_request_bytes
    if millis < 0 or size_bytes < 0:
        raise InvalidArgument("CPU and memory cannot be negative")
    cpus = max(1, math.ceil(millis / 1000)) if millis else None
    memory_mb: int | None = None
    if size_bytes:
        mib = -(-size_bytes // MIB)
        mib = -(-mib // MEMORY_STEP_MB) * MEMORY_STEP_MB
        memory_mb = max(MIN_MEMORY_MB, mib)
    return VmSize(cpus=cpus, memory_mb=memory_mb)


def template_of(image: str) -> str:
    """The template name an image names; InvalidArgument when it names none."""
    text = image.strip()
    if text.startswith(TEMPLATE_SCHEME):
        name = text[len(TEMPLATE_SCHEME) :]
        if name and "/" not in name:
            return name
    elif _BARE.match(text):
        return text
    raise InvalidArgument(
        f"image {image!r} does not name a vSphere template: use "
        f"{TEMPLATE_SCHEME}<template name> (or the bare template name)"
    )


_SUFFIX: Final[dict[str, int]] = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}
_QUANTITY = re.compile(
    r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?\s*$"
)


def _parse(text: str) -> tuple[Decimal, str]:
    match = _QUANTITY.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a quantity")
    try:
        return Decimal(match.group(1)), match.group(2) or ""
    except InvalidOperation:
        raise ValueError(f"{text!r} is not a quantity") from None


def cpu_millis(text: str) -> int:
    """A CPU quantity ("2", "500m", "1.5") in millicores."""
    number, suffix = _parse(text)
    if suffix == "m":
        return math.ceil(number)
    return math.ceil(number * 1000 * _SUFFIX[suffix])


def memory_bytes(text: str) -> int:
    """A memory quantity ("512Mi", "1G", "1073741824") in bytes."""
    number, suffix = _parse(text)
    if suffix == "m":
        return math.ceil(number / 1000)
    return math.ceil(number * _SUFFIX[suffix])
