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
