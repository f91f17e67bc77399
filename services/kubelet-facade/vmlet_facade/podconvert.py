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
from vmlet_facade.containerstatus import (
    container_statuses,
    init_container_statuses,
    k8s_time,
    now,
)
from vmlet_facade.expansion import expand
from vmlet_facade.kube.objects import Obj
from vmlet_facade.ownership import Ownership
from vmlet_facade.quantity import cpu_millis, memory_bytes
from vmlet_facade.references import Resolved

__all__ = [
    "PROGRESS_CONDITION",
    "same_intent",
    "spec_fingerprint",
    "status_to_k8s",
    "to_provider_pod",
    "with_host_ip",
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


def _container(c: Obj, resolved: Resolved) -> pb.Container:
    env = resolved.env.get(c["name"], [])
    values = dict(env)  # the last definition of a name wins, as in the container
    return pb.Container(
        name=c["name"], image=c.get("image", ""),
        command=[expand(str(a), values) for a in c.get("command") or []],
        args=[expand(str(a), values) for a in c.get("args") or []],
        env=[pb.EnvVar(name=k, value=v) for k, v in env],
        resources=_resources(c),
        ports=[pb.ContainerPort(name=p.get("name", ""), container_port=p["containerPort"],
                                protocol=p.get("protocol", "TCP"))
               for p in c.get("ports") or []],
        volume_mounts=[pb.VolumeMount(name=m["name"], mount_path=m["mountPath"],
                                      read_only=bool(m.get("readOnly", False)))
                       for m in c.get("volumeMounts") or []],
    )


def to_provider_pod(pod: Obj, resolved: Resolved, ownership: Ownership) -> pb.Pod:
    """The contract's Pod for ``pod`` with its references resolved; identity and keep_on_delete
    are ``ownership``'s (derived by ``vmlet_facade.ownership``, never read from the pod)."""
    meta, spec = pod["metadata"], pod.get("spec", {})
    containers = [_container(c, resolved) for c in spec.get("containers", [])]
    init_containers = [_container(c, resolved) for c in spec.get("initContainers") or []]
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
        init_containers=init_containers,
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


def _one_per_family(ips: list[str]) -> list[str]:
    """The primary IP and the first of the other family: the apiserver refuses a pod whose
    podIPs hold two addresses of one family (a VM with two NICs has two IPv4 addresses)."""
    out: list[str] = []
    for ip in ips:
        if all((":" in ip) != (":" in kept) for kept in out):
            out.append(ip)
    return out


def _condition(ctype: str, value: str, prev: Obj | None, given_at: str | None, reason: str,
               message: str) -> Obj:
    """A pod condition that keeps ``prev``'s transition time while its status does not change."""
    if given_at is not None:
        changed = given_at
    elif prev and prev.get("status") == value and prev.get("lastTransitionTime"):
        changed = prev["lastTransitionTime"]
    else:
        changed = now()
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


def _initialized(inits: list[Obj]) -> tuple[str, str, str]:
    """The Initialized condition: True once every init container terminated."""
    waiting = [c["name"] for c in inits if "terminated" not in c["state"]]
    if not waiting:
        return "True", "", ""
    return ("False", "ContainersNotInitialized",
            f"containers with incomplete status: [{' '.join(waiting)}]")


def _pod_conditions(status: pb.PodStatus, phase: str, containers: list[Obj],
                    old: dict[str, Obj], inits: list[Obj]) -> list[Obj]:
    """The pod's Kubernetes conditions, from the facts of ``status``; ``old`` are the pod's
    current conditions by type, whose transition times are kept while a status holds.

    A provider older than `PodStatus.ready` may send its own conditions (the deprecated
    `PodStatus.conditions`): those it sends are taken as they are, the rest derived.
    """
    ready, reason, message = _readiness(status, phase, containers)
    derived = {
        "PodScheduled": ("True", "", ""),
        "Initialized": _initialized(inits),
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
        given_at = k8s_time(c.last_transition_time) if c.HasField("last_transition_time") else None
        out.append(_condition(ctype, _COND.get(c.status, "Unknown"), old.get(ctype), given_at,
                              c.reason, c.message))
    return out


def same_intent(old: Obj, new: Obj) -> bool:
    """Whether ``new`` asks the provider for nothing ``old`` did not (its status aside)."""
    return (spec_fingerprint(old) == spec_fingerprint(new)
            and old["metadata"].get("deletionTimestamp") == new["metadata"].get("deletionTimestamp")
            and old.get("spec", {}).get("nodeName") == new.get("spec", {}).get("nodeName"))


def with_host_ip(pod: Obj, host: str) -> Obj:
    """``pod`` with ``host`` as its hostIP when it has none yet (what a provider reads)."""
    if not host or pod.get("status", {}).get("hostIP"):
        return pod
    return {**pod, "status": {**pod.get("status", {}), "hostIP": host}}


def status_to_k8s(status: pb.PodStatus, pod: Obj, host_ip: str,
                  not_started: frozenset[str] = frozenset(), last_state: Obj | None = None) -> Obj:
    """A pod status for the apiserver: the provider's view, completed as a kubelet would;
    ``last_state``, when given, is every container's lastState (the run before a restart).

    The pod conditions are built here alone (`_pod_conditions`), and a condition keeps its
    lastTransitionTime while its status does not change.
    """
    old = pod.get("status") or {}
    old_conds = {c["type"]: c for c in old.get("conditions") or []}
    phase = _PHASES.get(status.phase, "Pending")
    containers = container_statuses(status, pod.get("spec", {}).get("containers", []), phase,
                                    old.get("containerStatuses") or [], not_started, last_state)
    inits = init_container_statuses(pod.get("spec", {}).get("initContainers") or [], containers,
                                    old.get("initContainerStatuses") or [])
    conditions = _pod_conditions(status, phase, containers, old_conds, inits)
    progress = _progress_condition(status, old_conds.get(PROGRESS_CONDITION))
    if progress is not None:
        conditions.append(progress)
    ips = _one_per_family(list(status.pod_ips) or ([status.pod_ip] if status.pod_ip else []))
    host = status.host_ip or host_ip
    out: Obj = {
        "phase": phase, "conditions": conditions, "containerStatuses": containers,
        **({"initContainerStatuses": inits} if inits else {}),
        "hostIP": host, "hostIPs": [{"ip": host}] if host else [],
        "podIP": ips[0] if ips else None, "podIPs": [{"ip": ip} for ip in ips] or None,
        "reason": status.reason or None, "message": status.message or None,
        "startTime": k8s_time(status.start_time) if status.HasField("start_time")
        else old.get("startTime") or now(),
    }
    # None becomes null in the merge patch, which clears what an earlier status set.
    return out
