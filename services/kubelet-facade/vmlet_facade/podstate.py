"""What the pod controller knows of one pod: one record per pod UID (``PodState``)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from vmlet.provider.v1 import pod_pb2 as pb
from vmlet_facade.kube.objects import Obj
from vmlet_facade.ownership import Ownership

__all__ = ["PodState", "uids_on"]


@dataclass
class PodState:
    """What the controller knows of one pod (by UID): Kubernetes' and the provider's side."""

    pod: Obj | None = None  # as Kubernetes has it now; None once deleted
    gone: Obj | None = None  # as last seen, once deleted, until the provider's pod is deleted
    created: bool = False  # the provider has the pod (created here, or adopted at start)
    fingerprint: str | None = None  # spec_fingerprint last sent; None: adopted, not yet compared
    operation: bool = False  # an operation pod: run once, no VM at the provider to delete
    adopted: pb.Pod | None = None  # the provider's pod at start, until its node is listed
    owner: Ownership | None = None  # decided once per pod, at its create (or first need)
    latest: pb.PodStatus | None = None  # the status last heard, to write
    written: bytes | None = None  # the status last written (serialized)
    rejected: bool = False  # failed for good here (INVALID_ARGUMENT): never created
    told_unhonoured: bool = False  # the fields vmlet does not honour were named in an Event

    def forget_provider_side(self) -> None:
        """The provider no longer has the pod."""
        self.created, self.fingerprint, self.operation = False, None, False

    @property
    def empty(self) -> bool:
        """Whether nothing of the pod is left to keep on either side (the record can go)."""
        return (self.pod is None and self.gone is None and not self.created
                and self.adopted is None and self.owner is None and self.latest is None
                and self.written is None)


def uids_on(states: dict[str, PodState], nodes: Collection[str],
            current: bool = False) -> list[str]:
    """The UIDs of the pods ``states`` knows bound to one of ``nodes``: as Kubernetes has them
    now (``current``), else also as last seen once deleted, or adopted there."""
    out = []
    for uid, state in states.items():
        pod = state.pod if current else state.pod or state.gone
        where = pod.get("spec", {}).get("nodeName") if pod is not None else (
            state.adopted.node_name if state.adopted is not None and not current else None)
        if where in nodes:
            out.append(uid)
    return out
