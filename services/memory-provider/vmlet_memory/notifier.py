"""The pod notifier backend: every pod's status on connect, then each change, for any number of
subscribers; see `vmlet_contract.hub` for why a slow subscriber holds up nobody."""

from __future__ import annotations

from vmlet_contract import Mailbox

from .cloud import Cloud, PodUpdate

__all__ = ["PodNotifier"]


class PodNotifier:
    """The cloud's pod changes (a `kit.PodNotifierBackend`); the cloud's `close` ends them."""

    def __init__(self, cloud: Cloud) -> None:
        self._cloud = cloud

    def subscribe_pods(self) -> Mailbox[PodUpdate]:
        return self._cloud.subscribe()

    def unsubscribe_pods(self, box: Mailbox[PodUpdate]) -> None:
        self._cloud.unsubscribe(box)
