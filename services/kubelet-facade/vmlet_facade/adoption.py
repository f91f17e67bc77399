"""The pods a provider already runs when the facade starts: adopted, or removed as orphans.

Adopted pods are never created a second time. Once a node's pods are listed, the provider's
pods on that node that Kubernetes no longer has are deleted from it, as the facade would have
had it seen their deletes: a bare pod's VM is destroyed; the VM of a VirtualMachine is stopped
and kept (a VM pod deleted is a stop, never a destroy), and the VirtualMachine's next pod, if
its replicas ask for one, adopts it and starts it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from vmlet.provider.v1 import pod_pb2 as pb
from vmlet_contract import ProviderError
from vmlet_facade.ownership import keeps_vm
from vmlet_facade.podstate import PodState
from vmlet_facade.provider import PodHost
from vmlet_facade.queueing import Backoff

__all__ = ["adopt", "remove_orphans"]

log = logging.getLogger(__name__)


async def adopt(provider: PodHost, state_of: Callable[[str], PodState],
                node: str | None = None) -> None:
    """Records every pod ``provider`` runs (on ``node``, when given; listed again until it
    answers) in its state."""
    backoff = Backoff(cap=300.0)
    while True:
        try:
            existing = await provider.get_pods()
            break
        except ProviderError as err:
            log.warning("pods of %s not listed yet: %s", provider.name, err)
            await asyncio.sleep(backoff.failed(provider.name))
    existing = [i for i in existing if node is None or i.pod.node_name == node]
    for item in existing:
        uid = item.pod.ref.uid
        if uid:
            state = state_of(uid)
            if not state.created:
                state.created, state.fingerprint = True, None
            state.adopted = item.pod
            state.latest = item.status
    log.info("adopted %d pods of provider %s%s", len(existing), provider.name,
             f" on node {node}" if node else "")


async def remove_orphans(states: dict[str, PodState], node: str, provider: PodHost) -> list[str]:
    """Deletes from ``provider`` its pods on ``node`` that Kubernetes no longer has (those
    adopted whose pod was not listed); the UIDs it settled."""
    settled = []
    for uid, state in list(states.items()):
        adopted = state.adopted
        if adopted is None or adopted.node_name != node or state.pod is not None:
            continue
        state.adopted, pod = None, adopted
        # Also a VM whose provider recorded no keep (made before it recorded one).
        if keeps_vm(pod.identity, uid, recorded=pod.keep_on_delete):
            kept = pb.Pod()
            kept.CopyFrom(pod)
            kept.keep_on_delete = True
            pod = kept
            log.info("pod %s/%s is gone; stopping its VM %s, kept for its VirtualMachine",
                     pod.ref.namespace, pod.ref.name, pod.identity)
        else:
            log.info("removing orphan %s/%s from provider", pod.ref.namespace, pod.ref.name)
        try:
            await provider.delete_pod(pod)
            state.forget_provider_side()
            state.latest = state.owner = None
        except ProviderError as err:
            log.warning("orphan %s/%s not removed: %s", pod.ref.namespace, pod.ref.name, err)
        settled.append(uid)
    return settled
