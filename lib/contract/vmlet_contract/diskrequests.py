"""Checks every provider makes of a CreateDisk request before it asks its IaaS for anything."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from .errors import InvalidArgument

__all__ = ["check_create_disk"]


def check_create_disk(
    name: str, size_bytes: int, parameters: Mapping[str, str], known: Collection[str], who: str
) -> None:
    """Raises InvalidArgument unless the disk has a name, a positive size and only StorageClass
    parameters in `known`; `who` names the provider in the message ("the vSphere provider")."""
    if not name:
        raise InvalidArgument("a disk needs a name")
    if size_bytes <= 0:
        raise InvalidArgument(f"disk {name}: the size must be positive, not {size_bytes}")
    unknown = sorted(set(parameters) - set(known))
    if unknown:
        raise InvalidArgument(
            f"disk {name}: unknown StorageClass parameters {unknown}; {who} takes {list(known)}"
        )
