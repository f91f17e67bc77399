"""Outages: a provider the facade cannot reach, or an IaaS its provider cannot reach.

While one lasts, the provider's nodes are Ready=Unknown, and the VM pods on them show Ready=False
with the outage's reason and message, as the node lifecycle controller marks the pods of a lost
node; their phase and containers stay as last seen, for an outage is not a power-off. Their
VirtualMachines show Unknown (vmstate). It all comes back by itself when the parts answer again.
"""

from __future__ import annotations

from dataclasses import dataclass

from vmlet.provider.v1 import pod_pb2 as pb
from vmlet_api.names import REASON_IAAS_UNAVAILABLE, REASON_PROVIDER_UNAVAILABLE

__all__ = ["IAAS_UNAVAILABLE", "PROVIDER_UNAVAILABLE", "REASONS", "Outage", "during"]

#: The facade gets no answer from the provider (killed, stopped, cut off).
PROVIDER_UNAVAILABLE = REASON_PROVIDER_UNAVAILABLE
#: The provider answers, but not its IaaS (vCenter, Nova): it says so to Ping.
IAAS_UNAVAILABLE = REASON_IAAS_UNAVAILABLE
REASONS = frozenset({PROVIDER_UNAVAILABLE, IAAS_UNAVAILABLE})


@dataclass(frozen=True)
class Outage:
    """Why a provider's VMs cannot be seen right now, and what the part that failed said."""

    reason: str
    message: str


def during(status: pb.PodStatus, outage: Outage) -> pb.PodStatus:
    """``status`` as a pod shows it during ``outage``: not ready, for the outage's reason (the
    pod conditions say so, built by podconvert); its containers stay as last seen."""
    out = pb.PodStatus()
    out.CopyFrom(status)
    out.ready = False
    out.not_ready_reason = outage.reason
    out.not_ready_message = outage.message
    return out
