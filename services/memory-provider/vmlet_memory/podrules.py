"""What a pod must be for the memory provider, and the per-pod knobs for tests of the facade.

Knobs (annotations on the pod):
  memory.vmlet.io/start-delay-seconds  how long this pod stays Pending (overrides the flag)
  memory.vmlet.io/fail-create          "CODE: message" makes CreatePod fail with that gRPC code
  memory.vmlet.io/exit-after           "SECONDS[:CODE]": after each boot the guest runs SECONDS
                                       and shuts itself down with exit code CODE (default 0)
"""

from __future__ import annotations

from typing import Final

import grpc

from vmlet.provider.v1 import pod_pb2
from vmlet_contract import InvalidArgument, ProviderError

from .images import image_name

__all__ = [
    "EXIT_AFTER_ANNOTATION",
    "FAIL_CREATE_ANNOTATION",
    "START_DELAY_ANNOTATION",
    "exit_after",
    "injected_failure",
    "start_delay",
    "validate",
]

START_DELAY_ANNOTATION: Final = "memory.vmlet.io/start-delay-seconds"
FAIL_CREATE_ANNOTATION: Final = "memory.vmlet.io/fail-create"
EXIT_AFTER_ANNOTATION: Final = "memory.vmlet.io/exit-after"


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
    if EXIT_AFTER_ANNOTATION in pod.annotations and exit_after(pod) is None:
        raise InvalidArgument(
            f"{where}: {EXIT_AFTER_ANNOTATION} is not SECONDS[:CODE] "
            f"(SECONDS ≥ 0, CODE 0-255): {pod.annotations[EXIT_AFTER_ANNOTATION][:64]!r}")


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


def exit_after(pod: pod_pb2.Pod) -> tuple[float, int] | None:
    """(seconds, exit code) of ``pod``'s exit-after annotation; None when it has none or it is
    malformed (`validate` refuses such a pod)."""
    spec = pod.annotations.get(EXIT_AFTER_ANNOTATION)
    if spec is None:
        return None
    seconds, _, code = spec.partition(":")
    try:
        after, exit_code = float(seconds), int(code or "0")
    except ValueError:
        return None
    if not 0 <= after < 1e6 or not 0 <= exit_code <= 255:
        return None
    return after, exit_code
