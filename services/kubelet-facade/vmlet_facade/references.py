"""Resolving what a pod refers to elsewhere in Kubernetes, before a provider sees it.

Env from ConfigMaps, Secrets and the downward API (fieldRef, resourceFieldRef, status.podIP and
status.hostIP), envFrom, Secret/ConfigMap/downwardAPI/projected volumes, and cloud-init user data
from the Secret named by the ``vmlet.io/user-data-secret`` annotation. A missing optional source is
an Event; a missing mandatory one stops the pod before it reaches the provider, with
virtual-kubelet's reasons.

Every name a pod refers to is checked as a Kubernetes name and read in the pod's own namespace
only, through `api_path`: ``../other/secrets/x`` in an annotation is refused (InvalidReference)
before anything is read. A Secret the facade may not read (403) fails exactly as a missing one,
so a reference never tells whether an object exists.
"""

from __future__ import annotations

import base64
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

from vmlet_api.names import (
    USER_DATA_ANNOTATION,
    USER_DATA_KEY_ANNOTATION,
    USER_DATA_KEY_DEFAULT,
)
from vmlet_facade.expansion import expand
from vmlet_facade.kube import ApiError, KubeClient
from vmlet_facade.kube.objects import Obj
from vmlet_facade.kube.paths import InvalidName, api_path, valid_label, valid_name
from vmlet_facade.podfields import is_token_volume
from vmlet_facade.quantity import cpu_millis, memory_bytes

__all__ = [
    "INVALID_REFERENCE",
    "USER_DATA_ANNOTATION",
    "MissingReference",
    "Resolved",
    "Resolver",
]

#: The Event reason of a reference that is no valid name: refused before anything is read.
INVALID_REFERENCE = "InvalidReference"
#: The keys of a Secret or ConfigMap (k8s.io/apimachinery IsConfigMapKey).
_KEY = re.compile(r"[-._a-zA-Z0-9]+")


class MissingReference(Exception):
    """A mandatory Secret, ConfigMap or key is missing; ``reason`` is the Event reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class Resolved:
    """A pod's references, resolved."""

    env: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # container -> pairs
    files: dict[str, dict[str, bytes]] = field(default_factory=dict)  # volume -> path -> data
    disks: dict[str, str] = field(default_factory=dict)  # volume -> the disk's volume handle
    user_data: str = ""
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (reason, message)


class Resolver:
    """Fetches the ConfigMaps and Secrets pods need, each at most once per ``ttl`` seconds:
    pods created together (and every pod's kube-root-ca.crt) cost one read, not one each."""

    def __init__(self, client: KubeClient, ttl: float = 5.0) -> None:
        self._client = client
        self._ttl = ttl
        self._cache: dict[tuple[str, str, str], tuple[float, Obj | None]] = {}

    async def _fetch(self, ns: str, plural: str, name: str) -> Obj | None:
        path = api_path(plural, name, namespace=ns)  # InvalidName before anything is read
        key = (ns, plural, name)
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        try:
            obj: Obj | None = await self._client.get(path)
        except ApiError as err:
            if not (err.not_found or err.status == 403):
                raise
            obj = None  # forbidden reads as missing: the answer never tells which
        if len(self._cache) > 4096:
            self._cache = {k: v for k, v in self._cache.items() if now - v[0] < self._ttl}
        self._cache[key] = (now, obj)
        return obj

    async def resolve(self, pod: Obj) -> Resolved:
        """The pod's references resolved in its own namespace; MissingReference when a mandatory
        one is missing or is no valid name (then nothing at all is read for it)."""
        try:
            return await self._resolve(pod)
        except InvalidName as err:
            raise MissingReference(INVALID_REFERENCE, str(err)) from None

    async def _resolve(self, pod: Obj) -> Resolved:
        ns = valid_label(pod["metadata"].get("namespace"), "the pod's namespace")
        cache: dict[tuple[str, str], Obj | None] = {}
        out = Resolved()

        async def source(kind: str, name: str) -> Obj | None:
            valid_name(name, f"{kind} reference")
            key = (kind, name)
            if key not in cache:
                plural = "secrets" if kind == "Secret" else "configmaps"
                cache[key] = await self._fetch(ns, plural, name)
            return cache[key]

        async def value(kind: str, name: str, key: str, optional: bool) -> str | None:
            what = "Secret" if kind == "Secret" else "ConfigMap"
            _valid_key(key, what)
            obj = await source(kind, name)
            if obj is None:
                reason = f"{'Optional' if optional else 'Mandatory'}{what}NotFound"
                msg = f'{what.lower()} "{name}" not found'
                if optional:
                    out.warnings.append((reason, msg))
                    return None
                raise MissingReference(reason, msg)
            data = _data(obj)
            if key not in data:
                reason = f"{'Optional' if optional else 'Mandatory'}{what}KeyNotFound"
                msg = f'key "{key}" not found in {what.lower()} "{name}"'
                if optional:
                    out.warnings.append((reason, msg))
                    return None
                raise MissingReference(reason, msg)
            return data[key].decode(errors="replace")

        spec = pod.get("spec", {})
        for container in [*(spec.get("initContainers") or []), *spec.get("containers", [])]:
            pairs: list[tuple[str, str]] = []
            for env_from in container.get("envFrom") or []:
                prefix = env_from.get("prefix", "")
                for kind, ref_key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                    ref = env_from.get(ref_key)
                    if not ref:
                        continue
                    obj = await source(kind, ref["name"])
                    optional = bool(ref.get("optional", False))
                    if obj is None:
                        reason = f"{'Optional' if optional else 'Mandatory'}{kind}NotFound"
                        msg = f'{kind.lower()} "{ref["name"]}" not found'
                        if not optional:
                            raise MissingReference(reason, msg)
                        out.warnings.append((reason, msg))
                        continue
                    for k, v in sorted(_data(obj).items()):
                        pairs.append((prefix + k, v.decode(errors="replace")))
            for env in container.get("env") or []:
                resolved = await self._env_value(pod, container, env, value)
                if resolved is not None:
                    # $(VAR) to the variables defined before it, as the kubelet expands them.
                    pairs.append((env["name"], expand(resolved, dict(pairs))))
            out.env[container["name"]] = pairs

        for volume in spec.get("volumes") or []:
            if is_token_volume(volume):
                continue  # never given to a VM: nothing to read for it (kube-root-ca.crt)
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                out.disks[volume["name"]] = await self._disk_handle(ns, claim)
                continue
            files = await self._volume_files(pod, volume, source)
            if files is not None:
                out.files[volume["name"]] = files

        annotations = pod["metadata"].get("annotations", {})
        secret_name = annotations.get(USER_DATA_ANNOTATION)
        if secret_name:
            valid_name(secret_name, f"annotation {USER_DATA_ANNOTATION}:")
            key = annotations.get(USER_DATA_KEY_ANNOTATION, USER_DATA_KEY_DEFAULT)
            _valid_key(key, f"annotation {USER_DATA_KEY_ANNOTATION}: Secret")
            user_data = await value("Secret", secret_name, key, optional=False)
            out.user_data = user_data or ""
        return out

    async def _disk_handle(self, ns: str, claim: str) -> str:
        """The volume handle of the disk bound to claim ``claim`` (in ``ns``, the pod's)."""
        path = api_path("persistentvolumeclaims", valid_name(claim, "claim"), namespace=ns)
        try:
            pvc = await self._client.get(path)
        except ApiError as err:
            if not (err.not_found or err.status == 403):
                raise
            raise MissingReference("FailedMount",
                                   f'persistentvolumeclaim "{claim}" not found') from None
        # spec.volumeName is the tenant's to write: a claim proves its volume only once the
        # binding is complete on both sides (claim Bound, the volume's claimRef naming this claim).
        volume = pvc.get("spec", {}).get("volumeName")
        unbound = MissingReference("FailedMount", f'persistentvolumeclaim "{claim}" is not bound')
        if not volume or (pvc.get("status") or {}).get("phase") != "Bound":
            raise unbound
        try:
            pv = await self._client.get(api_path("persistentvolumes", valid_name(volume, "volume")))
        except ApiError as err:
            if not (err.not_found or err.status == 403):
                raise
            raise unbound from None
        ref = pv.get("spec", {}).get("claimRef") or {}
        meta = pvc.get("metadata", {})
        if (ref.get("namespace"), ref.get("name"), ref.get("uid")) != (
                ns, meta.get("name"), meta.get("uid")):
            raise unbound
        handle = (pv.get("spec", {}).get("csi") or {}).get("volumeHandle")
        if not handle:
            raise MissingReference("FailedMount", f"volume {volume} of claim {claim!r} is not a "
                                   "vmlet disk (no CSI volume handle)")
        return str(handle)

    async def _env_value(self, pod: Obj, container: Obj, env: Obj, value: Any) -> str | None:
        if "value" in env:
            return str(env["value"])
        src = env.get("valueFrom")
        if not src:
            return ""
        result: str | None
        if "configMapKeyRef" in src:
            ref = src["configMapKeyRef"]
            result = await value("ConfigMap", ref["name"], ref["key"], bool(ref.get("optional")))
            return result
        if "secretKeyRef" in src:
            ref = src["secretKeyRef"]
            result = await value("Secret", ref["name"], ref["key"], bool(ref.get("optional")))
            return result
        if "fieldRef" in src:
            return field_value(pod, src["fieldRef"]["fieldPath"])
        if "resourceFieldRef" in src:
            return resource_value(pod, container, src["resourceFieldRef"])
        return ""

    async def _volume_files(self, pod: Obj, volume: Obj, source: Any) -> dict[str, bytes] | None:
        if "secret" in volume or "configMap" in volume:
            kind, ref = (("Secret", volume["secret"]) if "secret" in volume
                         else ("ConfigMap", volume["configMap"]))
            name = ref.get("secretName") or ref.get("name", "")
            obj = await source(kind, name)
            optional = bool(ref.get("optional", False))
            if obj is None:
                if optional:
                    return {}
                raise MissingReference(f"Mandatory{kind}NotFound",
                                       f'{kind.lower()} "{name}" not found')
            return _project(_data(obj), ref.get("items"))
        if "downwardAPI" in volume:
            return {str(item["path"]): field_value(pod, item["fieldRef"]["fieldPath"]).encode()
                    for item in volume["downwardAPI"].get("items", []) if "fieldRef" in item}
        if "projected" in volume:
            files: dict[str, bytes] = {}
            for src in volume["projected"].get("sources", []):
                for key in ("secret", "configMap", "downwardAPI"):
                    if key in src:
                        sub = {key: {**src[key], **({"secretName": src[key].get("name")}
                                                    if key == "secret" else {})}}
                        files.update(await self._volume_files(pod, sub, source) or {})
            return files
        return None


def _valid_key(key: object, what: str) -> None:
    if not isinstance(key, str) or len(key) > 253 or not _KEY.fullmatch(key) or key in (".", ".."):
        shown = repr(key) if len(repr(key)) <= 80 else repr(key)[:77] + "..."
        raise InvalidName(f"{what} key {shown} is not a valid key: it must be at most 253 "
                          "letters, digits, '-', '_' or '.'")


def _data(obj: Obj) -> dict[str, bytes]:
    """The data of a Secret (base64) or ConfigMap (text and binaryData) as bytes."""
    if obj.get("kind") == "Secret" or "type" in obj:
        return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()} | {
            k: v.encode() for k, v in (obj.get("stringData") or {}).items()}
    out = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
    out.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
    return out


def _project(data: dict[str, bytes], items: list[Obj] | None) -> dict[str, bytes]:
    if not items:
        return data
    return {str(item.get("path") or item["key"]): data[item["key"]] for item in items
            if item["key"] in data}


def field_value(pod: Obj, path: str) -> str:
    """The downward API value of ``path`` for ``pod``."""
    meta, spec, status = pod["metadata"], pod.get("spec", {}), pod.get("status", {})
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": status.get("podIP", ""),
        "status.hostIP": status.get("hostIP", ""),
        "status.podIPs": ",".join(p["ip"] for p in status.get("podIPs", [])),
        "status.hostIPs": ",".join(p["ip"] for p in status.get("hostIPs", [])),
    }
    if path in simple:
        return str(simple[path])
    for prefix, source in (("metadata.labels", "labels"), ("metadata.annotations", "annotations")):
        if path == prefix:
            return "\n".join(f'{k}="{v}"' for k, v in sorted(meta.get(source, {}).items()))
        if path.startswith(prefix + "['") and path.endswith("']"):
            return str(meta.get(source, {}).get(path[len(prefix) + 2:-2], ""))
    raise MissingReference("UnsupportedFieldPath", f'unsupported fieldPath "{path}"')


def resource_value(pod: Obj, container: Obj, ref: Obj) -> str:
    """The value of a resourceFieldRef, in units of its divisor (rounded up, as the kubelet)."""
    target = container
    if ref.get("containerName"):
        target = next((c for c in pod["spec"]["containers"]
                       if c["name"] == ref["containerName"]), container)
    kind, _, res = ref["resource"].partition(".")
    resources = target.get("resources", {})
    raw = resources.get(kind, {}).get(res)
    if raw is None and kind == "limits":
        raw = resources.get("requests", {}).get(res)
    divisor = ref.get("divisor") or "1"
    if res == "cpu":
        amount = cpu_millis(raw) if raw is not None else 0
        unit = cpu_millis(divisor) or 1000  # the apiserver defaults the divisor to 0: one core
        return str(max(1, math.ceil(amount / unit))) if amount else "0"
    amount = memory_bytes(raw) if raw is not None else 0
    return str(math.ceil(amount / (memory_bytes(divisor) or 1)))
