"""A small asyncio client of the Kubernetes API: JSON dicts in and out, list-then-watch."""

from vmlet_facade.kube.client import ApiError, KubeClient
from vmlet_facade.kube.config import KubeConfig
from vmlet_facade.kube.watching import SYNCED, WatchEvent, WatchEventType, list_and_watch

__all__ = [
    "SYNCED", "ApiError", "KubeClient", "KubeConfig", "WatchEvent", "WatchEventType",
    "list_and_watch",
]
