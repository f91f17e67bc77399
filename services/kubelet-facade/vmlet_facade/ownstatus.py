"""The statuses the facade itself gives a pod: while its create fails, and when it is rejected."""

from __future__ import annotations

from vmlet.provider.v1 import pod_pb2 as pb
from vmlet_facade.containerstatus import REFUSED_EXIT_CODE

__all__ = ["rejected", "waiting"]


def waiting(reason: str, message: str) -> pb.PodStatus:
    """A pending pod's status: every container waiting with ``reason`` (an unnamed container
    status is every container's)."""
    status = pb.PodStatus(phase=pb.POD_PHASE_PENDING, reason="", message="")
    status.container_statuses.add(waiting=pb.ContainerStateWaiting(reason=reason,
                                                                    message=message))
    return status


def rejected(reason: str, message: str) -> pb.PodStatus:
    """The status of a pod vmlet will not run, as a kubelet's admission rejects one: phase
    Failed with ``reason`` and the message, every container terminated without having run."""
    said = f"Pod was rejected: {message}"
    status = pb.PodStatus(phase=pb.POD_PHASE_FAILED, reason=reason, message=said)
    status.container_statuses.add().terminated.CopyFrom(pb.ContainerStateTerminated(
        exit_code=REFUSED_EXIT_CODE, reason=reason, message=said))
    return status
