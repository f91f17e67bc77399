"""list_and_watch's event types: the watch's changes, then SYNCED after each (re)list."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

from vmlet_facade.kube import SYNCED, list_and_watch


def _pod(uid: str, rv: str) -> dict[str, Any]:
    return {"metadata": {"uid": uid, "name": uid, "namespace": "ns", "resourceVersion": rv}}


class _Client:
    """Lists one pod, then watches: a bookmark, an event type no apiserver sends, a change."""

    async def get(self, path: str, **params: str) -> dict[str, Any]:
        return {"metadata": {"resourceVersion": "1"}, "items": [_pod("a", "1")]}

    async def stream_watch(self, path: str, params: Mapping[str, str],
                           timeout_seconds: int) -> AsyncIterator[dict[str, Any]]:
        yield {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "2"}}}
        yield {"type": "SURPRISE", "object": _pod("a", "3")}
        yield {"type": "MODIFIED", "object": _pod("a", "4")}


async def test_a_list_ends_with_synced_and_only_changes_follow() -> None:
    seen = []
    async for event in list_and_watch(_Client(), "/api/v1/pods"):  # type: ignore[arg-type]
        seen.append((event.type, event.object["metadata"].get("resourceVersion")))
        if len(seen) == 3:
            break
    assert seen == [("ADDED", "1"), (SYNCED, "1"), ("MODIFIED", "4")]


def _decoded(name: str) -> dict[str, Any]:
    """A pod as json.loads makes it: every string its own object."""
    return json.loads(json.dumps({
        "metadata": {"uid": f"uid-{name}", "name": name, "namespace": "ns",
                     "managedFields": [{"manager": "kubectl"}],
                     "annotations": {"long": "x" * 500}},
        "spec": {"nodeName": "node-1", "containers": [{"name": "vm", "args": ["a", 1, None]}]},
        "status": {"phase": "Running"},
    }))


class _TwoPods(_Client):
    async def get(self, path: str, **params: str) -> dict[str, Any]:
        return {"metadata": {"resourceVersion": "1"}, "items": [_decoded("a"), _decoded("b")]}


async def test_listed_objects_drop_managed_fields_and_share_their_strings() -> None:
    objs = []
    async for event in list_and_watch(_TwoPods(), "/api/v1/pods"):  # type: ignore[arg-type]
        if event.type == SYNCED:
            break
        objs.append(event.object)
    a, b = objs
    expected = _decoded("a")
    del expected["metadata"]["managedFields"]
    assert a == expected  # the same content, lists and non-string values kept as they were
    assert a["spec"]["nodeName"] is b["spec"]["nodeName"]
    assert a["status"]["phase"] is b["status"]["phase"]
    key_a = next(k for k in a["spec"]["containers"][0] if k == "args")
    key_b = next(k for k in b["spec"]["containers"][0] if k == "args")
    assert key_a is key_b
    # long strings are unique: not worth hashing into the shared table
    assert a["metadata"]["annotations"]["long"] is not b["metadata"]["annotations"]["long"]


def _version(rv: str, phase: str, labels: dict[str, str]) -> dict[str, Any]:
    pod = _decoded("a")
    pod["metadata"]["resourceVersion"] = rv
    pod["metadata"]["labels"] = labels
    pod["status"] = {"phase": phase, "conditions": [{"type": "Ready", "status": "False"}]}
    return json.loads(json.dumps(pod))


class _Versions(_Client):
    """Lists version 1 of a pod; watches version 2 (its status and a label changed); relists
    after 410 Gone, listing version 3 (only its resourceVersion changed)."""

    def __init__(self) -> None:
        self.lists = 0

    async def get(self, path: str, **params: str) -> dict[str, Any]:
        self.lists += 1
        pod = (_version("1", "Pending", {"app": "web"}) if self.lists == 1
               else _version("3", "Running", {"app": "db"}))
        return {"metadata": {"resourceVersion": str(self.lists * 2)}, "items": [pod]}

    async def stream_watch(self, path: str, params: Mapping[str, str],
                           timeout_seconds: int) -> AsyncIterator[dict[str, Any]]:
        if self.lists == 1:
            yield {"type": "MODIFIED", "object": _version("2", "Running", {"app": "db"})}
            yield {"type": "ERROR", "object": {"code": 410, "reason": "Expired"}}


async def test_a_new_version_takes_over_the_equal_parts_of_the_last_one() -> None:
    objs = []
    async for event in list_and_watch(_Versions(), "/api/v1/pods"):  # type: ignore[arg-type]
        if event.type != SYNCED:
            objs.append(event.object)
        if len(objs) == 3:
            break
    v1, v2, v3 = objs
    for obj, (rv, phase, labels) in zip(objs, [("1", "Pending", {"app": "web"}),
                                               ("2", "Running", {"app": "db"}),
                                               ("3", "Running", {"app": "db"})], strict=True):
        expected = _version(rv, phase, labels)
        del expected["metadata"]["managedFields"]
        assert obj == expected
    assert v2["spec"] is v1["spec"]
    assert v2["metadata"]["annotations"] is v1["metadata"]["annotations"]
    assert v2["metadata"]["labels"] is not v1["metadata"]["labels"]  # it changed
    assert v2["status"] is not v1["status"] and v2["status"]["phase"] == "Running"
    # the unchanged conditions inside a changed status are the last version's too
    assert v2["status"]["conditions"] is v1["status"]["conditions"]
    assert v2["metadata"] is not v1["metadata"]  # the resourceVersion changed
    # a relist compares with the last version the watch saw
    assert v3["spec"] is v2["spec"] and v3["status"] is v2["status"]
    assert v3["metadata"]["labels"] is v2["metadata"]["labels"]
