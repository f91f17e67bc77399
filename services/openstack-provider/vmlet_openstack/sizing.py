"""What a pod asks for, in OpenStack's terms: the Glance image and the flavor.

Image: the container's image names a Glance image, as `openstack:image/<name or ID>` or as the
bare name or ID (`vmlet-test-image`, `5f0e...`). Anything with a registry-like form
(`docker.io/...`, `nginx:1.27`) is refused: a VM cannot boot a container image.

Flavor: the annotation `openstack.vmlet.io/flavor` names one (by name or ID); without it the
provider picks the smallest flavor (fewest vCPUs, then least memory, then least disk, then name)
with at least ceil(CPU millicores / 1000) vCPUs and at least the memory asked for. CPU and memory
are the container's requests, or its limits where no request is given, as Kubernetes accounts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from vmlet.provider.v1 import pod_pb2
from vmlet_contract import InvalidArgument

from .records import FlavorRecord

__all__ = [
    "FLAVOR_ANNOTATION",
    "IMAGE_PREFIX",
    "Demand",
    "choose_flavor",
    "demand_of",
    "image_ref",
    "looks_like_id",
]

FLAVOR_ANNOTATION: Final = "openstack.vmlet.io/flavor"
IMAGE_PREFIX: Final = "openstack:image/"
_MIB: Final = 1024 * 1024
_UUID = re.compile(r"^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$", re.I)


@dataclass(frozen=True)
class Demand:
    """What a pod needs from a flavor."""

    vcpus: int
    ram_mib: int
    flavor: str | None  # named by the annotation

    def describe(self) -> str:
        return f"{self.vcpus} vCPU(s) and {self.ram_mib} MiB"


def demand_of(pod: pod_pb2.Pod) -> Demand:
    """The pod's CPU (whole vCPUs, rounded up) and memory (MiB, rounded up)."""
    millis = sum(
        c.resources.cpu_request_millis or c.resources.cpu_limit_millis for c in pod.containers
    )
    memory = sum(
        c.resources.memory_request_bytes or c.resources.memory_limit_bytes for c in pod.containers
    )
    flavor = pod.annotations.get(FLAVOR_ANNOTATION, "").strip() or None
    return Demand(
        vcpus=max(0, math.ceil(millis / 1000)),
        ram_mib=max(0, math.ceil(memory / _MIB)),
        flavor=flavor,
    )


def choose_flavor(demand: Demand, flavors: Iterable[FlavorRecord]) -> FlavorRecord:
    """The flavor for `demand`: the named one, or the smallest that fits. InvalidArgument when
    the named flavor does not exist or none is large enough."""
    candidates = list(flavors)
    if demand.flavor is not None:
        for flavor in candidates:
            if demand.flavor in (flavor.name, flavor.id):
                return flavor
        raise InvalidArgument(
            f"flavor {demand.flavor!r} (annotation {FLAVOR_ANNOTATION}) does not exist; "
            "flavors: " + ", ".join(sorted(f.name for f in candidates))
        )
    fitting = [f for f in candidates if f.vcpus >= demand.vcpus and f.ram_mib >= demand.ram_mib]
    if not fitting:
        raise InvalidArgument(
            f"no flavor has {demand.describe()}; the largest are "
            + ", ".join(
                f"{f.name} ({f.vcpus} vCPU, {f.ram_mib} MiB)"
                for f in sorted(candidates, key=lambda f: (-f.vcpus, -f.ram_mib))[:3]
            )
        )
    return min(fitting, key=lambda f: (f.vcpus, f.ram_mib, f.disk_gib, f.name))


def image_ref(image: str) -> str:
    """The Glance image name or ID a container image names; InvalidArgument when it is not one
    (see the module docstring)."""
    text = image.strip()
    if text.startswith(IMAGE_PREFIX):
        text = text[len(IMAGE_PREFIX) :].strip()
    elif "/" in text or (":" in text and not _UUID.match(text)):
        raise InvalidArgument(
            f"image {image!r} is not a Glance image: write {IMAGE_PREFIX}<name> or the bare "
            "image name"
        )
    if not text:
        raise InvalidArgument("the container names no image")
    return text


def looks_like_id(text: str) -> bool:
    """Whether `text` has the form of a Glance image ID."""
    return bool(_UUID.match(text))
