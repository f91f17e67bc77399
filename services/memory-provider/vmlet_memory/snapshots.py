"""Snapshots of a memory machine, by name: nothing is captured, each is recorded in the
machine's log, and a name taken twice gives the first snapshot."""

from __future__ import annotations

import uuid

from vmlet.provider.v1 import virtual_machine_service_pb2
from vmlet_contract import InvalidArgument, NotFound, podstatus

from .machines import Machine

__all__ = ["drop", "revert", "take"]


def take(vm: Machine, name: str, description: str) -> virtual_machine_service_pb2.Snapshot:
    """Snapshots ``vm``; the same name again returns the first snapshot."""
    if not name:
        raise InvalidArgument("a snapshot needs a name")
    for snap in vm.snapshots.values():
        if snap.name == name:
            return snap
    snap = virtual_machine_service_pb2.Snapshot(
        id=f"memory-snap-{uuid.uuid4()}",
        name=name,
        create_time=podstatus.timestamp(),
        kind="memory-snapshot",
        identity=vm.identity,
        description=description,
    )
    vm.snapshots[snap.id] = snap
    vm.record(f"snapshot {name} taken" + (f": {description}" if description else ""))
    return snap


def revert(vm: Machine, snapshot_id: str) -> None:
    """Puts ``vm`` back to a snapshot (its power state is kept); NotFound for an unknown one."""
    snap = vm.snapshots.get(snapshot_id)
    if snap is None:
        raise NotFound(f"VM {vm.identity} has no snapshot {snapshot_id}")
    vm.record(f"reverted to snapshot {snap.name}")


def drop(vm: Machine, snapshot_id: str) -> bool:
    """Removes a snapshot of ``vm``; False when it has none of that ID."""
    if vm.snapshots.pop(snapshot_id, None) is None:
        return False
    vm.record(f"snapshot {snapshot_id} deleted")
    return True
