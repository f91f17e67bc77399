"""A pod's containerStatuses as a kubelet writes them, from the provider's ContainerStatus list.

One entry per container of the pod's spec, in its order, with the container's name and image,
whatever the provider sent: a status the provider names is that container's; one without a name
(the facade's own, for a failed create) is every container's; a container it does not mention
gets the state the pod's phase implies. restartCount never goes back, and when it grows the
state the container had becomes its lastState, as a kubelet keeps the previous run.
"""

from __future__ import annotations

import datetime as dt

from google.protobuf.timestamp_pb2 import Timestamp

from vmlet.provider.v1 import pod_pb2 as pb
from vmlet_facade.kube.objects import Obj
from vmlet_facade.quantity import InvalidQuantity, cpu_millis, memory_bytes

__all__ = [
    "HANDED_TO_GUEST",
    "REFUSED_EXIT_CODE",
    "container_statuses",
    "init_container_statuses",
    "k8s_time",
    "now",
]

#: The exit code of a container that could not be started (a kubelet's StartError).
REFUSED_EXIT_CODE = 128
#: The reason of an init container whose commands went to the VM's first boot (cloud-init).
HANDED_TO_GUEST = "HandedToGuest"


def k8s_time(ts: Timestamp) -> str:
    """``ts`` as Kubernetes writes times (RFC 3339, seconds, UTC)."""
    return ts.ToDatetime(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now() -> str:
    """The time now as Kubernetes writes times."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _cpu_text(millis: int, said: object) -> object:
    """``millis`` as a CPU quantity; ``said`` (the spec's own spelling) when it is that much."""
    try:
        if said is not None and cpu_millis(str(said)) == millis:
            return said
    except InvalidQuantity:
        pass
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def _memory_text(size: int, said: object) -> object:
    """``size`` bytes as a memory quantity; ``said`` (the spec's own spelling) when it is that
    much."""
    try:
        if said is not None and memory_bytes(str(said)) == size:
            return said
    except InvalidQuantity:
        pass
    for suffix, unit in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)


def _reported_resources(spec: Obj, status: pb.PodStatus) -> Obj:
    """A container's resources in its status: the spec's, with the size the provider read from
    the IaaS (``status.resources``) as its limits, and no request above them. The spec's when
    the provider did not say."""
    if not status.HasField("resources"):
        return spec
    seen = status.resources
    limits = dict(spec.get("limits") or {})
    limits["cpu"] = _cpu_text(seen.cpu_millis, limits.get("cpu"))
    limits["memory"] = _memory_text(seen.memory_bytes, limits.get("memory"))
    requests = dict(spec.get("requests") or {})
    try:
        if "cpu" in requests and cpu_millis(str(requests["cpu"])) > seen.cpu_millis:
            requests["cpu"] = limits["cpu"]
        if "memory" in requests and memory_bytes(str(requests["memory"])) > seen.memory_bytes:
            requests["memory"] = limits["memory"]
    except InvalidQuantity:
        return spec
    return {**spec, "limits": limits, **({"requests": requests} if requests else {})}


def _state(cs: pb.ContainerStatus) -> Obj:
    which = cs.WhichOneof("state")
    if which == "running":
        return {"running": {"startedAt": k8s_time(cs.running.started_at)
                            if cs.running.HasField("started_at") else now()}}
    if which == "terminated":
        t = cs.terminated
        return {"terminated": {
            "exitCode": t.exit_code, "reason": t.reason or "Completed",
            **({"message": t.message} if t.message else {}),
            **({"startedAt": k8s_time(t.started_at)} if t.HasField("started_at") else {}),
            "finishedAt": k8s_time(t.finished_at) if t.HasField("finished_at") else now()}}
    w = cs.waiting
    return {"waiting": {"reason": w.reason or "ContainerCreating",
                        **({"message": w.message} if w.message else {})}}


def _implied_state(status: pb.PodStatus, phase: str, old: Obj | None) -> Obj:
    """The state of a container the provider said nothing of: what the pod's phase implies."""
    if phase == "Running":
        kept = (old or {}).get("state", {}).get("running")
        return {"running": kept or {"startedAt": now()}}
    if phase in ("Succeeded", "Failed"):
        code = 0 if phase == "Succeeded" else REFUSED_EXIT_CODE
        return {"terminated": {"exitCode": code,
                               "reason": status.reason or ("Completed" if code == 0 else "Error"),
                               **({"message": status.message} if status.message else {}),
                               "finishedAt": now()}}
    return {"waiting": {"reason": status.reason or "ContainerCreating"}}


def _last_state(old: Obj | None, restarts: int) -> Obj:
    """The container's lastState: the state it had before its restart count last grew."""
    if old is None:
        return {}
    if restarts > int(old.get("restartCount", 0)):
        before = old.get("state") or {}
        if "terminated" in before:
            return {"terminated": before["terminated"]}
        if "running" in before:
            return {"terminated": {"exitCode": 0, "reason": "Completed",
                                   "startedAt": before["running"].get("startedAt"),
                                   "finishedAt": now()}}
    return dict(old.get("lastState") or {})


def container_statuses(status: pb.PodStatus, spec_containers: list[Obj], phase: str,
                       old: list[Obj], not_started: frozenset[str] = frozenset(),
                       last_state: Obj | None = None) -> list[Obj]:
    """The containerStatuses of a pod whose spec has ``spec_containers``, from ``status`` (the
    provider's, or the facade's own); ``old`` are the statuses the pod has now, the containers
    in ``not_started`` have a startup probe that has not succeeded yet, and ``last_state`` is
    their lastState when the facade knows it (a VM it restarted)."""
    named = {cs.name: cs for cs in status.container_statuses if cs.name}
    shared = next((cs for cs in status.container_statuses if not cs.name), None)
    before = {c.get("name"): c for c in old}
    out: list[Obj] = []
    for container in spec_containers:
        name = container["name"]
        prev = before.get(name)
        cs = named.get(name, shared)
        restarts = max(cs.restart_count if cs is not None else 0,
                       int((prev or {}).get("restartCount", 0)))
        state = _state(cs) if cs is not None else _implied_state(status, phase, prev)
        running = "running" in state
        ready = (cs.ready if cs is not None else False) and running
        if cs is None:
            ready = running and (not status.HasField("ready") or status.ready)
        out.append({
            "name": name,
            "image": (cs.image if cs is not None and cs.image else container.get("image", "")),
            "imageID": cs.image_id if cs is not None else "",
            "containerID": cs.container_id if cs is not None else "",
            "ready": ready, "started": running and name not in not_started,
            "restartCount": restarts,
            "state": state,
            "lastState": last_state if last_state is not None else _last_state(prev, restarts),
            # What the VM has: reported as a resize-capable kubelet does, which is what lets
            # the apiserver accept in-place resizes (pods/resize) of VM pods.
            "resources": _reported_resources(container.get("resources") or {}, status),
        })
    return out


def _started_at(containers: list[Obj]) -> str | None:
    """When the pod's VM first ran, as its containers' states say; None if it never ran."""
    for container in containers:
        state = container.get("state") or {}
        since = (state.get("running") or state.get("terminated") or {}).get("startedAt")
        if since:
            return str(since)
    return None


def init_container_statuses(spec_inits: list[Obj], containers: list[Obj],
                            old: list[Obj]) -> list[Obj]:
    """The initContainerStatuses of a pod whose spec has ``spec_inits``, given its
    ``containers``' statuses (just built) and the init statuses it has now (``old``).

    An init container's commands run in the VM at its first boot (cloud-init runcmd), and no
    guest reports back: until the VM first runs each waits (``PodInitializing``); from then on
    each is terminated with exit code 0, reason ``HandedToGuest``, for good (cloud-init runs
    them once)."""
    before = {c.get("name"): c for c in old}
    since = _started_at(containers)
    out: list[Obj] = []
    for container in spec_inits:
        name = container["name"]
        kept = (before.get(name) or {}).get("state", {}).get("terminated")
        if kept is not None:
            state: Obj = {"terminated": kept}
        elif since is not None:
            state = {"terminated": {
                "exitCode": 0, "reason": HANDED_TO_GUEST,
                "message": "run at the VM's first boot (cloud-init runcmd); the guest does "
                           "not report how it ended",
                "startedAt": since, "finishedAt": since}}
        else:
            state = {"waiting": {"reason": "PodInitializing"}}
        out.append({"name": name, "image": container.get("image", ""), "imageID": "",
                    "ready": "terminated" in state, "started": False, "restartCount": 0,
                    "state": state, "lastState": {}})
    return out
