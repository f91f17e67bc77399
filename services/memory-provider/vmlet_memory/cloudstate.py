"""The memory cloud as JSON-ready data and back: what --state-file keeps across restarts
(`statefile` writes and reads it)."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any, Final

from vmlet.provider.v1 import pod_pb2, virtual_machine_service_pb2

from .cloud import Cloud
from .disks import Disk
from .machines import LogLine, Machine, Power

__all__ = ["STATE_VERSION", "dump", "restore"]

STATE_VERSION: Final = 1


def dump(cloud: Cloud) -> dict[str, Any]:
    """Everything ``cloud`` needs to come back after a restart."""
    return {
        "version": STATE_VERSION,
        "machines": [
            {
                "identity": vm.identity,
                "uuid": vm.uuid,
                "node": vm.node,
                "ip": vm.ip,
                "created_at": vm.created_at.isoformat(),
                "namespace": vm.namespace,
                "keep": vm.keep,
                "power": vm.power.value,
                "started_at": vm.started_at.isoformat() if vm.started_at else None,
                "exited": vm.exited,
                "finished_at": vm.finished_at.isoformat() if vm.finished_at else None,
                "pod": _b64(vm.pod) if vm.pod is not None else None,
                "snapshots": [_b64(s) for s in vm.snapshots.values()],
                "log": [[line.time.isoformat(), line.text] for line in vm.log],
            }
            for vm in cloud.machines()
        ],
        "disks": [
            {
                "handle": d.handle,
                "name": d.name,
                "size_bytes": d.size_bytes,
                "parameters": d.parameters,
                "attached_to": d.attached_to,
            }
            for d in cloud.disks
        ],
    }


def restore(cloud: Cloud, state: dict[str, Any]) -> None:
    """Puts what `dump` saved into ``cloud`` (an empty one, on the event loop)."""
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"state version {state.get('version')!r} is not {STATE_VERSION}")
    for d in state.get("disks", []):
        cloud.disks.add(Disk(**d))
    for m in state.get("machines", []):
        vm = Machine(
            identity=m["identity"],
            uuid=m["uuid"],
            node=m["node"],
            ip=m["ip"],
            created_at=datetime.fromisoformat(m["created_at"]),
            namespace=m.get("namespace", ""),
            keep=bool(m.get("keep", False)),
            power=Power(m["power"]),
            started_at=datetime.fromisoformat(m["started_at"]) if m["started_at"] else None,
            exited=m.get("exited"),
            finished_at=datetime.fromisoformat(m["finished_at"]) if m.get("finished_at") else None,
        )
        if m["pod"] is not None:
            vm.pod = pod_pb2.Pod.FromString(base64.b64decode(m["pod"]))
        for raw in m["snapshots"]:
            snap = virtual_machine_service_pb2.Snapshot.FromString(base64.b64decode(raw))
            vm.snapshots[snap.id] = snap
        for when, text in m["log"]:
            vm.log_seq += 1
            vm.log.append(LogLine(vm.log_seq, datetime.fromisoformat(when), text))
        cloud.restore_machine(vm)


def _b64(message: Any) -> str:
    return base64.b64encode(message.SerializeToString(deterministic=True)).decode("ascii")
