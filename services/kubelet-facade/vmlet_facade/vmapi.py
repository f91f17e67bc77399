"""The VirtualMachine API (vmlet.io/v1alpha1): the VM pod a VirtualMachine asks for, and the
paths and condition helpers the cluster controllers share. The names themselves are
`vmlet_api.names`; the ones below are re-exported for the controllers that import them from here.
"""

from __future__ import annotations

import datetime as dt
from typing import cast

from vmlet_api import names
from vmlet_api.names import (
    API_VERSION,
    GROUP,
    MIGRATION_ANNOTATION,
    MIGRATION_SOURCE_ANNOTATION,
    MIGRATION_TARGET_ANNOTATION,
    OPERATION_ANNOTATION,
    SNAPSHOT_NAME_ANNOTATION,
    TARGET_IDENTITY_ANNOTATION,
    VERSION,
    VM_LABEL,
    VM_UID_LABEL,
)
from vmlet_facade.kube.client import KubeClient
from vmlet_facade.kube.informer import key_of
from vmlet_facade.kube.objects import (
    Condition,
    ConditionStatus,
    KubeObject,
    Obj,
    OwnerReference,
    Pod,
    VirtualMachine,
)
from vmlet_facade.kube.paths import api_path
from vmlet_facade.ownership import vm_pod_name

__all__ = [
    "API_VERSION",
    "FINALIZER",
    "GROUP",
    "MIGRATION_ANNOTATION",
    "MIGRATION_SOURCE_ANNOTATION",
    "MIGRATION_TARGET_ANNOTATION",
    "OPERATION_ANNOTATION",
    "SNAPSHOT_NAME_ANNOTATION",
    "TARGET_IDENTITY_ANNOTATION",
    "VERSION",
    "VM_LABEL",
    "VM_UID_LABEL",
    "lookup_vm",
    "now",
    "object_key",
    "owner_ref",
    "path",
    "provider_tolerations",
    "set_condition",
    "vm_pod",
]

#: Re-exported, like the names imported above, for the controllers that import it from here.
FINALIZER = names.DESTROY_VM_FINALIZER


def path(plural: str, namespace: str | None = None, name: str | None = None,
         sub: str | None = None) -> str:
    """The API path of a vmlet.io resource (all namespaces when ``namespace`` is None), from
    validated parts only (`api_path`: InvalidName for a namespace or name that is no name)."""
    return api_path(plural, name or None, namespace=namespace or None, group=GROUP,
                    version=VERSION, sub=sub)


def object_key(obj: KubeObject) -> str:
    """``namespace/name`` of a typed object, as its informer keys it (`key_of`)."""
    return key_of(cast(Obj, obj))


def now() -> str:
    """The time now, as Kubernetes writes it in a status."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(conditions: list[Condition], ctype: str, status: ConditionStatus, reason: str,
                  message: str, generation: int) -> list[Condition]:
    """``conditions`` with ``ctype`` set; lastTransitionTime moves only when status changes."""
    out = [c for c in conditions if c.get("type") != ctype]
    prev = next((c for c in conditions if c.get("type") == ctype), None)
    since = prev["lastTransitionTime"] if prev and prev.get("status") == status else now()
    out.append({"type": ctype, "status": status, "reason": reason, "message": message,
                "lastTransitionTime": since, "observedGeneration": generation})
    return sorted(out, key=lambda c: c["type"])


def owner_ref(obj: KubeObject, kind: str) -> OwnerReference:
    """A controller ownerReference to ``obj``, a vmlet.io object of ``kind``."""
    return {"apiVersion": API_VERSION, "kind": kind, "name": obj["metadata"]["name"],
            "uid": obj["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}


def provider_tolerations(provider: str) -> list[Obj]:
    """The provider's taint, and the node-problem taints forever: a VM is not evicted from an
    unreachable host; its VirtualMachine shows Unknown instead."""
    return [
        {"key": names.PROVIDER_TAINT, "operator": "Equal", "value": provider,
         "effect": "NoSchedule"},
        {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"},
        {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"},
    ]


def vm_pod(vm: VirtualMachine) -> Pod:
    """The pod that runs ``vm``: named after it and owned by it (its controller reference)."""
    meta, spec = vm["metadata"], vm["spec"]
    name, uid = meta["name"], meta["uid"]
    annotations: dict[str, str] = {}
    user_data = spec.get("userData")
    if user_data:
        annotations[names.USER_DATA_ANNOTATION] = user_data["secretName"]
        annotations[names.USER_DATA_KEY_ANNOTATION] = user_data.get("key",
                                                                    names.USER_DATA_KEY_DEFAULT)
    networks = [n["name"] for n in spec.get("networks") or []]
    if networks:
        annotations[names.NETWORKS_ANNOTATION] = ",".join(networks)
    ssh = (spec.get("access") or {}).get("sshSecretName")
    if ssh:
        annotations[names.SSH_SECRET_ANNOTATION] = ssh
    placement = spec.get("placement") or {}
    selector = {names.PROVIDER_LABEL: spec["provider"], **(placement.get("nodeSelector") or {})}
    if placement.get("nodeName"):
        selector["kubernetes.io/hostname"] = placement["nodeName"]
    affinity: Obj = dict(placement.get("affinity") or {})
    va = meta.get("annotations") or {}
    if va.get(MIGRATION_ANNOTATION):
        target, source = va.get(MIGRATION_TARGET_ANNOTATION), va.get(MIGRATION_SOURCE_ANNOTATION)
        if target:
            selector["kubernetes.io/hostname"] = target
        elif source:
            affinity["nodeAffinity"] = {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{
                    "key": "kubernetes.io/hostname", "operator": "NotIn", "values": [source]}]}]}}
    size = {"cpu": str(spec["cpu"]), "memory": str(spec["memory"])}
    pod: Pod = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            # One name per VirtualMachine: a second create is AlreadyExists, and the name is
            # part of what proves the pod runs this VirtualMachine's VM (ownership.prove).
            "name": vm_pod_name(vm), "namespace": meta["namespace"],
            # The VM's labels carry over, so ordinary selector Services find VM pods.
            "labels": {**(meta.get("labels") or {}), VM_LABEL: name, VM_UID_LABEL: uid},
            "annotations": annotations,
            "ownerReferences": [owner_ref(vm, names.VIRTUAL_MACHINE.kind)],
        },
        "spec": {
            "containers": [{
                "name": "vm", "image": spec["image"],
                "resources": {"requests": size, "limits": size},
                "resizePolicy": [{"resourceName": "cpu", "restartPolicy": "NotRequired"},
                                 {"resourceName": "memory", "restartPolicy": "NotRequired"}],
            }],
            "nodeSelector": selector,
            "tolerations": provider_tolerations(spec["provider"]),
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "volumes": [{"name": d["name"], "persistentVolumeClaim": {
                "claimName": d["claimName"], "readOnly": bool(d.get("readOnly", False))}}
                for d in spec.get("disks") or []],
        },
    }
    last = (vm.get("status") or {}).get("nodeName")
    if last and "nodeAffinity" not in affinity:
        # A stopped VM starts again where it was when the scheduler lets it: no move needed.
        affinity["nodeAffinity"] = {"preferredDuringSchedulingIgnoredDuringExecution": [{
            "weight": 100, "preference": {"matchExpressions": [{
                "key": "kubernetes.io/hostname", "operator": "In", "values": [last]}]}}]}
    if affinity:
        pod["spec"]["affinity"] = affinity
    return pod


async def lookup_vm(client: KubeClient, namespace: str, name: str) -> VirtualMachine | None:
    """The VirtualMachine ``namespace/name`` as the apiserver has it now, or None."""
    listing = await client.get(path("virtualmachines", namespace),
                               fieldSelector=f"metadata.name={name}")
    items: list[VirtualMachine] = listing.get("items") or []
    return items[0] if items else None

