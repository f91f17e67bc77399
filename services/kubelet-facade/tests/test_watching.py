"""list_and_watch's event types: the watch's changes, then SYNCED after each (re)list."""

from __future__ import annotations

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
