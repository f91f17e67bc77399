"""Pods on vmlet nodes tolerate their node's outage for ever, so no VM dies because vmlet was away.

When a facade is away longer than its nodes' lease, the node lifecycle controller taints them
``node.kubernetes.io/not-ready`` or ``unreachable`` (NoExecute), and the taint manager evicts
every pod whose toleration of that taint has run out: DefaultTolerationSeconds gives every pod
300 s. An evicted bare pod is deleted, and a deleted bare pod's VM is destroyed when the facade
returns. A kubelet's node away means its containers may be gone; a vmlet node away means only
that vmlet is: its VMs still run.

So before the facade makes a pod's VM (and for every pod it already runs), the pod's tolerations
of those two taints lose their tolerationSeconds (the one change the apiserver allows to an
existing toleration), and are added when missing. The VM exists only once its pod tolerates the
outage: a failed patch is retried before any VM is made. A pod bound while no facade runs has
no VM yet, so evicting it destroys nothing.
"""

from __future__ import annotations

from typing import Final

from vmlet_facade.kube import KubeClient
from vmlet_facade.kube.objects import Obj

__all__ = ["OUTAGE_TAINTS", "tolerate_outages", "tolerations_for_outages"]

#: The taints the node lifecycle controller puts on a node whose kubelet (here: facade) is away.
OUTAGE_TAINTS: Final = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")


def _tolerates_for_ever(toleration: Obj, taint: str) -> bool:
    return (toleration.get("effect") in ("NoExecute", "", None)
            and toleration.get("tolerationSeconds") is None
            and toleration.get("operator") == "Exists"
            and toleration.get("key") in (taint, "", None))  # no key: every taint


def tolerations_for_outages(pod: Obj) -> list[Obj] | None:
    """The tolerations ``pod`` needs to outlast any outage of its node, or None when it has them:
    its own, with no tolerationSeconds on those of OUTAGE_TAINTS, and those added when missing."""
    tolerations: list[Obj] = list(pod.get("spec", {}).get("tolerations") or [])
    changed = False
    out = []
    for toleration in tolerations:
        if toleration.get("key") in OUTAGE_TAINTS and "tolerationSeconds" in toleration:
            toleration = {k: v for k, v in toleration.items() if k != "tolerationSeconds"}
            changed = True
        out.append(toleration)
    for taint in OUTAGE_TAINTS:
        if not any(_tolerates_for_ever(t, taint) for t in out):
            out.append({"key": taint, "operator": "Exists", "effect": "NoExecute"})
            changed = True
    return out if changed else None


async def tolerate_outages(client: KubeClient, pod: Obj) -> None:
    """Make ``pod`` tolerate its node's outage for ever (see the module docstring); an ApiError
    (a conflict: the pod changed meanwhile) propagates, to be retried."""
    tolerations = tolerations_for_outages(pod)
    if tolerations is None:
        return
    meta = pod["metadata"]
    await client.patch(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}", {
        "metadata": {"resourceVersion": meta.get("resourceVersion")},
        "spec": {"tolerations": tolerations}})
