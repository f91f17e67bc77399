"""FakeKube: the part of `KubeClient` the controllers use, over objects kept in dicts.

It answers as the apiserver does where the controllers depend on it: 404 NotFound, 409
AlreadyExists and Conflict (a uid or resourceVersion precondition), one resourceVersion counter
for every write, generation bumped by spec changes, status written only through ``/status``,
finalizers holding a deleted object (deletionTimestamp) until they are removed, a pod bound to a
node deleted gracefully (deletionTimestamp) unless gracePeriodSeconds is 0, no-op patches that
write nothing, and list-then-watch with field and label selectors. A test scripts faults
(`fail`), holds a collection's list back (`hold_list`: a cache not synced) and expires watches
(`expire_watches`: 410 Gone).
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

from vmlet_facade.kube import ApiError, KubeClient
from vmlet_facade.kube.client import PATCH_APPLY, PATCH_JSON, PATCH_MERGE, PATCH_STRATEGIC
from vmlet_facade.kube.paths import check_path

__all__ = ["Call", "FakeKube"]

Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped objects


@dataclass(frozen=True)
class Call:
    """One request the fake answered (or failed on purpose)."""

    method: str
    path: str
    body: Any = None
    patch_type: str = ""  # for PATCH: the content type (merge, strategic, JSON patch)


@dataclass
class _Fault:
    method: str
    path_part: str
    error: ApiError
    times: int


@dataclass(frozen=True)
class _Path:
    collection: str  # e.g. /api/v1/pods, /apis/vmlet.io/v1alpha1/virtualmachines
    namespace: str
    name: str
    sub: str


def _parse(path: str) -> _Path:
    parts = check_path(path).strip("/").split("/")
    if parts[0] == "api":
        prefix, rest = f"/api/{parts[1]}", parts[2:]
    else:
        prefix, rest = f"/apis/{parts[1]}/{parts[2]}", parts[3:]
    namespace = ""
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    return _Path(f"{prefix}/{rest[0]}", namespace, rest[1] if len(rest) > 1 else "",
                 rest[2] if len(rest) > 2 else "")


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _field(obj: Obj, dotted: str) -> str:
    value: Any = obj
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return "" if value is None else str(value)


def _matches(obj: Obj, params: Mapping[str, str]) -> bool:
    for term in filter(None, params.get("fieldSelector", "").split(",")):
        negate = "!=" in term
        key, _, want = term.replace("!=", "=").replace("==", "=").partition("=")
        if (_field(obj, key) == want) == negate:
            return False
    labels = obj.get("metadata", {}).get("labels") or {}
    for term in filter(None, params.get("labelSelector", "").split(",")):
        if "=" not in term:
            if (term.startswith("!") and term[1:] in labels) or (
                    not term.startswith("!") and term not in labels):
                return False
            continue
        negate = "!=" in term
        key, _, want = term.replace("!=", "=").replace("==", "=").partition("=")
        if (labels.get(key) == want) == negate:
            return False
    return True


def _merge(target: Any, patch: Any, strategic: bool = False) -> Any:
    """RFC 7386 merge patch; ``strategic`` merges lists of named objects by name, as the
    strategic merge patch does for containers."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif (strategic and isinstance(value, list) and isinstance(out.get(key), list)
              and all(isinstance(v, dict) and "name" in v for v in value + out[key])):
            merged = {item["name"]: item for item in out[key]}
            for item in value:
                merged[item["name"]] = _merge(merged.get(item["name"], {}), item, True)
            out[key] = list(merged.values())
        else:
            out[key] = _merge(out.get(key), value, strategic)
    return out


def _json_patch(obj: Obj, ops: list[Obj]) -> Obj:
    out = copy.deepcopy(obj)
    for op in ops:
        *parents, last = [p.replace("~1", "/").replace("~0", "~")
                          for p in op["path"].lstrip("/").split("/")]
        node: Any = out
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        index: Any = int(last) if isinstance(node, list) and last != "-" else last
        if op["op"] == "test":
            try:
                current = node[index]
            except (KeyError, IndexError):
                current = object()
            if current != op["value"]:
                raise ApiError(422, "Invalid", f"the test of {op['path']} failed")
        elif op["op"] == "remove":
            try:
                del node[index]
            except (KeyError, IndexError):
                raise ApiError(422, "Invalid", f"nothing to remove at {op['path']}") from None
        elif op["op"] in ("add", "replace"):
            if isinstance(node, list) and op["op"] == "add":
                node.insert(len(node) if last == "-" else index, op["value"])
            else:
                node[index] = op["value"]
    return out


class FakeKube:
    """An in-memory apiserver behind the `KubeClient` methods the controllers call."""

    def __init__(self) -> None:
        self.store: dict[str, dict[Key, Obj]] = {}  # collection -> objects
        self.calls: list[Call] = []
        self._rv = 0
        self._log: list[tuple[int, str, str, Obj]] = []  # (rv, collection, type, object)
        self._watchers: list[tuple[str, str, Mapping[str, str], asyncio.Queue[Obj]]] = []
        self._faults: list[_Fault] = []
        self._held: dict[str, asyncio.Event] = {}
        self._expired = 0  # watches from a resourceVersion at or below this get 410 Gone

    @property
    def client(self) -> KubeClient:
        """This fake, typed as what the controllers take."""
        return cast(KubeClient, self)

    # -- what a test does --------------------------------------------------------------------

    def seed(self, path: str, obj: Obj) -> Obj:
        """Store ``obj`` in the collection at ``path`` as it is (its uid kept), as if created."""
        p = _parse(path)
        stored = copy.deepcopy(obj)
        meta = stored.setdefault("metadata", {})
        if p.namespace:
            meta["namespace"] = p.namespace
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", _now())
        meta.setdefault("generation", 1)
        self._write(p.collection, (meta.get("namespace", ""), meta["name"]), stored, "ADDED")
        return copy.deepcopy(stored)

    def get_obj(self, path: str) -> Obj | None:
        """The object at ``path`` as stored now, or None."""
        p = _parse(path)
        obj = self.store.get(p.collection, {}).get((p.namespace, p.name))
        return copy.deepcopy(obj) if obj is not None else None

    def items(self, collection: str) -> list[Obj]:
        """Every object of ``collection`` (a path without namespace, e.g. /api/v1/pods)."""
        return [copy.deepcopy(o) for o in self.store.get(collection, {}).values()]

    def writes(self, method: str | None = None, path_part: str = "") -> list[Call]:
        """The calls that were not reads (nor watches), optionally of one method and path."""
        return [c for c in self.calls if c.method not in ("GET", "WATCH")
                and (method is None or c.method == method) and path_part in c.path]

    def status(self, path: str) -> Obj:
        """The status of the object at ``path`` ({} if it has none or is gone)."""
        return dict((self.get_obj(path) or {}).get("status") or {})

    def events(self) -> list[tuple[str, str]]:
        """(reason, type) of every Event posted, in order."""
        return [(c.body["reason"], c.body["type"]) for c in self.writes("POST", "/events")]

    def event_reasons(self) -> list[str]:
        """The reason of every Event posted, in order."""
        return [reason for reason, _ in self.events()]

    def fail(self, method: str, path_part: str, error: ApiError, times: int = 1) -> None:
        """Answer the next ``times`` calls of ``method`` on a path containing ``path_part``
        with ``error`` (nothing written)."""
        self._faults.append(_Fault(method, path_part, error, times))

    def hold_list(self, collection: str) -> asyncio.Event:
        """Hold every list of ``collection`` until the returned event is set."""
        return self._held.setdefault(collection, asyncio.Event())

    def expire_watches(self) -> None:
        """End every watch with 410 Gone and refuse to resume from any earlier version."""
        self._expired = self._rv
        for _, _, _, queue in self._watchers:
            queue.put_nowait({"type": "ERROR", "object": {
                "kind": "Status", "code": 410, "reason": "Expired", "message": "too old"}})

    # -- the KubeClient interface ------------------------------------------------------------

    async def request(self, method: str, path: str, *, params: Mapping[str, str] | None = None,
                      body: Any = None, content_type: str = "application/json",
                      request_timeout: float = 30.0) -> Obj:
        if method == "GET":
            return await self.get(path, **dict(params or {}))
        if method == "POST":
            return await self.create(path, body)
        if method == "PUT":
            return await self.replace(path, body)
        if method == "PATCH":
            return await self.patch(path, body, content_type)
        if method == "DELETE":
            return await self.delete(path, body)
        raise ApiError(405, "MethodNotAllowed", method)

    async def get(self, path: str, **params: str) -> Obj:
        self._enter("GET", path, None)
        p = _parse(path)
        if p.name:
            return copy.deepcopy(self._existing(p))
        held = self._held.get(p.collection)
        if held is not None:
            await held.wait()
        items = [copy.deepcopy(o) for (ns, _), o in sorted(self.store.get(p.collection, {})
                                                             .items())
                 if (not p.namespace or ns == p.namespace) and _matches(o, params)]
        return {"kind": "List", "metadata": {"resourceVersion": str(self._rv)}, "items": items}

    async def create(self, path: str, body: Obj) -> Obj:
        self._enter("POST", path, body)
        p = _parse(path)
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if p.namespace:
            meta["namespace"] = p.namespace
        key = (p.namespace, meta["name"])
        if key in self.store.get(p.collection, {}):
            raise ApiError(409, "AlreadyExists", f"{p.collection} {meta['name']!r} already "
                           "exists")
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
        for field in ("resourceVersion", "deletionTimestamp"):
            meta.pop(field, None)
        return self._write(p.collection, key, obj, "ADDED")

    async def replace(self, path: str, body: Obj) -> Obj:
        self._enter("PUT", path, body)
        p = _parse(path)
        old = self._existing(p)
        want = (body.get("metadata") or {}).get("resourceVersion")
        if want and want != old["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", "the object has been modified")
        new = copy.deepcopy(body)
        return self._update(p, old, new)

    async def patch(self, path: str, body: Any, patch_type: str = PATCH_MERGE) -> Obj:
        self._enter("PATCH", path, body, patch_type)
        p = _parse(path)
        old = self._existing(p)
        if patch_type == PATCH_JSON:
            new = _json_patch(old, body)
        else:
            new = _merge(old, body, strategic=patch_type in (PATCH_STRATEGIC, PATCH_APPLY))
        return self._update(p, old, new)

    async def apply(self, path: str, body: Obj, field_manager: str = "vmlet") -> Obj:
        self._enter("APPLY", path, body)
        p = _parse(path)
        old = self.store.get(p.collection, {}).get((p.namespace, p.name))
        if old is None:
            obj = copy.deepcopy(body)
            obj["metadata"].update(namespace=p.namespace, uid=str(uuid.uuid4()),
                                   creationTimestamp=_now(), generation=1)
            return self._write(p.collection, (p.namespace, p.name), obj, "ADDED")
        return self._update(p, old, _merge(old, body))

    async def delete(self, path: str, body: Obj | None = None) -> Obj:
        self._enter("DELETE", path, body)
        p = _parse(path)
        old = self._existing(p)
        options = body or {}
        pre = options.get("preconditions") or {}
        meta = old["metadata"]
        for field in ("uid", "resourceVersion"):
            if pre.get(field) and pre[field] != meta.get(field):
                raise ApiError(409, "Conflict", f"Precondition failed: {field} in precondition: "
                               f"{pre[field]}, {field} in object meta: {meta.get(field)}")
        grace = options.get("gracePeriodSeconds")
        if grace is None:
            grace = (old.get("spec") or {}).get("terminationGracePeriodSeconds", 30)
        graceful = (p.collection == "/api/v1/pods" and (old.get("spec") or {}).get("nodeName")
                    and grace > 0)
        if meta.get("finalizers") or graceful:
            if meta.get("deletionTimestamp"):
                return copy.deepcopy(old)
            new = copy.deepcopy(old)
            new["metadata"]["deletionTimestamp"] = _now()
            if graceful:
                new["metadata"]["deletionGracePeriodSeconds"] = grace
            return self._write(p.collection, (p.namespace, p.name), new, "MODIFIED")
        self._remove(p.collection, (p.namespace, p.name))
        return {"kind": "Status", "status": "Success"}

    async def stream_watch(self, path: str, params: Mapping[str, str],
                           timeout_seconds: int = 300) -> AsyncIterator[Obj]:
        self._enter("WATCH", path, None)
        p = _parse(path)
        since = int(params.get("resourceVersion") or 0)
        if since < self._expired:
            yield {"type": "ERROR", "object": {"kind": "Status", "code": 410,
                                                "reason": "Expired", "message": "too old"}}
            return
        queue: asyncio.Queue[Obj] = asyncio.Queue()
        watcher = (p.collection, p.namespace, params, queue)
        self._watchers.append(watcher)
        try:
            for rv, collection, kind, obj in list(self._log):
                if rv > since and self._wanted(watcher, collection, obj):
                    queue.put_nowait({"type": kind, "object": copy.deepcopy(obj)})
            while True:
                event = await queue.get()
                yield event
                if event["type"] == "ERROR":
                    return
        finally:
            self._watchers.remove(watcher)

    # -- inside ------------------------------------------------------------------------------

    def _enter(self, method: str, path: str, body: Any, patch_type: str = "") -> None:
        self.calls.append(Call(method, path, copy.deepcopy(body), patch_type))
        for fault in self._faults:
            if fault.method == method and fault.path_part in path and fault.times > 0:
                fault.times -= 1
                raise fault.error

    def _existing(self, p: _Path) -> Obj:
        obj = self.store.get(p.collection, {}).get((p.namespace, p.name))
        if obj is None:
            raise ApiError(404, "NotFound", f"{p.collection} {p.name!r} not found")
        return obj

    @staticmethod
    def _wanted(watcher: tuple[str, str, Mapping[str, str], asyncio.Queue[Obj]],
                collection: str, obj: Obj) -> bool:
        want, namespace, params, _ = watcher
        return (want == collection and (not namespace or obj["metadata"].get("namespace")
                                        == namespace) and _matches(obj, params))

    def _update(self, p: _Path, old: Obj, new: Obj) -> Obj:
        new["metadata"] = {**new.get("metadata", {}), **{
            k: old["metadata"][k] for k in ("uid", "name", "namespace", "creationTimestamp",
                                            "deletionTimestamp") if k in old["metadata"]}}
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        new["metadata"]["generation"] = old["metadata"].get("generation", 1)
        if p.sub == "status":
            new = {**old, "status": new.get("status", {})}
        elif p.sub == "resize":
            containers = {c["name"]: c for c in new["spec"]["containers"]}
            new = copy.deepcopy(old)
            for container in new["spec"]["containers"]:
                container["resources"] = containers[container["name"]].get("resources", {})
        elif "status" in old or "status" in new:
            new["status"] = copy.deepcopy(old.get("status"))
            if new["status"] is None:
                new.pop("status")
        if new.get("spec") != old.get("spec") and not p.sub:
            new["metadata"]["generation"] += 1
        if new == old:
            return copy.deepcopy(old)  # a no-op: nothing written, no event
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers") \
                and p.collection != "/api/v1/pods":
            self._remove(p.collection, (p.namespace, p.name))
            return copy.deepcopy(new)
        return self._write(p.collection, (p.namespace, p.name), new, "MODIFIED")

    def _write(self, collection: str, key: Key, obj: Obj, kind: str) -> Obj:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        self.store.setdefault(collection, {})[key] = obj
        self._publish(collection, kind, obj)
        return copy.deepcopy(obj)

    def _remove(self, collection: str, key: Key) -> None:
        obj = self.store[collection].pop(key)
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        self._publish(collection, "DELETED", obj)

    def _publish(self, collection: str, kind: str, obj: Obj) -> None:
        self._log.append((self._rv, collection, kind, copy.deepcopy(obj)))
        for watcher in self._watchers:
            if self._wanted(watcher, collection, obj):
                watcher[3].put_nowait({"type": kind, "object": copy.deepcopy(obj)})
