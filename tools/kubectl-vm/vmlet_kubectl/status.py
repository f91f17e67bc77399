"""`kubectl vm status NAME`: the VM at a glance, in the manner of `kubectl describe`.

State, power switch, node, addresses and size first; then the conditions, the VM's backups,
restores and migrations, and its latest events. What the user may not list is left out rather
than failing the whole view.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from vmlet_api.names import MIGRATION_ANNOTATION, STATE_PENDING
from vmlet_kubectl.api import KubectlError, Obj
from vmlet_kubectl.session import BACKUP, MIGRATION, RESTORE, VM, Session
from vmlet_kubectl.units import age

__all__ = ["render_status", "show_status", "table"]

LAST_EVENTS = 10


def table(rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    """Rows as aligned columns, the last column not padded."""
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return [(indent + "   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False))
             + ("   " if len(row) > 1 else "") + row[-1]).rstrip() for row in rows]


def _age(timestamp: object, now: dt.datetime) -> str:
    return age(str(timestamp) if timestamp else None, now)


def _event_time(event: Obj) -> str:
    return str(event.get("lastTimestamp") or event.get("eventTime")
               or event.get("firstTimestamp") or event["metadata"].get("creationTimestamp") or "")


def _event_order(event: Obj) -> tuple[str, int]:
    # Timestamps have whole seconds; within one, the apiserver's write order.
    version = str(event["metadata"].get("resourceVersion") or "")
    return _event_time(event), int(version) if version.isdigit() else 0


def render_status(vm: Obj, backups: list[Obj], restores: list[Obj], migrations: list[Obj],
                  events: list[Obj], now: dt.datetime | None = None) -> list[str]:
    """The status view's lines."""
    now = now or dt.datetime.now(dt.UTC)
    meta, spec, status = vm["metadata"], vm.get("spec") or {}, vm.get("status") or {}
    generation = int(meta.get("generation") or 1)
    observed = int(status.get("observedGeneration") or 0)
    state = str(status.get("state") or "<none>")
    if observed < generation:
        state += (f" (status is for generation {observed or 'none'} of {generation}: "
                  "the controller has not caught up)")
    replicas = int(spec.get("replicas", 1))
    fields = [
        ("Name", meta["name"]),
        ("Namespace", meta.get("namespace", "")),
        ("State", state),
        ("Power", f"{'on' if replicas else 'off'} (spec.replicas={replicas})"),
        ("Node", status.get("nodeName") or "<none>"),
        ("Addresses", ", ".join(status.get("addresses") or []) or "<none>"),
        ("CPU", str(spec.get("cpu", "<none>"))
         + (f" (status: {status['cpu']})" if "cpu" in status
            and str(status["cpu"]) != str(spec.get("cpu")) else "")),
        ("Memory", str(spec.get("memory", "<none>"))
         + (f" (status: {status['memory']})" if "memory" in status
            and str(status["memory"]) != str(spec.get("memory")) else "")),
        ("Provider", spec.get("provider", "<none>")),
        ("Image", spec.get("image", "<none>")),
        ("Pod", status.get("podName") or "<none>"),
        ("Provider ID", status.get("providerID") or "<none>"),
        ("Age", _age(meta.get("creationTimestamp"), now)),
    ]
    migrating = (meta.get("annotations") or {}).get(MIGRATION_ANNOTATION)
    if migrating:
        fields.append(("Migration", migrating))
    width = max(len(k) for k, _ in fields) + 2
    lines = [f"{k + ':':<{width}}{v}" for k, v in fields]

    lines.append("Conditions:")
    conds = status.get("conditions") or []
    lines += table([["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"]] + [
        [str(c.get("type", "")), str(c.get("status", "")), str(c.get("reason", "")),
         _age(c.get("lastTransitionTime"), now), str(c.get("message", ""))]
        for c in conds]) if conds else ["  <none>"]

    lines.append("Backups:")
    lines += table([["NAME", "STATE", "SNAPSHOT", "COMPLETED", "AGE"]] + [
        [b["metadata"]["name"], str((b.get("status") or {}).get("state") or STATE_PENDING),
         str((b.get("status") or {}).get("snapshotID") or "-"),
         _age((b.get("status") or {}).get("completionTime"), now)
         if (b.get("status") or {}).get("completionTime") else "-",
         _age(b["metadata"].get("creationTimestamp"), now)]
        for b in sorted(backups, key=lambda o: str(o["metadata"].get("creationTimestamp")))
    ]) if backups else ["  <none>"]

    if restores:
        lines.append("Restores:")
        lines += table([["NAME", "BACKUP", "STATE", "AGE"]] + [
            [r["metadata"]["name"], str((r.get("spec") or {}).get("backupName", "")),
             str((r.get("status") or {}).get("state") or STATE_PENDING),
             _age(r["metadata"].get("creationTimestamp"), now)]
            for r in sorted(restores, key=lambda o: str(o["metadata"].get("creationTimestamp")))])
    if migrations:
        lines.append("Migrations:")
        lines += table([["NAME", "STATE", "SOURCE", "TARGET", "AGE"]] + [
            [m["metadata"]["name"], str((m.get("status") or {}).get("state") or STATE_PENDING),
             str((m.get("status") or {}).get("sourceNode") or "-"),
             str((m.get("status") or {}).get("targetNode")
                 or (m.get("spec") or {}).get("targetNode") or "-"),
             _age(m["metadata"].get("creationTimestamp"), now)]
            for m in sorted(migrations,
                            key=lambda o: str(o["metadata"].get("creationTimestamp")))])

    recent = sorted(events, key=_event_order)[-LAST_EVENTS:]
    lines.append(f"Events (last {LAST_EVENTS}):" if len(events) > LAST_EVENTS else "Events:")
    lines += table([["AGE", "TYPE", "REASON", "MESSAGE"]] + [
        [_age(_event_time(e), now) + (f" (x{e['count']})" if int(e.get("count") or 1) > 1
                                       else ""),
         str(e.get("type", "")), str(e.get("reason", "")), str(e.get("message", "")).strip()]
        for e in recent]) if recent else ["  <none>"]
    return lines


def _listed(session: Session, resource: str, field_selector: str | None = None) -> list[Obj]:
    try:
        return session.api.list(resource, field_selector)
    except KubectlError:
        return []


def show_status(session: Session, name: str) -> None:
    vm = session.get(VM, name)
    backups = [b for b in _listed(session, BACKUP)
               if (b.get("spec") or {}).get("vmName") == name]
    names = {b["metadata"]["name"] for b in backups}
    restores = [r for r in _listed(session, RESTORE)
                if (r.get("spec") or {}).get("backupName") in names
                or (r.get("status") or {}).get("vmName") == name]
    migrations = [m for m in _listed(session, MIGRATION)
                  if (m.get("spec") or {}).get("vmName") == name]
    events = _listed(session, "events", f"involvedObject.uid={vm['metadata']['uid']}")
    for line in render_status(vm, backups, restores, migrations, events):
        session.say(line)
