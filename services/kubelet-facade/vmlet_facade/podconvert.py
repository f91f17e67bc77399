"""Pods across the boundary: a Kubernetes pod (JSON) to the contract's Pod, and the contract's
PodStatus back to a pod status the apiserver accepts.
"""

from __future__ import annotations

import datetime as dt
import json

from google.protobuf.timestamp_pb2 import Timestamp

from vmlet.provider.v1 import pod_pb2 as pb
from vmlet_api.names import NETWORKS_ANNOTATION, PREFIX
from vmlet_contract import progress as progresses
from vmlet_facade.kube.objects import Obj
from vmlet_facade.ownership import Ownership
from vmlet_facade.quantity import InvalidQuantity, cpu_millis, memory_bytes
from vmlet_facade.references import Resolved

__all__ = [
    "PROGRESS_CONDITION",
    "spec_fingerprint",
    "status_to_k8s",
    "to_provider_pod",
]

#: The pod condition that carries a provider's `Progress` to the VirtualMachine controller
#: (vmstate): status True while a step is under way, reason the value's CamelCase name. Absent
#: when the provider does not set progress (older than the field).
PROGRESS_CONDITION = f"{PREFIX}Progress"

_PHASES = {
    pb.POD_PHASE_PENDING: "Pending", pb.POD_PHASE_RUNNING: "Running",
    pb.POD_PHASE_SUCCEEDED: "Succeeded", pb.POD_PHASE_FAILED: "Failed",
    pb.POD_PHASE_UNKNOWN: "Unknown",
}
#: The reason a kubelet gives a pod that ended for not being ready.
_ENDED = {"Succeeded": "PodCompleted", "Failed": "PodFailed"}
_COND = {pb.CONDITION_STATUS_TRUE: "True", pb.CONDITION_STATUS_FALSE: "False",
         pb.CONDITION_STATUS_UNKNOWN: "Unknown"}


def _resources(container: Obj) -> pb.Resources:
    res = container.get("resources") or {}
    req, lim = res.get("requests") or {}, res.get("limits") or {}
    return pb.Resources(
        cpu_request_millis=cpu_millis(req["cpu"]) if "cpu" in req else 0,
        cpu_limit_millis=cpu_millis(lim["cpu"]) if "cpu" in lim else 0,
        memory_request_bytes=memory_bytes(req["memory"]) if "memory" in req else 0,
        memory_limit_bytes=memory_bytes(lim["memory"]) if "memory" in lim else 0,
    )


def _timestamp(text: str | None) -> Timestamp | None:
    if not text:
        return None
    ts = Timestamp()
    ts.FromDatetime(dt.datetime.fromisoformat(text.replace("Z", "+00:00")))
    return ts


def to_provider_pod(pod: Obj, resolved: Resolved, ownership: Ownership) -> pb.Pod:
    """The contract's Pod for ``pod`` with its references resolved; identity and keep_on_delete
    are ``ownership``'s (derived by ``vmlet_facade.ownership``, never read from the pod)."""
    meta, spec = pod["metadata"], pod.get("spec", {})
    containers = [
        pb.Container(
            name=c["name"], image=c.get("image", ""), command=c.get("command") or [],
            args=c.get("args") or [],
            env=[pb.EnvVar(name=k, value=v) for k, v in resolved.env.get(c["name"], [])],
            resources=_resources(c),
            ports=[pb.ContainerPort(name=p.get("name", ""), container_port=p["containerPort"],
                                    protocol=p.get("protocol", "TCP"))
                   for p in c.get("ports") or []],
            volume_mounts=[pb.VolumeMount(name=m["name"], mount_path=m["mountPath"],
                                          read_only=bool(m.get("readOnly", False)))
                           for m in c.get("volumeMounts") or []],
        )
        for c in spec.get("containers", [])
    ]
    volumes = []
    for v in spec.get("volumes") or []:
        if v["name"] in resolved.files:
            volumes.append(pb.Volume(name=v["name"],
                                     files=pb.FilesSource(files=resolved.files[v["name"]])))
        elif "persistentVolumeClaim" in v:
            claim = v["persistentVolumeClaim"]
            volumes.append(pb.Volume(name=v["name"], disk=pb.DiskSource(
                claim_name=claim["claimName"], volume_handle=resolved.disks.get(v["name"], ""),
                read_only=bool(claim.get("readOnly", False)))))
        else:
            limit = (v.get("emptyDir") or {}).get("sizeLimit")
            volumes.append(pb.Volume(name=v["name"], scratch=pb.ScratchSource(
                size_limit_bytes=memory_bytes(limit) if limit else 0)))
    out = pb.Pod(
        ref=pb.PodRef(namespace=meta["namespace"], name=meta["name"], uid=meta["uid"]),
        labels=meta.get("labels") or {}, annotations=meta.get("annotations") or {},
        node_name=spec.get("nodeName", ""), identity=ownership.identity,
        keep_on_delete=ownership.keep_on_delete, containers=containers, volumes=volumes,
        user_data=resolved.user_data,
        networks=[pb.NetworkAttachment(name=n.strip()) for n in (meta.get("annotations") or {})
                  .get(NETWORKS_ANNOTATION, "").split(",") if n.strip()],
    )
    created = _timestamp(meta.get("creationTimestamp"))
    if created is not None:
        out.creation_time.CopyFrom(created)
    return out


def spec_fingerprint(pod: Obj) -> str:
    """What, when it changes, a provider must hear of through UpdatePod."""
    spec = pod.get("spec", {})
    meta = pod["metadata"]
    relevant = {
        "containers": [{k: c.get(k) for k in ("image", "resources", "env", "ports")}
                       for c in spec.get("containers", [])],
        "volumes": spec.get("volumes"),
        "annotations": {k: v for k, v in (meta.get("annotations") or {}).items()
                        if k.startswith(PREFIX)},
    }
    return json.dumps(relevant, sort_keys=True, separators=(",", ":"))


def _ts(ts: Timestamp) -> str:
    return ts.ToDatetime(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _one_per_family(ips: list[str]) -> list[str]:
    """The primary IP and the first of the other family: the apiserver refuses a pod whose
    podIPs hold two addresses of one family (a VM with two NICs has two IPv4 addresses)."""
    out: list[str] = []
    for ip in ips:
        if all((":" in ip) != (":" in kept) for kept in out):
            out.append(ip)
    return out


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


def _condition(ctype: str, value: str, prev: Obj | None, given_at: str | None, reason: str,
               message: str) -> Obj:
    """A pod condition that keeps ``prev``'s transition time while its status does not change."""
    if given_at is not None:
        changed = given_at
    elif prev and prev.get("status") == value and prev.get("lastTransitionTime"):
        changed = prev["lastTransitionTime"]
    else:
        changed = _now()
    cond: Obj = {"type": ctype, "status": value, "lastTransitionTime": changed,
                 "lastProbeTime": None}
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
    return cond


def _progress_condition(status: pb.PodStatus, prev: Obj | None) -> Obj | None:
    """The PROGRESS_CONDITION of ``status``; None when its progress is unset or unknown here."""
    name = progresses.name(status.progress)
    if not name:
        return None
    said = [cs.waiting.message for cs in status.container_statuses
            if cs.WhichOneof("state") == "waiting"]
    said += [status.message, status.not_ready_message]
    said += [c.message for c in status.conditions if c.type == "Ready"]  # an older provider
    value = "True" if status.progress in progresses.STEPS else "False"
    return _condition(PROGRESS_CONDITION, value, prev, None, name,
                      next((text for text in said if text), ""))


def _readiness(status: pb.PodStatus, phase: str, containers: list[Obj]) -> tuple[bool, str, str]:
    """(ready, reason, message) of the pod's Ready and ContainersReady conditions.

    Ready only while Running and the provider says so (`ready`); a provider older than that field
    is read by its containers' readiness. Not ready, the reason is the provider's own
    (`not_ready_reason`), else the one a kubelet gives for the phase.
    """
    if status.HasField("ready"):
        ready = status.ready and phase == "Running"
    else:
        ready = bool(containers) and all(c["ready"] for c in containers) and phase == "Running"
    if ready:
        return True, "", ""
    if status.not_ready_reason:
        return False, status.not_ready_reason, status.not_ready_message
    if phase in _ENDED:
        return False, _ENDED[phase], status.message
    return False, "ContainersNotReady", status.not_ready_message


def _pod_conditions(status: pb.PodStatus, phase: str, containers: list[Obj],
                    old: dict[str, Obj]) -> list[Obj]:
    """The pod's Kubernetes conditions, from the facts of ``status``; ``old`` are the pod's
    current conditions by type, whose transition times are kept while a status holds.

    A provider older than `PodStatus.ready` may send its own conditions (the deprecated
    `PodStatus.conditions`): those it sends are taken as they are, the rest derived.
    """
    ready, reason, message = _readiness(status, phase, containers)
    derived = {
        "PodScheduled": ("True", "", ""),
        "Initialized": ("True", "", ""),
        "ContainersReady": ("True" if ready else "False", reason, message),
        "Ready": ("True" if ready else "False", reason, message),
    }
    given = {} if status.HasField("ready") else {c.type: c for c in status.conditions}
    out = []
    for ctype in [*derived, *[t for t in given if t not in derived and t != PROGRESS_CONDITION]]:
        c = given.get(ctype)
        if c is None:
            value, why, text = derived[ctype]
            out.append(_condition(ctype, value, old.get(ctype), None, why, text))
            continue
        given_at = _ts(c.last_transition_time) if c.HasField("last_transition_time") else None
        out.append(_condition(ctype, _COND.get(c.status, "Unknown"), old.get(ctype), given_at,
                              c.reason, c.message))
    return out


def status_to_k8s(status: pb.PodStatus, pod: Obj, host_ip: str) -> Obj:
    """A pod status for the apiserver: the provider's view, completed as a kubelet would.

    The pod conditions are built here alone (`_pod_conditions`), and a condition keeps its
    lastTransitionTime while its status does not change.
    """
    old = pod.get("status") or {}
    old_conds = {c["type"]: c for c in old.get("conditions") or []}
    phase = _PHASES.get(status.phase, "Pending")
    containers = []
    spec_containers = {c["name"]: c for c in pod.get("spec", {}).get("containers", [])}
    spec_images = {name: c.get("image", "") for name, c in spec_containers.items()}
    for cs in status.container_statuses:
        state: Obj
        which = cs.WhichOneof("state")
        if which == "running":
            state = {"running": {"startedAt": _ts(cs.running.started_at)
                                 if cs.running.HasField("started_at") else _now()}}
        elif which == "terminated":
            t = cs.terminated
            state = {"terminated": {"exitCode": t.exit_code, "reason": t.reason or "Completed",
                                    **({"message": t.message} if t.message else {}),
                                    **({"startedAt": _ts(t.started_at)}
                                       if t.HasField("started_at") else {}),
                                    "finishedAt": _ts(t.finished_at)
                                    if t.HasField("finished_at") else _now()}}
        else:
            w = cs.waiting
            state = {"waiting": {"reason": w.reason or "ContainerCreating",
                                 **({"message": w.message} if w.message else {})}}
        containers.append({
            "name": cs.name, "image": cs.image or spec_images.get(cs.name, ""),
            "imageID": cs.image_id, "containerID": cs.container_id, "ready": cs.ready,
            "restartCount": cs.restart_count, "started": which == "running", "state": state,
            # What the VM has: reported as a resize-capable kubelet does, which is what lets
            # the apiserver accept in-place resizes (pods/resize) of VM pods.
            "resources": _reported_resources(
                spec_containers.get(cs.name, {}).get("resources") or {}, status),
        })
    if not containers:
        for name, image in spec_images.items():
            running = phase == "Running"
            containers.append({
                "name": name, "image": image, "imageID": "", "ready": running,
                "restartCount": 0, "started": running,
                "resources": spec_containers[name].get("resources") or {},
                "state": {"running": {"startedAt": _now()}} if running
                else {"waiting": {"reason": status.reason or "ContainerCreating"}},
            })
    conditions = _pod_conditions(status, phase, containers, old_conds)
    progress = _progress_condition(status, old_conds.get(PROGRESS_CONDITION))
    if progress is not None:
        conditions.append(progress)
    ips = _one_per_family(list(status.pod_ips) or ([status.pod_ip] if status.pod_ip else []))
    host = status.host_ip or host_ip
    out: Obj = {
        "phase": phase, "conditions": conditions, "containerStatuses": containers,
        "hostIP": host, "hostIPs": [{"ip": host}] if host else [],
        "podIP": ips[0] if ips else None, "podIPs": [{"ip": ip} for ip in ips] or None,
        "reason": status.reason or None, "message": status.message or None,
        "startTime": _ts(status.start_time) if status.HasField("start_time")
        else old.get("startTime") or _now(),
    }
    # None becomes null in the merge patch, which clears what an earlier status set.
    return out
