"""What a pod must be for the memory provider, and the per-pod knobs for tests of the facade.

Knobs (annotations on the pod):
  memory.vmlet.io/start-delay-seconds  how long this pod stays Pending (overrides the flag)
  memory.vmlet.io/fail-create          "CODE: message" makes CreatePod fail with that gRPC code
"""

from __future__ import annotations

from typing import Final

import grpc

from vmlet.provider.v1 import pod_pb2
from vmlet_contract import InvalidArgument, ProviderError

from .images import image_name

__all__ = [
    "FAIL_CREATE_ANNOTATION",
    "START_DELAY_ANNOTATION",
    "injected_failure",
    "start_delay",
    "validate",
]

START_DELAY_ANNOTATION: Final = "memory.vmlet.io/start-delay-seconds"
FAIL_CREATE_ANNOTATION: Final = "memory.vmlet.io/fail-create"


def validate(pod: pod_pb2.Pod) -> None:
    """InvalidArgument when ``pod`` cannot become a VM as written, whatever the cloud holds."""
    where = f"pod {pod.ref.namespace}/{pod.ref.name}"
    if not pod.ref.namespace or not pod.ref.name:
        raise InvalidArgument("a pod needs a namespace and a name")
    if not pod.identity:
        raise InvalidArgument(f"{where} has no identity")
    if not pod.node_name:
        raise InvalidArgument(f"{where} is not bound to a node")
    if len(pod.containers) != 1:
        raise InvalidArgument(f"{where} has {len(pod.containers)} containers; a VM pod has one")
    image_name(pod.containers[0].image)
    delay = pod.annotations.get(START_DELAY_ANNOTATION)
    if delay is not None:
        try:
            float(delay)
        except ValueError:
            raise InvalidArgument(f"{where}: {START_DELAY_ANNOTATION} is not a number") from None


def start_delay(pod: pod_pb2.Pod, default: float) -> float:
    """How long ``pod`` stays Pending: its annotation (checked by `validate`), else ``default``."""
    return float(pod.annotations.get(START_DELAY_ANNOTATION, default))


def injected_failure(pod: pod_pb2.Pod) -> ProviderError | None:
    """The failure ``pod``'s fail-create annotation asks for, None when it asks for none."""
    spec = pod.annotations.get(FAIL_CREATE_ANNOTATION)
    if not spec:
        return None
    name, _, message = spec.partition(":")
    try:
        code = grpc.StatusCode[name.strip().upper()]
    except KeyError:
        code = grpc.StatusCode.INVALID_ARGUMENT
    return ProviderError(
        message.strip() or f"failure injected by {FAIL_CREATE_ANNOTATION}", code=code
    )
