"""Servers as the provider sees them: the fields of Nova's JSON that matter, as plain values.

A `ServerRecord` is immutable and compares by value, so the watch can tell a changed server
from one that merely showed up again in an overlapping `changes-since` window.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from . import naming

__all__ = ["FlavorRecord", "ServerRecord", "parse_time"]

# Statuses a server leaves on its own; anything else is where it rests.
BUSY_STATUSES = frozenset(
    {
        "BUILD",
        "REBUILD",
        "RESIZE",
        "REVERT_RESIZE",
        "MIGRATING",
        "REBOOT",
        "HARD_REBOOT",
        "PASSWORD",
    }
)
GONE_STATUSES = frozenset({"DELETED", "SOFT_DELETED"})


def parse_time(text: Any) -> datetime | None:
    """A Nova timestamp ("2025-01-01T10:00:00Z", "2025-01-01T10:00:00.000000", ...) as an aware
    datetime; None when absent or unreadable."""
    if not text or not isinstance(text, str):
        return None
    value = text.strip().replace("Z", "+00:00")
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _ips(addresses: Any) -> tuple[str, ...]:
    """The server's addresses, fixed before floating, IPv4 before IPv6 within each."""
    found: list[tuple[int, int, str]] = []
    if isinstance(addresses, dict):
        for entries in addresses.values():
            for entry in entries or ():
                text = str(entry.get("addr") or "")
                try:
                    ip = ipaddress.ip_address(text)
                except ValueError:
                    continue
                if ip.is_loopback or ip.is_link_local or ip.is_unspecified:
                    continue
                floating = 1 if entry.get("OS-EXT-IPS:type") == "floating" else 0
                found.append((floating, ip.version, text))
    ordered: list[str] = []
    for _, _, text in sorted(found, key=lambda t: (t[0], t[1])):
        if text not in ordered:
            ordered.append(text)
    return tuple(ordered)


@dataclass(frozen=True)
class FlavorRecord:
    """A flavor: its name and size."""

    id: str
    name: str
    vcpus: int
    ram_mib: int
    disk_gib: int
    public: bool = True

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FlavorRecord:
        return cls(
            id=str(data["id"]),
            name=str(data.get("name") or data["id"]),
            vcpus=int(data.get("vcpus") or 0),
            ram_mib=int(data.get("ram") or 0),
            disk_gib=int(data.get("disk") or 0),
            public=bool(data.get("os-flavor-access:is_public", True)),
        )


@dataclass(frozen=True)
class ServerRecord:
    """One Nova server, as last listed."""

    id: str
    name: str
    status: str
    task_state: str | None
    vm_state: str | None
    host: str | None
    metadata: dict[str, str] = field(hash=False)
    tags: tuple[str, ...]
    ips: tuple[str, ...]
    flavor_name: str
    vcpus: int
    ram_mib: int
    image_id: str
    fault: dict[str, Any] | None = field(hash=False)
    launched_at: datetime | None
    created: datetime | None
    updated: datetime | None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ServerRecord:
        flavor = data.get("flavor") or {}
        image = data.get("image") or {}
        tags = data.get("tags") or []
        return cls(
            id=str(data["id"]),
            name=str(data.get("name") or ""),
            status=str(data.get("status") or "UNKNOWN").upper(),
            task_state=data.get("OS-EXT-STS:task_state") or None,
            vm_state=data.get("OS-EXT-STS:vm_state") or None,
            host=data.get("OS-EXT-SRV-ATTR:host") or None,
            metadata={str(k): str(v) for k, v in (data.get("metadata") or {}).items()},
            tags=tuple(sorted(str(t) for t in tags)),
            ips=_ips(data.get("addresses")),
            flavor_name=str(flavor.get("original_name") or flavor.get("id") or ""),
            vcpus=int(flavor.get("vcpus") or 0),
            ram_mib=int(flavor.get("ram") or 0),
            image_id=str(image.get("id") or "") if isinstance(image, dict) else "",
            fault=data.get("fault") or None,
            launched_at=parse_time(data.get("OS-SRV-USG:launched_at")),
            created=parse_time(data.get("created")),
            updated=parse_time(data.get("updated")),
        )

    # -- identity and pod ----------------------------------------------------------------
    @property
    def identity(self) -> str:
        """The VM identity written at creation; empty for a server vmlet did not make."""
        return self.metadata.get(naming.META_IDENTITY, "")

    @property
    def pod_key(self) -> tuple[str, str] | None:
        """(namespace, name) of the pod running the server; None while it has none."""
        namespace = self.metadata.get(naming.META_NAMESPACE, "")
        name = self.metadata.get(naming.META_POD, "")
        return (namespace, name) if namespace and name else None

    @property
    def owner_namespace(self) -> str:
        """The namespace the server belongs to: as recorded, else its pod's (older servers)."""
        return self.metadata.get(naming.META_OWNER_NAMESPACE, "") or self.metadata.get(
            naming.META_NAMESPACE, ""
        )

    @property
    def keep(self) -> bool:
        """Whether a VirtualMachine owns it (stop, not delete, with its pod)."""
        return self.metadata.get(naming.META_KEEP, "") == "true"

    @property
    def exit_code(self) -> int | None:
        """The exit code StopPod recorded on the server (137: killed); None when it has none."""
        try:
            return int(self.metadata[naming.META_EXIT_CODE])
        except (KeyError, ValueError):
            return None

    # -- state ----------------------------------------------------------------------------
    @property
    def gone(self) -> bool:
        """Deleted in Nova."""
        return self.status in GONE_STATUSES

    @property
    def deleting(self) -> bool:
        """Deleted, or on its way (a delete can still fail and leave it as it was)."""
        return self.gone or self.task_state == "deleting"

    @property
    def busy(self) -> bool:
        """Nova is doing something to it; it will change on its own."""
        return self.status in BUSY_STATUSES or self.task_state is not None

    @property
    def settled(self) -> bool:
        """At rest: an action may be asked for now."""
        return not self.busy and not self.gone

    @property
    def sort_key(self) -> tuple[datetime, str]:
        """Oldest first: the survivor when two servers claim one identity."""
        return (self.created or datetime.max.replace(tzinfo=UTC), self.id)
