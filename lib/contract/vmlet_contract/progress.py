"""The contract's `Progress` values and the CamelCase reason each one goes by.

Providers set `PodStatus.progress`; the facade acts on it. A provider older than the field leaves
it unset, and the facade then reads its container's waiting reason with `of_reason`, which knows
the same CamelCase names.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TypeAlias

from vmlet.provider.v1 import pod_pb2

__all__ = ["MOVING", "NAMES", "STEPS", "Progress", "name", "of_reason"]

Progress: TypeAlias = pod_pb2.Progress.ValueType

#: The CamelCase reason of each value: the waiting reason providers have always given for it.
NAMES: Mapping[Progress, str] = MappingProxyType({
    pod_pb2.PROGRESS_NONE: "Idle",
    pod_pb2.PROGRESS_CREATING: "ContainerCreating",
    pod_pb2.PROGRESS_POWERING_ON: "PoweringOn",
    pod_pb2.PROGRESS_POWER_CYCLING: "PowerCycling",
    pod_pb2.PROGRESS_RELOCATING: "Relocating",
    pod_pb2.PROGRESS_MIGRATING: "Migrating",
    pod_pb2.PROGRESS_RESIZING: "Resizing",
    pod_pb2.PROGRESS_REBUILDING: "Rebuilding",
    pod_pb2.PROGRESS_REBOOTING: "Rebooting",
    pod_pb2.PROGRESS_SETTING_PASSWORD: "SettingPassword",
    pod_pb2.PROGRESS_BUSY: "Busy",
    pod_pb2.PROGRESS_DELETING: "Deleting",
    pod_pb2.PROGRESS_WAITING_FOR_GUEST_IP: "WaitingForGuestIP",
    pod_pb2.PROGRESS_STOPPED: "Stopped",
    pod_pb2.PROGRESS_FAILED: "Failed",
    pod_pb2.PROGRESS_STATE_UNKNOWN: "StateUnknown",
})

#: Steps under way: a VM in one of them is progressing, not failing.
STEPS: frozenset[Progress] = frozenset({
    pod_pb2.PROGRESS_CREATING, pod_pb2.PROGRESS_POWERING_ON, pod_pb2.PROGRESS_POWER_CYCLING,
    pod_pb2.PROGRESS_RELOCATING, pod_pb2.PROGRESS_MIGRATING, pod_pb2.PROGRESS_RESIZING,
    pod_pb2.PROGRESS_REBUILDING, pod_pb2.PROGRESS_REBOOTING, pod_pb2.PROGRESS_SETTING_PASSWORD,
    pod_pb2.PROGRESS_BUSY, pod_pb2.PROGRESS_DELETING, pod_pb2.PROGRESS_WAITING_FOR_GUEST_IP,
})

#: Steps that take the VM to another host.
MOVING: frozenset[Progress] = frozenset({pod_pb2.PROGRESS_RELOCATING, pod_pb2.PROGRESS_MIGRATING})

# The resting reasons providers give a VM stopped in the IaaS.
_STOPPED_REASONS = frozenset({"PoweredOff", "Suspended", "Paused", "Shelved", "Rescued"})
_BY_NAME = {text: value for value, text in NAMES.items()}


def name(progress: Progress) -> str:
    """The CamelCase reason of `progress`; empty for UNSPECIFIED or a value newer than this code."""
    return NAMES.get(progress, "")


def of_reason(reason: str) -> Progress:
    """The value a CamelCase `reason` names (`NAMES`, or a resting reason such as PoweredOff,
    which is STOPPED); UNSPECIFIED for any other reason."""
    if reason in _STOPPED_REASONS:
        return pod_pb2.PROGRESS_STOPPED
    return _BY_NAME.get(reason, pod_pb2.PROGRESS_UNSPECIFIED)
