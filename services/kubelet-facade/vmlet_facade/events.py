"""Events, as `kubectl describe` shows them, for pods, nodes and the vmlet.io objects."""

from __future__ import annotations

import datetime as dt
import logging
import uuid

from vmlet_facade.kube import ApiError, KubeClient
from vmlet_facade.kube.objects import KubeObject, Obj
from vmlet_facade.kube.paths import InvalidName, api_path

__all__ = ["EventRecorder"]

log = logging.getLogger(__name__)


class EventRecorder:
    """Posts core/v1 Events from component ``vmlet``; a failed post is logged, never raised."""

    def __init__(self, client: KubeClient, component: str = "vmlet", host: str = "") -> None:
        self._client = client
        self._component = component
        self._host = host

    async def emit(self, obj: KubeObject | Obj, reason: str, message: str, *,
                   warning: bool = False, host: str | None = None) -> None:
        """Post ``reason``/``message`` about ``obj`` (its apiVersion and kind, else a Pod's)."""
        meta = obj["metadata"]
        namespace = meta.get("namespace") or "default"
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}",
                         "namespace": namespace},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion", "v1"), "kind": obj.get("kind", "Pod"),
                "name": meta["name"], "namespace": meta.get("namespace", ""),
                "uid": meta.get("uid", ""), "resourceVersion": meta.get("resourceVersion", ""),
            },
            "reason": reason, "message": message[:1024],
            "type": "Warning" if warning else "Normal",
            "source": {"component": self._component, "host": host or self._host},
            "reportingComponent": self._component, "reportingInstance": host or self._host,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        try:
            await self._client.create(api_path("events", namespace=namespace), event)
        except (ApiError, InvalidName) as err:
            log.warning("event %s on %s/%s not recorded: %s", reason, namespace, meta["name"], err)
